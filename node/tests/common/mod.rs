//! Helpers shared by the node's integration tests.

use std::time::Duration;

// Only the RPC tests use it; the other test binaries compile it unused.
#[allow(dead_code)]
pub(crate) mod greeter;

/// Polls `check` every 50 ms until it holds; panics naming `what` once `limit` has passed.
pub(crate) async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
