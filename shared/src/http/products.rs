use lambda_http::{Body, Request, Response};

use super::{json_body, json_response, page_request, with_location, ApiError, ApiState, Json};
use crate::domain::{
    AdjustmentReason, Currency, Description, FieldError, Money, PerCustomerLimit, ProductId,
    ProductName, Sku, Staff, StockBuckets, StockDelta,
};
use crate::store::{self, Listing, NewProduct, ProductPatch};

const MAX_INITIAL_INVENTORY: i64 = 1_000_000_000;

fn path_id(raw: &str) -> Result<ProductId, ApiError> {
    ProductId::parse(raw).ok_or(ApiError::NotFound)
}

/// Collects the outcome of parsing one field: the value, or its error pushed to `errors`.
fn keep<T>(errors: &mut Vec<FieldError>, field: &str, parsed: Result<T, &str>) -> Option<T> {
    parsed
        .map_err(|message| errors.push(FieldError::new(field, message)))
        .ok()
}

pub(super) async fn create(
    state: &ApiState,
    staff: &Staff,
    request: &Request,
) -> Result<Response<Body>, ApiError> {
    let mut body = json_body(request)?;
    let mut errors = Vec::new();

    let name = match body.string("name")? {
        Some(raw) => keep(&mut errors, "name", ProductName::parse(&raw)),
        None => keep(&mut errors, "name", Err("is required")),
    };
    let price = match body.decimal("price")? {
        Some(raw) => keep(&mut errors, "price", Money::parse_price(&raw)),
        None => keep(&mut errors, "price", Err("is required")),
    };
    let inventory = match body.number("inventory")? {
        Some(literal) => keep(
            &mut errors,
            "inventory",
            literal
                .parse::<i64>()
                .ok()
                .filter(|n| (0..=MAX_INITIAL_INVENTORY).contains(n))
                .ok_or("must be an integer between 0 and 1000000000"),
        ),
        None => keep(&mut errors, "inventory", Err("is required")),
    };
    let description = match body.string("description")? {
        Some(raw) => keep(&mut errors, "description", Description::parse(&raw)).map(Some),
        None => Some(None),
    };
    let sku = match body.string("sku")? {
        Some(raw) => keep(&mut errors, "sku", Sku::parse(&raw)).map(Some),
        None => Some(None),
    };
    let currency = match body.string("currency")? {
        Some(raw) => keep(&mut errors, "currency", Currency::parse(&raw)),
        None => Some(Currency::USD),
    };
    let stock_buckets = match body.number("stockBuckets")? {
        Some(literal) => keep(
            &mut errors,
            "stockBuckets",
            StockBuckets::parse_number(literal),
        ),
        None => Some(StockBuckets::ONE),
    };
    let max_per_customer = match body.number("maxPerCustomer")? {
        Some(literal) => keep(
            &mut errors,
            "maxPerCustomer",
            PerCustomerLimit::parse_number(literal),
        )
        .map(Some),
        None => Some(None),
    };
    body.finish(&mut errors);

    let (
        Some(name),
        Some(price),
        Some(inventory),
        Some(description),
        Some(sku),
        Some(currency),
        Some(stock_buckets),
        Some(max_per_customer),
        true,
    ) = (
        name,
        price,
        inventory,
        description,
        sku,
        currency,
        stock_buckets,
        max_per_customer,
        errors.is_empty(),
    )
    else {
        return Err(ApiError::Validation(errors));
    };
    let product = store::create_product(
        &state.pool,
        &NewProduct {
            sku,
            name,
            description,
            price,
            currency,
            inventory,
            stock_buckets,
            max_per_customer,
        },
        staff,
    )
    .await?;
    let location = format!("/products/{}", product.id);
    Ok(with_location(json_response(201, &product)?, location))
}

pub(super) async fn get(state: &ApiState, id: &str) -> Result<Response<Body>, ApiError> {
    let product = store::get_product(&state.pool, path_id(id)?).await?;
    json_response(200, &product)
}

pub(super) async fn list(state: &ApiState, request: &Request) -> Result<Response<Body>, ApiError> {
    let page = page_request(request, Listing::Products).map_err(ApiError::Validation)?;
    let page = store::list_products(&state.pool, page).await?;
    json_response(200, &page)
}

pub(super) async fn update(
    state: &ApiState,
    _staff: &Staff,
    id: &str,
    request: &Request,
) -> Result<Response<Body>, ApiError> {
    let id = path_id(id)?;
    let mut body = json_body(request)?;
    let mut errors = Vec::new();
    let mut patch = ProductPatch::default();

    match body.take("name") {
        None => {}
        Some(Json::Null) => errors.push(FieldError::new("name", "cannot be null")),
        Some(json) => {
            let raw = body.as_string("name", json)?;
            patch.name = keep(&mut errors, "name", ProductName::parse(&raw));
        }
    }
    match body.take("description") {
        None => {}
        Some(Json::Null) => patch.description = Some(None),
        Some(json) => {
            let raw = body.as_string("description", json)?;
            patch.description =
                keep(&mut errors, "description", Description::parse(&raw)).map(Some);
        }
    }
    match body.take("price") {
        None => {}
        Some(Json::Null) => errors.push(FieldError::new("price", "cannot be null")),
        Some(Json::Number(literal)) => {
            patch.price = keep(&mut errors, "price", Money::parse_price(literal));
        }
        Some(json @ Json::String(_)) => {
            let raw = body.as_string("price", json)?;
            patch.price = keep(&mut errors, "price", Money::parse_price(&raw));
        }
        Some(Json::Other(_)) => {
            return Err(body.wrong_type("price", "a number or a decimal string"))
        }
    }
    match body.take("stockBuckets") {
        None => {}
        Some(Json::Null) => errors.push(FieldError::new("stockBuckets", "cannot be null")),
        Some(Json::Number(literal)) => {
            patch.stock_buckets = keep(
                &mut errors,
                "stockBuckets",
                StockBuckets::parse_number(literal),
            );
        }
        Some(_) => return Err(body.wrong_type("stockBuckets", "a number")),
    }
    match body.take("maxPerCustomer") {
        None => {}
        Some(Json::Null) => patch.max_per_customer = Some(None),
        Some(Json::Number(literal)) => {
            patch.max_per_customer = keep(
                &mut errors,
                "maxPerCustomer",
                PerCustomerLimit::parse_number(literal),
            )
            .map(Some);
        }
        Some(_) => return Err(body.wrong_type("maxPerCustomer", "a number or null")),
    }
    body.finish(&mut errors);
    if errors.is_empty()
        && patch.name.is_none()
        && patch.description.is_none()
        && patch.price.is_none()
        && patch.stock_buckets.is_none()
        && patch.max_per_customer.is_none()
    {
        errors.push(FieldError::new(
            "body",
            "must change at least one of name, description, price, stockBuckets, maxPerCustomer",
        ));
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let product = store::update_product(&state.pool, id, &patch).await?;
    json_response(200, &product)
}

pub(super) async fn adjust_inventory(
    state: &ApiState,
    staff: &Staff,
    id: &str,
    request: &Request,
) -> Result<Response<Body>, ApiError> {
    let id = path_id(id)?;
    let mut body = json_body(request)?;
    let mut errors = Vec::new();
    let delta = match body.number("delta")? {
        Some(literal) => keep(&mut errors, "delta", StockDelta::parse_number(literal)),
        None => keep(&mut errors, "delta", Err("is required")),
    };
    let reason = match body.string("reason")? {
        Some(raw) => keep(&mut errors, "reason", AdjustmentReason::parse(&raw)),
        None => keep(&mut errors, "reason", Err("is required")),
    };
    body.finish(&mut errors);
    let (Some(delta), Some(reason), true) = (delta, reason, errors.is_empty()) else {
        return Err(ApiError::Validation(errors));
    };
    let product = store::adjust_inventory(&state.pool, id, delta, &reason, staff).await?;
    json_response(200, &product)
}

pub(super) async fn stock_movements(
    state: &ApiState,
    _staff: &Staff,
    id: &str,
    request: &Request,
) -> Result<Response<Body>, ApiError> {
    let id = path_id(id)?;
    let page = page_request(request, Listing::StockMovements).map_err(ApiError::Validation)?;
    let page = store::list_stock_movements(&state.pool, id, page).await?;
    json_response(200, &page)
}
