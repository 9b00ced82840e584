//! The ingress's link to the broker: publishing with confirms on one connection, reconnecting, and
//! waiting for the replies of sync calls.

use super::*;
use tracing::Instrument as _;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::Channel;
use lapin::Confirmation;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use tokio::sync::oneshot;

use crate::message::{Reply, Work};

/// Waiters for replies, by correlation id, with the generation of the link they wait on.
type Waiters = Arc<Mutex<HashMap<String, (u64, oneshot::Sender<Reply>)>>>;

/// What the publisher opens on a connection ([`Held`] keeps the connection): its publishing
/// channel, which also consumes direct replies (sync calls publish there: direct reply-to needs
/// it), and a side channel for everything else.
struct Link {
    generation: u64,
    channel: Channel,
    /// Declarations, async work and events; opened again if a channel error closed it.
    side: tokio::sync::Mutex<Option<Channel>>,
    declared: Mutex<HashSet<String>>,
}

impl Linked<Link> {
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
    link: Held<Link>,
    generations: std::sync::atomic::AtomicU64,
    waiters: Waiters,
    /// Signs every work message and seals the secrets it carries.
    keys: Arc<crate::seal::Keys>,
}

impl Publisher {
    /// Connects to `url` (one URL or a list), trusting `GRANDA_CA_FILE` if set, with the default
    /// publish timeout.
    pub async fn connect(
        url: &str,
        topology: Topology,
        keys: Arc<crate::seal::Keys>,
    ) -> Result<Arc<Publisher>, BrokerError> {
        let ca = std::env::var_os("GRANDA_CA_FILE").map(std::path::PathBuf::from);
        let nodes = Nodes::new(url, ca.as_deref(), DEFAULT_PUBLISH_TIMEOUT)?;
        Publisher::start(Arc::new(nodes), topology, keys).await
    }

    /// Connects to one of `nodes`; it fails over to the others when the connection is lost.
    pub async fn start(
        nodes: Arc<Nodes>,
        topology: Topology,
        keys: Arc<crate::seal::Keys>,
    ) -> Result<Arc<Publisher>, BrokerError> {
        let publisher = Arc::new(Publisher {
            keys,
            link: Held::new(nodes.clone(), format!("ingress-{}", topology.prefix)),
            nodes,
            topology,
            generations: Default::default(),
            waiters: Arc::default(),
        });
        publisher.link().await?;
        Ok(publisher)
    }

    pub(crate) fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The installation's keys it signs and seals with.
    pub(crate) fn keys(&self) -> &Arc<crate::seal::Keys> {
        &self.keys
    }

    /// Whether the broker is reachable now (reconnecting if needed).
    pub(crate) async fn ready(&self) -> bool {
        self.link().await.is_ok()
    }

    /// Whether the broker confirms a write to a quorum queue now: an empty message to the probe
    /// queue (the workers' too, [`Topology::probe_queue`]), confirmed within the publish timeout.
    /// Without quorum the work queues take no message, whatever node this is connected to, so an
    /// invoke would only be answered 503 after the timeout. The ingress's `/readyz` asks it.
    pub(crate) async fn quorum(&self) -> bool {
        let within = self.nodes.publish_timeout();
        let probe = async {
            let link = self.link().await?;
            let queue = self.topology.probe_queue();
            let channel = link.side().await?;
            let declared = link.declared.lock().expect("lock").contains(&queue);
            if !declared {
                self.topology.declare_probe(&channel).await?;
                link.declared.lock().expect("lock").insert(queue.clone());
            }
            super::publish_confirmed_unbounded(
                &channel,
                &queue,
                b"",
                lapin::BasicProperties::default(),
            )
            .await
        };
        matches!(tokio::time::timeout(within, probe).await, Ok(Ok(())))
    }

    async fn link(&self) -> Result<Arc<Linked<Link>>, BrokerError> {
        let (link, new) = self
            .link
            .get_noting_new(Linked::healthy, async |connection| {
                let channel = connection.create_channel().await?;
                channel
                    .confirm_select(ConfirmSelectOptions::default())
                    .await?;
                let replies = super::consume_replies(&channel, "replies").await?;
                let generation = self
                    .generations
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::spawn(dispatch_replies(replies, self.waiters.clone(), generation));
                Ok(Link {
                    generation,
                    channel,
                    side: tokio::sync::Mutex::new(None),
                    declared: Mutex::default(),
                })
            })
            .await?;
        if new {
            tracing::info!(node = %self.nodes.node(link.node), "connected to RabbitMQ");
        }
        Ok(link)
    }

    /// Publishes `work` to its queue and returns once the broker confirmed it.
    /// A span of its own, `publish` (enqueue and confirm): the message carries its context.
    #[tracing::instrument(name = "publish", skip_all, fields(otel.kind = "producer", id = %work.id, queue))]
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
        on_link: impl Fn(&Linked<Link>),
    ) -> Result<(), BrokerError> {
        let within = self.nodes.publish_timeout();
        let retrying = async {
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
                            tokio::time::sleep(Duration::from_millis(
                                100 * u64::from(failures.min(5)),
                            ))
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
        };
        tokio::time::timeout(within, retrying)
            .await
            .map_err(|_| BrokerError::Timeout(within))?
    }

    async fn publish_on(
        &self,
        link: &Linked<Link>,
        queue: &str,
        work: &Work,
        body: &[u8],
    ) -> Result<(), BrokerError> {
        let properties = work.properties(body, &self.keys);
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
        .instrument(tracing::info_span!("publish", otel.kind = "producer", id = %work.id, queue))
        .await?;
        let rx = rx
            .into_inner()
            .expect("lock")
            .expect("a waiter was registered");
        Ok(tokio::time::timeout(wait, rx)
            .instrument(tracing::info_span!("await reply"))
            .await
            .ok()
            .and_then(Result::ok))
    }
}

impl Publisher {
    /// Messages waiting in the dead-letter queue.
    pub(crate) async fn dead_letter_depth(&self) -> Result<u32, BrokerError> {
        let link = self.link().await?;
        Ok(queue_depth(&link.connection, &self.topology.dead_letter_queue()).await?)
    }

    /// Ready messages and consumers of the broker queue `name` (a full name, e.g. from
    /// [`Topology::work_queue`]), by a passive declare on a throwaway channel; `None` when the
    /// queue does not exist (yet).
    pub(crate) async fn queue_info(&self, name: &str) -> Result<Option<(u32, u32)>, BrokerError> {
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
