//! The nodes of the broker: which one a process uses, connecting with a deadline, failing over.

use super::*;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lapin::tcp::OwnedTLSConfig;
use lapin::types::LongString;
use lapin::{Connection, ConnectionProperties};
use uuid::Uuid;

use crate::config::Settings;

/// How long a publish may wait for its confirm when nothing else is set (`GRANDA_PUBLISH_TIMEOUT_MS`).
pub(crate) const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest wait for one node to accept a connection (TCP, TLS and the AMQP handshake).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The nodes of the broker (`GRANDA_AMQP_URL`, one URL or a comma-separated list), how to trust
/// their certificates, and how long a publish may wait for its confirm.
///
/// Which node a process uses: each process starts at a node picked at random (so many processes
/// spread over the cluster), keeps the one it connected to, and after losing a connection tries
/// the next node in the list first, going round the list until one answers.
pub struct Nodes {
    urls: Vec<String>,
    preferred: AtomicUsize,
    tls: OwnedTLSConfig,
    publish_timeout: Duration,
}

impl Nodes {
    /// The node URLs of `list`, each checked to parse. URLs without a `heartbeat=` get 10 s, so a
    /// broker that went away is noticed within seconds.
    pub(crate) fn parse_list(list: &str) -> Result<Vec<String>, BrokerError> {
        crate::config::amqp_nodes(list).map_err(BrokerError::Config)
    }

    /// `list` (see `Nodes::parse_list`), trusting the CA certificates in the PEM file `ca_file`
    /// besides the system's for `amqps://`.
    pub fn new(
        list: &str,
        ca_file: Option<&Path>,
        publish_timeout: Duration,
    ) -> Result<Nodes, BrokerError> {
        let urls = Nodes::parse_list(list)?;
        let cert_chain = match ca_file {
            Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
                BrokerError::Config(format!("reading GRANDA_CA_FILE {}: {e}", path.display()))
            })?),
            None => None,
        };
        let start = (Uuid::new_v4().as_u128() % urls.len() as u128) as usize;
        Ok(Nodes {
            urls,
            preferred: AtomicUsize::new(start),
            tls: OwnedTLSConfig {
                identity: None,
                cert_chain,
            },
            publish_timeout,
        })
    }

    pub(crate) fn from_settings(settings: &Settings) -> Result<Arc<Nodes>, BrokerError> {
        Ok(Arc::new(Nodes::new(
            &settings.amqp_url,
            settings.ca_file.as_deref(),
            settings.publish_timeout(),
        )?))
    }

    /// The bound on every confirm wait.
    pub(crate) fn publish_timeout(&self) -> Duration {
        self.publish_timeout
    }

    /// Connects to the first node that answers, starting at the preferred one. Returns the
    /// connection and the node's index, to pass to `Nodes::lost` when it breaks.
    pub async fn connect(&self, name: &str) -> Result<(Connection, usize), BrokerError> {
        let n = self.urls.len();
        let start = self.preferred.load(Ordering::Relaxed) % n;
        let mut last = None;
        for i in 0..n {
            let index = (start + i) % n;
            let url = &self.urls[index];
            let props = ConnectionProperties::default()
                .with_connection_name(LongString::from(format!("granda-{name}").into_bytes()));
            let attempt = async {
                lapin::DefaultConnectionBuilder::new()?
                    .with_uri_str(url.clone())
                    .with_properties(props)
                    .with_tls_config(self.tls.clone())
                    .connect()
                    .await
            };
            match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
                Ok(Ok(connection)) => {
                    note_frame_max(&connection);
                    self.preferred.store(index, Ordering::Relaxed);
                    if n > 1 {
                        tracing::info!(node = %node_name(url), "connected to RabbitMQ node");
                    }
                    return Ok((connection, index));
                }
                Ok(Err(e)) => {
                    tracing::warn!(node = %node_name(url), error = %e, "RabbitMQ node did not answer");
                    last = Some(BrokerError::Amqp(e));
                }
                Err(_) => {
                    tracing::warn!(node = %node_name(url), "RabbitMQ node did not answer in time");
                    last = Some(BrokerError::ConnectTimeout(CONNECT_TIMEOUT));
                }
            }
        }
        Err(last.expect("at least one node"))
    }

    /// Notes that the connection to node `index` was lost: the next connect tries the next node first.
    pub(crate) fn lost(&self, index: usize) {
        let n = self.urls.len();
        let _ = self.preferred.compare_exchange(
            index,
            (index + 1) % n,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// `host:port` of node `index`, for logs (never the credentials).
    pub(crate) fn node(&self, index: usize) -> String {
        node_name(&self.urls[index])
    }
}

use crate::config::amqp_node_name as node_name;

/// Opens a connection named after the process's role to the first node of `url` (one URL or a
/// comma-separated list) that answers, trusting `GRANDA_CA_FILE` if set.
pub async fn connect(url: &str, name: &str) -> Result<Connection, BrokerError> {
    let ca = std::env::var_os("GRANDA_CA_FILE").map(std::path::PathBuf::from);
    let nodes = Nodes::new(url, ca.as_deref(), DEFAULT_PUBLISH_TIMEOUT)?;
    Ok(nodes.connect(name).await?.0)
}
