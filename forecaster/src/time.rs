//! Store-local civil time, and the forecaster's clock.
//!
//! The store's calendar is an IANA time zone ([`Zone`], `store.timezone`),
//! with its daylight-saving rules, through `jiff` and the tz database it
//! compiles in (the same rules on every host, with or without a system
//! `/usr/share/zoneinfo`).
//!
//! Two kinds of time index are used:
//!
//! - **Hour buckets**: consecutive real hours (3,600 s each) whose
//!   boundaries are the store's local `:00` — unix time shifted by the
//!   sub-hour part of the zone's offset (0 for whole-hour zones such as
//!   Europe/London, 30 min for Asia/Kolkata), so a bucket never repeats or
//!   skips. A local day has 23, 24 or 25 of them. The second and minute
//!   rings use the same shift.
//! - **Civil time**: the local wall-clock reading (date and time, no zone),
//!   counted as seconds or days since 1970-01-01 00:00 *civil* — the time
//!   strings of the feeds and the day index of the event calendar and the
//!   daily model. Civil arithmetic has no daylight saving (a civil week is
//!   always 168 civil hours).
//!
//! [`Zone`] maps between the two: a bucket's local date and hour (for the
//! calendar features, events and open hours), a day's first bucket (for
//! daily totals), a civil reading's instant (gaps resolve forward, folds to
//! the earlier instant: jiff's "compatible" rule).

use std::sync::{Arc, OnceLock};

use jiff::civil::DateTime;
use jiff::tz::{Offset, TimeZone, TimeZoneDatabase};
use jiff::Timestamp;

/// Milliseconds per second, minute, hour, day.
pub const SECOND_MS: i64 = 1_000;
pub const MINUTE_MS: i64 = 60_000;
pub const HOUR_MS: i64 = 3_600_000;
pub const DAY_MS: i64 = 86_400_000;

const DAY_S: i64 = 86_400;

/// The tz database compiled into the binary.
fn tzdb() -> &'static TimeZoneDatabase {
    static DB: OnceLock<TimeZoneDatabase> = OnceLock::new();
    DB.get_or_init(TimeZoneDatabase::bundled)
}

/// Civil seconds (a wall-clock reading as seconds since 1970-01-01 00:00)
/// of a civil datetime.
fn civil_secs(dt: DateTime) -> i64 {
    // UTC has no transitions: this is plain calendar arithmetic.
    TimeZone::UTC.to_timestamp(dt).map_or(0, |t| t.as_second())
}

fn civil_dt(secs: i64) -> DateTime {
    let t = Timestamp::from_second(secs).unwrap_or(Timestamp::UNIX_EPOCH);
    TimeZone::UTC.to_datetime(t)
}

fn timestamp_ms(unix_ms: i64) -> Timestamp {
    Timestamp::from_millisecond(unix_ms).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// Day of week of a civil day index, Monday = 0.
pub fn weekday(day: i64) -> u32 {
    u32::from(civil_dt(day * DAY_S).weekday().to_monday_zero_offset() as u8)
}

/// Day of year 1..366 of a civil day index.
pub fn day_of_year(day: i64) -> u32 {
    civil_dt(day * DAY_S).day_of_year() as u32
}

/// Parse `YYYY-MM-DD`, `YYYY-MM-DD HH:MM[:SS[.fff]]` or the same with `T` as
/// a civil (wall-clock) reading: civil seconds since 1970-01-01 00:00.
/// A trailing `Z` is ignored (feeds give store-local times). `None` on
/// anything else.
pub fn parse_local(s: &str) -> Option<i64> {
    let s = s.trim();
    let s = s.strip_suffix('Z').unwrap_or(s);
    if s.len() < 10 || !s.is_char_boundary(10) {
        return None;
    }
    // A date alone, or a time with minutes only: complete what jiff expects.
    let dt: DateTime = match s.len() {
        10 => format!("{s}T00:00:00").parse().ok()?,
        16 => format!("{s}:00").parse().ok()?,
        _ => s.parse().ok()?,
    };
    Some(civil_secs(dt))
}

/// `YYYY-MM-DD HH:MM:SS` of civil seconds.
pub fn format_local(secs: i64) -> String {
    civil_dt(secs).strftime("%Y-%m-%d %H:%M:%S").to_string()
}

/// RFC 3339 UTC timestamp of unix milliseconds (for `generated_at`).
pub fn format_utc_ms(ms: i64) -> String {
    timestamp_ms(ms)
        .strftime("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// A store-local hour bucket's civil reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalHour {
    /// Civil day index (days since 1970-01-01, local).
    pub day: i64,
    /// Hour of day 0..23 of the bucket's start.
    pub hour: u32,
    /// Civil seconds of the bucket's start.
    pub civil_s: i64,
}

/// The store's time zone.
#[derive(Debug, Clone)]
pub struct Zone {
    tz: TimeZone,
    name: Arc<str>,
    /// Shift of the hour grid: the sub-hour part of the zone's offset.
    align_ms: i64,
}

impl PartialEq for Zone {
    fn eq(&self, o: &Zone) -> bool {
        self.name == o.name
    }
}

impl Default for Zone {
    fn default() -> Self {
        Zone::utc()
    }
}

impl Zone {
    pub fn utc() -> Zone {
        Zone::from_tz(TimeZone::UTC, "UTC")
    }

    /// An IANA time zone by name (`Europe/London`, `UTC`). The error says
    /// what was not found.
    pub fn named(name: &str) -> Result<Zone, String> {
        let name = name.trim();
        if name.is_empty() {
            return Err("empty: an IANA time zone name such as \"Europe/London\"".into());
        }
        match tzdb().get(name) {
            Ok(tz) => Ok(Zone::from_tz(tz, name)),
            Err(_) => Err(format!(
                "{name:?} is not an IANA time zone (e.g. \"Europe/London\", \"America/New_York\", \"UTC\")"
            )),
        }
    }

    /// A zone with a fixed UTC offset and no daylight saving.
    pub fn fixed_minutes(minutes: i32) -> Result<Zone, String> {
        let off = Offset::from_seconds(minutes.saturating_mul(60))
            .map_err(|_| format!("{minutes} minutes is not a UTC offset"))?;
        Ok(Zone::from_tz(TimeZone::fixed(off), &format!("{off}")))
    }

    fn from_tz(tz: TimeZone, name: &str) -> Zone {
        // The sub-hour part of the offset in force now: zero except for the
        // few half- and quarter-hour zones, whose part does not change with
        // their daylight saving (Lord Howe Island's 30-minute shift aside).
        let off_ms = i64::from(tz.to_offset(Timestamp::now()).seconds()) * SECOND_MS;
        Zone {
            tz,
            name: Arc::from(name),
            align_ms: off_ms.rem_euclid(HOUR_MS),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The shift of the bucket grid (add to unix ms before dividing by the
    /// bucket width).
    pub fn align_ms(&self) -> i64 {
        self.align_ms
    }

    /// The hour bucket holding a unix instant.
    pub fn hour(&self, unix_ms: i64) -> i64 {
        (unix_ms + self.align_ms).div_euclid(HOUR_MS)
    }

    /// Unix ms at which an hour bucket starts.
    pub fn hour_start_ms(&self, hour: i64) -> i64 {
        hour * HOUR_MS - self.align_ms
    }

    /// Civil reading of a unix instant.
    pub fn civil_s(&self, unix_ms: i64) -> i64 {
        civil_secs(self.tz.to_datetime(timestamp_ms(unix_ms)))
    }

    /// Local date and hour of an hour bucket's start.
    pub fn local_hour(&self, hour: i64) -> LocalHour {
        let civil_s = self.civil_s(self.hour_start_ms(hour));
        LocalHour {
            day: civil_s.div_euclid(DAY_S),
            hour: (civil_s.rem_euclid(DAY_S) / 3_600) as u32,
            civil_s,
        }
    }

    /// The civil day an hour bucket falls in.
    pub fn day_of_hour(&self, hour: i64) -> i64 {
        self.local_hour(hour).day
    }

    /// Unix ms of a civil reading: a time in a spring-forward gap moves
    /// forward by the gap's length (01:30 on a UK spring-forward night is
    /// 02:30 BST), a time in a fall-back fold is its earlier instant.
    pub fn instant_ms(&self, civil_s: i64) -> i64 {
        let dt = civil_dt(civil_s);
        self.tz
            .to_ambiguous_timestamp(dt)
            .compatible()
            .map_or(civil_s * SECOND_MS, |t| t.as_millisecond())
    }

    /// The hour bucket of a civil reading (see [`Zone::instant_ms`]).
    pub fn hour_of_civil(&self, civil_s: i64) -> i64 {
        self.hour(self.instant_ms(civil_s))
    }

    /// The first hour bucket of civil day `day` (the one holding its local
    /// midnight, or the first instant after it). Day `d` holds the buckets
    /// `first_hour(d) .. first_hour(d + 1)`: 23, 24 or 25 of them.
    pub fn first_hour(&self, day: i64) -> i64 {
        self.hour_of_civil(day * DAY_S)
    }

    /// `YYYY-MM-DD HH:MM:SS±HH:MM` of an hour bucket's start (the offset
    /// tells the two 01:00 hours of a fall-back night apart).
    pub fn format_hour(&self, hour: i64) -> String {
        let t = timestamp_ms(self.hour_start_ms(hour));
        t.to_zoned_datetime(self.tz.clone())
            .strftime("%Y-%m-%d %H:%M:%S%:z")
            .to_string()
    }
}

/// Wall-clock unix milliseconds.
pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The forecaster's notion of "now". Real time, or — for replaying a
/// recorded trace faster than it happened — trace time: `start` plus the
/// real time since the clock started, times `speed`. In replay, telemetry
/// frames are re-timed onto the trace, forecasts are made at trace time
/// and the shard manager plans in it; deadlines handed to other processes
/// are converted back to real time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Clock {
    replay: Option<Replay>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Replay {
    /// Trace time at `t0`, unix ms.
    start_ms: i64,
    /// Real time the clock started, unix ms.
    t0_ms: i64,
    /// Trace milliseconds per real millisecond.
    speed: f64,
}

impl Default for Clock {
    fn default() -> Self {
        Clock::real()
    }
}

impl Clock {
    pub fn real() -> Clock {
        Clock { replay: None }
    }

    /// Trace time from `start_ms` on, `speed` times faster than real time,
    /// starting now.
    pub fn replay(start_ms: i64, speed: f64) -> Clock {
        Clock::replay_from(start_ms, speed, now_unix_ms())
    }

    pub fn replay_from(start_ms: i64, speed: f64, t0_ms: i64) -> Clock {
        Clock {
            replay: Some(Replay {
                start_ms,
                t0_ms,
                speed: if speed.is_finite() && speed > 0.0 {
                    speed
                } else {
                    1.0
                },
            }),
        }
    }

    pub fn is_replay(&self) -> bool {
        self.replay.is_some()
    }

    /// Trace milliseconds per real millisecond (1 in real time).
    pub fn speed(&self) -> f64 {
        self.replay.map_or(1.0, |r| r.speed)
    }

    /// Now, on this clock (unix ms).
    pub fn now_ms(&self) -> i64 {
        self.at(now_unix_ms())
    }

    /// A real instant (unix ms) on this clock.
    pub fn at(&self, real_ms: i64) -> i64 {
        match self.replay {
            None => real_ms,
            Some(r) => r.start_ms + ((real_ms - r.t0_ms) as f64 * r.speed) as i64,
        }
    }

    /// The real instant (unix ms) of a time on this clock.
    pub fn to_real(&self, clock_ms: i64) -> i64 {
        match self.replay {
            None => clock_ms,
            Some(r) => r.t0_ms + ((clock_ms - r.start_ms) as f64 / r.speed) as i64,
        }
    }

    /// A real duration (ms) on this clock.
    pub fn span(&self, real_ms: i64) -> i64 {
        (real_ms as f64 * self.speed()) as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(s: &str) -> i64 {
        parse_local(s).unwrap().div_euclid(DAY_S)
    }

    fn utc_ms(s: &str) -> i64 {
        parse_local(s).unwrap() * SECOND_MS
    }

    #[test]
    fn civil_readings_and_known_dates() {
        assert_eq!(day("1970-01-01"), 0);
        // 2011-11-14 was a Monday; 2009-12-01 a Tuesday.
        assert_eq!(weekday(day("2011-11-14")), 0);
        assert_eq!(weekday(day("2009-12-01")), 1);
        assert_eq!(weekday(day("1969-12-31")), 2);
        assert_eq!(day_of_year(day("2012-12-31")), 366);
        assert_eq!(day_of_year(day("2011-01-01")), 1);
        let t = parse_local("2011-11-14 09:00:00").unwrap();
        assert_eq!(format_local(t), "2011-11-14 09:00:00");
        assert_eq!(parse_local("2011-11-14T09:00").unwrap(), t);
        assert_eq!(parse_local("2011-11-14 09:00:00Z").unwrap(), t);
        assert_eq!(parse_local("2011-11-14 09:00:00.75").unwrap(), t);
        assert_eq!(parse_local("2011-11-14").unwrap() % 86_400, 0);
        assert!(parse_local("2011-13-01").is_none());
        assert!(parse_local("2011-02-30").is_none());
        assert!(parse_local("yesterday").is_none());
        assert!(parse_local("2011-11-14 25:00").is_none());
        assert_eq!(format_utc_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_utc_ms(1_234), "1970-01-01T00:00:01.234Z");
    }

    #[test]
    fn unknown_zone_is_an_error_and_fixed_offsets_work() {
        let e = Zone::named("Europe/Londres").unwrap_err();
        assert!(e.contains("Europe/Londres") && e.contains("IANA"), "{e}");
        assert!(Zone::named("").is_err());
        let z = Zone::fixed_minutes(330).unwrap();
        // +05:30: the hour grid is shifted by half an hour.
        assert_eq!(z.align_ms(), 30 * MINUTE_MS);
        let h = z.hour(utc_ms("2011-06-01 03:30:00")); // 09:00 local
        assert_eq!(z.local_hour(h).hour, 9);
        assert_eq!(z.hour_start_ms(h), utc_ms("2011-06-01 03:30:00"));
        assert!(Zone::fixed_minutes(26 * 60).is_err());
    }

    /// Local (hour, day) of each bucket from `from` (UTC) for `n` hours.
    fn hours(z: &Zone, from: &str, n: i64) -> Vec<(u32, i64)> {
        let h0 = z.hour(utc_ms(from));
        (h0..h0 + n)
            .map(|h| {
                let l = z.local_hour(h);
                (l.hour, l.day)
            })
            .collect()
    }

    #[test]
    fn london_spring_forward_2011_has_a_23_hour_day() {
        let z = Zone::named("Europe/London").unwrap();
        let d = day("2011-03-27");
        // 00:59 GMT -> 02:00 BST at 01:00 UTC.
        let got: Vec<u32> = hours(&z, "2011-03-26 23:00:00", 5)
            .iter()
            .map(|x| x.0)
            .collect();
        assert_eq!(got, vec![23, 0, 2, 3, 4]);
        assert_eq!(z.first_hour(d + 1) - z.first_hour(d), 23);
        assert_eq!(z.first_hour(d) - z.first_hour(d - 1), 24);
        // 09:00 local is 08:00 UTC from that morning on.
        let nine = z.hour_of_civil(parse_local("2011-03-28 09:00").unwrap());
        assert_eq!(z.hour_start_ms(nine), utc_ms("2011-03-28 08:00:00"));
        assert_eq!(z.local_hour(nine).hour, 9);
        assert_eq!(weekday(z.day_of_hour(nine)), 0, "a Monday");
        // 01:30 does not exist: it resolves to the instant after the gap.
        let gap = z.hour_of_civil(parse_local("2011-03-27 01:30").unwrap());
        assert_eq!(z.local_hour(gap).hour, 2);
        assert_eq!(z.format_hour(gap), "2011-03-27 02:00:00+01:00");
        // Every bucket of the day is on that day.
        for h in z.first_hour(d)..z.first_hour(d + 1) {
            assert_eq!(z.day_of_hour(h), d);
        }
    }

    #[test]
    fn london_fall_back_2011_has_a_25_hour_day() {
        let z = Zone::named("Europe/London").unwrap();
        let d = day("2011-10-30");
        // 01:59 BST -> 01:00 GMT at 01:00 UTC: two hours read 01.
        let got: Vec<u32> = hours(&z, "2011-10-29 23:00:00", 5)
            .iter()
            .map(|x| x.0)
            .collect();
        assert_eq!(got, vec![0, 1, 1, 2, 3]);
        assert_eq!(z.first_hour(d + 1) - z.first_hour(d), 25);
        let first = z.hour(utc_ms("2011-10-30 00:00:00"));
        assert_eq!(z.format_hour(first), "2011-10-30 01:00:00+01:00");
        assert_eq!(z.format_hour(first + 1), "2011-10-30 01:00:00+00:00");
        // The fold's civil 01:30 is its earlier instant (BST).
        assert_eq!(
            z.hour_of_civil(parse_local("2011-10-30 01:30").unwrap()),
            first
        );
        // 09:00 local is 09:00 UTC again after the change, 08:00 UTC before.
        let sat = z.hour_of_civil(parse_local("2011-10-29 09:00").unwrap());
        let mon = z.hour_of_civil(parse_local("2011-10-31 09:00").unwrap());
        assert_eq!(z.hour_start_ms(sat), utc_ms("2011-10-29 08:00:00"));
        assert_eq!(z.hour_start_ms(mon), utc_ms("2011-10-31 09:00:00"));
        assert_eq!(mon - sat, 49, "two civil days plus the extra hour");
    }

    #[test]
    fn utc_zone_is_the_plain_grid() {
        let z = Zone::utc();
        let t = utc_ms("2011-07-01 10:00:00");
        assert_eq!(z.hour(t), t / HOUR_MS);
        assert_eq!(z.local_hour(z.hour(t)).hour, 10);
        assert_eq!(z.first_hour(day("2011-07-01")), day("2011-07-01") * 24);
        assert_eq!(z.format_hour(z.hour(t)), "2011-07-01 10:00:00+00:00");
    }

    proptest::proptest! {
        /// Every local hour that exists (not in a spring-forward gap) maps to
        /// one instant and back to itself, in zones on both hemispheres, a
        /// half-hour zone and one without daylight saving.
        #[test]
        fn local_to_utc_to_local_round_trips(
            zi in 0usize..5,
            civil_h in (30i64 * 365 * 24)..(60i64 * 365 * 24),
        ) {
            let name = ["Europe/London", "America/New_York", "Australia/Sydney", "Asia/Kolkata", "UTC"][zi];
            let z = Zone::named(name).unwrap();
            let civil_s = civil_h * 3_600;
            let ms = z.instant_ms(civil_s);
            let back = z.civil_s(ms);
            let in_gap = back != civil_s;
            if in_gap {
                // Only a gap moves a reading, forward, by less than its length.
                proptest::prop_assert!(back > civil_s && back - civil_s <= 3_600, "{name} {civil_s} -> {back}");
                let off = |t: i64| z.tz.to_offset(timestamp_ms(t)).seconds();
                proptest::prop_assert!(off(ms) > off(ms - HOUR_MS), "{name}: moved outside a gap");
            } else {
                let h = z.hour(ms);
                proptest::prop_assert_eq!(z.local_hour(h).civil_s, civil_s);
                proptest::prop_assert_eq!(z.hour_start_ms(h), ms);
            }
        }
    }

    #[test]
    fn replay_clock_maps_both_ways() {
        let c = Clock::replay_from(1_000_000, 3600.0, 50_000);
        assert_eq!(c.at(50_000), 1_000_000);
        assert_eq!(c.at(51_000), 1_000_000 + 3_600_000);
        assert_eq!(c.to_real(1_000_000 + 7_200_000), 52_000);
        assert_eq!(c.span(500), 1_800_000);
        let r = Clock::real();
        assert_eq!(r.at(123), 123);
        assert_eq!(r.to_real(123), 123);
        assert!(!r.is_replay() && c.is_replay());
    }
}
