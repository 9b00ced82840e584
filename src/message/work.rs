//! The work message: one invocation as it travels to a worker, and its signature.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use uuid::Uuid;

use super::*;
use crate::function::Snapshot;
use crate::invocation::Trigger;

/// `with` given the fields a work message's signature covers, in order.
fn with_signed_fields<T>(
    props: &BasicProperties,
    headers: &FieldTable,
    body: &[u8],
    with: impl FnOnce(&[Option<&[u8]>]) -> T,
) -> T {
    let queued_at = int_header(headers, H_QUEUED_AT).map(i64::to_be_bytes);
    let mut fields = vec![
        props.message_id().as_ref().map(|m| m.as_str().as_bytes()),
        bytes_header(headers, H_TRIGGER),
        bytes_header(headers, H_FUNCTION),
        queued_at.as_ref().map(|q| q.as_slice()),
        // The broker rewrites a direct reply-to (`amq.rabbitmq.reply-to`) to the publishing
        // channel's own: what is signed is that it is one.
        props.reply_to().as_ref().map(|r| {
            let r = r.as_str();
            match r.starts_with(DIRECT_REPLY_TO) {
                true => DIRECT_REPLY_TO.as_bytes(),
                false => r.as_bytes(),
            }
        }),
        props
            .correlation_id()
            .as_ref()
            .map(|c| c.as_str().as_bytes()),
        bytes_header(headers, H_REQUEST),
        Some(body),
    ];
    // After the body and only when present: a message without it is signed as before. The
    // fields are length-prefixed, so adding or stripping it never checks.
    if let Some(key_id) = bytes_header(headers, H_KEY_ID) {
        fields.push(Some(key_id));
    }
    with(&fields)
}

/// One invocation to run, as it travels to a worker.
#[derive(Clone, Debug)]
pub struct Work {
    pub id: Uuid,
    pub trigger: Trigger,
    pub function: Snapshot,
    pub queued_at_ms: i64,
    pub reply_to: Option<String>,
    pub correlation_id: Option<String>,
    /// The HTTP request of a call of the function's URL (`/fn/{name}`).
    pub request: Option<crate::web::WebRequest>,
    /// The API key that made the call (its id, never the key), for the record a sync call's
    /// worker writes (`invocation::NewInvocation::key_id`).
    pub key_id: Option<Uuid>,
}

impl Work {
    /// The message of queued invocation `id` of `function`, sent now: the one way an enqueue, the
    /// outbox, a manual retry or a schedule makes a message. `extra_env` is the invocation's own
    /// env (webhook, event, schedule), stored with its record so a re-publish or retry keeps it;
    /// it travels in the message's own copy of the snapshot.
    pub(crate) fn queued(
        id: Uuid,
        trigger: Trigger,
        function: &crate::function::Function,
        extra_env: &std::collections::BTreeMap<String, String>,
    ) -> Work {
        let mut snapshot = function.snapshot();
        snapshot
            .run
            .env
            .extend(extra_env.iter().map(|(k, v)| (k.clone(), v.clone())));
        Work {
            id,
            trigger,
            function: snapshot,
            queued_at_ms: chrono::Utc::now().timestamp_millis(),
            reply_to: None,
            correlation_id: None,
            request: None,
            key_id: None,
        }
    }

    /// The message's properties, signed with `keys` over them and `body`; secrets still clear
    /// in the snapshot are sealed under `keys` first.
    pub fn properties(&self, body: &[u8], keys: &crate::seal::Keys) -> BasicProperties {
        let mut headers = FieldTable::default();
        let snapshot = if self.function.secrets.has_clear() {
            let sealed = Snapshot {
                name: self.function.name.clone(),
                run: self.function.run.clone(),
                secrets: keys.seal_all(&self.function.secrets),
            };
            serde_json::to_vec(&sealed)
        } else {
            serde_json::to_vec(&self.function)
        };
        let snapshot = snapshot.expect("a snapshot serializes");
        headers.insert(
            H_FUNCTION.into(),
            AMQPValue::LongString(LongString::from(snapshot)),
        );
        headers.insert(H_TRIGGER.into(), long_string(self.trigger.as_str()));
        headers.insert(
            H_QUEUED_AT.into(),
            AMQPValue::LongLongInt(self.queued_at_ms),
        );
        if let Some(request) = &self.request {
            let json = serde_json::to_vec(request).expect("a request serializes");
            headers.insert(
                H_REQUEST.into(),
                AMQPValue::LongString(LongString::from(json)),
            );
        }
        if let Some(key_id) = &self.key_id {
            headers.insert(H_KEY_ID.into(), long_string(&key_id.to_string()));
        }
        let mut props = BasicProperties::default()
            .with_message_id(ShortString::from(self.id.to_string()))
            .with_delivery_mode(2)
            .with_content_type("application/octet-stream".into());
        if let Some(reply_to) = &self.reply_to {
            props = props.with_reply_to(ShortString::from(reply_to.as_str()));
        }
        if let Some(correlation_id) = &self.correlation_id {
            props = props.with_correlation_id(ShortString::from(correlation_id.as_str()));
        }
        let signature = with_signed_fields(&props, &headers, body, |fields| keys.sign(fields));
        headers.insert(H_SIGNATURE.into(), long_string(&signature));
        for (name, value) in crate::telemetry::trace_headers() {
            headers.insert(name.into(), long_string(&value));
        }
        props.with_headers(headers)
    }

    /// The work a message carries, once its signature under `keys` checks, its secrets open and
    /// its function is within the limits a registration allows (`max_timeout_ms` the worker's).
    pub(crate) fn decode(
        props: &BasicProperties,
        body: &[u8],
        keys: &crate::seal::Keys,
        max_timeout_ms: u64,
    ) -> Result<Work, Malformed> {
        let headers = props
            .headers()
            .as_ref()
            .ok_or_else(|| Malformed("no headers".into()))?;
        let signature = bytes_header(headers, H_SIGNATURE).ok_or_else(|| {
            Malformed(format!(
                "no {H_SIGNATURE}: not signed by this installation (or sent by a version before signing)"
            ))
        })?;
        if !with_signed_fields(props, headers, body, |fields| {
            keys.verify(fields, signature)
        }) {
            return Err(Malformed(format!(
                "{H_SIGNATURE} does not check: not signed by this installation, or altered"
            )));
        }
        let mut work = Work::decode_unchecked(props)?;
        keys.open_all(&mut work.function.secrets)
            .map_err(|e| Malformed(e.to_string()))?;
        crate::function::check_snapshot(&work.function, max_timeout_ms)
            .map_err(|e| Malformed(format!("a registration would refuse its function: {e}")))?;
        Ok(work)
    }

    /// The work a message says it carries, unchecked: for reading, never for running.
    pub(crate) fn decode_unchecked(props: &BasicProperties) -> Result<Work, Malformed> {
        let id = props
            .message_id()
            .as_ref()
            .and_then(|m| Uuid::parse_str(m.as_str()).ok())
            .ok_or_else(|| Malformed("message_id is not an invocation id".into()))?;
        let headers = props
            .headers()
            .as_ref()
            .ok_or_else(|| Malformed("no headers".into()))?;
        let snapshot = bytes_header(headers, H_FUNCTION)
            .ok_or_else(|| Malformed(format!("no {H_FUNCTION} header")))?;
        let function: Snapshot = serde_json::from_slice(snapshot)
            .map_err(|e| Malformed(format!("{H_FUNCTION}: {e}")))?;
        let trigger = bytes_header(headers, H_TRIGGER)
            .and_then(|t| Trigger::parse(std::str::from_utf8(t).ok()?))
            .ok_or_else(|| Malformed(format!("no valid {H_TRIGGER} header")))?;
        let queued_at_ms = int_header(headers, H_QUEUED_AT).unwrap_or(0);
        let request = match bytes_header(headers, H_REQUEST) {
            None => None,
            Some(json) => {
                let request: crate::web::WebRequest = serde_json::from_slice(json)
                    .map_err(|e| Malformed(format!("{H_REQUEST}: {e}")))?;
                if let Some(problem) = request.problem() {
                    return Err(Malformed(format!("{H_REQUEST}: {problem}")));
                }
                Some(request)
            }
        };
        let key_id = match bytes_header(headers, H_KEY_ID) {
            None => None,
            Some(k) => Some(
                std::str::from_utf8(k)
                    .ok()
                    .and_then(|k| Uuid::parse_str(k).ok())
                    .ok_or_else(|| Malformed(format!("{H_KEY_ID} is not a key id")))?,
            ),
        };
        Ok(Work {
            id,
            trigger,
            function,
            queued_at_ms,
            reply_to: props.reply_to().as_ref().map(|r| r.to_string()),
            correlation_id: props.correlation_id().as_ref().map(|c| c.to_string()),
            request,
            key_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::function::{InputMode, Network, RunSpec, Secrets};

    #[test]
    fn work_round_trips_through_properties() {
        let work = Work {
            id: Uuid::now_v7(),
            trigger: Trigger::Sync,
            function: Snapshot {
                name: "echo".into(),
                run: RunSpec {
                    image: "granda-test/echo".into(),
                    timeout_ms: 1000,
                    memory_mb: 64,
                    cpus: 0.5,
                    env: [("A".to_string(), "b".to_string())].into(),
                    input: InputMode::Args,
                    max_attempts: 3,
                    retry_on: vec![crate::retry::RetryOn::Timeout],
                    max_concurrency: Some(2),
                    mode: crate::function::Mode::Warm,
                    pool: Default::default(),
                    pids: 32,
                    network: Network::Bridge,
                    user: Some("65534".into()),
                    container_runtime: Some("runc".into()),
                    tmp_mb: 8,
                    response: crate::function::ResponseMode::Cgi,
                    store_output: crate::function::StoreOutput::OnFailure,
                },
                secrets: Secrets::clear([("TOKEN".to_string(), "s3cret".to_string())].into()),
            },
            queued_at_ms: 1_700_000_000_000,
            reply_to: Some("amq.rabbitmq.reply-to.x".into()),
            correlation_id: Some("c1".into()),
            request: Some(crate::web::WebRequest {
                method: "GET".into(),
                path: "/x".into(),
                ..Default::default()
            }),
            key_id: Some(Uuid::now_v7()),
        };
        let keys = crate::seal::Keys::ephemeral();
        let props = work.properties(b"in", &keys);
        let header = bytes_header(props.headers().as_ref().unwrap(), H_FUNCTION).unwrap();
        let header = String::from_utf8_lossy(header);
        assert!(
            header.contains("TOKEN") && !header.contains("s3cret"),
            "{header}"
        );
        let back = Work::decode(&props, b"in", &keys, 60_000).unwrap();
        assert_eq!(back.id, work.id);
        assert_eq!(back.function, work.function);
        assert_eq!(back.trigger, Trigger::Sync);
        assert_eq!(back.queued_at_ms, work.queued_at_ms);
        assert_eq!(back.reply_to, work.reply_to);
        assert_eq!(back.correlation_id.as_deref(), Some("c1"));
        assert_eq!(back.request, work.request);
        assert_eq!(back.key_id, work.key_id);
    }

    /// The key id is signed when present; a message without one (as before it existed) checks
    /// as it did, and one can't be added, changed or stripped on the way.

    #[test]
    fn the_key_id_travels_signed_and_old_messages_without_it_still_check() {
        let keys = crate::seal::Keys::ephemeral();
        let old = echo();
        let old_props = old.properties(b"in", &keys);
        assert!(
            !old_props
                .headers()
                .as_ref()
                .unwrap()
                .inner()
                .contains_key(H_KEY_ID)
        );
        assert_eq!(
            Work::decode(&old_props, b"in", &keys, 60_000)
                .unwrap()
                .key_id,
            None
        );
        let with_key = |props: &BasicProperties, key: Option<&str>| {
            let mut headers = props.headers().clone().unwrap();
            match key {
                Some(k) => {
                    headers.insert(H_KEY_ID.into(), long_string(k));
                }
                None => {
                    let mut kept = FieldTable::default();
                    for (k, v) in headers.inner() {
                        if k.as_str() != H_KEY_ID {
                            kept.insert(k.clone(), v.clone());
                        }
                    }
                    headers = kept;
                }
            }
            props.clone().with_headers(headers)
        };
        let someone = Uuid::now_v7().to_string();
        let added = with_key(&old_props, Some(&someone));
        assert!(Work::decode(&added, b"in", &keys, 60_000).is_err());
        let mut keyed = echo();
        keyed.key_id = Some(Uuid::now_v7());
        let props = keyed.properties(b"in", &keys);
        assert_eq!(
            Work::decode(&props, b"in", &keys, 60_000).unwrap().key_id,
            keyed.key_id
        );
        assert!(Work::decode(&with_key(&props, None), b"in", &keys, 60_000).is_err());
        assert!(Work::decode(&with_key(&props, Some(&someone)), b"in", &keys, 60_000).is_err());
    }

    #[test]
    fn a_snapshot_from_before_the_isolation_fields_decodes_with_safe_defaults() {
        let old = br#"{"name":"f","image":"i","timeout_ms":1000,"memory_mb":64,"cpus":1.0}"#;
        let s: Snapshot = serde_json::from_slice(old).unwrap();
        assert_eq!(s.run.pids, crate::function::DEFAULT_PIDS);
        assert_eq!(s.run.network, Network::None);
        assert_eq!(s.run.user, None);
        assert!(s.secrets.0.is_empty());
    }

    /// Before `RunSpec`, a message nested the pool limits (`"pool": {...}`); now they are also
    /// flat. Either version's worker reads the other's messages with the function's limits.

    #[test]
    fn pool_limits_travel_nested_and_flat_for_workers_of_either_version() {
        let old = br#"{"name":"f","image":"i","timeout_ms":1000,"memory_mb":64,"cpus":1.0,
            "pool":{"min_warm":2,"max_containers":5,"idle_timeout_ms":9000}}"#;
        let s: Snapshot = serde_json::from_slice(old).unwrap();
        assert_eq!(
            (
                s.run.pool.min_warm,
                s.run.pool.max_containers,
                s.run.pool.idle_timeout_ms
            ),
            (2, Some(5), 9000)
        );
        let wire = serde_json::to_value(&s).unwrap();
        assert_eq!(wire["pool"]["min_warm"], 2, "{wire}");
        assert_eq!(wire["max_containers"], 5, "{wire}");
        assert_eq!(serde_json::from_value::<Snapshot>(wire).unwrap(), s);
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let s = Snapshot {
            secrets: Secrets::clear([("TOKEN".to_string(), "s3cret".to_string())].into()),
            ..Snapshot::default()
        };
        let shown = format!("{s:?}");
        assert!(
            shown.contains("TOKEN") && !shown.contains("s3cret"),
            "{shown}"
        );
    }

    #[test]
    fn a_message_without_a_snapshot_is_malformed() {
        let props = BasicProperties::default().with_message_id(Uuid::now_v7().to_string().into());
        assert!(Work::decode(&props, b"", &crate::seal::Keys::ephemeral(), 60_000).is_err());
        assert!(Work::decode_unchecked(&props).is_err());
    }

    fn echo() -> Work {
        Work {
            id: Uuid::now_v7(),
            trigger: Trigger::Async,
            function: Snapshot {
                name: "echo".into(),
                run: RunSpec {
                    image: "granda-test/echo".into(),
                    ..Default::default()
                },
                secrets: Secrets::default(),
            },
            queued_at_ms: 1,
            reply_to: None,
            correlation_id: None,
            request: None,
            key_id: None,
        }
    }

    #[test]
    fn a_message_not_signed_by_the_installation_or_altered_is_refused() {
        let keys = crate::seal::Keys::ephemeral();
        let work = echo();
        let props = work.properties(b"in", &keys);
        assert!(Work::decode(&props, b"in", &keys, 60_000).is_ok());
        // Signed by someone else, body changed, unsigned, a header changed.
        let other = crate::seal::Keys::ephemeral();
        assert!(Work::decode(&work.properties(b"in", &other), b"in", &keys, 60_000).is_err());
        assert!(Work::decode(&props, b"in!", &keys, 60_000).is_err());
        let mut headers = FieldTable::default();
        for (k, v) in props.headers().as_ref().unwrap().inner() {
            if k.as_str() != H_SIGNATURE {
                headers.insert(k.clone(), v.clone());
            }
        }
        let unsigned = props.clone().with_headers(headers);
        let e = Work::decode(&unsigned, b"in", &keys, 60_000).unwrap_err();
        assert!(e.0.contains("x-granda-signature"), "{e}");
        let mut headers = props.headers().clone().unwrap();
        headers.insert(H_TRIGGER.into(), long_string("sync"));
        let altered = props.clone().with_headers(headers);
        assert!(Work::decode(&altered, b"in", &keys, 60_000).is_err());
        let redirected = props
            .clone()
            .with_reply_to("amq.rabbitmq.reply-to.x".into());
        assert!(Work::decode(&redirected, b"in", &keys, 60_000).is_err());
    }

    #[test]
    fn a_namespaced_function_travels_signed_and_its_namespace_cannot_be_changed() {
        let keys = crate::seal::Keys::ephemeral();
        let mut work = echo();
        work.function.name = "echo.team-b".into();
        let props = work.properties(b"in", &keys);
        let decoded = Work::decode(&props, b"in", &keys, 60_000).unwrap();
        assert_eq!(decoded.function.name, "echo.team-b");
        // Moved to another namespace on the way: the signature no longer checks.
        let mut moved = work.clone();
        moved.function.name = "echo.team-c".into();
        let moved_props = moved.properties(b"in", &keys);
        let mut headers = props.headers().clone().unwrap();
        headers.insert(
            H_FUNCTION.into(),
            moved_props.headers().as_ref().unwrap().inner()[H_FUNCTION].clone(),
        );
        let altered = props.clone().with_headers(headers);
        assert!(Work::decode(&altered, b"in", &keys, 60_000).is_err());
        // A name no function can have is refused even when signed.
        work.function.name = "echo.default".into();
        assert!(Work::decode(&work.properties(b"in", &keys), b"in", &keys, 60_000).is_err());
    }

    #[test]
    fn a_signed_message_with_a_function_a_registration_refuses_is_refused() {
        let keys = crate::seal::Keys::ephemeral();
        let mut root = echo();
        root.function.run.user = Some("0:0".into());
        let e = Work::decode(&root.properties(b"", &keys), b"", &keys, 60_000).unwrap_err();
        assert!(e.0.contains("user"), "{e}");
        let mut big_tmp = echo();
        big_tmp.function.run.tmp_mb = 1 << 20;
        assert!(Work::decode(&big_tmp.properties(b"", &keys), b"", &keys, 60_000).is_err());
        let mut long = echo();
        long.function.run.timeout_ms = 60_001;
        assert!(Work::decode(&long.properties(b"", &keys), b"", &keys, 60_000).is_err());
        // Per-invocation env is fine; a reserved name that is not one is not.
        let mut hook = echo();
        hook.function
            .run
            .env
            .insert("GRANDA_WEBHOOK_EVENT".into(), "push".into());
        assert!(Work::decode(&hook.properties(b"", &keys), b"", &keys, 60_000).is_ok());
        hook.function.run.env.insert("GRANDA_x".into(), "b".into());
        assert!(Work::decode(&hook.properties(b"", &keys), b"", &keys, 60_000).is_err());
    }
}
