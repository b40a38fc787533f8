//! Pagination never skips a late commit (issue 12, item 9): a row whose transaction began
//! before a later row's but commits after it is still listed, once, to a client that keeps
//! polling from its last cursor.

use std::collections::HashSet;

use serde_json::Value;
use system_tests::{Api, TestDb};
use tokio_postgres::NoTls;

/// Follows a listing as a client waiting for new items does: pages on while there is a
/// next cursor, and polls again later from the last cursor it got (the last page, having
/// none, is read again, so what it shows twice is counted once).
struct Follower {
    path: String,
    cursor: Option<String>,
    seen: Vec<String>,
}

impl Follower {
    fn new(path: &str) -> Self {
        Self {
            path: path.to_owned(),
            cursor: None,
            seen: Vec::new(),
        }
    }

    async fn poll(&mut self, api: &Api, key: &dyn Fn(&Value) -> String) {
        loop {
            let path = match &self.cursor {
                Some(cursor) => format!("{}?limit=2&cursor={cursor}", self.path),
                None => format!("{}?limit=2", self.path),
            };
            let page = api.get(&path).await;
            assert_eq!(page.status, 200, "{path}: {}", page.body);
            for item in page.body["items"].as_array().unwrap() {
                let item = key(item);
                if !self.seen.contains(&item) {
                    self.seen.push(item);
                }
            }
            match page.body["nextCursor"].as_str() {
                Some(next) => self.cursor = Some(next.to_owned()),
                None => return,
            }
        }
    }
}

async fn raw(db: &TestDb) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&db.url, NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

#[tokio::test]
async fn an_order_committed_after_a_later_one_is_still_listed_once() {
    let db = TestDb::new().await;
    let api = Api::new(db.pool.clone());
    let product = api.product("1.00", 100).await;
    let mut follower = Follower::new("/orders");
    let id = |order: &Value| order["id"].as_str().unwrap().to_owned();

    let mut expected = Vec::new();
    for _ in 0..3 {
        expected.push(
            api.order(&[(&product, 1)]).await.body["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    follower.poll(&api, &id).await;
    // A transaction begins (its order is keyed at its start) and stays open while others
    // commit and a client pages past them.
    let slow = raw(&db).await;
    slow.batch_execute("BEGIN").await.unwrap();
    let late: String = slow
        .query_one(
            "INSERT INTO orders (id, currency, customer_id) VALUES (gen_random_uuid(), 'USD', 'late')
             RETURNING id::text",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    for _ in 0..3 {
        expected.push(
            api.order(&[(&product, 1)]).await.body["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    follower.poll(&api, &id).await;
    slow.batch_execute("COMMIT").await.unwrap();
    follower.poll(&api, &id).await;

    // Every order, the late one among them.
    let seen: HashSet<&String> = follower.seen.iter().collect();
    assert!(
        seen.contains(&late),
        "the late commit was skipped: {:?}",
        follower.seen
    );
    for order in &expected {
        assert!(seen.contains(order), "{order} not listed");
    }
    let all = api.get("/orders?limit=200").await.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(id)
        .collect::<Vec<_>>();
    assert_eq!(all[3], late, "keyed by its transaction's start: {all:?}");
}

#[tokio::test]
async fn a_product_and_a_stock_movement_committed_late_are_still_listed() {
    let db = TestDb::new().await;
    let api = Api::new(db.pool.clone());
    let first = api.product("1.00", 5).await;
    let mut products = Follower::new("/products");
    let mut movements = Follower::new(&format!("/products/{first}/stock-movements"));
    let id = |item: &Value| item["id"].as_str().unwrap().to_owned();
    let movement = |item: &Value| format!("{}{}", item["at"], item["delta"]);
    products.poll(&api, &id).await;
    movements.poll(&api, &movement).await;

    let slow = raw(&db).await;
    slow.batch_execute("BEGIN").await.unwrap();
    let late: String = slow
        .query_one(
            "INSERT INTO products (id, name, price, currency)
             VALUES (gen_random_uuid(), 'late', 1, 'USD') RETURNING id::text",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    // A ledger row alone (the product row stays unlocked, so orders go on meanwhile).
    slow.execute(
        "INSERT INTO inventory_ledger (product_id, inventory_delta, reserved_delta, reason, note, actor)
         VALUES ($1::text::uuid, 7, 0, 'adjustment', 'late count', 'test')",
        &[&first],
    )
    .await
    .unwrap();
    for _ in 0..3 {
        api.product("2.00", 1).await;
        api.order(&[(&first, 1)]).await;
    }
    products.poll(&api, &id).await;
    movements.poll(&api, &movement).await;
    slow.batch_execute("COMMIT").await.unwrap();
    products.poll(&api, &id).await;
    movements.poll(&api, &movement).await;

    assert!(products.seen.contains(&late), "{:?}", products.seen);
    assert_eq!(products.seen.len(), 5);
    // initial, the late adjustment, three reservations.
    assert_eq!(movements.seen.len(), 5, "{:?}", movements.seen);
}
