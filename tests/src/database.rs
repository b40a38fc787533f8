use deadpool_postgres::Pool;
use shared::config::DatabaseConfig;
use shared::db::{build_pool, migrate};
use tokio_postgres::NoTls;

/// A database of the test's own, created and migrated fresh, dropped when the test ends.
pub struct TestDb {
    pub pool: Pool,
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub async fn new() -> Self {
        Self::with_pool_size(16).await
    }

    /// `pool_size` connections: concurrency tests need several so transactions really overlap.
    pub async fn with_pool_size(pool_size: usize) -> Self {
        Self::with_config(pool_size, None).await
    }

    /// A pool whose sessions are bounded as the functions' are (`DATABASE_STATEMENT_TIMEOUT_MS`),
    /// with a short bound so that a test can wait it out.
    pub async fn with_statement_timeout(limit: std::time::Duration) -> Self {
        Self::with_config(16, Some(limit)).await
    }

    async fn with_config(pool_size: usize, statement_timeout: Option<std::time::Duration>) -> Self {
        let name = format!("oms_test_{}", crate::unique_suffix());
        let admin_url = crate::admin_database_url();
        let (client, connection) = tokio_postgres::connect(&admin_url, NoTls)
            .await
            .expect("PostgreSQL must run on 127.0.0.1:5432 (see README)");
        tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create test database");
        let mut config: tokio_postgres::Config = admin_url.parse().expect("TEST_DATABASE_URL");
        config.dbname(&name);
        let url = database_url(&admin_url, &name);
        let mut db_config = DatabaseConfig::from_url(&url).expect("test database url");
        db_config.pool_size = pool_size;
        db_config.timeout = std::time::Duration::from_secs(20);
        migrate(&build_pool(&db_config).expect("pool"))
            .await
            .expect("migrations apply to a fresh database");
        db_config.statement_timeout = statement_timeout;
        let pool = build_pool(&db_config).expect("pool");
        Self { pool, name, url }
    }

    pub async fn client(&self) -> deadpool_postgres::Object {
        self.pool.get().await.expect("test connection")
    }

    /// Runs a query returning one `i64`, for assertions on the stored state.
    pub async fn scalar(&self, sql: &str) -> i64 {
        self.client()
            .await
            .query_one(sql, &[])
            .await
            .expect(sql)
            .get(0)
    }

    /// Checks INVARIANTS.md 1, 4 and 6 on the stored state: stock bounds, one stock path per
    /// order, and a ledger that adds up to every product's inventory and reserved.
    pub async fn assert_always_invariants(&self) {
        let client = self.client().await;
        let bad_bounds = client
            .query_one(
                "SELECT count(*) FROM products WHERE NOT (0 <= reserved AND reserved <= inventory)",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0);
        assert_eq!(
            bad_bounds, 0,
            "a product has reserved outside 0..=inventory"
        );
        let ledger_mismatch = client
            .query_one(
                "SELECT count(*) FROM products p
                 LEFT JOIN (SELECT product_id, sum(inventory_delta) AS inv, sum(reserved_delta) AS res
                            FROM inventory_ledger GROUP BY product_id) l ON l.product_id = p.id
                 WHERE coalesce(l.inv, 0) <> p.inventory OR coalesce(l.res, 0) <> p.reserved",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0);
        assert_eq!(
            ledger_mismatch, 0,
            "the ledger does not add up to a product's stock"
        );
        let doubled = client
            .query_one(
                "SELECT count(*) FROM (
                     SELECT order_id FROM inventory_ledger WHERE reason IN ('commit', 'release')
                     GROUP BY order_id, product_id HAVING count(*) > 1
                 ) d",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0);
        assert_eq!(
            doubled, 0,
            "an order's stock was committed or released more than once"
        );
    }

    /// Moves a pending order to `processed` as the processor does, without running it.
    pub async fn mark_processed(&self, order_id: &str) {
        self.client()
            .await
            .batch_execute(&format!(
                "UPDATE orders SET status = 'processed' WHERE id = '{order_id}';
                 INSERT INTO order_status_history (order_id, status, changed_by) VALUES ('{order_id}', 'processed', 'system');"
            ))
            .await
            .expect("mark processed");
    }

    /// INVARIANTS.md 7: once settled, reserved is what open orders hold.
    pub async fn assert_reserved_matches_open_orders(&self) {
        let mismatches = self
            .scalar(
                "SELECT count(*) FROM products p
                 LEFT JOIN (SELECT i.product_id, sum(i.quantity) AS q FROM order_items i
                            JOIN orders o ON o.id = i.order_id
                            WHERE o.status IN ('pending', 'processed') GROUP BY i.product_id) h
                   ON h.product_id = p.id
                 WHERE p.reserved <> coalesce(h.q, 0)",
            )
            .await;
        assert_eq!(
            mismatches, 0,
            "reserved differs from the quantities of open orders"
        );
    }
}

fn database_url(admin_url: &str, name: &str) -> String {
    // Replace the path of the admin URL with the test database's name.
    let (base, query) = admin_url.split_once('?').unwrap_or((admin_url, ""));
    let base = base.rsplit_once('/').map(|(head, _)| head).unwrap_or(base);
    if query.is_empty() {
        format!("{base}/{name}")
    } else {
        format!("{base}/{name}?{query}")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let admin_url = crate::admin_database_url();
        crate::clean_up(move || async move {
            if let Ok((client, connection)) = tokio_postgres::connect(&admin_url, NoTls).await {
                tokio::spawn(connection);
                let _ = client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await;
            }
        });
    }
}
