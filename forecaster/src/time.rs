//! Store-local civil time without a date library.
//!
//! Every bucket index in the forecaster is counted in *store-local* time
//! (unix time plus the configured UTC offset), so that an hour or a day of
//! the series is an hour or a day of the store's calendar, the grid the
//! model was trained on (SIGNALS.md: "ISO 8601 local times of the store").

/// Milliseconds per second, minute, hour, day.
pub const SECOND_MS: i64 = 1_000;
pub const MINUTE_MS: i64 = 60_000;
pub const HOUR_MS: i64 = 3_600_000;
pub const DAY_MS: i64 = 86_400_000;

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// (year, month 1..12, day 1..31) of a day count since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Day of week, Monday = 0 (1970-01-01 was a Thursday).
pub fn weekday(day: i64) -> u32 {
    (day + 3).rem_euclid(7) as u32
}

/// Day of year 1..366.
pub fn day_of_year(day: i64) -> u32 {
    let (y, _, _) = civil_from_days(day);
    (day - days_from_civil(y, 1, 1) + 1) as u32
}

/// Parse `YYYY-MM-DD`, `YYYY-MM-DD HH:MM[:SS]` or the same with `T`, as
/// store-local seconds since the epoch. `None` on anything else.
pub fn parse_local(s: &str) -> Option<i64> {
    let s = s.trim();
    let (date, time) = match s.find([' ', 'T']) {
        Some(i) => (&s[..i], Some(s[i + 1..].trim())),
        None => (s, None),
    };
    let mut it = date.split('-');
    let y: i64 = it.next()?.parse().ok()?;
    let m: u32 = it.next()?.parse().ok()?;
    let d: u32 = it.next()?.parse().ok()?;
    if it.next().is_some() || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let mut secs = 0i64;
    if let Some(t) = time.filter(|t| !t.is_empty()) {
        let t = t.trim_end_matches('Z');
        let mut it = t.split(':');
        let h: i64 = it.next()?.parse().ok()?;
        let mi: i64 = it.next().unwrap_or("0").parse().ok()?;
        let se: f64 = it.next().unwrap_or("0").parse().ok()?;
        if it.next().is_some() || !(0..24).contains(&h) || !(0..60).contains(&mi) {
            return None;
        }
        if !(0.0..61.0).contains(&se) {
            return None;
        }
        secs = h * 3600 + mi * 60 + se as i64;
    }
    Some(days_from_civil(y, m, d) * 86_400 + secs)
}

/// `YYYY-MM-DD HH:MM:SS` of store-local seconds.
pub fn format_local(secs: i64) -> String {
    let day = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(day);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// RFC 3339 UTC timestamp of unix milliseconds (for `generated_at`).
pub fn format_utc_ms(ms: i64) -> String {
    let s = ms.div_euclid(1000);
    let mut out = format_local(s).replace(' ', "T");
    out.push_str(&format!(".{:03}Z", ms.rem_euclid(1000)));
    out
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

    #[test]
    fn civil_round_trip_and_known_dates() {
        for z in [-800_000i64, -1, 0, 1, 15_000, 18_262, 40_000] {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        // 2011-11-14 was a Monday; 2009-12-01 a Tuesday.
        assert_eq!(weekday(days_from_civil(2011, 11, 14)), 0);
        assert_eq!(weekday(days_from_civil(2009, 12, 1)), 1);
        assert_eq!(day_of_year(days_from_civil(2012, 12, 31)), 366);
        assert_eq!(day_of_year(days_from_civil(2011, 1, 1)), 1);
        let t = parse_local("2011-11-14 09:00:00").unwrap();
        assert_eq!(format_local(t), "2011-11-14 09:00:00");
        assert_eq!(parse_local("2011-11-14").unwrap() % 86_400, 0);
        assert!(parse_local("2011-13-01").is_none());
        assert!(parse_local("yesterday").is_none());
        assert_eq!(format_utc_ms(0), "1970-01-01T00:00:00.000Z");
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
