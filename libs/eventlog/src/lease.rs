//! Leases: one active holder of a named role (a service's relay, the webhook dispatcher,
//! the flow timers) among every process sharing a store.
//!
//! A lease is a row with a holder, a fencing token and an expiry on the database's clock.
//! The holder renews it every third of its term; a holder that stops renewing (killed,
//! frozen, cut off from the database) loses it when the term runs out, and any other
//! process may then take it, with the next token. The holder counts its own term from
//! the moment it sent the last renewal that succeeded, so it believes itself the holder
//! no longer than the database does, and writes that must come from the current holder
//! are fenced: they check the token in their own transaction ([`Fence`]), so a deposed
//! holder's late write is refused, whatever it believes.
//!
//! SQLite is one process: there the lease is always granted and never lost.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{info, warn};
use uuid::Uuid;

use crate::EventLogError;

/// How long a lease lasts without renewal unless the log is told otherwise
/// ([`crate::EventLog::with_lease_term`]).
pub const DEFAULT_LEASE_TERM: Duration = Duration::from_secs(5);

/// SQLSTATE of a lock not granted within `lock_timeout`.
const LOCK_NOT_AVAILABLE: &str = "55P03";

/// What a write must check to be the current holder's: the lease's name, holder and token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub(crate) name: String,
    pub(crate) holder: String,
    pub(crate) token: i64,
}

impl Fence {
    /// Refuses, inside `conn`'s transaction, unless the lease is still this holder's at this
    /// token. The row is read `FOR SHARE`, so a takeover waits for this transaction to end
    /// and every write after the takeover is refused. Run it last, just before the commit,
    /// so the row is held for as short a time as can be.
    pub(crate) async fn check(&self, conn: &mut sqlx::PgConnection) -> Result<(), EventLogError> {
        let held: Option<(i64,)> = sqlx::query_as(
            "SELECT token FROM leases WHERE name = $1 AND holder = $2 AND token = $3 FOR SHARE",
        )
        .bind(&self.name)
        .bind(&self.holder)
        .bind(self.token)
        .fetch_optional(conn)
        .await?;
        match held {
            Some(_) => Ok(()),
            None => Err(EventLogError::Fenced {
                lease: self.name.clone(),
                token: self.token,
            }),
        }
    }
}

/// Proof of holding a named role until its term runs out. Dropping it gives the role up
/// at once (a standby need not wait for the term).
pub struct Lease {
    fence: Fence,
    shared: Arc<Shared>,
    /// Stops the heartbeat when the lease is dropped.
    _heartbeat: Option<DropGuard>,
    /// Where to release the lease on drop (Postgres only).
    release: Option<PgPool>,
}

struct Shared {
    lost: CancellationToken,
    /// Until when this holder may act, on its own clock (`None`: for ever, on SQLite).
    valid_until: Mutex<Option<Instant>>,
}

impl Shared {
    fn valid_until(&self) -> Option<Instant> {
        *self.valid_until.lock().expect("not poisoned")
    }
}

impl Lease {
    /// The lease of a store with a single process (SQLite): always held.
    pub(crate) fn sole(name: &str) -> Self {
        Self {
            fence: Fence {
                name: name.to_owned(),
                holder: holder_id(),
                token: 0,
            },
            shared: Arc::new(Shared {
                lost: CancellationToken::new(),
                valid_until: Mutex::new(None),
            }),
            _heartbeat: None,
            release: None,
        }
    }

    /// Takes the lease `name` if nobody holds it or its holder's term has run out, and
    /// keeps it renewed. `None` while another holder's term runs.
    pub(crate) async fn try_acquire(
        pool: &PgPool,
        name: &str,
        term: Duration,
    ) -> Result<Option<Self>, EventLogError> {
        // A lease in its term is the common answer: said without touching the row's lock
        // (an upsert would lock it even when it changes nothing, and queue behind the
        // holder's fenced writes).
        let held: Option<(bool,)> =
            sqlx::query_as("SELECT expires_at > clock_timestamp() FROM leases WHERE name = $1")
                .bind(name)
                .fetch_optional(pool)
                .await?;
        if held.is_some_and(|(held,)| held) {
            return Ok(None);
        }
        let holder = holder_id();
        let sent = Instant::now();
        let mut tx = pool.begin().await?;
        // A holder frozen in the middle of a fenced write holds the row until the server
        // ends its transaction (`idle_in_transaction_session_timeout`); ask again later
        // rather than queue behind it.
        sqlx::query("SET LOCAL lock_timeout = '500ms'")
            .execute(&mut *tx)
            .await?;
        /// The new token, the previous holder and how long ago its term ran out.
        type Taken = (i64, Option<String>, Option<f64>);
        let taken: Result<Option<Taken>, sqlx::Error> = sqlx::query_as(
            "WITH previous AS (SELECT holder, expires_at FROM leases WHERE name = $1)
                 INSERT INTO leases (name, holder, token, expires_at, acquired_at)
                 VALUES ($1, $2, 1, clock_timestamp() + make_interval(secs => $3),
                     clock_timestamp())
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder,
                     token = leases.token + 1, expires_at = excluded.expires_at,
                     acquired_at = excluded.acquired_at
                 WHERE leases.expires_at <= clock_timestamp()
                 RETURNING token, (SELECT holder FROM previous),
                     (SELECT extract(epoch FROM clock_timestamp() - expires_at)::float8
                        FROM previous)",
        )
        .bind(name)
        .bind(&holder)
        .bind(term.as_secs_f64())
        .fetch_optional(&mut *tx)
        .await;
        let taken = match taken {
            Ok(taken) => {
                tx.commit().await?;
                taken
            }
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(LOCK_NOT_AVAILABLE) => {
                warn!(
                    lease = name,
                    "lease has run out but its holder is stopped inside a write; waiting for \
                     the database to end that transaction"
                );
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        let Some((token, previous, expired_for)) = taken else {
            return Ok(None);
        };
        match previous {
            Some(previous) => info!(
                lease = name,
                token,
                %holder,
                %previous,
                expired_secs_ago = expired_for.unwrap_or_default(),
                "lease changed hands"
            ),
            None => info!(lease = name, token, %holder, "lease taken for the first time"),
        }
        metrics::counter!("lease_acquired_total", "lease" => name.to_owned()).increment(1);
        metrics::gauge!("lease_held", "lease" => name.to_owned()).set(1.0);
        metrics::gauge!("lease_token", "lease" => name.to_owned()).set(token as f64);
        let fence = Fence {
            name: name.to_owned(),
            holder,
            token,
        };
        let shared = Arc::new(Shared {
            lost: CancellationToken::new(),
            valid_until: Mutex::new(Some(sent + term)),
        });
        let stop = CancellationToken::new();
        tokio::spawn(heartbeat(
            pool.clone(),
            fence.clone(),
            term,
            shared.clone(),
            stop.clone(),
        ));
        Ok(Some(Self {
            fence,
            shared,
            _heartbeat: Some(stop.drop_guard()),
            release: Some(pool.clone()),
        }))
    }

    /// The fencing token: higher for every new holder of the lease.
    pub fn token(&self) -> i64 {
        self.fence.token
    }

    /// What a write checks to be this holder's ([`crate::EventLog::append_fenced`]).
    pub fn fence(&self) -> &Fence {
        &self.fence
    }

    /// Whether this holder may still act: not taken over, and its term not run out
    /// since the last renewal.
    pub fn is_held(&self) -> bool {
        !self.shared.lost.is_cancelled()
            && self
                .shared
                .valid_until()
                .is_none_or(|until| Instant::now() < until)
    }

    /// Completes when the lease is lost: taken over, or its term run out without a renewal.
    pub async fn lost(&self) {
        loop {
            if !self.is_held() {
                self.shared.lost.cancel();
                return;
            }
            let Some(until) = self.shared.valid_until() else {
                return self.shared.lost.cancelled().await;
            };
            tokio::select! {
                _ = self.shared.lost.cancelled() => return,
                _ = tokio::time::sleep_until(until.into()) => {}
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(pool) = self.release.take() else {
            return;
        };
        metrics::gauge!("lease_held", "lease" => self.fence.name.clone()).set(0.0);
        let fence = self.fence.clone();
        // Let a standby take over now rather than after the term. Best effort: a
        // lease not released simply runs out.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let released = sqlx::query(
                    "UPDATE leases SET expires_at = clock_timestamp()
                     WHERE name = $1 AND holder = $2 AND token = $3",
                )
                .bind(&fence.name)
                .bind(&fence.holder)
                .bind(fence.token)
                .execute(&pool)
                .await;
                if released.is_ok_and(|r| r.rows_affected() == 1) {
                    info!(lease = %fence.name, token = fence.token, "lease released");
                }
            });
        }
    }
}

/// Renews the lease every third of its term until it is dropped or lost. A renewal that
/// finds the lease in other hands loses it at once; renewals that fail (the database
/// unreachable) lose it when the term since the last success runs out.
async fn heartbeat(
    pool: PgPool,
    fence: Fence,
    term: Duration,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let every = term / 3;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let sent = Instant::now();
        let renewed = tokio::time::timeout(
            every,
            sqlx::query(
                "UPDATE leases SET expires_at = clock_timestamp() + make_interval(secs => $4)
                 WHERE name = $1 AND holder = $2 AND token = $3",
            )
            .bind(&fence.name)
            .bind(&fence.holder)
            .bind(fence.token)
            .bind(term.as_secs_f64())
            .execute(&pool),
        )
        .await;
        match renewed {
            Ok(Ok(done)) if done.rows_affected() == 1 => {
                *shared.valid_until.lock().expect("not poisoned") = Some(sent + term);
                continue;
            }
            Ok(Ok(_)) => {
                warn!(lease = %fence.name, token = fence.token, "lease was taken over; giving up the role");
            }
            Ok(Err(e)) if still_valid(&shared) => {
                warn!(lease = %fence.name, error = %e, "lease could not be renewed; trying again");
                continue;
            }
            Err(_) if still_valid(&shared) => {
                warn!(lease = %fence.name, "lease renewal timed out; trying again");
                continue;
            }
            _ => {
                warn!(lease = %fence.name, token = fence.token, "lease ran out before it could be renewed; giving up the role");
            }
        }
        metrics::gauge!("lease_held", "lease" => fence.name.clone()).set(0.0);
        shared.lost.cancel();
        return;
    }
}

fn still_valid(shared: &Shared) -> bool {
    shared
        .valid_until()
        .is_none_or(|until| Instant::now() < until)
}

/// Who holds a lease, for people reading the table or the logs: the host (the pod's name
/// in Kubernetes), the process, and a unique suffix per acquisition.
fn holder_id() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".to_owned());
    let unique = Uuid::new_v4().simple().to_string();
    format!("{host}/{}/{}", std::process::id(), &unique[..8])
}
