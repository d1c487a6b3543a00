//! Rate limits every replica shares: kept in the actions service's store (the
//! `rate_limits` table of its read-model DDL), not in a process.

use switchboard_eventlog::{EventLog, EventLogError, on_pool};

/// Admits one more call under a limit of `per_minute` calls a minute shared by every
/// replica on this store (the key's row), at `now` (microseconds): the generic cell rate
/// algorithm, as one conditional upsert. The row holds the theoretical arrival time; a
/// call is admitted when moving it on by one interval keeps it within a minute of now, so
/// up to `per_minute` calls may come at once and then one an interval. Not a read model:
/// kept across rebuilds, and only as old as a minute matters.
pub async fn admit_call(
    log: &EventLog,
    key: &str,
    per_minute: u32,
    now: i64,
) -> Result<bool, EventLogError> {
    const MINUTE: i64 = 60_000_000;
    let interval = MINUTE / i64::from(per_minute.max(1));
    let admitted: Option<i64> = on_pool!(log, pool => sqlx::query_scalar(
        "INSERT INTO rate_limits (key, tat) VALUES ($1, $2)
         ON CONFLICT (key) DO UPDATE SET
             tat = (CASE WHEN rate_limits.tat > $3 THEN rate_limits.tat ELSE $4 END) + $5
         WHERE (CASE WHEN rate_limits.tat > $6 THEN rate_limits.tat ELSE $7 END) + $8 <= $9
         RETURNING tat",
    )
    .bind(key)
    .bind(now + interval)
    .bind(now)
    .bind(now)
    .bind(interval)
    .bind(now)
    .bind(now)
    .bind(interval)
    .bind(now + MINUTE)
    .fetch_optional(pool)
    .await)?;
    Ok(admitted.is_some())
}
