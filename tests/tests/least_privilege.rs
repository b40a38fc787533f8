//! The functions' database role reads and writes rows and can change nothing else: the
//! schema belongs to `migrate`. Connected as that role, as the functions are (through the
//! pooler when the tests run with one).

use system_tests::TestDb;
use tokio_postgres::error::SqlState;

async fn refused(db: &TestDb, statement: &str) -> SqlState {
    let client = db.pool.get().await.expect("application connection");
    let error = client
        .batch_execute(statement)
        .await
        .expect_err(&format!("the application role ran: {statement}"));
    error.code().cloned().unwrap_or(SqlState::INTERNAL_ERROR)
}

#[tokio::test]
async fn the_application_role_cannot_change_the_schema() {
    let db = TestDb::new().await;
    for statement in [
        "CREATE TABLE intruder (id int)",
        "CREATE TEMPORARY TABLE intruder (id int)",
        "CREATE SCHEMA intruder",
        "CREATE FUNCTION intruder() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        "CREATE INDEX intruder ON orders (currency)",
        "ALTER TABLE orders ADD COLUMN intruder int",
        "ALTER TABLE products DROP CONSTRAINT IF EXISTS products_check",
        "DROP TABLE inventory_ledger",
        "TRUNCATE outbox",
        "CREATE ROLE intruder",
        "DELETE FROM refinery_schema_history",
    ] {
        let code = refused(&db, statement).await;
        assert_eq!(code, SqlState::INSUFFICIENT_PRIVILEGE, "{statement}");
    }
    let owner_only = db
        .scalar("SELECT count(*) FROM pg_tables WHERE tablename = 'intruder'")
        .await;
    assert_eq!(owner_only, 0);
}

#[tokio::test]
async fn the_application_role_reads_and_writes_rows_bounded_by_its_settings() {
    let db = TestDb::with_statement_timeout(std::time::Duration::from_millis(1200)).await;
    let client = db.pool.get().await.expect("application connection");
    client
        .batch_execute(
            "INSERT INTO products (id, name, price, currency)
             VALUES (gen_random_uuid(), 'p', 1.00, 'USD');
             UPDATE products SET name = 'q';
             DELETE FROM products;",
        )
        .await
        .expect("rows are the application's to change");
    // The bound comes from the role in this database, not from anything the session set.
    let rows = client
        .simple_query("SELECT current_user, current_setting('statement_timeout'), current_setting('lock_timeout')")
        .await
        .unwrap();
    let row = rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(
                (0..3)
                    .map(|i| row.get(i).unwrap_or_default().to_owned())
                    .collect::<Vec<_>>(),
            ),
            _ => None,
        })
        .unwrap();
    assert_eq!(row, ["oms_app", "1200ms", "900ms"]);
    let error = client
        .batch_execute("SELECT pg_sleep(3)")
        .await
        .expect_err("a statement beyond the bound is cancelled");
    assert_eq!(error.code(), Some(&SqlState::QUERY_CANCELED));
}
