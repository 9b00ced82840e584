//! The one reconnecting hold on RabbitMQ ([`granda::broker::Held`]), against the real broker:
//! what it holds is handed out while it works, and replaced when it doesn't.

use std::sync::Arc;
use std::time::{Duration, Instant};

use granda::broker::{Held, Nodes};

use crate::support::amqp_url;

fn held() -> Held<lapin::Channel> {
    let nodes = Nodes::new(&amqp_url(), None, Duration::from_secs(5)).unwrap();
    Held::new(Arc::new(nodes), "test-held")
}

async fn channel_of(held: &Held<lapin::Channel>) -> Arc<granda::broker::Linked<lapin::Channel>> {
    held.get(
        |link| (**link).status().connected(),
        async |connection| Ok(connection.create_channel().await?),
    )
    .await
    .expect("RabbitMQ must be reachable for the tests")
}

/// A working link is handed out again; a dead connection is replaced by a new one.
#[tokio::test]
async fn a_working_link_is_kept_and_a_dead_one_replaced() {
    let held = held();
    let first = channel_of(&held).await;
    assert!(Arc::ptr_eq(&first, &channel_of(&held).await));
    first.connection.close(200, "test".into()).await.unwrap();
    let second = channel_of(&held).await;
    assert!(!Arc::ptr_eq(&first, &second));
    assert!(second.connection.status().connected());
    assert!((**second).status().connected());
    second.connection.close(200, "test".into()).await.unwrap();
}

/// When only the channel died, a new connection is made, and the old one, still open, is closed
/// in the background (never left open).
#[tokio::test]
async fn a_live_connection_whose_channel_died_is_closed_in_the_background() {
    let held = held();
    let first = channel_of(&held).await;
    (**first).close(200, "test".into()).await.unwrap();
    assert!(first.connection.status().connected());
    let second = channel_of(&held).await;
    assert!(!Arc::ptr_eq(&first, &second));
    let deadline = Instant::now() + Duration::from_secs(10);
    while first.connection.status().connected() {
        assert!(
            Instant::now() < deadline,
            "the old connection is still open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    second.connection.close(200, "test".into()).await.unwrap();
}

/// `reset` lets a link that looks alive go (a stalled connection): the next `get` is new.
#[tokio::test]
async fn reset_makes_the_next_link_new() {
    let held = held();
    let first = channel_of(&held).await;
    held.reset().await;
    let (second, new) = held
        .get_noting_new(
            |link| (**link).status().connected(),
            async |connection| Ok(connection.create_channel().await?),
        )
        .await
        .unwrap();
    assert!(new && !Arc::ptr_eq(&first, &second));
    second.connection.close(200, "test".into()).await.unwrap();
}
