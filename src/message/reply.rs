//! The reply of a sync call: the run's outcome, as it travels back to the ingress.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

use super::*;
use crate::invocation::{Outcome, Record, Status};

/// How much of stderr travels in a reply to explain a failure.
pub(crate) const ERROR_TAIL_BYTES: usize = 2048;
/// The answer to a sync caller.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    pub(crate) status: Status,
    pub(crate) exit_code: Option<i32>,
    pub(crate) duration_ms: Option<i64>,
    pub output: Vec<u8>,
    pub(crate) error: Option<String>,
    /// The function's own HTTP status and headers (`response: "cgi"`).
    pub(crate) http: Option<crate::web::WebAnswer>,
}

impl Reply {
    pub(crate) fn from_outcome(o: &Outcome) -> Reply {
        Reply {
            status: o.status(),
            exit_code: o.exit_code,
            duration_ms: o.duration_ms,
            output: o.output.clone(),
            error: explain(o.status(), o.error.as_deref(), &o.logs),
            http: o.http.clone(),
        }
    }

    pub(crate) fn from_record(r: &Record) -> Reply {
        Reply {
            status: r.status(),
            exit_code: r.exit_code,
            duration_ms: r.duration_ms,
            output: r.output.clone().unwrap_or_default(),
            error: explain(
                r.status(),
                r.error.as_deref(),
                r.logs.as_deref().unwrap_or(""),
            ),
            http: None,
        }
    }

    pub(crate) fn properties(&self, correlation_id: &str) -> BasicProperties {
        let mut headers = FieldTable::default();
        headers.insert(H_STATUS.into(), long_string(self.status.as_str()));
        if let Some(code) = self.exit_code {
            headers.insert(H_EXIT_CODE.into(), AMQPValue::LongInt(code));
        }
        if let Some(ms) = self.duration_ms {
            headers.insert(H_DURATION.into(), AMQPValue::LongLongInt(ms));
        }
        if let Some(error) = &self.error {
            headers.insert(H_ERROR.into(), long_string(error));
        }
        if let Some(http) = &self.http {
            let json = serde_json::to_vec(http).expect("an answer serializes");
            headers.insert(H_HTTP.into(), AMQPValue::LongString(LongString::from(json)));
        }
        BasicProperties::default()
            .with_correlation_id(ShortString::from(correlation_id))
            .with_headers(headers)
    }

    pub(crate) fn decode(props: &BasicProperties, body: Vec<u8>) -> Option<Reply> {
        let headers = props.headers().as_ref()?;
        let status = Status::parse(std::str::from_utf8(bytes_header(headers, H_STATUS)?).ok()?)?;
        Some(Reply {
            status,
            exit_code: int_header(headers, H_EXIT_CODE).map(|c| c as i32),
            duration_ms: int_header(headers, H_DURATION),
            output: body,
            error: bytes_header(headers, H_ERROR).map(|e| String::from_utf8_lossy(e).into_owned()),
            // A reply the ingress can't read the answer of is answered without it.
            http: bytes_header(headers, H_HTTP).and_then(|j| serde_json::from_slice(j).ok()),
        })
    }
}

/// A short explanation of a run that did not succeed: the platform error, or the stderr tail.
fn explain(status: Status, error: Option<&str>, logs: &str) -> Option<String> {
    if status == Status::Succeeded {
        return None;
    }
    if let Some(e) = error {
        return Some(e.to_string());
    }
    let mut start = logs.len().saturating_sub(ERROR_TAIL_BYTES);
    while !logs.is_char_boundary(start) {
        start += 1;
    }
    Some(logs[start..].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_round_trips_and_explains_failures() {
        let outcome = Outcome {
            status: Some(Status::Failed),
            exit_code: Some(3),
            duration_ms: Some(12),
            logs: "x".repeat(5000) + "the end",
            ..Default::default()
        };
        let reply = Reply::from_outcome(&outcome);
        let back = Reply::decode(&reply.properties("c"), vec![]).unwrap();
        assert_eq!(back, reply);
        let error = back.error.unwrap();
        assert!(error.ends_with("the end") && error.len() == ERROR_TAIL_BYTES);
    }
}
