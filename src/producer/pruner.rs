//! The ingress's pruning loop: a pass of [`crate::retention`] every `GRANDA_PRUNE_INTERVAL_MS`
//! (what is pruned, when, and why one server at a time: that module).

use std::time::Duration;

use super::ingress::Ingress;
use crate::retention::{PRUNED, Policy, Pruned, pass};

/// Prunes every `GRANDA_PRUNE_INTERVAL_MS` until told to stop (a pass under way is finished
/// first).
pub(crate) async fn run(app: Ingress, mut shutdown: crate::shutdown::Shutdown) {
    let every = Duration::from_millis(app.settings.prune_interval_ms.max(10));
    let policy = Policy::of(&app.settings);
    for (table, _) in Pruned::default().by_table() {
        app.metrics.add(PRUNED, format!("table=\"{table}\""), 0);
    }
    loop {
        if shutdown.stopped_during(every).await {
            return;
        }
        match pass(&app.pool, policy, &app.metrics).await {
            Ok(Some(pruned)) if pruned != Pruned::default() => {
                tracing::info!(?pruned, "pruned records past their retention")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "pruning failed; trying again next interval"),
        }
    }
}
