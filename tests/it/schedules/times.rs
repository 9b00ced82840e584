//! Pattern and time-zone arithmetic: the `@` shortcuts, and interval patterns through a
//! fall-back night (every real quarter hour once, none lost, none doubled).

use chrono::{DateTime, Datelike, Duration, Timelike, Utc, Weekday};
use chrono_tz::Europe::Berlin;
use granda::producer::cron::CronTz;

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

#[test]
fn weekly_monthly_and_yearly_shortcuts_fire_at_local_midnight() {
    let from = utc("2026-05-13T10:00:00Z"); // a Wednesday
    let weekly = CronTz::parse("@weekly", "UTC").unwrap();
    let runs = weekly.next_runs(from, 3);
    assert_eq!(runs[0], utc("2026-05-17T00:00:00Z"), "{runs:?}");
    assert!(runs.iter().all(|r| r.weekday() == Weekday::Sun));
    assert!(runs.windows(2).all(|w| w[1] - w[0] == Duration::days(7)));

    let monthly = CronTz::parse("@monthly", "UTC").unwrap();
    assert_eq!(
        monthly.next_runs(from, 3),
        vec![
            utc("2026-06-01T00:00:00Z"),
            utc("2026-07-01T00:00:00Z"),
            utc("2026-08-01T00:00:00Z"),
        ]
    );

    let yearly = CronTz::parse("@yearly", "UTC").unwrap();
    assert_eq!(
        yearly.next_runs(from, 2),
        vec![utc("2027-01-01T00:00:00Z"), utc("2028-01-01T00:00:00Z")]
    );
    // Midnight in the schedule's zone: 23:00 UTC the day before in Berlin's winter.
    let berlin = CronTz::parse("@yearly", "Europe/Berlin").unwrap();
    assert_eq!(berlin.next_after(from), Some(utc("2026-12-31T23:00:00Z")));
    let local = berlin.next_after(from).unwrap().with_timezone(&Berlin);
    assert_eq!((local.month(), local.day(), local.hour()), (1, 1, 0));
    for bad in ["@fortnightly", "@weekly * * * * *", "@ weekly"] {
        assert!(CronTz::parse(bad, "UTC").is_err(), "{bad}");
    }
}

#[test]
fn every_quarter_hour_through_berlins_fall_back_hour_is_every_fifteen_minutes_in_utc() {
    // 2026-10-25 01:00 UTC: 03:00 CEST becomes 02:00 CET, so 02:00-02:59 happens twice.
    let q = CronTz::parse("*/15 * * * *", "Europe/Berlin").unwrap();
    let ticks = q.next_runs(utc("2026-10-24T23:50:00Z"), 16);
    assert_eq!(ticks[0], utc("2026-10-25T00:00:00Z"));
    // No quarter hour lost and none doubled: exactly 15 minutes apart, straight through.
    for pair in ticks.windows(2) {
        assert_eq!(pair[1] - pair[0], Duration::minutes(15), "{ticks:?}");
    }
    assert_eq!(ticks[15], utc("2026-10-25T03:45:00Z"));
    // The repeated wall times 02:00-02:45 fire in both passes (CEST, then CET).
    let at_two: Vec<_> = ticks
        .iter()
        .filter(|t| t.with_timezone(&Berlin).hour() == 2)
        .collect();
    assert_eq!(at_two.len(), 8, "{at_two:?}");
    // A fixed wall time in that hour fires once.
    let fixed = CronTz::parse("15 2 * * *", "Europe/Berlin").unwrap();
    let day: Vec<_> = fixed
        .next_runs(utc("2026-10-24T12:00:00Z"), 2)
        .into_iter()
        .filter(|t| t.with_timezone(&Berlin).day() == 25)
        .collect();
    assert_eq!(day, vec![utc("2026-10-25T00:15:00Z")]);
}
