//! The process's one shutdown signal.
//!
//! [`signal_token`] returns a `CancellationToken` that is cancelled on SIGTERM (what
//! orchestrators send) or ctrl-c. Every long-running task — gRPC and HTTP servers,
//! consumers, relays, timers — receives a clone of this one token (or a child of it) and
//! stops taking new work when it is cancelled, finishing what is in flight. `main` then
//! waits for the tasks, flushes traces, and exits. One token means one story to reason
//! about: there is no second way for a task to learn it should stop.

use tokio_util::sync::CancellationToken;

/// A token cancelled when the process receives SIGTERM or ctrl-c (SIGINT).
///
/// Must be called inside a Tokio runtime: it spawns the task that waits for the signal.
/// Call it once in `main` and pass clones down; each call installs its own listener.
pub fn signal_token() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let signal = wait_for_signal().await;
        tracing::info!(signal, "shutdown requested; draining in-flight work");
        cancel.cancel();
    });
    token
}

/// Resolves with the name of the first termination signal received.
///
/// A signal handler that cannot be installed is logged and treated as "never fires",
/// so a broken handler can never shut the process down by itself.
async fn wait_for_signal() -> &'static str {
    let ctrl_c = async {
        match tokio::signal::ctrl_c().await {
            Ok(()) => "SIGINT",
            Err(error) => {
                tracing::warn!(%error, "cannot listen for ctrl-c");
                std::future::pending().await
            }
        }
    };

    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
                "SIGTERM"
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending().await
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<&'static str>();

    tokio::select! {
        name = ctrl_c => name,
        name = terminate => name,
    }
}
