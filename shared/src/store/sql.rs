//! How every store statement reaches PostgreSQL: with its parameters' types given, so that it
//! can run either as a statement prepared once per connection (a direct session: the
//! many-CTE statements here cost more to plan than to run) or as an unnamed statement in
//! the same round trip as its execution (a session multiplexed by RDS Proxy or PgBouncer in
//! transaction mode, where the next transaction may run on another server connection that
//! never saw a named statement, and where a named one would pin the session).

use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use tokio_postgres::types::{Json, ToSql, Type};
use tokio_postgres::Row;
use uuid::Uuid;

use super::StoreError;

/// Whether any pool of this process goes through a connection multiplexer. Sticky: once one
/// does, every statement runs unnamed (which is correct everywhere, only slower to plan).
static MULTIPLEXED: AtomicBool = AtomicBool::new(false);

/// Called by [`crate::db::build_pool`] for a pool whose sessions are multiplexed.
pub(crate) fn sessions_are_multiplexed() {
    MULTIPLEXED.store(true, Ordering::Relaxed);
}

pub(crate) fn multiplexed() -> bool {
    MULTIPLEXED.load(Ordering::Relaxed)
}

/// A statement parameter with the PostgreSQL type it is sent as.
pub(crate) type Param<'a> = (&'a (dyn ToSql + Sync), Type);

/// A Rust value's PostgreSQL type, as the statements here use it.
pub(crate) trait SqlType: ToSql + Sync {
    const TYPE: Type;
}

/// A scalar type whose arrays the statements take (`unnest($2::uuid[])`).
pub(crate) trait SqlArrayElement {
    const ARRAY: Type;
}

macro_rules! sql_types {
    ($($rust:ty => $scalar:ident / $array:ident),* $(,)?) => {$(
        impl SqlType for $rust {
            const TYPE: Type = Type::$scalar;
        }
        impl SqlArrayElement for $rust {
            const ARRAY: Type = Type::$array;
        }
    )*};
}

sql_types! {
    Uuid => UUID / UUID_ARRAY,
    i16 => INT2 / INT2_ARRAY,
    i32 => INT4 / INT4_ARRAY,
    i64 => INT8 / INT8_ARRAY,
    bool => BOOL / BOOL_ARRAY,
    f64 => FLOAT8 / FLOAT8_ARRAY,
    String => TEXT / TEXT_ARRAY,
    &str => TEXT / TEXT_ARRAY,
    Decimal => NUMERIC / NUMERIC_ARRAY,
    DateTime<Utc> => TIMESTAMPTZ / TIMESTAMPTZ_ARRAY,
}

impl<T: SqlType> SqlType for Option<T> {
    const TYPE: Type = T::TYPE;
}

impl<T: SqlArrayElement> SqlArrayElement for Option<T> {
    const ARRAY: Type = T::ARRAY;
}

impl<T: SqlType> SqlType for &T {
    const TYPE: Type = T::TYPE;
}

impl<T: SqlArrayElement + ToSql + Sync> SqlType for Vec<T> {
    const TYPE: Type = T::ARRAY;
}

impl<T: SqlArrayElement + ToSql + Sync> SqlType for &[T] {
    const TYPE: Type = T::ARRAY;
}

impl<T: serde::Serialize + std::fmt::Debug + Sync> SqlType for Json<T> {
    const TYPE: Type = Type::JSONB;
}

impl<T> SqlArrayElement for Json<T> {
    const ARRAY: Type = Type::JSONB_ARRAY;
}

/// One parameter, typed by its Rust type.
pub(crate) fn param<T: SqlType>(value: &T) -> Param<'_> {
    (value, T::TYPE)
}

/// `params![a, b]`: the typed parameter list of a statement, each value evaluated once.
macro_rules! params {
    ($($value:expr),* $(,)?) => {
        &[$($crate::store::sql::param(&$value)),*]
    };
}
pub(crate) use params;

/// What [`query`] needs of a connection or transaction (both deref to tokio-postgres's).
pub trait ClientLike: Sync {
    fn prepared<'a>(
        &'a self,
        sql: &'a str,
        types: &'a [Type],
    ) -> futures_util::future::BoxFuture<'a, Result<tokio_postgres::Statement, tokio_postgres::Error>>;
    fn query_prepared<'a>(
        &'a self,
        statement: &'a tokio_postgres::Statement,
        params: &'a [&'a (dyn ToSql + Sync)],
    ) -> futures_util::future::BoxFuture<'a, Result<Vec<Row>, tokio_postgres::Error>>;
    fn query_unnamed<'a>(
        &'a self,
        sql: &'a str,
        params: &'a [Param<'a>],
    ) -> futures_util::future::BoxFuture<'a, Result<Vec<Row>, tokio_postgres::Error>>;
}

macro_rules! client_like {
    ($($client:ty),*) => {$(
        impl ClientLike for $client {
            fn prepared<'a>(
                &'a self,
                sql: &'a str,
                types: &'a [Type],
            ) -> futures_util::future::BoxFuture<'a, Result<tokio_postgres::Statement, tokio_postgres::Error>> {
                Box::pin(deadpool_postgres::GenericClient::prepare_typed_cached(self, sql, types))
            }
            fn query_prepared<'a>(
                &'a self,
                statement: &'a tokio_postgres::Statement,
                params: &'a [&'a (dyn ToSql + Sync)],
            ) -> futures_util::future::BoxFuture<'a, Result<Vec<Row>, tokio_postgres::Error>> {
                Box::pin(deadpool_postgres::GenericClient::query(self, statement, params))
            }
            fn query_unnamed<'a>(
                &'a self,
                sql: &'a str,
                params: &'a [Param<'a>],
            ) -> futures_util::future::BoxFuture<'a, Result<Vec<Row>, tokio_postgres::Error>> {
                Box::pin(self.query_typed(sql, params))
            }
        }
    )*};
}

client_like!(
    deadpool_postgres::Client,
    deadpool_postgres::Transaction<'_>
);

/// Runs `sql` with `params` and returns its rows: prepared and cached on a direct session,
/// unnamed on a multiplexed one.
pub(crate) async fn query(
    client: &(impl ClientLike + ?Sized),
    sql: &str,
    params: &[Param<'_>],
) -> Result<Vec<Row>, StoreError> {
    if multiplexed() {
        return Ok(client.query_unnamed(sql, params).await?);
    }
    let types: Vec<Type> = params.iter().map(|(_, t)| t.clone()).collect();
    let statement = client.prepared(sql, &types).await?;
    let values: Vec<&(dyn ToSql + Sync)> = params.iter().map(|(v, _)| *v).collect();
    Ok(client.query_prepared(&statement, &values).await?)
}

/// [`query`] for a statement that returns at most one row.
pub(crate) async fn query_opt(
    client: &(impl ClientLike + ?Sized),
    sql: &str,
    params: &[Param<'_>],
) -> Result<Option<Row>, StoreError> {
    let mut rows = query(client, sql, params).await?;
    if rows.len() > 1 {
        return Err(super::corrupt("rows of a one-row statement", rows.len()));
    }
    Ok(rows.pop())
}

/// [`query`] for a statement that returns exactly one row.
pub(crate) async fn query_one(
    client: &(impl ClientLike + ?Sized),
    sql: &str,
    params: &[Param<'_>],
) -> Result<Row, StoreError> {
    query_opt(client, sql, params)
        .await?
        .ok_or_else(|| super::corrupt("rows of a one-row statement", 0))
}

/// Runs the `DELETE` or `UPDATE` `dml` and returns how many rows it changed: an unnamed
/// statement reports no count, so the rows are counted in the statement itself.
pub(crate) async fn changed_rows(
    client: &(impl ClientLike + ?Sized),
    dml: &str,
    params: &[Param<'_>],
) -> Result<u64, StoreError> {
    let sql = format!("WITH changed AS ({dml} RETURNING 1) SELECT count(*) FROM changed");
    let row = query_one(client, &sql, params).await?;
    Ok(u64::try_from(row.try_get::<_, i64>(0)?).unwrap_or(0))
}

/// [`query`] for a statement run for its effect.
pub(crate) async fn execute(
    client: &(impl ClientLike + ?Sized),
    sql: &str,
    params: &[Param<'_>],
) -> Result<(), StoreError> {
    query(client, sql, params).await.map(drop)
}
