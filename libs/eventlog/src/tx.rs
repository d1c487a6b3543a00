//! A transaction on either backend, handed to projections and subscription handlers so
//! their effects commit atomically with the log's own writes.

use sqlx::{PgConnection, SqliteConnection};

/// An open transaction on the service's store. Projections and handlers that share SQL
/// between the backends can use [`on_conn!`](crate::on_conn) to write it once.
pub enum Tx<'c> {
    Postgres(&'c mut PgConnection),
    Sqlite(&'c mut SqliteConnection),
}

/// Runs the same sqlx expression against whichever connection a [`Tx`] holds. Both
/// backends accept `$1`-style parameters, so most read-model SQL can be written once. The
/// body must have one type on both backends: map query results to what you need (for
/// example `.map(|r| r.rows_affected())`).
///
/// ```text
/// on_conn!(tx, conn => sqlx::query("DELETE FROM t WHERE id = $1").bind(id).execute(conn).await
///     .map(|r| r.rows_affected()))?;
/// ```
#[macro_export]
macro_rules! on_conn {
    ($tx:expr, $conn:ident => $body:expr) => {
        match $tx {
            $crate::Tx::Postgres(c) => {
                let $conn = &mut **c;
                $body
            }
            $crate::Tx::Sqlite(c) => {
                let $conn = &mut **c;
                $body
            }
        }
    };
}

/// Runs the same read-only sqlx expression on whichever pool an [`EventLog`](crate::EventLog)
/// reads with, for read-model queries written once for both backends. As with
/// [`on_conn!`](crate::on_conn), the body must have one type on both.
#[macro_export]
macro_rules! on_pool {
    ($log:expr, $pool:ident => $body:expr) => {
        match ($log.postgres_pool(), $log.sqlite_pool()) {
            (Some($pool), _) => $body,
            (_, Some($pool)) => $body,
            (None, None) => unreachable!("a log has one backend"),
        }
    };
}
