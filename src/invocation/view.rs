//! An invocation as the API shows it: the stored [`Record`] with its input and output as text
//! where they are UTF-8, else base64 in `*_base64`. The one shape every JSON answer about an
//! invocation has (`GET /v1/invocations/{id}`, the lists, the dead letters) and the one the
//! OpenAPI document describes.

use base64::Engine as _;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::Record;

/// An invocation record. Input and output are text when UTF-8, else `*_base64`.
#[derive(Serialize, ToSchema)]
pub(crate) struct InvocationView {
    /// (Its `function` is the function's short name; its namespace is beside it.)
    #[serde(flatten)]
    pub(crate) record: Record,
    /// The namespace of the function ([`crate::namespace`]).
    pub(crate) namespace: String,
    /// The input kept (up to the cap), when it is UTF-8.
    pub(crate) input: Option<String>,
    /// The input kept, when it is not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) input_base64: Option<String>,
    /// Only the first bytes of the input were kept (`input_size` says how many there were).
    pub(crate) input_truncated: bool,
    /// What the function wrote to stdout (up to the cap), when it is UTF-8.
    pub(crate) output: Option<String>,
    /// The output, when it is not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) output_base64: Option<String>,
    /// Set when the record keeps no input, output or logs: a success of a function with
    /// `store_output: on_failure` (the text says so).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "not stored (store_output: on_failure)")]
    pub(crate) not_stored: Option<String>,
    /// `GET /v1/invocations/{id}`: the result callback's state, when the invocation has one (its
    /// URL only for keys that may read functions).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub(crate) callback: Option<serde_json::Value>,
    /// `GET /v1/invocations/{id}`: each attempt, in order (earlier ones that were retried or
    /// taken over, then the current or last one); empty while it waits for its first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) attempts: Option<Vec<super::attempts::Attempt>>,
    /// `GET /v1/invocations/{id}`: until when this record is kept, once it ended (the pruner
    /// removes it after; see docs/operations.md, "Retention"). Absent while queued or running.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) kept_until: Option<chrono::DateTime<chrono::Utc>>,
}

impl From<Record> for InvocationView {
    fn from(mut record: Record) -> Self {
        let not_stored = record.unstored().then(|| super::NOT_STORED.to_string());
        let input = record.input.take();
        let output = record.output.take();
        let input_truncated = input
            .as_ref()
            .is_some_and(|i| (i.len() as i64) < record.input_size);
        let (input, input_base64) = text_or_base64(input);
        let (output, output_base64) = text_or_base64(output);
        let (function, namespace) = crate::namespace::split(&record.function);
        let (function, namespace) = (function.to_string(), namespace.to_string());
        record.function = function;
        InvocationView {
            record,
            namespace,
            input,
            input_base64,
            input_truncated,
            output,
            output_base64,
            not_stored,
            callback: None,
            attempts: None,
            kept_until: None,
        }
    }
}

/// A page of invocations, newest first.
#[derive(Serialize, ToSchema)]
pub(crate) struct InvocationList {
    pub(crate) invocations: Vec<InvocationView>,
    /// The `before` of the next page; null on the last.
    pub(crate) next: Option<Uuid>,
}

impl InvocationList {
    /// A page of at most `limit` records, read newest first: a full page has a next one.
    pub(crate) fn page(records: Vec<Record>, limit: i64) -> Self {
        let next = (records.len() as i64 == limit)
            .then(|| records.last().map(|r| r.id))
            .flatten();
        InvocationList {
            invocations: records.into_iter().map(InvocationView::from).collect(),
            next,
        }
    }
}

/// Bytes as text where they are UTF-8, else as base64 (the second).
fn text_or_base64(bytes: Option<Vec<u8>>) -> (Option<String>, Option<String>) {
    match bytes.map(String::from_utf8) {
        None => (None, None),
        Some(Ok(text)) => (Some(text), None),
        Some(Err(e)) => (
            None,
            Some(base64::engine::general_purpose::STANDARD.encode(e.into_bytes())),
        ),
    }
}
