//! Giving memory back after bursts of work.
//!
//! A cold start or a relist converging many Tenants allocates and frees a lot
//! of short-lived JSON. glibc's malloc keeps freed pages in its arenas, so the
//! process's RSS stays near the burst's high-water mark long after the work is
//! done. Once the controllers have done work and nothing is in flight, the
//! trimmer asks malloc to return its free pages, at most once per idle period.

use std::sync::Arc;
use std::time::Duration;

use super::metrics::Metrics;

/// Trims malloc's free pages after each burst of reconciles, checking every
/// `every`; runs until dropped.
pub async fn trim_when_idle(metrics: Arc<Metrics>, every: Duration) {
    let mut trimmed_after = 0;
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let (started, in_flight) = metrics.activity();
        if started != trimmed_after && in_flight == 0 {
            trimmed_after = started;
            release_free_memory();
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_free_memory() {
    // SAFETY: malloc_trim only returns free pages of malloc's own arenas to
    // the kernel; it takes the arena locks itself and may be called from any
    // thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_free_memory() {}
