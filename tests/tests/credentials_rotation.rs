//! Credentials rotation (issue 12, item 3): RDS rotates the password it manages. On an
//! authentication failure the functions read the secret again; until it holds the new
//! password requests get 503 and the processor waits, never parking anything. Against a
//! real password-authenticated role: the test adds a `pg_hba.conf` entry for it and
//! reloads, and restores both however it ends.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use shared::config::{CredentialSource, Credentials, DatabaseConfig};
use shared::db::build_pool;
use shared::http::ApiState;
use shared::messaging::{Processor, Publisher};
use system_tests::{Api, EventMessage, Harness};
use tokio_postgres::NoTls;

async fn admin() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&system_tests::admin_database_url(), NoTls)
        .await
        .expect("admin connection");
    tokio::spawn(connection);
    client
}

/// A login role that must give its password over TCP (a `pg_hba.conf` line ahead of the
/// machine's `trust` lines). Dropping it restores the file, reloads, and drops the role.
struct PasswordRole {
    name: String,
    /// Where its grants are.
    database_url: String,
    hba_file: String,
    original: String,
}

impl PasswordRole {
    async fn create(database: &str) -> Self {
        let name = format!("rotation_{}", system_tests::unique_suffix());
        let client = admin().await;
        let hba_file: String = client.query_one("SHOW hba_file", &[]).await.unwrap().get(0);
        let original = std::fs::read_to_string(&hba_file).expect("read pg_hba.conf");
        let database_url =
            system_tests::admin_database_url().replace("/postgres?", &format!("/{database}?"));
        let role = Self {
            name,
            database_url,
            hba_file,
            original,
        };
        std::fs::write(
            &role.hba_file,
            format!(
                "host all {} 127.0.0.1/32 scram-sha-256\n{}",
                role.name, role.original
            ),
        )
        .expect("write pg_hba.conf");
        client
            .batch_execute(&format!(
                "CREATE ROLE {name} LOGIN PASSWORD 'first-password';
                 SELECT pg_reload_conf();",
                name = role.name
            ))
            .await
            .unwrap();
        // Its rights on the test's database (dropped with the database).
        let url =
            system_tests::admin_database_url().replace("/postgres?", &format!("/{database}?"));
        let (db, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
        tokio::spawn(connection);
        // Migrate revokes PUBLIC's rights on the database: this role gets what the
        // application role has.
        db.batch_execute(&format!(
            "GRANT CONNECT ON DATABASE {database} TO {name};
             GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {name};
             GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {name};
             GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO {name};",
            name = role.name
        ))
        .await
        .unwrap();
        role
    }

    async fn set_password(&self, password: &str) {
        admin()
            .await
            .batch_execute(&format!("ALTER ROLE {} PASSWORD '{password}'", self.name))
            .await
            .unwrap();
    }

    /// Ends the role's sessions, as new execution environments and reconnects would meet
    /// the new password.
    async fn end_sessions(&self) {
        admin()
            .await
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
                &[&self.name],
            )
            .await
            .unwrap();
    }
}

impl Drop for PasswordRole {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.hba_file, &self.original);
        let name = self.name.clone();
        let admin_url = system_tests::admin_database_url();
        let database_url = self.database_url.clone();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                if let Ok((db, connection)) = tokio_postgres::connect(&database_url, NoTls).await {
                    tokio::spawn(connection);
                    let _ = db.batch_execute(&format!("DROP OWNED BY {name}")).await;
                }
                if let Ok((client, connection)) = tokio_postgres::connect(&admin_url, NoTls).await {
                    tokio::spawn(connection);
                    let _ = client
                        .batch_execute(&format!(
                            "SELECT pg_reload_conf();
                             SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{name}';
                             DROP ROLE IF EXISTS {name};"
                        ))
                        .await;
                }
            });
        })
        .join();
    }
}

#[tokio::test]
async fn a_rotated_password_is_read_again_and_meanwhile_requests_get_503() {
    let h = Harness::new().await;
    let role = PasswordRole::create(&h.db.name).await;
    // What the secret holds: the test rotates it as RDS would, a little after the database.
    let secret = Arc::new(Mutex::new("first-password".to_owned()));
    let source: CredentialSource = {
        let (secret, user) = (secret.clone(), role.name.clone());
        Arc::new(move || {
            let credentials = Credentials {
                user: user.clone(),
                password: secret.lock().unwrap().clone().into_bytes(),
            };
            Box::pin(async move { Ok(credentials) })
        })
    };
    let mut config = DatabaseConfig::from_url(&format!(
        "postgres://{}:first-password@127.0.0.1:5432/{}?sslmode=disable",
        role.name, h.db.name
    ))
    .unwrap();
    config.pool_size = 2;
    config.timeout = Duration::from_secs(2);
    config.credentials = Some(source);
    let pool = build_pool(&config).unwrap();
    let api = Api::with_state(ApiState {
        pool: pool.clone(),
        publisher: Some(Publisher::new(h.broker.broker())),
    });
    let processor = Processor::new(pool.clone(), Publisher::new(h.broker.broker()));

    let product = api.product("1.00", 10).await;
    let before = api.order(&[(&product, 1)]).await;
    assert_eq!(before.status, 201, "{}", before.body);

    // The database has the new password; the secret does not yet.
    role.set_password("second-password").await;
    role.end_sessions().await;
    for _ in 0..3 {
        let during = api.order(&[(&product, 1)]).await;
        assert_eq!(during.status, 503, "{}", during.body);
        assert!(during.header("retry-after").is_some());
    }
    // The processor treats it as an outage: the message waits, its attempt not spent.
    let order = before.body["id"].as_str().unwrap().to_owned();
    h.broker.drain(&h.broker.topology.queue).await;
    let event = system_tests::rabbitmq_event(
        &h.broker.topology.queue,
        &[EventMessage::order_event(
            "order.created",
            &order,
            "pending",
        )],
    );
    let summary = processor.handle(&event).await.unwrap();
    assert_eq!(
        (summary.waiting, summary.parked, summary.retried),
        (1, 0, 0)
    );

    // The secret is rotated too: the next connection reads it and works.
    *secret.lock().unwrap() = "second-password".to_owned();
    let after = api.order(&[(&product, 1)]).await;
    assert_eq!(after.status, 201, "{}", after.body);
    let summary = processor.handle(&event).await.unwrap();
    assert_eq!(summary.applied, 1);
    assert_eq!(api.stock(&product).await, (10, 2));
    drop(pool);
}
