//! How an event reached Granda ([`Trigger`]): a record's `trigger`, a message's header, what
//! the retry policy decides by. Its own file, below both the invocation and the retry policy
//! that name it.

use serde::{Deserialize, Serialize};

/// How the event reached Granda. Stored as its word (`text`), as an invocation's status is.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, sqlx::Type,
)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum Trigger {
    Sync,
    Async,
    Webhook,
    Event,
    Schedule,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Sync => "sync",
            Trigger::Async => "async",
            Trigger::Webhook => "webhook",
            Trigger::Event => "event",
            Trigger::Schedule => "schedule",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Trigger> {
        Some(match s {
            "sync" => Trigger::Sync,
            "async" => Trigger::Async,
            "webhook" => Trigger::Webhook,
            "event" => Trigger::Event,
            "schedule" => Trigger::Schedule,
            _ => return None,
        })
    }
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
