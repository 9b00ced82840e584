//! RabbitMQ: connections, the topology Granda declares, and publishing invocations with confirms.
//!
//! Topology, for a prefix `p` (default `granda`):
//! - `p.work.<queue>`: one durable quorum queue per named queue, fed through the default exchange.
//! - `p.work.<queue>.sync`: its twin for sync calls (a caller waits on the reply), with the same
//!   dead-lettering and delivery limit; workers serve it first, so a sync call does not wait
//!   behind an async backlog. (Queue names hold no `.`, so the two can't collide.)
//! - `p.dlx`: a topic exchange that takes what a work queue dead-letters, routed to `p.dead`.
//! - `p.delay.<queue>.<ms>ms`: where a retry waits `ms` (less with jitter, by per-message
//!   expiration); when it expires it is dead-lettered back into `p.work.<queue>`.
//!
//! Every queue is a durable quorum queue with at-least-once dead-lettering.
//!
//! Size: a message's properties (the function snapshot with its env, per-invocation env) travel
//! in one header frame, which must fit the connection's negotiated `frame_max`; RabbitMQ closes
//! the whole CONNECTION on a frame that does not. So every publish measures its header frame as
//! serialized and refuses ([`BrokerError::TooLarge`]) one that would not fit with
//! [`FRAME_MARGIN`] to spare, and registration keeps a function's snapshot within
//! [`snapshot_budget`]. The ingress also publishes async work, events and declarations on a
//! side channel, so a channel error there can't take the reply consumer of sync calls with it.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::Confirmation;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::tcp::OwnedTLSConfig;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::config::Settings;
use crate::message::{Reply, Work};

/// The pseudo-queue of RabbitMQ's direct reply-to.
pub const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// How many times a nacked publish is tried again (over about three seconds).
const NACK_RETRIES: u32 = 6;

/// How many times a quorum queue redelivers one message (a worker crashing on it) before dead-lettering it.
pub const DELIVERY_LIMIT: i64 = 20;

/// RabbitMQ's default `frame_max` (3.10): what a process assumes until it has connected.
pub const DEFAULT_FRAME_MAX: u32 = 131_072;
/// Bytes a header frame keeps free below `frame_max` at publish.
pub const FRAME_MARGIN: usize = 1024;
/// Bytes of a header frame kept, at registration, for all but the function's snapshot: frame
/// and property overhead, the other headers, and per-invocation env (a few values of at most
/// [`crate::message::MAX_INVOCATION_VALUE`] bytes, at most doubled by JSON escaping).
pub const HEADER_RESERVE: usize = 16 * 1024;

/// The smallest `frame_max` a connection of this process negotiated (the default before any).
static FRAME_MAX: std::sync::atomic::AtomicU32 =
    std::sync::atomic::AtomicU32::new(DEFAULT_FRAME_MAX);

/// The arguments of a quorum queue that dead-letters to `exchange`, at least once, past
/// [`DELIVERY_LIMIT`] deliveries (work queues, sync twins, the inbound router's queue).
fn dead_lettering_quorum_args(exchange: &str) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), text("quorum"));
    args.insert("x-dead-letter-exchange".into(), text(exchange));
    args.insert("x-dead-letter-strategy".into(), text("at-least-once"));
    args.insert("x-overflow".into(), text("reject-publish"));
    args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(DELIVERY_LIMIT),
    );
    args
}

/// The broker's negotiated `frame_max`, as this process last learnt it (smallest seen).
pub fn frame_max() -> u32 {
    FRAME_MAX.load(std::sync::atomic::Ordering::Relaxed)
}

fn note_frame_max(connection: &Connection) {
    let negotiated = connection.configuration().frame_max();
    if negotiated > 0 {
        FRAME_MAX.fetch_min(negotiated, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Most bytes a function snapshot (JSON, with its env and secrets) may take so that any message
/// of the function fits the broker's frame.
pub fn snapshot_budget() -> usize {
    (frame_max() as usize).saturating_sub(HEADER_RESERVE)
}

/// The size of the header frame that carries `properties`, as lapin writes it: frame header
/// (7), class and weight (4), body size (8), the properties, frame end (1).
pub fn header_frame_size(properties: &lapin::BasicProperties) -> usize {
    let written = cookie_factory::gen_simple(
        lapin::protocol::basic::gen_properties(properties),
        Vec::new(),
    );
    // Serializing into a Vec can't fail; if it ever did, call it too large.
    written.map_or(usize::MAX, |v| 7 + 4 + 8 + v.len() + 1)
}

/// Refuses `properties` whose header frame would not fit `frame_max` with [`FRAME_MARGIN`] to spare.
pub fn check_header_size(
    properties: &lapin::BasicProperties,
    frame_max: u32,
) -> Result<(), BrokerError> {
    let size = header_frame_size(properties);
    let limit = (frame_max as usize).saturating_sub(FRAME_MARGIN);
    if size > limit {
        return Err(BrokerError::TooLarge { size, limit });
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("{0}")]
    Amqp(#[from] lapin::Error),
    /// Refused before sending: the broker would close the connection on it.
    #[error(
        "the message's headers take {size} bytes serialized; the broker's frame leaves {limit}"
    )]
    TooLarge { size: usize, limit: usize },
    #[error("the broker refused the message")]
    Nacked,
    #[error("no queue took the message (routing key {0})")]
    Unroutable(String),
    #[error("the broker did not confirm within {0:?}")]
    Timeout(Duration),
    /// The node accepted no AMQP handshake in time (down, or up but wedged).
    #[error("no RabbitMQ node completed the AMQP handshake within {0:?}")]
    ConnectTimeout(Duration),
    #[error("{0}")]
    Config(String),
}

/// Names of the queues and exchanges of one Granda installation.
#[derive(Clone, Debug)]
pub struct Topology {
    prefix: String,
}

impl Topology {
    pub fn new(prefix: &str) -> Self {
        Topology {
            prefix: prefix.to_string(),
        }
    }

    pub fn work_queue(&self, queue: &str) -> String {
        format!("{}.work.{queue}", self.prefix)
    }

    /// Where sync calls to `queue` go.
    pub fn sync_queue(&self, queue: &str) -> String {
        format!("{}.work.{queue}.sync", self.prefix)
    }

    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dlx", self.prefix)
    }

    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    pub fn delay_queue(&self, queue: &str, delay: Duration) -> String {
        format!("{}.delay.{queue}.{}ms", self.prefix, delay.as_millis())
    }

    /// Declares the delay queue that holds retries of `queue` for `delay`. Idempotent.
    pub async fn declare_delay(
        &self,
        channel: &Channel,
        queue: &str,
        delay: Duration,
    ) -> Result<(), lapin::Error> {
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), text("quorum"));
        args.insert(
            "x-message-ttl".into(),
            AMQPValue::LongLongInt(delay.as_millis() as i64),
        );
        args.insert("x-dead-letter-exchange".into(), text(""));
        args.insert(
            "x-dead-letter-routing-key".into(),
            text(&self.work_queue(queue)),
        );
        args.insert("x-dead-letter-strategy".into(), text("at-least-once"));
        args.insert("x-overflow".into(), text("reject-publish"));
        channel
            .queue_declare(
                self.delay_queue(queue, delay).into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                args,
            )
            .await?;
        Ok(())
    }

    /// Declares the work queue `queue`, its sync twin and the dead-letter path. Idempotent.
    pub async fn declare(&self, channel: &Channel, queue: &str) -> Result<(), lapin::Error> {
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        declare_topic_exchange(channel, &self.dead_letter_exchange()).await?;
        let mut dead_args = FieldTable::default();
        dead_args.insert("x-queue-type".into(), text("quorum"));
        channel
            .queue_declare(self.dead_letter_queue().into(), durable, dead_args)
            .await?;
        channel
            .queue_bind(
                self.dead_letter_queue().into(),
                self.dead_letter_exchange().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let args = dead_lettering_quorum_args(&self.dead_letter_exchange());
        channel
            .queue_declare(self.work_queue(queue).into(), durable, args.clone())
            .await?;
        channel
            .queue_declare(self.sync_queue(queue).into(), durable, args)
            .await?;
        Ok(())
    }
}

/// Declares the durable topic exchange `name`. Idempotent.
async fn declare_topic_exchange(channel: &Channel, name: &str) -> Result<(), lapin::Error> {
    channel
        .exchange_declare(
            name.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

/// How long a publish may wait for its confirm when nothing else is set (`GRANDA_PUBLISH_TIMEOUT_MS`).
pub const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

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
    pub fn parse_list(list: &str) -> Result<Vec<String>, BrokerError> {
        let urls: Vec<String> = list
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(with_heartbeat)
            .collect();
        if urls.is_empty() {
            return Err(BrokerError::Config("GRANDA_AMQP_URL names no node".into()));
        }
        for url in &urls {
            if let Err(e) = url.parse::<AMQPUri>() {
                return Err(BrokerError::Config(format!(
                    "GRANDA_AMQP_URL: {} is not an AMQP URL: {e}",
                    node_name(url)
                )));
            }
        }
        Ok(urls)
    }

    /// `list` (see [`Nodes::parse_list`]), trusting the CA certificates in the PEM file `ca_file`
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

    pub fn from_settings(settings: &Settings) -> Result<Arc<Nodes>, BrokerError> {
        Ok(Arc::new(Nodes::new(
            &settings.amqp_url,
            settings.ca_file.as_deref(),
            settings.publish_timeout(),
        )?))
    }

    /// The bound on every confirm wait.
    pub fn publish_timeout(&self) -> Duration {
        self.publish_timeout
    }

    /// Connects to the first node that answers, starting at the preferred one. Returns the
    /// connection and the node's index, to pass to [`Nodes::lost`] when it breaks.
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
    pub fn lost(&self, index: usize) {
        let n = self.urls.len();
        let _ = self.preferred.compare_exchange(
            index,
            (index + 1) % n,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// `host:port` of node `index`, for logs (never the credentials).
    pub fn node(&self, index: usize) -> String {
        node_name(&self.urls[index])
    }
}

fn with_heartbeat(url: &str) -> String {
    if url.contains("heartbeat=") {
        url.to_string()
    } else if url.contains('?') {
        format!("{url}&heartbeat=10")
    } else {
        format!("{url}?heartbeat=10")
    }
}

/// `host:port` of an AMQP URL, without credentials.
fn node_name(url: &str) -> String {
    match url.parse::<AMQPUri>() {
        Ok(uri) => format!("{}:{}", uri.authority.host, uri.authority.port),
        Err(_) => "(unparsable URL)".into(),
    }
}

/// Opens a connection named after the process's role to the first node of `url` (one URL or a
/// comma-separated list) that answers, trusting `GRANDA_CA_FILE` if set.
pub async fn connect(url: &str, name: &str) -> Result<Connection, BrokerError> {
    let ca = std::env::var_os("GRANDA_CA_FILE").map(std::path::PathBuf::from);
    let nodes = Nodes::new(url, ca.as_deref(), DEFAULT_PUBLISH_TIMEOUT)?;
    Ok(nodes.connect(name).await?.0)
}

/// Publishes on a channel in confirm mode and waits up to `within` for the broker's confirm.
/// `mandatory`: a message no queue takes is an error, not a silent drop.
pub async fn publish_confirmed(
    channel: &Channel,
    routing_key: &str,
    body: &[u8],
    properties: lapin::BasicProperties,
    within: Duration,
) -> Result<(), BrokerError> {
    tokio::time::timeout(
        within,
        publish_confirmed_unbounded(channel, routing_key, body, properties),
    )
    .await
    .map_err(|_| BrokerError::Timeout(within))?
}

async fn publish_confirmed_unbounded(
    channel: &Channel,
    routing_key: &str,
    body: &[u8],
    properties: lapin::BasicProperties,
) -> Result<(), BrokerError> {
    let confirm = channel
        .basic_publish(
            "".into(),
            routing_key.into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            body,
            properties,
        )
        .await?
        .await?;
    match confirm {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        Confirmation::Ack(Some(_)) => Err(BrokerError::Unroutable(routing_key.to_string())),
        Confirmation::Nack(_) => Err(BrokerError::Nacked),
    }
}

/// Waiters for replies, by correlation id, with the generation of the link they wait on.
type Waiters = Arc<Mutex<HashMap<String, (u64, oneshot::Sender<Reply>)>>>;

/// One live connection with its publishing channel, which also consumes direct replies (sync
/// calls publish there: direct reply-to needs it), and a side channel for everything else.
struct Link {
    generation: u64,
    /// The node it is connected to, as [`Nodes::connect`] numbered it.
    node: usize,
    connection: Connection,
    channel: Channel,
    /// Declarations, async work and events; opened again if a channel error closed it.
    side: tokio::sync::Mutex<Option<Channel>>,
    declared: Mutex<HashSet<String>>,
}

impl Link {
    fn healthy(&self) -> bool {
        self.channel.status().connected()
    }

    /// The side channel, in confirm mode, opened anew when it was closed.
    async fn side(&self) -> Result<Channel, lapin::Error> {
        let mut side = self.side.lock().await;
        if let Some(channel) = side.as_ref()
            && channel.status().connected()
        {
            return Ok(channel.clone());
        }
        let channel = self.connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        *side = Some(channel.clone());
        Ok(channel)
    }

    /// The frame_max this link's connection negotiated.
    fn frame_max(&self) -> u32 {
        match self.connection.configuration().frame_max() {
            0 => DEFAULT_FRAME_MAX,
            n => n,
        }
    }
}

/// Publishes invocations with publisher confirms, and waits for replies of sync calls.
/// Reconnects by itself when the broker went away.
pub struct Publisher {
    nodes: Arc<Nodes>,
    topology: Topology,
    link: tokio::sync::Mutex<Option<Arc<Link>>>,
    generations: std::sync::atomic::AtomicU64,
    waiters: Waiters,
}

impl Publisher {
    /// Connects to `url` (one URL or a list), trusting `GRANDA_CA_FILE` if set, with the default
    /// publish timeout.
    pub async fn connect(url: &str, topology: Topology) -> Result<Arc<Publisher>, BrokerError> {
        let ca = std::env::var_os("GRANDA_CA_FILE").map(std::path::PathBuf::from);
        let nodes = Nodes::new(url, ca.as_deref(), DEFAULT_PUBLISH_TIMEOUT)?;
        Publisher::start(Arc::new(nodes), topology).await
    }

    /// Connects to one of `nodes`; it fails over to the others when the connection is lost.
    pub async fn start(
        nodes: Arc<Nodes>,
        topology: Topology,
    ) -> Result<Arc<Publisher>, BrokerError> {
        let publisher = Arc::new(Publisher {
            nodes,
            topology,
            link: tokio::sync::Mutex::new(None),
            generations: Default::default(),
            waiters: Arc::default(),
        });
        publisher.link().await?;
        Ok(publisher)
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Whether the broker is reachable now (reconnecting if needed).
    pub async fn ready(&self) -> bool {
        self.link().await.is_ok()
    }

    async fn link(&self) -> Result<Arc<Link>, BrokerError> {
        let mut guard = self.link.lock().await;
        if let Some(link) = guard.as_ref()
            && link.healthy()
        {
            return Ok(link.clone());
        }
        if let Some(old) = guard.take() {
            self.nodes.lost(old.node);
        }
        let name = format!("ingress-{}", self.topology.prefix);
        let (connection, node) = self.nodes.connect(&name).await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let replies = channel
            .basic_consume(
                DIRECT_REPLY_TO.into(),
                ShortString::from(format!("replies-{}", Uuid::new_v4())),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let generation = self
            .generations
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::spawn(dispatch_replies(replies, self.waiters.clone(), generation));
        let link = Arc::new(Link {
            generation,
            node,
            connection,
            channel,
            side: tokio::sync::Mutex::new(None),
            declared: Mutex::default(),
        });
        *guard = Some(link.clone());
        tracing::info!(node = %self.nodes.node(node), "connected to RabbitMQ");
        Ok(link)
    }

    /// Publishes `work` to its queue and returns once the broker confirmed it.
    #[tracing::instrument(level = "debug", skip_all, fields(id = %work.id, queue))]
    pub async fn publish(&self, queue: &str, work: &Work, body: &[u8]) -> Result<(), BrokerError> {
        self.publish_retrying(queue, work, body, |_| {}).await
    }

    /// Publishes, retrying what is safe to retry (a duplicate message is harmless: a worker runs
    /// an invocation only once) until the publish timeout: a dead connection (after reconnecting,
    /// to another node if this one is gone) and a nack (the broker did not store the message; a
    /// quorum queue still electing its leader does that), with a short backoff. `on_link` runs
    /// before each try. Past the timeout: [`BrokerError::Timeout`], and the message may or may
    /// not have reached its queue.
    async fn publish_retrying(
        &self,
        queue: &str,
        work: &Work,
        body: &[u8],
        on_link: impl Fn(&Link),
    ) -> Result<(), BrokerError> {
        let within = self.nodes.publish_timeout();
        tokio::time::timeout(
            within,
            self.publish_retrying_unbounded(queue, work, body, on_link),
        )
        .await
        .map_err(|_| BrokerError::Timeout(within))?
    }

    async fn publish_retrying_unbounded(
        &self,
        queue: &str,
        work: &Work,
        body: &[u8],
        on_link: impl Fn(&Link),
    ) -> Result<(), BrokerError> {
        let mut failures = 0u32;
        let mut nacks = 0;
        loop {
            let link = match self.link().await {
                Ok(link) => link,
                Err(e @ BrokerError::Config(_)) => return Err(e),
                Err(e) => {
                    // No node answers now: look again until the publish timeout.
                    failures += 1;
                    tracing::debug!(error = %e, failures, "no broker node; trying again");
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(failures.min(5))))
                        .await;
                    continue;
                }
            };
            on_link(&link);
            match self.publish_on(&link, queue, work, body).await {
                Ok(()) => return Ok(()),
                Err(BrokerError::Amqp(e)) => {
                    failures += 1;
                    tracing::warn!(error = %e, failures, "publish failed, reconnecting");
                    if failures > 1 {
                        tokio::time::sleep(Duration::from_millis(100 * u64::from(failures.min(5))))
                            .await;
                    }
                }
                Err(BrokerError::Nacked) if nacks < NACK_RETRIES => {
                    nacks += 1;
                    tracing::debug!(nacks, "publish nacked; trying again");
                    tokio::time::sleep(Duration::from_millis(25 << nacks)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn publish_on(
        &self,
        link: &Link,
        queue: &str,
        work: &Work,
        body: &[u8],
    ) -> Result<(), BrokerError> {
        let properties = work.properties();
        check_header_size(&properties, link.frame_max())?;
        let declared = link.declared.lock().expect("lock").contains(queue);
        if !declared {
            self.topology.declare(&link.side().await?, queue).await?;
            link.declared
                .lock()
                .expect("lock")
                .insert(queue.to_string());
        }
        // A caller waits on a sync call: it goes where workers look first, on the channel its
        // reply comes back on; the rest goes aside.
        let (routing_key, channel) = match work.reply_to {
            Some(_) => (self.topology.sync_queue(queue), link.channel.clone()),
            None => (self.topology.work_queue(queue), link.side().await?),
        };
        publish_confirmed_unbounded(&channel, &routing_key, body, properties).await
    }

    /// Publishes a sync invocation and waits up to `wait` for its reply.
    /// `Ok(None)`: no reply in time, or the connection the reply would come on was lost; the
    /// invocation goes on and its record tells the end.
    pub async fn call(
        &self,
        queue: &str,
        mut work: Work,
        body: &[u8],
        wait: Duration,
    ) -> Result<Option<Reply>, BrokerError> {
        let correlation_id = work.id.to_string();
        work.reply_to = Some(DIRECT_REPLY_TO.to_string());
        work.correlation_id = Some(correlation_id.clone());
        let _forget = Forget(&self.waiters, &correlation_id);
        let rx = Mutex::new(None);
        self.publish_retrying(queue, &work, body, |link| {
            let (tx, new_rx) = oneshot::channel();
            self.waiters
                .lock()
                .expect("lock")
                .insert(correlation_id.clone(), (link.generation, tx));
            *rx.lock().expect("lock") = Some(new_rx);
        })
        .await?;
        let rx = rx
            .into_inner()
            .expect("lock")
            .expect("a waiter was registered");
        Ok(tokio::time::timeout(wait, rx)
            .await
            .ok()
            .and_then(Result::ok))
    }
}

impl Publisher {
    /// Messages waiting in the dead-letter queue.
    pub async fn dead_letter_depth(&self) -> Result<u32, BrokerError> {
        let link = self.link().await?;
        Ok(queue_depth(&link.connection, &self.topology.dead_letter_queue()).await?)
    }

    /// Ready messages and consumers of the broker queue `name` (a full name, e.g. from
    /// [`Topology::work_queue`]), by a passive declare on a throwaway channel; `None` when the
    /// queue does not exist (yet).
    pub async fn queue_info(&self, name: &str) -> Result<Option<(u32, u32)>, BrokerError> {
        let link = self.link().await?;
        let channel = link.connection.create_channel().await?;
        let q = channel
            .queue_declare(
                name.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await;
        let _ = channel.close(200, "".into()).await;
        Ok(q.ok().map(|q| (q.message_count(), q.consumer_count())))
    }
}

/// Removes a waiter when its call ends, however it ends.
struct Forget<'a>(&'a Waiters, &'a str);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0.lock().expect("lock").remove(self.1);
    }
}

async fn dispatch_replies(mut replies: lapin::Consumer, waiters: Waiters, generation: u64) {
    while let Some(delivery) = replies.next().await {
        let Ok(delivery) = delivery else { break };
        let Some(correlation_id) = delivery.properties.correlation_id().clone() else {
            continue;
        };
        let waiter = waiters
            .lock()
            .expect("lock")
            .remove(correlation_id.as_str());
        let Some((_, waiter)) = waiter else { continue };
        if let Some(reply) = Reply::decode(&delivery.properties, delivery.data) {
            let _ = waiter.send(reply);
        }
    }
    // Replies to this connection are lost with it: let its waiters answer now, not at the cap.
    waiters
        .lock()
        .expect("lock")
        .retain(|_, (g, _)| *g != generation);
    tracing::debug!(generation, "reply consumer ended");
}

/// The number of ready messages in `queue`, by a passive declare on a throwaway channel
/// (a passive declare of a missing queue closes its channel).
pub async fn queue_depth(connection: &Connection, queue: &str) -> Result<u32, lapin::Error> {
    let channel = connection.create_channel().await?;
    let depth = passive_depth(&channel, queue).await;
    let _ = channel.close(200, "".into()).await;
    depth
}

/// The number of ready messages in `queue`, by a passive declare on `channel`, which must be a
/// side channel: a passive declare of a missing queue closes it.
pub async fn passive_depth(channel: &Channel, queue: &str) -> Result<u32, lapin::Error> {
    let q = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok(q.message_count())
}

/// Deletes every queue and exchange of `topology` for `queues` and the delay `levels`
/// (tests and uninstall).
pub async fn delete_topology(
    connection: &Connection,
    topology: &Topology,
    queues: &[&str],
    levels: &[Duration],
) -> Result<(), lapin::Error> {
    let channel = connection.create_channel().await?;
    for q in queues {
        channel
            .queue_delete(topology.work_queue(q).into(), Default::default())
            .await?;
        channel
            .queue_delete(topology.sync_queue(q).into(), Default::default())
            .await?;
        for level in levels {
            channel
                .queue_delete(topology.delay_queue(q, *level).into(), Default::default())
                .await?;
        }
    }
    channel
        .queue_delete(topology.dead_letter_queue().into(), Default::default())
        .await?;
    channel
        .exchange_delete(topology.dead_letter_exchange().into(), Default::default())
        .await?;
    channel
        .exchange_delete(topology.events_exchange().into(), Default::default())
        .await?;
    for q in [topology.inbound_queue(), topology.inbound_dead_queue()] {
        channel.queue_delete(q.into(), Default::default()).await?;
    }
    channel
        .exchange_delete(topology.inbound_exchange().into(), Default::default())
        .await?;
    Ok(())
}

// Events published over AMQP (issue 19): any client publishes to the durable topic exchange
// `p.inbound` (routing key = topic). A quorum queue `p.inbound.router`, bound with `#`, holds them
// for the routers (one per ingress, competing consumers; see `crate::inbound`). What a router
// can't accept goes to the quorum queue `p.inbound.dead`, with the reason in `x-granda-reason`;
// a message redelivered past the delivery limit is dead-lettered there by the broker.
impl Topology {
    pub fn inbound_exchange(&self) -> String {
        format!("{}.inbound", self.prefix)
    }

    pub fn inbound_queue(&self) -> String {
        format!("{}.inbound.router", self.prefix)
    }

    pub fn inbound_dead_queue(&self) -> String {
        format!("{}.inbound.dead", self.prefix)
    }

    /// Declares the inbound exchange, the router's queue and its dead-letter queue. Idempotent.
    pub async fn declare_inbound(&self, channel: &Channel) -> Result<(), lapin::Error> {
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        declare_topic_exchange(channel, &self.inbound_exchange()).await?;
        let mut dead_args = FieldTable::default();
        dead_args.insert("x-queue-type".into(), text("quorum"));
        channel
            .queue_declare(self.inbound_dead_queue().into(), durable, dead_args)
            .await?;
        let mut args = dead_lettering_quorum_args("");
        args.insert(
            "x-dead-letter-routing-key".into(),
            text(&self.inbound_dead_queue()),
        );
        channel
            .queue_declare(self.inbound_queue().into(), durable, args)
            .await?;
        channel
            .queue_bind(
                self.inbound_queue().into(),
                self.inbound_exchange().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(())
    }
}

// Published events (issue 5): a durable topic exchange `p.events` that carries every event published
// through `POST /v1/events/{topic}`, routing key = topic, for observers outside Granda. Granda's own
// fan-out to subscribed functions does not go through it (the ingress matches subscriptions itself,
// to answer with the invocation ids).
impl Topology {
    pub fn events_exchange(&self) -> String {
        format!("{}.events", self.prefix)
    }
}

impl Publisher {
    /// Publishes an event on the events exchange (declared on first use) and returns once the
    /// broker confirmed it. Not mandatory: an event nobody outside observes is fine.
    #[tracing::instrument(skip_all, fields(%topic))]
    pub async fn publish_event(
        &self,
        topic: &str,
        body: &[u8],
        properties: lapin::BasicProperties,
    ) -> Result<(), BrokerError> {
        let within = self.nodes.publish_timeout();
        let publish = async {
            match self.try_publish_event(topic, body, &properties).await {
                Err(BrokerError::Amqp(e)) => {
                    tracing::warn!(error = %e, "event publish failed, reconnecting");
                    self.try_publish_event(topic, body, &properties).await
                }
                other => other,
            }
        };
        tokio::time::timeout(within, publish)
            .await
            .map_err(|_| BrokerError::Timeout(within))?
    }

    async fn try_publish_event(
        &self,
        topic: &str,
        body: &[u8],
        properties: &lapin::BasicProperties,
    ) -> Result<(), BrokerError> {
        let link = self.link().await?;
        check_header_size(properties, link.frame_max())?;
        let channel = link.side().await?;
        let exchange = self.topology.events_exchange();
        // Queue names never hold ':', so this can't collide with a declared queue.
        let marker = format!("exchange:{exchange}");
        if !link.declared.lock().expect("lock").contains(&marker) {
            declare_topic_exchange(&channel, &exchange).await?;
            link.declared.lock().expect("lock").insert(marker);
        }
        let confirm = channel
            .basic_publish(
                exchange.as_str().into(),
                topic.into(),
                BasicPublishOptions::default(),
                body,
                properties.clone(),
            )
            .await?
            .await?;
        match confirm {
            Confirmation::Nack(_) => Err(BrokerError::Nacked),
            _ => Ok(()),
        }
    }
}

/// Sends the replies of sync calls on a connection of its own, so that whatever a reply runs
/// into (the caller's node went down and RabbitMQ fails the publish to its
/// `amq.rabbitmq.reply-to.*`, closing the channel or the whole connection) can't take down the
/// consumers. Reopened on the next reply when it died. Not mandatory, no confirms: a reply only
/// makes waiting fast; the record in Postgres is the truth.
pub struct Replier {
    nodes: Arc<Nodes>,
    name: String,
    link: tokio::sync::Mutex<Option<(Connection, Channel, usize)>>,
}

impl Replier {
    pub fn new(nodes: Arc<Nodes>, name: &str) -> Replier {
        Replier {
            nodes,
            name: format!("{name}-replies"),
            link: tokio::sync::Mutex::new(None),
        }
    }

    async fn channel(&self) -> Result<Channel, BrokerError> {
        let mut guard = self.link.lock().await;
        if let Some((_, channel, _)) = guard.as_ref()
            && channel.status().connected()
        {
            return Ok(channel.clone());
        }
        if let Some((connection, _, node)) = guard.take() {
            if connection.status().connected() {
                // Only the channel died (a failed reply): keep the node, drop the connection.
                let _ = connection.close(200, "reopening".into()).await;
            } else {
                self.nodes.lost(node);
            }
        }
        let (connection, node) = self.nodes.connect(&self.name).await?;
        let channel = connection.create_channel().await?;
        *guard = Some((connection, channel.clone(), node));
        Ok(channel)
    }

    /// Sends `reply` to `reply_to`, waiting at most the publish timeout; a reply that can't be
    /// sent is logged and dropped (the caller reads the record).
    pub async fn send(&self, reply_to: &str, correlation_id: &str, reply: &Reply) {
        let within = self.nodes.publish_timeout();
        let send = async {
            let channel = self.channel().await?;
            channel
                .basic_publish(
                    "".into(),
                    reply_to.into(),
                    BasicPublishOptions::default(),
                    &reply.output,
                    reply.properties(correlation_id),
                )
                .await?;
            Ok::<_, BrokerError>(())
        };
        match tokio::time::timeout(within, send).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "reply not sent; the caller reads the record"),
            Err(_) => tracing::warn!("reply not sent in time; the caller reads the record"),
        }
    }
}

#[cfg(test)]
mod size_tests {
    use super::*;

    #[test]
    fn header_frames_are_measured_as_serialized() {
        // Frame header, class, weight, body size, property flags, frame end.
        assert_eq!(header_frame_size(&lapin::BasicProperties::default()), 22);
        let mut headers = FieldTable::default();
        // `"` doubles in JSON, but an AMQP long string is sent as is: 1 + 1 + 1 + 4 + 1000.
        headers.insert("k".into(), text(&"\"".repeat(1000)));
        let props = lapin::BasicProperties::default().with_headers(headers);
        assert_eq!(header_frame_size(&props), 22 + 4 + 1 + 1 + 1 + 4 + 1000);
        assert!(check_header_size(&props, 131_072).is_ok());
        // 1033 bytes: over 2000 - 1024 of margin, under 3000 - 1024.
        assert!(matches!(
            check_header_size(&props, 2000),
            Err(BrokerError::TooLarge { .. })
        ));
        assert!(check_header_size(&props, 3000).is_ok());
    }
}
