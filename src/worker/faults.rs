//! Faults for Granda's own tests, armed only by `GRANDA_TEST_FAULTS=1` (never in production):
//! they make the worker panic where a bug would, so that tests can show the panic boundary
//! ([`super::delivery`]) holds.
//!
//! - A function whose name starts with [`IN_EXECUTE`] panics [`AFTER`] into its run, while its
//!   container runs (a run that ends sooner does not panic).
//! - A function whose name starts with [`IN_HANDLE`] panics in the delivery's handler, after its
//!   claim and outside the run's own catch.

use std::time::Duration;

use crate::message::Work;

/// The name prefix of functions whose runs panic inside `execute`.
pub(super) const IN_EXECUTE: &str = "panic-in-execute";
/// The name prefix of functions whose deliveries panic inside `handle`.
pub(super) const IN_HANDLE: &str = "panic-in-handle";
/// How long into a run the panic inside `execute` comes.
const AFTER: Duration = Duration::from_millis(500);

/// Whether the fault `marker` is armed for `work` (`enabled`: `GRANDA_TEST_FAULTS`).
pub(super) fn armed(enabled: bool, work: &Work, marker: &str) -> bool {
    enabled && work.function.name.starts_with(marker)
}

/// Armed, panics [`AFTER`] from now; else never ends. Raced against a run (as a bug inside it
/// would, the run is dropped as the panic unwinds). Not a wrapper of the run: an `async fn`
/// taking a future stores it twice, and a run's future is large.
pub(super) async fn panic_later(armed: bool) {
    if !armed {
        return std::future::pending().await;
    }
    tokio::time::sleep(AFTER).await;
    panic!("test fault: a panic inside execute (GRANDA_TEST_FAULTS)");
}

/// Armed, panics here.
pub(super) fn panic_here(armed: bool) {
    if armed {
        panic!("test fault: a panic inside handle (GRANDA_TEST_FAULTS)");
    }
}
