//! How a node stops.
//!
//! The trigger is any future (`App::run(shutdown)`), so tests and the chaos
//! harness stop nodes the same way a signal does. The order:
//!
//! 1. The node's shutdown token is cancelled: listeners stop accepting and
//!    `/readyz` answers 503 `draining`, so load balancers stop sending.
//! 2. Every connection is asked to finish its in-flight requests (HTTP/1.1
//!    closes after the current response, HTTP/2 sends GOAWAY); WebSocket
//!    tunnels and long responses get until `shutdown.grace-period`, after
//!    which whatever is left is closed.
//! 3. Background tasks (health checks, metric upkeep, reload) end.
//! 4. The access log is flushed.
//! 5. The process exits.
//!
//! For binaries, [`signal`] resolves on the first SIGTERM or SIGINT; a
//! second signal exits at once (exit code 130), for operators who do not
//! want to wait for the grace period.

/// Resolves when the process is asked to stop.
pub async fn signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the node with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = int.recv() => tracing::info!("SIGINT: draining (again to exit now)"),
    }
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::warn!("second signal: exiting without draining");
        std::process::exit(130);
    });
}
