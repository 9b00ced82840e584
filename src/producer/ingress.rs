//! What the parts of an ingress that record and publish invocations share: the database, the
//! publisher, the settings and the metrics. The HTTP API's state (`producer::AppState`) gives one
//! to the loops it starts beside the API: the outbox sweep, the schedule ticker and the AMQP
//! router, which need nothing of the API.

use std::sync::Arc;

use sqlx::PgPool;

use crate::broker::Publisher;
use crate::config::Settings;
use crate::metrics::Metrics;

#[derive(Clone)]
pub(crate) struct Ingress {
    pub(crate) pool: PgPool,
    pub(crate) publisher: Arc<Publisher>,
    pub(crate) settings: Arc<Settings>,
    pub(crate) metrics: Arc<Metrics>,
}
