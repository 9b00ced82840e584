//! Invocations: one run of a function for one event, its lifecycle and its record in Postgres.
//!
//! `queued` → `running` → `succeeded` | `failed` | `timed_out` (and `dead` when retries are spent),
//! or `cancelled` from `queued` or `running` when someone asks (`POST /v1/invocations/{id}/cancel`).
//! The record is the truth; every transition is a conditional update, so a redelivered message
//! can never move a final record again.
//!
//! Layout: this file holds the states, the triggers and the stored [`Record`]; `store` who
//! writes which row when; `search` the filtered list; `view` the record as the API shows it
//! (`InvocationView`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

/// Stored as its word (`text`): a word the enum lacks is a decoding error, not a default.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, sqlx::Type,
)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
#[schema(as = InvocationStatus)]
pub enum Status {
    Queued,
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Dead,
    /// Stopped on request before it ended (`store::cancel`); never retried.
    Cancelled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::TimedOut => "timed_out",
            Status::Dead => "dead",
            Status::Cancelled => "cancelled",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "queued" => Status::Queued,
            "running" => Status::Running,
            "succeeded" => Status::Succeeded,
            "failed" => Status::Failed,
            "timed_out" => Status::TimedOut,
            "dead" => Status::Dead,
            "cancelled" => Status::Cancelled,
            _ => return None,
        })
    }

    pub(crate) fn is_final(self) -> bool {
        !matches!(self, Status::Queued | Status::Running)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

pub use crate::trigger::Trigger;

/// An invocation as stored. The API shows it as an `InvocationView`; input and output are
/// shown there, as text or base64.
#[derive(Clone, Debug, sqlx::FromRow, Serialize, utoipa::ToSchema)]
#[schema(as = InvocationRecord)]
pub struct Record {
    pub(crate) id: Uuid,
    pub(crate) function: String,
    pub(crate) status: Status,
    pub(crate) trigger: Trigger,
    pub(crate) attempt: i32,
    #[serde(skip)]
    pub(crate) input: Option<Vec<u8>>,
    pub(crate) input_size: i64,
    #[serde(skip)]
    pub(crate) output: Option<Vec<u8>>,
    pub(crate) output_truncated: bool,
    pub(crate) logs: Option<String>,
    pub(crate) logs_truncated: bool,
    pub(crate) exit_code: Option<i32>,
    pub(crate) error: Option<String>,
    pub(crate) queued_at: DateTime<Utc>,
    pub(crate) started_at: Option<DateTime<Utc>>,
    pub(crate) finished_at: Option<DateTime<Utc>>,
    pub(crate) duration_ms: Option<i64>,
    pub(crate) queue_ms: Option<i64>,
    pub(crate) cold: Option<bool>,
    pub(crate) worker: Option<String>,
    /// Calls of the function's URL: the method, the path after `/fn/{name}` (no query), and
    /// the HTTP status answered.
    pub(crate) http_method: Option<String>,
    pub(crate) http_path: Option<String>,
    pub(crate) http_status: Option<i32>,
    /// The API key that made the call (see [`NewInvocation::key_id`]); null for anonymous,
    /// webhook, schedule and event calls, which name their source in `trigger`.
    #[schema(value_type = Option<String>, format = Uuid)]
    pub(crate) key_id: Option<Uuid>,
    /// That key's name, while the key is stored (revoked keys keep theirs; a deleted
    /// namespace's keys are gone).
    pub(crate) key_name: Option<String>,
    /// Who cancelled it (`key <name> (<id>)`, `admin` with auth off, or the dashboard's
    /// `session of key …`); null unless it is `cancelled`.
    pub(crate) cancelled_by: Option<String>,
    /// How the run got its container: `cold` (a fresh one), `warm` (an exec in a kept one) or
    /// `hot` (a request to the function's own process); none before it ran (and on records
    /// older than this field).
    pub(crate) mode: Option<crate::function::Mode>,
    /// When an operator discarded this dead invocation: it left the dead letters for good
    /// (`DELETE /v1/dead-letters/{id}`).
    pub(crate) discarded_at: Option<DateTime<Utc>>,
}

impl Record {
    pub fn status(&self) -> Status {
        self.status
    }

    /// A success whose input, output and logs were not kept (`store_output: on_failure`): a
    /// stored record always has them, if only empty.
    pub(crate) fn unstored(&self) -> bool {
        self.status() == Status::Succeeded
            && self.input.is_none()
            && self.output.is_none()
            && self.logs.is_none()
    }
}

/// What the API and the dashboard say of the input, output and logs a record did not keep.
pub(crate) const NOT_STORED: &str = "not stored (store_output: on_failure)";

/// A new invocation, before it is stored and queued.
#[derive(Clone, Debug)]
pub struct NewInvocation<'a> {
    pub id: Uuid,
    pub function: &'a str,
    pub trigger: Trigger,
    pub input: &'a [u8],
    pub stored_input_cap: usize,
    pub idempotency_key: Option<&'a str>,
    /// The API key that made the call: its id in `api_keys` (never the key). A dashboard call
    /// carries the key its session logged in with. `None`: anonymous (a public function's URL
    /// without a key), a webhook, a schedule, an event, or `GRANDA_AUTH=off`.
    pub key_id: Option<Uuid>,
}

/// How a run ended, as the worker records it.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub status: Option<Status>,
    pub output: Vec<u8>,
    pub output_truncated: bool,
    pub logs: String,
    pub logs_truncated: bool,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<i64>,
    pub cold: bool,
    /// The function's mode the run went through (see [`Record::mode`]).
    pub mode: Option<crate::function::Mode>,
    /// The function's own HTTP status and headers (`response: "cgi"`).
    pub http: Option<crate::web::WebAnswer>,
    /// A call of the function's URL: its method and path (after `/fn/{name}`, no query).
    pub http_method: Option<String>,
    pub http_path: Option<String>,
    /// The final record keeps no input, output or logs (a success of a function with
    /// `store_output: on_failure`); the caller and the reply still get the output.
    pub unstored: bool,
}

impl Outcome {
    /// The HTTP status the caller of the function's URL was answered (as
    /// `producer::invoke::reply_response` answers it): the function's own, else 200 for a
    /// success, 504 for a timeout and 502 for the rest.
    pub(crate) fn http_status(&self) -> Option<i32> {
        self.http_method.as_ref()?;
        Some(match (&self.http, self.status()) {
            (Some(http), _) => i32::from(http.status),
            (None, Status::Succeeded) => 200,
            (None, Status::TimedOut) => 504,
            (None, _) => 502,
        })
    }

    pub(crate) fn status(&self) -> Status {
        self.status.unwrap_or(Status::Failed)
    }
}

/// A `queued` invocation the broker never confirmed, as the outbox re-publishes it.
#[derive(Clone, Debug, sqlx::FromRow)]
pub(crate) struct Unpublished {
    pub(crate) id: Uuid,
    pub(crate) function: String,
    pub(crate) trigger: Trigger,
    pub(crate) input: Vec<u8>,
    /// The invocation's own env (schedules, AMQP events), added to the function's again.
    pub(crate) extra_env: Option<sqlx::types::Json<std::collections::BTreeMap<String, String>>>,
    /// The trace context it was accepted in: the re-publish continues its trace.
    pub(crate) traceparent: Option<String>,
    pub(crate) tracestate: Option<String>,
}

/// What marking an invocation `running` found.
#[derive(Debug)]
pub enum Claim {
    /// This worker now runs it; `attempt` counts from 1.
    Claimed {
        attempt: i32,
        queued_at: DateTime<Utc>,
    },
    /// It already has a final record: don't run it again.
    AlreadyFinal(Box<Record>),
    /// Another live worker runs it now (this message is a duplicate, or that worker lost its channel).
    RunningElsewhere,
    /// No record exists (it was never accepted, or the database was replaced).
    Missing,
}

pub(crate) mod attempts;
pub(crate) mod search;

mod view;
pub(crate) use view::{InvocationList, InvocationView};

pub mod store;
