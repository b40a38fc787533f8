use deadpool_postgres::Pool;
use shared::config::{AppRoleConfig, DatabaseConfig};
use shared::db::{build_pool, migrate, set_up_app_role};
use tokio_postgres::NoTls;

/// A database of the test's own, created and migrated fresh, dropped when the test ends.
///
/// `pool` is what the functions get: it connects as the application role (which owns
/// nothing: see `set_up_app_role`) and, when `TEST_POOLER_URL` names a PgBouncer in
/// transaction mode (as `scripts/test.sh` sets it), through that pooler, so every store
/// statement of every test also proves it multiplexes. `client()` is the owner's direct
/// connection, for a test's own seeding and assertions.
pub struct TestDb {
    pub pool: Pool,
    pub name: String,
    /// The owner's direct URL (seeding, assertions, administration).
    pub url: String,
    /// What a function's `DATABASE_URL` is: the application role, through the pooler if any.
    pub app_url: String,
    /// Whether `app_url` goes through the pooler (a function's `DATABASE_MULTIPLEXED`).
    pub multiplexed: bool,
    /// The owner's direct pool: seeding, `ANALYZE`, anything the application role may not do.
    pub owner: Pool,
}

/// The application role the tests' functions connect as (created by `migrate`).
pub const APP_ROLE: &str = "oms_app";

/// The statement bound of a test's application role unless the test asks for another: long
/// enough for any test's work, short enough that a stuck wait fails the test.
const TEST_STATEMENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

impl TestDb {
    pub async fn new() -> Self {
        Self::with_pool_size(16).await
    }

    /// `pool_size` connections: concurrency tests need several so transactions really overlap.
    pub async fn with_pool_size(pool_size: usize) -> Self {
        Self::with_config(pool_size, TEST_STATEMENT_TIMEOUT).await
    }

    /// A database whose application role is bounded as the functions' is
    /// (`DATABASE_STATEMENT_TIMEOUT_MS`), with a short bound so that a test can wait it out.
    pub async fn with_statement_timeout(limit: std::time::Duration) -> Self {
        Self::with_config(16, limit).await
    }

    async fn with_config(pool_size: usize, statement_timeout: std::time::Duration) -> Self {
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
        let url = database_url(&admin_url, &name, None);
        let mut owner_config = DatabaseConfig::from_url(&url).expect("test database url");
        owner_config.pool_size = 4;
        owner_config.timeout = std::time::Duration::from_secs(20);
        let owner = build_pool(&owner_config).expect("pool");
        migrate(&owner)
            .await
            .expect("migrations apply to a fresh database");
        let role = AppRoleConfig {
            name: APP_ROLE.to_owned(),
            password: None,
            statement_timeout,
        };
        set_up_app_role(&owner, &role)
            .await
            .expect("the application role is set up");
        let pooler = std::env::var("TEST_POOLER_URL")
            .ok()
            .filter(|u| !u.trim().is_empty());
        let multiplexed = pooler.is_some();
        let app_url = database_url(
            pooler.as_deref().unwrap_or(&admin_url),
            &name,
            Some(APP_ROLE),
        );
        let mut app_config = DatabaseConfig::from_url(&app_url).expect("application url");
        app_config.pool_size = pool_size;
        app_config.timeout = std::time::Duration::from_secs(20);
        app_config.multiplexed = multiplexed;
        let pool = build_pool(&app_config).expect("pool");
        Self {
            pool,
            name,
            url,
            app_url,
            multiplexed,
            owner,
        }
    }

    /// The owner's connection, direct: for the test's own seeding and assertions.
    pub async fn client(&self) -> deadpool_postgres::Object {
        self.owner.get().await.expect("test connection")
    }

    /// Runs `sql` (typically `SELECT … FOR UPDATE`) in an open transaction on a session of
    /// its own, without the functions' bounds, holding its locks until
    /// [`LockHolder::release`] or until dropped: a long restock or a slow request.
    pub async fn hold(&self, sql: &str) -> LockHolder {
        let (client, connection) = tokio_postgres::connect(&self.url, NoTls)
            .await
            .expect("holder connection");
        tokio::spawn(connection);
        client
            .batch_execute(&format!("BEGIN; {sql}"))
            .await
            .expect("lock");
        LockHolder(client)
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
        // Per bucket (the CHECKs' rows) and per product (the totals clients see).
        let bad_bounds = self
            .scalar(
                "SELECT (SELECT count(*) FROM stock_buckets
                         WHERE NOT (0 <= reserved AND reserved <= inventory))
                      + (SELECT count(*) FROM product_stock
                         WHERE NOT (0 <= reserved AND reserved <= inventory))",
            )
            .await;
        assert_eq!(
            bad_bounds, 0,
            "a bucket or product has reserved outside 0..=inventory"
        );
        let ledger_mismatch = self
            .scalar(
                "SELECT count(*) FROM products p
                 LEFT JOIN product_stock s ON s.product_id = p.id
                 LEFT JOIN (SELECT product_id, sum(inventory_delta) AS inv, sum(reserved_delta) AS res
                            FROM inventory_ledger GROUP BY product_id) l ON l.product_id = p.id
                 WHERE coalesce(l.inv, 0) <> coalesce(s.inventory, 0)
                    OR coalesce(l.res, 0) <> coalesce(s.reserved, 0)",
            )
            .await;
        assert_eq!(
            ledger_mismatch, 0,
            "the ledger does not add up to a product's stock"
        );
        // INVARIANTS.md 8: a holding is exactly the held units of the customer's orders
        // whose stock is not released (the release gives them back in its transaction).
        let holdings_mismatch = self
            .scalar(
                "SELECT count(*) FROM customer_holdings h
                 FULL JOIN (SELECT i.product_id, o.customer_id, sum(i.quantity) AS q
                            FROM order_items i JOIN orders o ON o.id = i.order_id
                            WHERE i.held AND o.stock <> 'released'
                            GROUP BY i.product_id, o.customer_id) u
                   ON u.product_id = h.product_id AND u.customer_id = h.customer_id
                 WHERE coalesce(h.held, 0) <> coalesce(u.q, 0)",
            )
            .await;
        assert_eq!(
            holdings_mismatch, 0,
            "a customer's holding differs from the held units of their open orders"
        );
        let doubled = self
            .scalar(
                "SELECT count(*) FROM (
                     SELECT order_id FROM inventory_ledger WHERE reason IN ('commit', 'release')
                     GROUP BY order_id, product_id HAVING count(*) > 1
                 ) d",
            )
            .await;
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
                 LEFT JOIN product_stock s ON s.product_id = p.id
                 LEFT JOIN (SELECT i.product_id, sum(i.quantity) AS q FROM order_items i
                            JOIN orders o ON o.id = i.order_id
                            WHERE o.status IN ('pending', 'processed') GROUP BY i.product_id) h
                   ON h.product_id = p.id
                 WHERE coalesce(s.reserved, 0) <> coalesce(h.q, 0)",
            )
            .await;
        assert_eq!(
            mismatches, 0,
            "reserved differs from the quantities of open orders"
        );
    }
}

/// `base` with the database `name` and, if given, the user `user`.
fn database_url(base: &str, name: &str, user: Option<&str>) -> String {
    let (address, query) = base.split_once('?').unwrap_or((base, ""));
    let address = address
        .rsplit_once('/')
        .map(|(head, _)| head)
        .unwrap_or(address);
    let address = match user {
        // postgres://user@host:port → postgres://APP@host:port
        Some(user) => match address.split_once("://") {
            Some((scheme, rest)) => {
                let host = rest.rsplit_once('@').map(|(_, host)| host).unwrap_or(rest);
                format!("{scheme}://{user}@{host}")
            }
            None => address.to_owned(),
        },
        None => address.to_owned(),
    };
    if query.is_empty() {
        format!("{address}/{name}")
    } else {
        format!("{address}/{name}?{query}")
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

/// A transaction holding locks for a test (see [`TestDb::hold`]).
pub struct LockHolder(tokio_postgres::Client);

impl LockHolder {
    /// Rolls the transaction back, releasing its locks.
    pub async fn release(self) {
        self.0.batch_execute("ROLLBACK").await.expect("rollback");
    }
}
