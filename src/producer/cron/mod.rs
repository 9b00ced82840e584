//! Schedules: run a function on a cron pattern, in an IANA time zone.
//!
//! A pattern has 5 fields (minute precision), 6 (seconds first: `* * * * * *` fires every
//! second), or is a shortcut (`@yearly`, `@monthly`, `@weekly`, `@daily`, `@hourly`); parsed by
//! `croner`, evaluated in the schedule's time zone (`chrono-tz`), so `0 9 * * *` in
//! `Europe/Berlin` fires at 09:00 Berlin time in summer and in winter. Daylight saving: a wall
//! time the clock skips (02:30 on a spring-forward night) fires at the first instant after the
//! gap; a wall time that happens twice (fall-back) fires once. Interval patterns (a `*` or a step
//! in the time fields) follow real time: through a fall-back hour `*/15 * * * *` fires every 15
//! minutes, in both passes of the repeated hour.
//!
//! Each ingress runs the `ticker`. A tick `(schedule, fire time)` is claimed by a unique row in
//! `schedule_fires`, in the transaction that records the invocation, so each tick fires exactly
//! once whatever the number of servers, and the outbox publishes what was recorded. The schedule's
//! `next_fire_at` is the cursor; `plan` decides what a pass fires from it (see `CatchUp`).

pub(crate) mod ticker;

use std::str::FromStr;

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

/// How many fire times answers list in `next_runs`.
pub(crate) const NEXT_RUNS: usize = 5;

/// A tick older than this when a ticker first sees it was missed (every server was down), not
/// merely late: [`CatchUp`] decides whether it fires.
pub(crate) const MISSED_AFTER: Duration = Duration::seconds(30);

/// At most this many missed ticks are counted as skipped in one pass (a per-second schedule
/// after a day down would be 86 400).
const MAX_COUNTED: u64 = 10_000;

/// What happens to ticks missed while every server was down.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum CatchUp {
    /// Skip them (the default).
    #[default]
    None,
    /// Fire the latest of them once, with its own `GRANDA_SCHEDULED_AT`.
    Latest,
}

impl CatchUp {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CatchUp::None => "none",
            CatchUp::Latest => "latest",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<CatchUp> {
        match s {
            "none" => Some(CatchUp::None),
            "latest" => Some(CatchUp::Latest),
            _ => None,
        }
    }
}

/// A schedule's fields that can't be accepted.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("cron: {0}")]
    Cron(String),
    #[error("timezone: {0:?} is not an IANA time zone (e.g. \"Europe/Berlin\", \"UTC\")")]
    TimeZone(String),
    #[error("cron: {0:?} never fires")]
    Never(String),
}

/// A parsed pattern in its time zone.
#[derive(Clone, Debug)]
pub struct CronTz {
    cron: Cron,
    tz: Tz,
}

impl CronTz {
    /// Parses `pattern` (5 or 6 fields, or an `@` shortcut) and `timezone` (IANA name).
    pub fn parse(pattern: &str, timezone: &str) -> Result<CronTz, ScheduleError> {
        let tz = Tz::from_str(timezone).map_err(|_| ScheduleError::TimeZone(timezone.into()))?;
        if pattern.len() > 200 {
            return Err(ScheduleError::Cron("at most 200 characters".into()));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(pattern)
            .map_err(|e| ScheduleError::Cron(format!("{pattern:?}: {e}")))?;
        let parsed = CronTz { cron, tz };
        if parsed.next_after(Utc::now()).is_none() {
            return Err(ScheduleError::Never(pattern.into()));
        }
        Ok(parsed)
    }

    /// The first fire time strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&t.with_timezone(&self.tz), false)
            .ok()
            .map(|n| n.with_timezone(&Utc))
    }

    /// The first fire time at or after `t`.
    pub(crate) fn next_from(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&t.with_timezone(&self.tz), true)
            .ok()
            .map(|n| n.with_timezone(&Utc))
    }

    /// The last fire time at or before `t`.
    pub(crate) fn last_until(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_previous_occurrence(&t.with_timezone(&self.tz), true)
            .ok()
            .map(|n| n.with_timezone(&Utc))
    }

    /// The next `n` fire times after `t`.
    pub fn next_runs(&self, t: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::with_capacity(n);
        let mut at = t;
        while out.len() < n {
            match self.next_after(at) {
                Some(next) => {
                    out.push(next);
                    at = next;
                }
                None => break,
            }
        }
        out
    }
}

/// What one pass of the ticker does with a due schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Fire times to claim and fire, oldest first.
    pub(crate) fire: Vec<DateTime<Utc>>,
    /// Missed fire times not fired (capped count).
    pub(crate) skipped: u64,
    /// The new cursor: the first fire time after `now`.
    pub(crate) next: Option<DateTime<Utc>>,
}

/// Plans a pass at `now` for a schedule whose first unclaimed fire time is `cursor`.
/// Ticks in `[cursor, now]` at most [`MISSED_AFTER`] old fire (late, but fired); older ones were
/// missed: `catch_up` none skips them, latest fires the latest of them.
pub(crate) fn plan(
    cron: &CronTz,
    cursor: DateTime<Utc>,
    now: DateTime<Utc>,
    catch_up: CatchUp,
) -> Plan {
    let mut fire = Vec::new();
    let mut skipped = 0;
    let horizon = now - MISSED_AFTER;
    if cursor < horizon {
        // Missed: every tick in [cursor, horizon).
        let latest_missed = cron
            .last_until(horizon - Duration::nanoseconds(1))
            .filter(|t| *t >= cursor);
        if let Some(latest) = latest_missed {
            let mut at = cron.next_from(cursor);
            while let Some(t) = at {
                if t > latest || skipped >= MAX_COUNTED {
                    break;
                }
                skipped += 1;
                at = cron.next_after(t);
            }
            if catch_up == CatchUp::Latest {
                fire.push(latest);
                skipped = skipped.saturating_sub(1);
            }
        }
    }
    // croner works in whole seconds: a sub-second start can give the second before it.
    let from = cursor.max(horizon);
    let mut at = cron.next_from(from);
    while let Some(t) = at {
        if t > now {
            break;
        }
        if t >= from && fire.last() != Some(&t) {
            fire.push(t);
        }
        at = cron.next_after(t);
    }
    Plan {
        fire,
        skipped,
        next: cron.next_after(now),
    }
}

/// A schedule as stored.
#[derive(Clone, Debug, sqlx::FromRow)]
pub(crate) struct Schedule {
    pub(crate) id: Uuid,
    pub(crate) function: String,
    pub(crate) cron: String,
    pub(crate) timezone: String,
    pub(crate) payload: Vec<u8>,
    pub(crate) content_type: Option<String>,
    pub(crate) enabled: bool,
    pub(crate) catch_up: String,
    pub(crate) next_fire_at: DateTime<Utc>,
    pub(crate) last_fired_at: Option<DateTime<Utc>>,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) updated_at: DateTime<Utc>,
}

impl Schedule {
    pub(crate) fn catch_up(&self) -> CatchUp {
        CatchUp::parse(&self.catch_up).unwrap_or_default()
    }

    /// The pattern in its zone; a stored schedule was checked when written.
    pub(crate) fn cron_tz(&self) -> Result<CronTz, ScheduleError> {
        CronTz::parse(&self.cron, &self.timezone)
    }

    /// The API's view: the stored fields and the next fire times (none while disabled).
    pub(crate) fn view(&self) -> ScheduleView {
        let next_runs = match (self.enabled, self.cron_tz()) {
            (true, Ok(c)) => c.next_runs(Utc::now(), NEXT_RUNS),
            _ => Vec::new(),
        };
        let (payload, payload_base64) = match std::str::from_utf8(&self.payload) {
            Ok(text) => (Some(text.to_string()), None),
            Err(_) => {
                use base64::Engine as _;
                (
                    None,
                    Some(base64::engine::general_purpose::STANDARD.encode(&self.payload)),
                )
            }
        };
        ScheduleView {
            id: self.id,
            function: self.function.clone(),
            cron: self.cron.clone(),
            timezone: self.timezone.clone(),
            payload,
            payload_base64,
            content_type: self.content_type.clone(),
            enabled: self.enabled,
            catch_up: self.catch_up(),
            last_fired_at: self.last_fired_at,
            next_runs,
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
}

/// A schedule as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub(crate) struct ScheduleView {
    pub(crate) id: Uuid,
    pub(crate) function: String,
    pub(crate) cron: String,
    pub(crate) timezone: String,
    /// The input each run gets, when it is UTF-8.
    pub(crate) payload: Option<String>,
    /// The input, when it is not UTF-8.
    pub(crate) payload_base64: Option<String>,
    pub(crate) content_type: Option<String>,
    pub(crate) enabled: bool,
    pub(crate) catch_up: CatchUp,
    pub(crate) last_fired_at: Option<DateTime<Utc>>,
    /// The next fire times (RFC 3339, UTC); empty while disabled.
    pub(crate) next_runs: Vec<DateTime<Utc>>,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) updated_at: DateTime<Utc>,
}

/// Postgres storage of schedules.
pub mod store {
    use super::*;

    macro_rules! columns {
        () => {
            "id, function, cron, timezone, payload, content_type, enabled, catch_up, next_fire_at, last_fired_at, created_at, updated_at"
        };
    }

    type Query<'q> =
        sqlx::query::QueryAs<'q, sqlx::Postgres, Schedule, sqlx::postgres::PgArguments>;

    /// Binds the fields of `s` a user sets as `$1` to `$8`, in the order [`insert`] and [`save`]
    /// write them: id, function, cron, timezone, payload, content_type, enabled, catch_up.
    fn bind_fields<'q>(query: Query<'q>, s: &'q Schedule) -> Query<'q> {
        query
            .bind(s.id)
            .bind(&s.function)
            .bind(&s.cron)
            .bind(&s.timezone)
            .bind(&s.payload)
            .bind(&s.content_type)
            .bind(s.enabled)
            .bind(&s.catch_up)
    }

    /// Stores a new schedule (fields already checked).
    pub(crate) async fn insert(pool: &PgPool, s: &Schedule) -> Result<Schedule, sqlx::Error> {
        let query = sqlx::query_as::<_, Schedule>(concat!(
            "INSERT INTO schedules (id, function, cron, timezone, payload, content_type, enabled, catch_up, next_fire_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING ",
            columns!()
        ));
        bind_fields(query, s)
            .bind(s.next_fire_at)
            .fetch_one(pool)
            .await
    }

    /// Writes the fields of `s` back (already checked); the cursor only when `restart` gives
    /// one, so a ticker's concurrent pass is not undone.
    pub(crate) async fn save(
        pool: &PgPool,
        s: &Schedule,
        restart: Option<DateTime<Utc>>,
    ) -> Result<Option<Schedule>, sqlx::Error> {
        let query = sqlx::query_as::<_, Schedule>(concat!(
            "UPDATE schedules SET function = $2, cron = $3, timezone = $4, payload = $5, content_type = $6,
                    enabled = $7, catch_up = $8, next_fire_at = COALESCE($9, next_fire_at), updated_at = now()
             WHERE id = $1 RETURNING ",
            columns!()
        ));
        bind_fields(query, s)
            .bind(restart)
            .fetch_optional(pool)
            .await
    }

    pub(crate) async fn get(pool: &PgPool, id: Uuid) -> Result<Option<Schedule>, sqlx::Error> {
        sqlx::query_as::<_, Schedule>(concat!(
            "SELECT ",
            columns!(),
            " FROM schedules WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(pool)
        .await
    }

    /// Every schedule, or one function's, oldest first.
    pub(crate) async fn list(
        pool: &PgPool,
        function: Option<&str>,
    ) -> Result<Vec<Schedule>, sqlx::Error> {
        sqlx::query_as::<_, Schedule>(concat!(
            "SELECT ",
            columns!(),
            " FROM schedules WHERE ($1::text IS NULL OR function = $1) ORDER BY id"
        ))
        .bind(function)
        .fetch_all(pool)
        .await
    }

    pub(crate) async fn delete(pool: &PgPool, id: Uuid) -> Result<bool, sqlx::Error> {
        let done = sqlx::query("DELETE FROM schedules WHERE id = $1")
            .bind(id)
            .execute(pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Ids of enabled schedules due at or before now.
    pub(crate) async fn due(pool: &PgPool, limit: i64) -> Result<Vec<Uuid>, sqlx::Error> {
        let rows: Vec<(Uuid,)> = sqlx::query_as(
            "SELECT id FROM schedules WHERE enabled AND next_fire_at <= now()
             ORDER BY next_fire_at LIMIT $1",
        )
        .bind(limit)
        .fetch_all(pool)
        .await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    /// Locks schedule `id` if it is still enabled and due and no other ticker holds it.
    pub(crate) async fn lock_due(
        tx: &mut sqlx::PgConnection,
        id: Uuid,
    ) -> Result<Option<Schedule>, sqlx::Error> {
        sqlx::query_as::<_, Schedule>(concat!(
            "SELECT ",
            columns!(),
            " FROM schedules WHERE id = $1 AND enabled AND next_fire_at <= now() FOR UPDATE SKIP LOCKED"
        ))
        .bind(id)
        .fetch_optional(tx)
        .await
    }

    /// Claims the tick `(schedule, fire_time)` for invocation `invocation`; `false` if it was
    /// claimed before.
    pub async fn claim(
        tx: &mut sqlx::PgConnection,
        schedule: Uuid,
        fire_time: DateTime<Utc>,
        invocation: Uuid,
    ) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "INSERT INTO schedule_fires (schedule_id, fire_time, invocation_id) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
        )
        .bind(schedule)
        .bind(fire_time)
        .bind(invocation)
        .execute(tx)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Moves the cursor after a pass.
    pub(crate) async fn advance(
        tx: &mut sqlx::PgConnection,
        id: Uuid,
        next: DateTime<Utc>,
        fired: Option<DateTime<Utc>>,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE schedules SET next_fire_at = $2, last_fired_at = COALESCE($3, last_fired_at)
             WHERE id = $1",
        )
        .bind(id)
        .bind(next)
        .bind(fired)
        .execute(tx)
        .await?;
        Ok(())
    }

    /// Forgets claims older than a day: the cursor is past them.
    pub(crate) async fn prune_fires(pool: &PgPool) -> Result<u64, sqlx::Error> {
        let done =
            sqlx::query("DELETE FROM schedule_fires WHERE fire_time < now() - interval '1 day'")
                .execute(pool)
                .await?;
        Ok(done.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn five_six_fields_and_shortcuts_parse() {
        for ok in [
            "* * * * *",
            "*/5 * * * * *",
            "@hourly",
            "@daily",
            "0 9 * * MON-FRI",
        ] {
            CronTz::parse(ok, "UTC").unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "",
            "* * * *",
            "61 * * * *",
            "* * * * * * *",
            "nope",
            "@sometimes",
        ] {
            assert!(CronTz::parse(bad, "UTC").is_err(), "{bad}");
        }
        assert!(matches!(
            CronTz::parse("* * * * *", "Mars/Olympus"),
            Err(ScheduleError::TimeZone(_))
        ));
        assert!(matches!(
            CronTz::parse("0 0 30 2 *", "UTC"),
            Err(ScheduleError::Never(_)) | Err(ScheduleError::Cron(_))
        ));
    }

    #[test]
    fn every_second_and_hourly() {
        let c = CronTz::parse("* * * * * *", "UTC").unwrap();
        let t = utc("2026-01-01T00:00:00.500Z");
        assert_eq!(
            c.next_runs(t, 3),
            vec![
                utc("2026-01-01T00:00:01Z"),
                utc("2026-01-01T00:00:02Z"),
                utc("2026-01-01T00:00:03Z")
            ]
        );
        let h = CronTz::parse("@hourly", "UTC").unwrap();
        assert_eq!(h.next_after(t), Some(utc("2026-01-01T01:00:00Z")));
    }

    #[test]
    fn time_zone_moves_the_utc_instant_with_dst() {
        let c = CronTz::parse("0 9 * * *", "Europe/Berlin").unwrap();
        // Winter: UTC+1.
        assert_eq!(
            c.next_after(utc("2026-01-15T00:00:00Z")),
            Some(utc("2026-01-15T08:00:00Z"))
        );
        // Summer: UTC+2.
        assert_eq!(
            c.next_after(utc("2026-07-15T00:00:00Z")),
            Some(utc("2026-07-15T07:00:00Z"))
        );
        let ny = CronTz::parse("0 9 * * *", "America/New_York").unwrap();
        assert_eq!(
            ny.next_after(utc("2026-01-15T00:00:00Z")),
            Some(utc("2026-01-15T14:00:00Z"))
        );
    }

    #[test]
    fn berlin_spring_forward_fires_once_after_the_gap() {
        // 2026-03-29: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist that night.
        let c = CronTz::parse("30 2 * * *", "Europe/Berlin").unwrap();
        let runs = c.next_runs(utc("2026-03-28T12:00:00Z"), 3);
        // The day before, at 02:30 CET = 01:30 UTC, and the day after at 02:30 CEST = 00:30 UTC.
        assert_eq!(runs[0].date_naive().to_string(), "2026-03-29");
        assert_eq!(
            runs[0],
            utc("2026-03-29T01:00:00Z"),
            "the skipped 02:30 fires once, at 03:00 CEST, right after the gap"
        );
        assert_eq!(runs[1], utc("2026-03-30T00:30:00Z"));
        // Hourly on the spring-forward night: 23 distinct ticks in those 23 hours.
        let hourly = CronTz::parse("0 * * * *", "Europe/Berlin").unwrap();
        let day = hourly.next_runs(utc("2026-03-28T22:59:00Z"), 23);
        assert_eq!(day.first(), Some(&utc("2026-03-28T23:00:00Z")));
        assert_eq!(day.last(), Some(&utc("2026-03-29T21:00:00Z")));
        assert!(day.windows(2).all(|w| w[1] - w[0] == Duration::hours(1)));
    }

    #[test]
    fn berlin_fall_back_fires_a_repeated_wall_time_once() {
        // 2026-10-25: 03:00 CEST goes back to 02:00 CET; 02:30 happens twice.
        let c = CronTz::parse("30 2 * * *", "Europe/Berlin").unwrap();
        let runs = c.next_runs(utc("2026-10-24T12:00:00Z"), 2);
        let on_the_day: Vec<_> = runs
            .iter()
            .filter(|t| t.date_naive().to_string() == "2026-10-25")
            .collect();
        assert_eq!(on_the_day.len(), 1, "{runs:?}");
        assert_eq!(runs[1], utc("2026-10-26T01:30:00Z"));
        // Every 15 minutes through the repeated hour: no instant twice, none lost in UTC.
        let q = CronTz::parse("*/15 * * * *", "Europe/Berlin").unwrap();
        let ticks = q.next_runs(utc("2026-10-24T23:50:00Z"), 12);
        assert!(ticks.windows(2).all(|w| w[1] > w[0]), "{ticks:?}");
        assert_eq!(ticks[0], utc("2026-10-25T00:00:00Z"));
    }

    #[test]
    fn plan_fires_late_ticks_and_skips_missed_ones() {
        let c = CronTz::parse("* * * * * *", "UTC").unwrap();
        let now = utc("2026-01-01T12:00:00.200Z");
        // On time: the one tick at 12:00:00.
        let p = plan(&c, utc("2026-01-01T12:00:00Z"), now, CatchUp::None);
        assert_eq!(p.fire, vec![utc("2026-01-01T12:00:00Z")]);
        assert_eq!(p.skipped, 0);
        assert_eq!(p.next, Some(utc("2026-01-01T12:00:01Z")));
        // Three seconds late: all three fire.
        let p = plan(&c, utc("2026-01-01T11:59:58Z"), now, CatchUp::None);
        assert_eq!(p.fire.len(), 3);
        // Down for an hour: the missed ones are skipped, the last 30 s fire.
        let cursor = utc("2026-01-01T11:00:00Z");
        let p = plan(&c, cursor, now, CatchUp::None);
        assert_eq!(p.fire.first(), Some(&utc("2026-01-01T11:59:31Z")));
        assert_eq!(p.fire.len(), 30);
        assert_eq!(p.skipped, 3600 - 29);
        let p = plan(&c, cursor, now, CatchUp::Latest);
        assert_eq!(p.fire[0], utc("2026-01-01T11:59:30Z"));
        assert_eq!(p.fire.len(), 31);
        assert_eq!(p.skipped, 3600 - 30);
    }

    #[test]
    fn plan_catch_up_latest_fires_the_latest_missed_daily_tick() {
        let c = CronTz::parse("0 6 * * *", "Europe/Berlin").unwrap();
        let cursor = Utc.with_ymd_and_hms(2026, 1, 10, 5, 0, 0).unwrap();
        let now = Utc.with_ymd_and_hms(2026, 1, 13, 12, 0, 0).unwrap();
        let none = plan(&c, cursor, now, CatchUp::None);
        assert!(none.fire.is_empty());
        assert_eq!(none.skipped, 4);
        let latest = plan(&c, cursor, now, CatchUp::Latest);
        assert_eq!(latest.fire, vec![utc("2026-01-13T05:00:00Z")]);
        assert_eq!(latest.skipped, 3);
        assert_eq!(latest.next, Some(utc("2026-01-14T05:00:00Z")));
        // Nothing due yet.
        let early = plan(&c, latest.next.unwrap(), now, CatchUp::Latest);
        assert!(early.fire.is_empty() && early.skipped == 0);
    }
}
