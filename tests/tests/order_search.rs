//! `GET /orders` search: filters by status, customer and creation time, combinable, keyset
//! paginated, each combination served by an index.

use serde_json::{json, Value};
use shared::domain::{Caller, CustomerId, OrderStatus, STAFF_SCOPE};
use shared::store::{explain_list_orders, list_orders, Listing, OrderFilter, PageRequest};
use system_tests::{Api, TestDb};

fn ids(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|o| o["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Every page of a listing, following `nextCursor`, `limit` items at a time.
async fn all_pages(api: &Api, query: &str, limit: u32) -> Vec<String> {
    let mut found = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/orders?limit={limit}&{query}");
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let page = api.get(&path).await;
        assert_eq!(page.status, 200, "{path}: {}", page.body);
        found.extend(ids(&page.body));
        match page.body["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return found,
        }
    }
}

#[tokio::test]
async fn filters_combine_and_every_page_holds_the_next_matching_orders() {
    let db = TestDb::new().await;
    let staff = Api::new(db.pool.clone());
    let product = staff.product("1.00", 1000).await;
    // Twelve orders, a day apart, by three customers and staff, some cancelled.
    let mut placed = Vec::new();
    for i in 0..12u32 {
        let api = match i % 4 {
            3 => staff.clone(),
            k => staff.as_customer(&format!("cust-{k}")),
        };
        let order = api.order(&[(&product, 1)]).await;
        assert_eq!(order.status, 201);
        let id = order.body["id"].as_str().unwrap().to_owned();
        if i % 3 == 0 {
            let cancel = api
                .patch(
                    &format!("/orders/{id}/status"),
                    json!({"status": "cancelled"}),
                )
                .await;
            assert_eq!(cancel.status, 200);
        }
        placed.push(id);
    }
    db.client()
        .await
        .batch_execute(&format!(
            "UPDATE orders SET created_at = timestamptz '2026-11-01T00:00:00Z' + (ord - 1) * interval '1 day'
             FROM unnest(ARRAY['{}']::uuid[]) WITH ORDINALITY AS t(id, ord) WHERE orders.id = t.id",
            placed.join("','")
        ))
        .await
        .unwrap();
    let expect = |keep: &dyn Fn(usize) -> bool| -> Vec<String> {
        (0..12)
            .filter(|i| keep(*i))
            .map(|i| placed[i].clone())
            .collect()
    };

    assert_eq!(all_pages(&staff, "", 5).await, placed);
    assert_eq!(
        all_pages(&staff, "status=cancelled", 2).await,
        expect(&|i| i % 3 == 0)
    );
    assert_eq!(
        all_pages(&staff, "customerId=cust-1", 2).await,
        expect(&|i| i % 4 == 1)
    );
    // From inclusive, to exclusive: Nov 3rd up to (not including) Nov 9th.
    let window = "createdFrom=2026-11-03T00:00:00Z&createdTo=2026-11-09T00:00:00Z";
    assert_eq!(
        all_pages(&staff, window, 4).await,
        expect(&|i| (2..8).contains(&i))
    );
    // An offset other than Z, sent with its + unencoded, means the same instant.
    assert_eq!(
        all_pages(
            &staff,
            "createdFrom=2026-11-03T01:00:00+01:00&createdTo=2026-11-09T00:00:00Z",
            4
        )
        .await,
        expect(&|i| (2..8).contains(&i))
    );
    assert_eq!(
        all_pages(
            &staff,
            &format!("status=pending&customerId=cust-0&{window}"),
            1
        )
        .await,
        expect(&|i| (2..8).contains(&i) && i % 4 == 0 && i % 3 != 0)
    );

    // A customer's list is its own, with any filter.
    let customer = staff.as_customer("cust-2");
    assert_eq!(all_pages(&customer, "", 2).await, expect(&|i| i % 4 == 2));
    assert_eq!(
        all_pages(&customer, "status=cancelled", 2).await,
        expect(&|i| i % 4 == 2 && i % 3 == 0)
    );
    assert_eq!(
        all_pages(&customer, "customerId=cust-2", 2).await,
        expect(&|i| i % 4 == 2)
    );

    let bad = staff
        .get("/orders?createdFrom=yesterday&createdTo=2026-13-01T00:00:00Z&status=lost")
        .await;
    assert_eq!(bad.status, 422);
    assert_eq!(bad.error_fields(), ["status", "createdFrom", "createdTo"]);
    // A cursor of another listing, or of the id-only orders listing before search, is refused.
    let products_cursor = staff.get("/products?limit=1").await.body["nextCursor"].clone();
    let stale = staff
        .get(&format!(
            "/orders?cursor={}",
            products_cursor.as_str().unwrap_or("x")
        ))
        .await;
    assert_eq!(stale.status, 422);
}

fn staff() -> Caller {
    Caller::from_token(Some("planner"), [STAFF_SCOPE].into_iter()).unwrap()
}

/// A shop in use: 200,000 orders over a year, 2,000 customers (a tenth of the orders placed
/// by staff for nobody), mostly delivered.
async fn seed_shop(db: &TestDb) {
    db.client()
        .await
        .batch_execute(
            "INSERT INTO orders (id, status, stock, currency, customer_id, created_at, updated_at)
             SELECT gen_random_uuid(),
                    s.status,
                    CASE WHEN s.status IN ('shipped', 'delivered') THEN 'committed'
                         WHEN s.status IN ('cancelled', 'rejected') THEN 'released'
                         ELSE 'reserved' END,
                    'USD',
                    CASE WHEN n % 10 = 0 THEN NULL ELSE 'c-' || (n % 1999) END,
                    timestamptz '2026-01-01' + n * interval '150 seconds',
                    timestamptz '2026-01-01' + n * interval '150 seconds'
             FROM generate_series(1, 200000) n,
                  LATERAL (SELECT CASE
                      WHEN n % 100 < 2 THEN 'pending'
                      WHEN n % 100 < 5 THEN 'processed'
                      WHEN n % 100 < 10 THEN 'shipped'
                      WHEN n % 100 < 16 THEN 'cancelled'
                      WHEN n % 100 < 17 THEN 'rejected'
                      ELSE 'delivered' END AS status) s",
        )
        .await
        .unwrap();
    db.client()
        .await
        .batch_execute("VACUUM ANALYZE orders")
        .await
        .unwrap();
}

#[tokio::test]
async fn every_search_is_served_by_an_index_on_first_and_deep_pages() {
    let db = TestDb::with_pool_size(1).await;
    seed_shop(&db).await;
    let staff = staff();
    let customer = Caller::from_token(Some("c-77"), std::iter::empty()).unwrap();
    let from = "2026-03-01T00:00:00Z".parse().unwrap();
    let to = "2026-03-08T00:00:00Z".parse().unwrap();
    let status = |s: &str| OrderStatus::parse(s);
    let cust = |c: &str| CustomerId::parse(c).ok();
    let filter = |s: Option<OrderStatus>, c: Option<CustomerId>, window: bool| OrderFilter {
        status: s,
        customer: c,
        created_from: window.then_some(from),
        created_to: window.then_some(to),
    };
    // The index each search must range over; a status most orders have may also be read
    // off the creation index, filtering the few others out.
    let by_status = &["orders_by_status_created"][..];
    let common_status = &["orders_by_status_created", "orders_by_created"][..];
    let by_customer = &["orders_by_customer_created"][..];
    let by_customer_status = &["orders_by_customer_status_created"][..];
    let by_customer_common_status = &[
        "orders_by_customer_status_created",
        "orders_by_customer_created",
    ][..];
    let by_created = &["orders_by_created"][..];
    let cases: Vec<(&str, &Caller, OrderFilter, &[&str])> = vec![
        ("all", &staff, filter(None, None, false), by_created),
        (
            "rare status",
            &staff,
            filter(status("pending"), None, false),
            by_status,
        ),
        (
            "common status",
            &staff,
            filter(status("delivered"), None, false),
            common_status,
        ),
        (
            "customer",
            &staff,
            filter(None, cust("c-42"), false),
            by_customer,
        ),
        (
            "customer + status",
            &staff,
            filter(status("delivered"), cust("c-42"), false),
            by_customer_common_status,
        ),
        (
            "customer + rare status",
            &staff,
            filter(status("pending"), cust("c-42"), false),
            by_customer_status,
        ),
        ("week", &staff, filter(None, None, true), by_created),
        (
            "rare status + week",
            &staff,
            filter(status("pending"), None, true),
            by_status,
        ),
        (
            "common status + week",
            &staff,
            filter(status("delivered"), None, true),
            common_status,
        ),
        (
            "customer + week",
            &staff,
            filter(None, cust("c-42"), true),
            by_customer,
        ),
        ("own", &customer, filter(None, None, false), by_customer),
        (
            "own + status",
            &customer,
            filter(status("delivered"), None, false),
            by_customer_common_status,
        ),
        (
            "own + rare status",
            &customer,
            filter(status("pending"), None, false),
            by_customer_status,
        ),
    ];
    let mut report = Vec::new();
    for (name, viewer, filter, indexes) in &cases {
        // The first page, and one twenty pages of 5 deep (or the last there is).
        let mut page = PageRequest::first(5);
        let mut deep = page;
        for _ in 0..20 {
            let listed = list_orders(&db.pool, viewer, filter, page).await.unwrap();
            match listed.next_cursor {
                Some(cursor) => {
                    page = PageRequest::parse(Listing::Orders, Some("50"), Some(&cursor)).unwrap();
                    deep = page;
                }
                None => break,
            }
        }
        for (depth, request) in [("first", PageRequest::first(50)), ("deep", deep)] {
            let plan = explain_list_orders(&db.pool, viewer, filter, request)
                .await
                .unwrap();
            report.push(format!("--- {name}, {depth} page\n{}", plan.join("\n")));
            let shown = plan.join("\n");
            let scan = plan.get(1).map(String::as_str).unwrap_or_default();
            let ranged = indexes
                .iter()
                .any(|index| scan.contains(&format!("Index Scan using {index} on orders o")));
            // A status few orders have may also be found by combining the customer's index
            // with the unsettled orders' (V5): a few rows, sorted.
            let few_combined = plan.iter().any(|line| {
                line.trim_start()
                    .strip_prefix("->  Bitmap Heap Scan on orders o (actual rows=")
                    .and_then(|rest| rest.split(' ').next())
                    .and_then(|n| n.parse::<u64>().ok())
                    .is_some_and(|rows| rows <= 51)
            }) && *indexes == by_customer_status;
            assert!(
                plan[0].starts_with("Limit") && (ranged || few_combined),
                "{name}, {depth} page is not a range on {indexes:?}:\n{shown}"
            );
            // A page costs about its own entries, not the table's: what the scan read and
            // threw away stays within a few pages (a customer's orders are few).
            let removed: u64 = plan
                .iter()
                .take_while(|line| !line.contains("SubPlan"))
                .filter_map(|line| line.trim().strip_prefix("Rows Removed by Filter: "))
                .filter_map(|n| n.parse::<u64>().ok())
                .sum();
            assert!(
                removed <= 200,
                "{name}, {depth} page read {removed} rows too many:\n{shown}"
            );
            assert!(
                !plan.iter().any(|line| line.contains("Seq Scan")),
                "{name}, {depth} page scans a table:\n{shown}"
            );
        }
    }
    println!("{}", report.join("\n"));
}
