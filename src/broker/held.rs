//! One lazily opened, reconnecting hold on the broker: a connection to one of the [`Nodes`] and
//! what its holder opened on it, kept while it works and replaced when it doesn't. The ingress's
//! [`Publisher`] (its confirm channel and reply consumer), the worker's [`Replier`] (one channel)
//! and the ingress's control client ([`crate::worker::control::Client`], the connection alone:
//! a channel per request) are each a [`Held`] of their own.
//!
//! What every holder does alike, here once: connect when first asked; hand out what is held while
//! the holder's own test says it works; otherwise let the old link go and connect again, failing
//! over across the nodes ([`Nodes::connect`] starts at the preferred node and tries the others).
//! A link whose connection is dead tells [`Nodes::lost`] so that the next connect starts at the
//! next node; one whose connection still lives (only a channel on it died) keeps its node, and
//! its connection is closed in the background within the publish timeout, never waited for
//! under the lock.
//!
//! Why not `deadpool-lapin` (0.14, for lapin 4, the version Granda uses): its manager connects
//! to one address, where Granda fails over across a list of nodes with its own TLS settings; and
//! a deadpool object is held by one user at a time, where each of these holders shares one
//! connection and its channels among every concurrent caller (the publisher's confirm channel
//! carries every publish at once). A pool of size one would serialize the ingress's publishes.
//! What remains to share is the reconnecting, which is this file.

use super::*;

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use lapin::Connection;

/// A live link: the connection, the node it reached (as [`Nodes::connect`] numbers them), and
/// what the holder opened on it (reached through `Deref`).
pub struct Linked<T> {
    pub connection: Connection,
    pub node: usize,
    value: T,
}

impl<T> Deref for Linked<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.value
    }
}

/// Holds at most one [`Linked`], opened when first asked for.
pub struct Held<T> {
    nodes: Arc<Nodes>,
    /// The connection's name, as RabbitMQ shows it (`granda-<name>`).
    name: String,
    link: tokio::sync::Mutex<Option<Arc<Linked<T>>>>,
}

impl<T: Send + Sync + 'static> Held<T> {
    pub fn new(nodes: Arc<Nodes>, name: impl Into<String>) -> Held<T> {
        Held {
            nodes,
            name: name.into(),
            link: tokio::sync::Mutex::new(None),
        }
    }

    pub fn nodes(&self) -> &Arc<Nodes> {
        &self.nodes
    }

    /// The link held, if `alive` says it works; otherwise a new one, made by `open` on a fresh
    /// connection.
    pub async fn get(
        &self,
        alive: impl Fn(&Linked<T>) -> bool,
        open: impl AsyncFnOnce(&Connection) -> Result<T, BrokerError>,
    ) -> Result<Arc<Linked<T>>, BrokerError> {
        Ok(self.get_noting_new(alive, open).await?.0)
    }

    /// [`Held::get`], and whether the link is new.
    pub async fn get_noting_new(
        &self,
        alive: impl Fn(&Linked<T>) -> bool,
        open: impl AsyncFnOnce(&Connection) -> Result<T, BrokerError>,
    ) -> Result<(Arc<Linked<T>>, bool), BrokerError> {
        let mut guard = self.link.lock().await;
        if let Some(link) = guard.as_ref()
            && alive(link)
        {
            return Ok((link.clone(), false));
        }
        if let Some(old) = guard.take() {
            self.let_go(old);
        }
        // Boxed: connecting (TLS included) is a large future, and every caller of `get` (each
        // publish and reply) would otherwise carry its size, copied as it is moved.
        let (connection, node) = Box::pin(self.nodes.connect(&self.name)).await?;
        let value = Box::pin(open(&connection)).await?;
        let link = Arc::new(Linked {
            connection,
            node,
            value,
        });
        *guard = Some(link.clone());
        Ok((link, true))
    }

    /// Lets the link held go, if any: the next [`Held::get`] opens a new one. For a holder whose
    /// connection stalled (the broker stopped reading it) though it looks alive.
    pub async fn reset(&self) {
        if let Some(old) = self.link.lock().await.take() {
            self.let_go(old);
        }
    }

    /// A dead connection's node is lost (the next connect starts at the next one); a live
    /// connection is closed in the background, within the publish timeout.
    fn let_go(&self, old: Arc<Linked<T>>) {
        if !old.connection.status().connected() {
            self.nodes.lost(old.node);
            return;
        }
        let within: Duration = self.nodes.publish_timeout();
        tokio::spawn(async move {
            let _ =
                tokio::time::timeout(within, old.connection.close(200, "reopening".into())).await;
        });
    }
}
