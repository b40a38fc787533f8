use lambda_http::http::HeaderValue;
use lambda_http::{Body, Request, Response};

use super::{
    json_body, json_response, page_request, query, raw_json_response, request_id, with_location,
    ApiError, ApiState, Json, JsonObject,
};
use chrono::{DateTime, Utc};

use crate::domain::{
    Caller, CustomerId, FieldError, IdempotencyKey, OrderId, OrderLines, OrderStatus, ProductId,
    Quantity, MAX_ORDER_LINES,
};
use crate::store::{
    self, CreateOrderOutcome, Listing, NewOrder, OrderFilter, OrderIdempotency, PageRequest,
};

const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

fn path_id(raw: &str) -> Result<OrderId, ApiError> {
    OrderId::parse(raw).ok_or(ApiError::NotFound)
}

/// Reads one `{productId, quantity}` line (an item, or the seed form's whole body).
fn read_line(
    object: &mut JsonObject<'_>,
    errors: &mut Vec<FieldError>,
) -> Result<Option<(ProductId, Quantity)>, ApiError> {
    let product = match object.string("productId")? {
        Some(raw) => ProductId::parse(&raw).or_else(|| {
            errors.push(object.invalid("productId", "must be a product id (UUID)"));
            None
        }),
        None => {
            errors.push(object.invalid("productId", "is required"));
            None
        }
    };
    let quantity = match object.number("quantity")? {
        Some(literal) => Quantity::parse_number(literal)
            .map_err(|message| errors.push(object.invalid("quantity", message)))
            .ok(),
        None => {
            errors.push(object.invalid("quantity", "is required"));
            None
        }
    };
    Ok(product.zip(quantity))
}

fn parse_new_order(request: &Request) -> Result<NewOrder, ApiError> {
    let mut body = json_body(request)?;
    let mut errors = Vec::new();

    // Seed-style clients send the status new orders get anyway; anything else is a request
    // for a transition that only the processor or a status update may make.
    match body.take("status") {
        None | Some(Json::Null) => {}
        Some(json) => {
            if body.as_string("status", json)? != "pending" {
                errors.push(FieldError::new(
                    "status",
                    "new orders are always pending; omit it",
                ));
            }
        }
    }
    let customer_id = match body.string("customerId")? {
        Some(raw) => CustomerId::parse(&raw)
            .map_err(|message| errors.push(FieldError::new("customerId", message)))
            .ok(),
        None => None,
    };

    let mut sent = Vec::new();
    let field = match body.objects("items")? {
        Some(items) => {
            for message in ["productId", "quantity"] {
                if body.take(message).is_some() {
                    errors.push(FieldError::new(message, "cannot be combined with items"));
                }
            }
            let count = items.len();
            // Counted before any line is read: a body of thousands of empty lines gets one
            // error, not two per line.
            if count == 0 || count > MAX_ORDER_LINES {
                return Err(ApiError::validation("items", "must have 1 to 50 lines"));
            }
            for mut item in items {
                let line = read_line(&mut item, &mut errors)?;
                item.finish(&mut errors);
                sent.extend(line);
            }
            if count != sent.len() {
                // Some lines were invalid; their errors are already named.
                sent.clear();
            }
            "items"
        }
        None => {
            sent.extend(read_line(&mut body, &mut errors)?);
            "productId"
        }
    };
    body.finish(&mut errors);
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let lines = OrderLines::merge(sent, field).map_err(|e| ApiError::Validation(vec![e]))?;
    Ok(NewOrder { lines, customer_id })
}

/// A customer orders for itself: its `sub` is the order's `customerId`, and a body naming
/// anyone else is refused. Staff order for whoever the body names, or for nobody.
fn order_for(caller: &Caller, mut new: NewOrder) -> Result<NewOrder, ApiError> {
    if let Some(own) = caller.own_orders_only() {
        match &new.customer_id {
            Some(named) if named != own => {
                return Err(ApiError::Forbidden(
                    "a customer places orders only for itself (customerId is its sub)".into(),
                ))
            }
            _ => new.customer_id = Some(own.clone()),
        }
    }
    Ok(new)
}

pub(super) async fn create(
    state: &ApiState,
    caller: &Caller,
    request: &Request,
) -> Result<Response<Body>, ApiError> {
    let key = match request.headers().get(IDEMPOTENCY_KEY) {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|raw| IdempotencyKey::parse(raw).ok())
                .ok_or_else(|| {
                    ApiError::validation(
                        IDEMPOTENCY_KEY,
                        "must be 1 to 255 printable ASCII characters",
                    )
                })?,
        ),
    };
    let new = order_for(caller, parse_new_order(request)?)?;
    let idempotency = key.map(|key| OrderIdempotency {
        key,
        fingerprint: new.fingerprint(),
    });
    let request_id = request_id(request);
    let outcome = state
        .write(|sent| async move {
            store::create_order(
                &state.pool,
                &new,
                caller,
                idempotency.as_ref(),
                &request_id,
                &sent,
            )
            .await
        })
        .await?;
    let response = match outcome {
        CreateOrderOutcome::Created { order, body } => with_location(
            raw_json_response(201, body),
            format!("/orders/{}", order.id),
        ),
        CreateOrderOutcome::Replayed { order_id, body } => {
            let mut response =
                with_location(raw_json_response(201, body), format!("/orders/{order_id}"));
            response
                .headers_mut()
                .insert("Idempotency-Replayed", HeaderValue::from_static("true"));
            response
        }
    };
    Ok(response)
}

pub(super) async fn get(
    state: &ApiState,
    caller: &Caller,
    id: &str,
) -> Result<Response<Body>, ApiError> {
    let order = store::get_order(&state.pool, caller, path_id(id)?).await?;
    json_response(200, &order)
}

/// An RFC 3339 time from a query parameter. A `+` offset that reached us as a space (the
/// client did not percent-encode it) is read as the `+` it was.
fn query_time(raw: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(raw)
        .or_else(|_| DateTime::parse_from_rfc3339(&raw.replace(' ', "+")))
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The `GET /orders` query: filters and page, every bad parameter named.
fn parse_search(request: &Request) -> Result<(OrderFilter, PageRequest), ApiError> {
    let mut errors = Vec::new();
    let page = page_request(request, Listing::Orders)
        .map_err(|e| errors.extend(e))
        .ok();
    let mut filter = OrderFilter::default();
    if let Some(raw) = query(request, "status") {
        filter.status = OrderStatus::parse(raw);
        if filter.status.is_none() {
            errors.push(FieldError::new("status", "is not an order status"));
        }
    }
    if let Some(raw) = query(request, "customerId") {
        filter.customer = CustomerId::parse(raw)
            .map_err(|message| errors.push(FieldError::new("customerId", message)))
            .ok();
    }
    for (name, slot) in [
        ("createdFrom", &mut filter.created_from),
        ("createdTo", &mut filter.created_to),
    ] {
        if let Some(raw) = query(request, name) {
            *slot = query_time(raw);
            if slot.is_none() {
                errors.push(FieldError::new(
                    name,
                    "must be an RFC 3339 time, e.g. 2026-12-02T10:00:00Z",
                ));
            }
        }
    }
    match page {
        Some(page) if errors.is_empty() => Ok((filter, page)),
        _ => Err(ApiError::Validation(errors)),
    }
}

pub(super) async fn list(
    state: &ApiState,
    caller: &Caller,
    request: &Request,
) -> Result<Response<Body>, ApiError> {
    let (filter, page) = parse_search(request)?;
    if let (Some(own), Some(asked)) = (caller.own_orders_only(), &filter.customer) {
        if own != asked {
            return Err(ApiError::Forbidden(
                "a customer lists only its own orders".into(),
            ));
        }
    }
    let page = store::list_orders(&state.pool, caller, &filter, page).await?;
    json_response(200, &page)
}

pub(super) async fn update_status(
    state: &ApiState,
    caller: &Caller,
    id: &str,
    request: &Request,
) -> Result<Response<Body>, ApiError> {
    let id = path_id(id)?;
    let mut body = json_body(request)?;
    let mut errors = Vec::new();
    let status = match body.string("status")? {
        Some(raw) => OrderStatus::parse(&raw).or_else(|| {
            errors.push(FieldError::new("status", "is not an order status"));
            None
        }),
        None => {
            errors.push(FieldError::new("status", "is required"));
            None
        }
    };
    body.finish(&mut errors);
    let (Some(status), true) = (status, errors.is_empty()) else {
        return Err(ApiError::Validation(errors));
    };
    if caller.as_staff().is_none() && status != OrderStatus::Cancelled {
        return Err(ApiError::Forbidden(
            "a customer may only cancel its own orders; other status changes are staff's".into(),
        ));
    }
    let request_id = request_id(request);
    let order = state
        .write(|sent| async move {
            store::update_order_status(&state.pool, caller, id, status, &request_id, &sent).await
        })
        .await?;
    json_response(200, &order)
}
