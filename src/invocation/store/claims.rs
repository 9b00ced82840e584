//! The claim: a worker marks an invocation `running` as its own before it runs it (one at a
//! time, or many in one statement for the worker's recorder), or creates a sync call's record so.
//! Only one worker's claim of an attempt succeeds; what a failed claim found says why
//! ([`claim_found`]).

use super::*;
use sqlx::Arguments as _;
use sqlx::postgres::PgArguments;

/// What a claim by worker `$w` writes into row `i`: a new `running` attempt, published (a
/// worker has its message, so the outbox must leave it alone).
macro_rules! claim_set {
    ($w:literal) => {
        concat!(
            "status = 'running', attempt = i.attempt + 1, started_at = now(), worker = ",
            $w,
            ", retry_at = NULL, published_at = COALESCE(i.published_at, now()), payload = NULL,
             queue_ms = CASE WHEN i.attempt = 0
                 THEN GREATEST(0, (EXTRACT(EPOCH FROM (now() - i.queued_at)) * 1000)::bigint)
                 ELSE i.queue_ms END"
        )
    };
}

/// When worker `$w` may claim row `i`: it is `queued`, or `running` on this worker's earlier
/// self, or on worker `$dead` (the dead worker the claimer found, and settled, before it
/// claimed; NULL: none) once its lease ran out (`workers.lease_until`, GRANDA_WORKER_LEASE_MS
/// after its last beat; 15 s for a row of a worker from before leases). So a lease that runs
/// out between the claimer's look and its claim never lets a dead worker's run be taken over
/// unsettled.
macro_rules! claimable {
    ($w:literal, $dead:literal) => {
        concat!(
            "i.status = 'queued' OR (i.status = 'running' AND (i.worker = ",
            $w,
            " OR (i.worker = ",
            $dead,
            " AND NOT EXISTS (SELECT 1 FROM workers w WHERE w.id = i.worker
                             AND COALESCE(w.lease_until, w.heartbeat_at + interval '15 seconds') > now()))))"
        )
    };
}

/// Marks an invocation `running` on `worker` as a new attempt (and published: a worker has its
/// message, so the outbox must leave it alone): when it is `queued`, or
/// `running` on this same worker's earlier self (the caller knows it is not running here now),
/// or `running` on worker `dead` (found dead, and settled, by the caller) once its lease ran out.
/// Returns the claimed row's `(attempt, queued_at)`; `None` when it claimed nothing
/// ([`claim_found`] says why).
pub(crate) async fn claim_row(
    pool: &PgPool,
    id: Uuid,
    worker: &str,
    dead: Option<&str>,
) -> Result<Option<(i32, DateTime<Utc>)>, sqlx::Error> {
    sqlx::query_as(concat!(
        "UPDATE invocations i SET ",
        claim_set!("$2"),
        " WHERE i.id = $1 AND (",
        claimable!("$2", "$3"),
        ") RETURNING attempt, queued_at"
    ))
    .bind(id)
    .bind(worker)
    .bind(dead)
    .fetch_optional(pool)
    .await
}

/// What a claim of invocation `id` found: `row` when it claimed it, else why not (one read).
pub(crate) async fn claim_found(
    pool: &PgPool,
    id: Uuid,
    row: Option<(i32, DateTime<Utc>)>,
) -> Result<Claim, sqlx::Error> {
    if let Some((attempt, queued_at)) = row {
        return Ok(Claim::Claimed { attempt, queued_at });
    }
    Ok(match get(pool, id).await? {
        Some(record) if record.status().is_final() => Claim::AlreadyFinal(Box::new(record)),
        Some(_) => Claim::RunningElsewhere,
        None => Claim::Missing,
    })
}

/// `claim` for a sync call, whose record the ingress does not write first (its confirmed
/// message is the acceptance): creates the record as `running` here, or claims the one that
/// exists (the ingress wrote it when the caller stopped waiting, or this is a redelivery).
#[tracing::instrument(level = "debug", skip(pool, inv))]
pub async fn claim_or_create(
    pool: &PgPool,
    inv: &NewInvocation<'_>,
    queued_at_ms: i64,
    worker: &str,
) -> Result<Claim, sqlx::Error> {
    let row = claim_or_create_row(pool, &NewClaim::new(inv, queued_at_ms), worker).await?;
    claim_found(pool, inv.id, row).await
}

/// [`claim_or_create`]'s statement alone: the created or claimed row's `(attempt, queued_at)`,
/// `None` when it did neither.
pub(crate) async fn claim_or_create_row(
    pool: &PgPool,
    call: &NewClaim,
    worker: &str,
) -> Result<Option<(i32, DateTime<Utc>)>, sqlx::Error> {
    sqlx::query_as_with(
        concat!(
        "INSERT INTO invocations AS i (id, function, status, trigger, input, input_size, queued_at, attempt,
                                      started_at, worker, published_at, queue_ms, key_id)
         SELECT $1, $2, 'running', $3, $4, $5, to_timestamp($6::float8 / 1000.0), 1, now(), $7, now(),
                 GREATEST(0, (EXTRACT(EPOCH FROM now()) * 1000)::bigint - $6), $8
         WHERE NOT EXISTS (SELECT 1 FROM refused_invocations r WHERE r.id = $1)
         ON CONFLICT (id) DO UPDATE SET ",
        claim_set!("$7"),
        " WHERE ",
        claimable!("$7", "$9"),
        " RETURNING attempt, queued_at"
        ),
        arrival(call, worker)?,
    )
    .bind(call.key_id)
    .bind(call.dead.as_deref())
    .fetch_optional(pool)
    .await
}

/// A sync call's record as [`claim_or_create_many`] creates it (the owned form of
/// [`NewInvocation`] with its arrival, for a batch that outlives the caller's borrow).
#[derive(Clone, Debug)]
pub struct NewClaim {
    pub id: Uuid,
    pub function: String,
    pub trigger: Trigger,
    /// The input as stored (at most the stored-input cap).
    pub stored_input: Vec<u8>,
    pub input_size: i64,
    /// When the ingress accepted it (ms since the epoch).
    pub queued_at_ms: i64,
    pub key_id: Option<Uuid>,
    /// The dead worker whose run this claim may take over (found, and settled, by the claimer).
    pub dead: Option<String>,
}

impl NewClaim {
    pub fn new(inv: &NewInvocation<'_>, queued_at_ms: i64) -> NewClaim {
        NewClaim {
            id: inv.id,
            function: inv.function.to_string(),
            trigger: inv.trigger,
            stored_input: inv.input[..inv.input.len().min(inv.stored_input_cap)].to_vec(),
            input_size: inv.input.len() as i64,
            queued_at_ms,
            key_id: inv.key_id,
            dead: None,
        }
    }
}

/// [`claim_row`] for many invocations in one statement (the worker's recorder batches the claims
/// of messages that arrive together; no id twice): each `(id, dead)` as `claim_row` claims it.
/// Returns the rows it claimed, as `(id, attempt, queued_at)`; for an id missing from them,
/// [`claim_found`] says why.
#[tracing::instrument(level = "debug", skip_all, fields(records = claims.len()))]
pub async fn claim_many(
    pool: &PgPool,
    claims: &[(Uuid, Option<String>)],
    worker: &str,
) -> Result<Vec<(Uuid, i32, DateTime<Utc>)>, sqlx::Error> {
    let ids: Vec<Uuid> = claims.iter().map(|c| c.0).collect();
    let dead: Vec<Option<&str>> = claims.iter().map(|c| c.1.as_deref()).collect();
    sqlx::query_as(concat!(
        "UPDATE invocations i SET ",
        claim_set!("$2"),
        " FROM unnest($1::uuid[], $3::text[]) AS v(id, dead)
         WHERE i.id = v.id AND (",
        claimable!("$2", "v.dead"),
        ") RETURNING i.id, i.attempt, i.queued_at"
    ))
    .bind(ids)
    .bind(worker)
    .bind(dead)
    .fetch_all(pool)
    .await
}

/// [`claim_or_create`] for many sync calls in one statement (no id twice, none taking over a dead
/// worker's run: an `ON CONFLICT` update can't see which dead worker each row may take over, so
/// such a claim goes alone, [`claim_or_create_row`]). Returns the rows it created or claimed, as
/// `(id, attempt, queued_at)`.
#[tracing::instrument(level = "debug", skip_all, fields(records = calls.len()))]
pub async fn claim_or_create_many(
    pool: &PgPool,
    calls: &[NewClaim],
    worker: &str,
) -> Result<Vec<(Uuid, i32, DateTime<Utc>)>, sqlx::Error> {
    let ids: Vec<Uuid> = calls.iter().map(|c| c.id).collect();
    let functions: Vec<&str> = calls.iter().map(|c| c.function.as_str()).collect();
    let triggers: Vec<&str> = calls.iter().map(|c| c.trigger.as_str()).collect();
    let inputs: Vec<&[u8]> = calls.iter().map(|c| c.stored_input.as_slice()).collect();
    let sizes: Vec<i64> = calls.iter().map(|c| c.input_size).collect();
    let queued: Vec<i64> = calls.iter().map(|c| c.queued_at_ms).collect();
    let keys: Vec<Option<Uuid>> = calls.iter().map(|c| c.key_id).collect();
    sqlx::query_as(concat!(
        "INSERT INTO invocations AS i (id, function, status, trigger, input, input_size, queued_at, attempt,
                                      started_at, worker, published_at, queue_ms, key_id)
         SELECT v.id, v.function, 'running', v.trigger, v.input, v.input_size,
                to_timestamp(v.queued_ms::float8 / 1000.0), 1, now(), $8, now(),
                GREATEST(0, (EXTRACT(EPOCH FROM now()) * 1000)::bigint - v.queued_ms), v.key_id
         FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bytea[], $5::int8[], $6::int8[], $7::uuid[])
              AS v(id, function, trigger, input, input_size, queued_ms, key_id)
         WHERE NOT EXISTS (SELECT 1 FROM refused_invocations r WHERE r.id = v.id)
         ON CONFLICT (id) DO UPDATE SET ",
        claim_set!("$8"),
        " WHERE ",
        claimable!("$8", "NULL"),
        " RETURNING id, attempt, queued_at"
    ))
    .bind(ids)
    .bind(functions)
    .bind(triggers)
    .bind(inputs)
    .bind(sizes)
    .bind(queued)
    .bind(keys)
    .bind(worker)
    .fetch_all(pool)
    .await
}

/// An arriving invocation as parameters `$1` to `$7`, in the order [`claim_or_create`] and
/// [`restore_final`] use them: id, function, trigger, the input kept (up to the cap), the
/// input's size, when it was queued (ms since the epoch) and the worker that runs it.
pub(crate) fn arrival(call: &NewClaim, worker: &str) -> Result<PgArguments, sqlx::Error> {
    let mut args = PgArguments::default();
    (|| {
        args.add(call.id)?;
        args.add(call.function.as_str())?;
        args.add(call.trigger.as_str())?;
        args.add(call.stored_input.as_slice())?;
        args.add(call.input_size)?;
        args.add(call.queued_at_ms)?;
        args.add(worker)
    })()
    .map_err(sqlx::Error::Encode)?;
    Ok(args)
}
