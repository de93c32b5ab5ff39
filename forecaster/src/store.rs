//! The per-shard time-series store: request counts at three resolutions in
//! bounded ring buffers.
//!
//! Each frame's counts are added to every resolution at once (spread over
//! the buckets its interval overlaps), so a coarse bucket is always the sum
//! of the fine buckets inside it while both are retained. Buckets are real
//! seconds, minutes and hours on the store's local grid (`time::Zone`:
//! unix time shifted by the sub-hour part of the zone's offset), so an hour
//! bucket is an hour of the store's clock and a local day is 23, 24 or 25
//! of them across a daylight-saving change. Absent
//! buckets are zero demand. A ring grows only as history arrives, up to its
//! cap, so memory is bounded by `max_shards × (caps × 4 bytes)` and usually
//! far below it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use shardmap::telemetry::Frame;

use crate::time::{Zone, HOUR_MS, MINUTE_MS, SECOND_MS};

/// A ring of consecutive buckets `[end - len, end)`; older buckets are 0.
#[derive(Debug, Clone, PartialEq)]
pub struct Ring {
    pub(crate) end: i64,
    pub(crate) cap: usize,
    pub(crate) vals: VecDeque<f32>,
}

impl Ring {
    pub fn new(cap: usize) -> Ring {
        Ring {
            end: 0,
            cap: cap.max(1),
            vals: VecDeque::new(),
        }
    }

    /// First retained bucket.
    pub fn start(&self) -> i64 {
        self.end - self.vals.len() as i64
    }

    /// One past the newest bucket.
    pub fn end(&self) -> i64 {
        self.end
    }

    pub fn len(&self) -> usize {
        self.vals.len()
    }

    pub fn is_empty(&self) -> bool {
        self.vals.is_empty()
    }

    /// Add `v` to `bucket`. `false` when the bucket has already left the ring.
    pub fn add(&mut self, bucket: i64, v: f32) -> bool {
        if self.vals.is_empty() {
            self.end = bucket + 1;
            self.vals.push_back(v);
            return true;
        }
        if bucket >= self.end {
            let gap = bucket - self.end; // zero buckets between
            if gap as u64 >= self.cap as u64 {
                self.vals.clear();
            } else {
                for _ in 0..gap {
                    self.vals.push_back(0.0);
                }
            }
            self.vals.push_back(v);
            self.end = bucket + 1;
            while self.vals.len() > self.cap {
                self.vals.pop_front();
            }
            return true;
        }
        let start = self.start();
        if bucket < start {
            if self.end - bucket <= self.cap as i64 {
                // Still inside the window: extend backwards with zeros.
                for _ in bucket + 1..start {
                    self.vals.push_front(0.0);
                }
                self.vals.push_front(v);
                return true;
            }
            return false;
        }
        let i = (bucket - start) as usize;
        self.vals[i] += v;
        true
    }

    /// Value of a bucket (0 when not retained).
    pub fn get(&self, bucket: i64) -> f32 {
        let start = self.start();
        if bucket < start || bucket >= self.end {
            return 0.0;
        }
        self.vals[(bucket - start) as usize]
    }

    /// Copy buckets `[from, from + out.len())` into `out`, 0 where absent.
    pub fn copy_into(&self, from: i64, out: &mut [f64]) {
        out.fill(0.0);
        // The retained part of the window, copied slice by slice (the
        // planning cycle copies ~900 hours of every shard it re-runs).
        let to = from + out.len() as i64;
        let (lo, hi) = (from.max(self.start()), to.min(self.end));
        if lo >= hi {
            return;
        }
        let (a, b) = self.vals.as_slices();
        let skip = (lo - self.start()) as usize;
        let dst = &mut out[(lo - from) as usize..(hi - from) as usize];
        let src = a.iter().chain(b).skip(skip);
        for (o, &v) in dst.iter_mut().zip(src) {
            *o = f64::from(v);
        }
    }

    /// The sum of buckets `[from, from + len)`, 0 where absent: what
    /// [`Ring::copy_into`] would copy, summed, without the copy.
    pub fn sum(&self, from: i64, len: i64) -> f64 {
        let (lo, hi) = (from.max(self.start()), (from + len).min(self.end));
        if lo >= hi {
            return 0.0;
        }
        let (a, b) = self.vals.as_slices();
        let skip = (lo - self.start()) as usize;
        let take = (hi - lo) as usize;
        a.iter()
            .chain(b)
            .skip(skip)
            .take(take)
            .map(|&v| f64::from(v))
            .sum()
    }

    fn bytes(&self) -> usize {
        self.vals.capacity() * std::mem::size_of::<f32>()
    }
}

/// Capacities of the three rings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retention {
    pub seconds: usize,
    pub minutes: usize,
    pub hours: usize,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            seconds: 3_600,
            minutes: 7 * 24 * 60,
            hours: 3 * 366 * 24,
        }
    }
}

/// One shard's series and running totals.
#[derive(Debug, Clone)]
pub struct ShardSeries {
    pub seconds: Ring,
    pub minutes: Ring,
    pub hours: Ring,
    pub totals: Totals,
    /// The store's change counter when this shard's closed history last
    /// changed (created, seeded, restored, a late write): the engine
    /// re-runs a shard whose stamp moved, and only that shard.
    pub changed: u64,
}

/// Two series are equal when their data is; the change stamp is the
/// store's bookkeeping (a restored copy gets a new one).
impl PartialEq for ShardSeries {
    fn eq(&self, o: &ShardSeries) -> bool {
        self.seconds == o.seconds
            && self.minutes == o.minutes
            && self.hours == o.hours
            && self.totals == o.totals
    }
}

/// Cumulative counters of a shard since the store began.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Totals {
    pub requests: u64,
    pub errors: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub bytes: u64,
    pub last_seen_unix_ms: i64,
}

impl ShardSeries {
    pub fn new(r: Retention) -> ShardSeries {
        ShardSeries {
            seconds: Ring::new(r.seconds),
            minutes: Ring::new(r.minutes),
            hours: Ring::new(r.hours),
            totals: Totals::default(),
            changed: 0,
        }
    }

    /// Approximate heap bytes held.
    pub fn bytes(&self) -> usize {
        self.seconds.bytes() + self.minutes.bytes() + self.hours.bytes() + 64
    }
}

/// The ways a sample can be turned away.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IngestOutcome {
    pub samples: u64,
    /// Samples older than every ring (counted, not stored).
    pub too_old: u64,
    /// Samples for new shards refused because `max_shards` was reached.
    pub over_capacity: u64,
    /// Frames missing according to the source's `seq` (gap before this one).
    pub seq_gap: u64,
}

/// Counters of the store, for `/metrics`.
#[derive(Debug, Default)]
pub struct StoreCounters {
    pub frames: AtomicU64,
    pub samples: AtomicU64,
    pub seq_gap_frames: AtomicU64,
    pub seq_resets: AtomicU64,
    pub sender_dropped: AtomicU64,
    pub too_old: AtomicU64,
    pub over_capacity: AtomicU64,
    /// Writes into hours that already closed (the forecast inputs changed).
    pub closed_hour_writes: AtomicU64,
    /// Bumped whenever data a forecast reads may have changed other than by
    /// the current hour filling up (new shard, seed, restore, late write):
    /// the inference cache key.
    pub changes: AtomicU64,
}

/// Shared handle to a shard's series.
pub type ShardRef = Arc<Mutex<ShardSeries>>;

/// All shards. Ingest takes the map's read lock and one shard's mutex; only
/// a new shard takes the write lock.
pub struct Store {
    retention: Retention,
    zone: Zone,
    max_shards: usize,
    shards: RwLock<HashMap<Arc<str>, ShardRef>>,
    sources: Mutex<HashMap<String, u64>>,
    pub counters: StoreCounters,
}

/// Buckets of width `w` overlapped by `[t, t + len)`, with the share of the
/// interval each gets.
fn spread(t: i64, len: i64, w: i64, mut f: impl FnMut(i64, f64)) {
    let end = t + len.max(1);
    let first = t.div_euclid(w);
    let last = (end - 1).div_euclid(w);
    if first == last {
        f(first, 1.0);
        return;
    }
    let total = (end - t) as f64;
    for b in first..=last {
        let lo = t.max(b * w);
        let hi = end.min((b + 1) * w);
        f(b, (hi - lo) as f64 / total);
    }
}

impl Store {
    pub fn new(retention: Retention, zone: Zone, max_shards: usize) -> Store {
        Store {
            retention,
            zone,
            max_shards,
            shards: RwLock::new(HashMap::new()),
            sources: Mutex::new(HashMap::new()),
            counters: StoreCounters::default(),
        }
    }

    pub fn retention(&self) -> Retention {
        self.retention
    }

    /// The store's time zone.
    pub fn zone(&self) -> &Zone {
        &self.zone
    }

    /// Milliseconds on the store's bucket grid of a unix time (bucket `b`
    /// of width `w` holds `grid_ms` in `[b·w, (b+1)·w)`).
    pub fn grid_ms(&self, unix_ms: i64) -> i64 {
        unix_ms + self.zone.align_ms()
    }

    /// The store-local hour bucket of a unix time.
    pub fn local_hour(&self, unix_ms: i64) -> i64 {
        self.zone.hour(unix_ms)
    }

    fn shard_or_insert(&self, id: &str) -> Option<ShardRef> {
        if let Some(s) = self.shards.read().get(id) {
            return Some(s.clone());
        }
        let mut w = self.shards.write();
        if let Some(s) = w.get(id) {
            return Some(s.clone());
        }
        if w.len() >= self.max_shards {
            return None;
        }
        let mut series = ShardSeries::new(self.retention);
        series.changed = self.stamp();
        let s = Arc::new(Mutex::new(series));
        w.insert(Arc::from(id), s.clone());
        Some(s)
    }

    /// Bump the change counter; the new value stamps what changed.
    fn stamp(&self) -> u64 {
        self.counters.changes.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// A shard's series, if known.
    pub fn shard(&self, id: &str) -> Option<ShardRef> {
        self.shards.read().get(id).cloned()
    }

    /// Known shard ids, sorted.
    pub fn shard_ids(&self) -> Vec<Arc<str>> {
        let mut v: Vec<Arc<str>> = self.shards.read().keys().cloned().collect();
        v.sort();
        v
    }

    pub fn len(&self) -> usize {
        self.shards.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Approximate heap bytes held by all series.
    pub fn bytes(&self) -> usize {
        let shards: Vec<ShardRef> = self.shards.read().values().cloned().collect();
        shards.iter().map(|s| s.lock().bytes() + 64).sum()
    }

    /// Add a decoded frame. `now_unix_ms` is the receive time (it decides
    /// which hours are already closed). Several sources add up per bucket.
    pub fn ingest(&self, f: &Frame, now_unix_ms: i64) -> IngestOutcome {
        let c = &self.counters;
        let mut out = IngestOutcome::default();
        {
            let mut src = self.sources.lock();
            match src.get(&f.source) {
                Some(&prev) if f.seq > prev + 1 => out.seq_gap = f.seq - prev - 1,
                Some(&prev) if f.seq <= prev => {
                    c.seq_resets.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
            if src.len() < 10_000 || src.contains_key(&f.source) {
                src.insert(f.source.clone(), f.seq);
            }
        }
        c.frames.fetch_add(1, Ordering::Relaxed);
        c.seq_gap_frames.fetch_add(out.seq_gap, Ordering::Relaxed);
        c.sender_dropped
            .fetch_add(f.dropped_before, Ordering::Relaxed);
        let t = self.grid_ms(f.start_unix_ms.min(i64::MAX as u64) as i64);
        let len = f.interval_ms as i64;
        let closed_before = self.local_hour(now_unix_ms);
        for s in &f.shards {
            out.samples += 1;
            let Some(sh) = self.shard_or_insert(&s.shard) else {
                out.over_capacity += 1;
                continue;
            };
            let v = s.requests as f64;
            let mut guard = sh.lock();
            let g = &mut *guard;
            let mut stored = false;
            let mut late = false;
            if v > 0.0 {
                for (ring, w) in [
                    (&mut g.seconds, SECOND_MS),
                    (&mut g.minutes, MINUTE_MS),
                    (&mut g.hours, HOUR_MS),
                ] {
                    spread(t, len, w, |b, frac| {
                        stored |= ring.add(b, (v * frac) as f32);
                        if w == HOUR_MS && b < closed_before {
                            c.closed_hour_writes.fetch_add(1, Ordering::Relaxed);
                            late = true;
                        }
                    });
                }
            } else {
                stored = true;
            }
            if late {
                g.changed = self.stamp();
            }
            if !stored {
                out.too_old += 1;
            }
            let tt = &mut g.totals;
            tt.requests = tt.requests.saturating_add(s.requests);
            tt.errors = tt.errors.saturating_add(s.errors);
            tt.cache_hits = tt.cache_hits.saturating_add(s.cache_hits);
            tt.cache_misses = tt.cache_misses.saturating_add(s.cache_misses);
            tt.bytes = tt.bytes.saturating_add(s.bytes);
            tt.last_seen_unix_ms = tt.last_seen_unix_ms.max(now_unix_ms);
        }
        c.samples.fetch_add(out.samples, Ordering::Relaxed);
        c.too_old.fetch_add(out.too_old, Ordering::Relaxed);
        c.over_capacity
            .fetch_add(out.over_capacity, Ordering::Relaxed);
        out
    }

    /// Seed a shard's hourly history (store-local hours `first_hour ..`)
    /// when it has none yet, so forecasts work before telemetry accumulates.
    /// Returns whether it was seeded. A shard restored from a snapshot keeps
    /// its history: seeding never double-counts.
    pub fn seed_hourly(&self, id: &str, first_hour: i64, values: &[f64]) -> bool {
        let Some(sh) = self.shard_or_insert(id) else {
            return false;
        };
        let mut g = sh.lock();
        if !g.hours.is_empty() {
            return false;
        }
        for (i, &v) in values.iter().enumerate() {
            g.hours.add(first_hour + i as i64, v.max(0.0) as f32);
        }
        g.changed = self.stamp();
        true
    }

    /// Copy a shard's hourly values `[from, from + out.len())`; returns the
    /// number of retained hours (the history length).
    pub fn hourly_window(&self, id: &str, from: i64, out: &mut [f64]) -> usize {
        match self.shard(id) {
            Some(s) => {
                let g = s.lock();
                g.hours.copy_into(from, out);
                g.hours.len()
            }
            None => {
                out.iter_mut().for_each(|o| *o = 0.0);
                0
            }
        }
    }

    /// Like [`Store::hourly_window`], and also the shard's change stamp,
    /// read under the same lock as the values (so a forecast made from them
    /// is keyed by exactly what it read).
    pub fn hourly_snapshot(&self, id: &str, from: i64, out: &mut [f64]) -> (usize, u64) {
        match self.shard(id) {
            Some(s) => {
                let g = s.lock();
                g.hours.copy_into(from, out);
                (g.hours.len(), g.changed)
            }
            None => {
                out.iter_mut().for_each(|o| *o = 0.0);
                (0, 0)
            }
        }
    }

    /// Every known shard, sorted by id, with its change stamp and the
    /// hours of history it holds.
    pub fn shard_stamps(&self) -> Vec<(Arc<str>, u64, usize)> {
        let shards: Vec<(Arc<str>, ShardRef)> = self
            .shards
            .read()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut v: Vec<(Arc<str>, u64, usize)> = shards
            .into_iter()
            .map(|(k, s)| {
                let g = s.lock();
                (k, g.changed, g.hours.len())
            })
            .collect();
        v.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Mean requests per second of a shard over the last `window_s`
    /// seconds of reported traffic: the window ends at the newest bucket
    /// any frame reached (frames arrive after their interval closes), or at
    /// `now` when that is older than two windows (traffic stopped → 0).
    /// Windows longer than half the second ring read the minute ring.
    pub fn recent_rate(&self, id: &str, now_unix_ms: i64, window_s: usize) -> f64 {
        let Some(s) = self.shard(id) else { return 0.0 };
        let window_s = window_s.max(1);
        let now = self.grid_ms(now_unix_ms);
        let g = s.lock();
        let (ring, w_ms) = if window_s * 2 <= self.retention.seconds {
            (&g.seconds, SECOND_MS)
        } else {
            (&g.minutes, MINUTE_MS)
        };
        let buckets = (window_s as i64 * SECOND_MS).div_euclid(w_ms).max(1);
        let now_b = now.div_euclid(w_ms);
        let end = if ring.is_empty() || ring.end() <= now_b - 2 * buckets {
            now_b
        } else {
            ring.end().min(now_b + 1)
        };
        // Summed in place: the manager asks for every shard each round.
        ring.sum(end - buckets, buckets) / (buckets * w_ms / SECOND_MS) as f64
    }

    /// Last sequence number per source (persisted for gap detection).
    pub fn sources(&self) -> HashMap<String, u64> {
        self.sources.lock().clone()
    }

    /// Every shard with a copy of its series (for snapshots).
    pub fn export(&self) -> Vec<(Arc<str>, ShardSeries)> {
        let shards: Vec<(Arc<str>, ShardRef)> = self
            .shards
            .read()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        shards
            .into_iter()
            .map(|(k, v)| (k, v.lock().clone()))
            .collect()
    }

    /// Replace the contents (snapshot restore). Rings are re-capped to the
    /// configured retention.
    pub fn import(&self, shards: Vec<(String, ShardSeries)>, sources: HashMap<String, u64>) {
        let mut m = HashMap::with_capacity(shards.len());
        let stamp = self.stamp();
        for (id, mut s) in shards.into_iter().take(self.max_shards) {
            s.changed = stamp;
            for (ring, cap) in [
                (&mut s.seconds, self.retention.seconds),
                (&mut s.minutes, self.retention.minutes),
                (&mut s.hours, self.retention.hours),
            ] {
                ring.cap = cap.max(1);
                while ring.vals.len() > ring.cap {
                    ring.vals.pop_front();
                }
            }
            m.insert(Arc::from(id.as_str()), Arc::new(Mutex::new(s)));
        }
        *self.shards.write() = m;
        *self.sources.lock() = sources;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_window_and_gaps() {
        let mut r = Ring::new(4);
        assert!(r.add(10, 1.0));
        assert!(r.add(12, 2.0));
        assert_eq!((r.start(), r.end()), (10, 13));
        assert_eq!(r.get(11), 0.0);
        assert!(r.add(14, 3.0));
        assert_eq!(r.len(), 4);
        assert_eq!(r.start(), 11);
        assert!(!r.add(10, 1.0), "left the ring");
        assert!(r.add(100, 5.0));
        assert_eq!((r.len(), r.get(100), r.get(14)), (1, 5.0, 0.0));
        // backfill inside the window
        assert!(r.add(98, 1.0));
        assert_eq!((r.start(), r.len()), (98, 3));
    }

    #[test]
    fn copy_into_is_get_over_the_window() {
        // A ring that wrapped (its deque is in two slices) and was extended
        // backwards.
        let mut r = Ring::new(10);
        for b in 0..25 {
            r.add(b, b as f32);
        }
        r.add(30, 30.0);
        assert_eq!((r.start(), r.end()), (21, 31));
        for from in 15..35 {
            for len in [0usize, 1, 3, 10, 20] {
                let mut out = vec![-1.0; len];
                r.copy_into(from, &mut out);
                assert_eq!(r.sum(from, len as i64), out.iter().sum::<f64>());
                let want: Vec<f64> = (0..len as i64)
                    .map(|i| f64::from(r.get(from + i)))
                    .collect();
                assert_eq!(out, want, "from {from} len {len}");
            }
        }
    }

    #[test]
    fn spread_splits_across_boundaries() {
        let mut got = Vec::new();
        spread(1_500, 1_000, 1_000, |b, f| got.push((b, f)));
        assert_eq!(got, vec![(1, 0.5), (2, 0.5)]);
    }

    fn frame(start_ms: u64, interval_ms: u64, shard: &str, requests: u64) -> Frame {
        Frame {
            v: shardmap::telemetry::FRAME_VERSION,
            source: "p".into(),
            seq: start_ms / interval_ms.max(1),
            start_unix_ms: start_ms,
            interval_ms,
            shards: vec![shardmap::telemetry::ShardSample {
                shard: shard.into(),
                requests,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn recent_rate_follows_what_was_reported_and_falls_to_zero_when_traffic_stops() {
        let st = Store::new(Retention::default(), Zone::utc(), 10);
        let t0 = 1_000_000_000_000u64;
        // 10 requests per second for 30 s, reported one second late
        for k in 0..30 {
            st.ingest(
                &frame(t0 + k * 1000, 1000, "s", 10),
                (t0 + k * 1000 + 1500) as i64,
            );
        }
        let now = (t0 + 30_500) as i64; // the frame for second 30 has not arrived
        assert!((st.recent_rate("s", now, 10) - 10.0).abs() < 1e-9);
        // a long window reads the minute ring: 300 requests over 120 s
        assert!((st.recent_rate("s", now, 3600) - 300.0 / 3600.0).abs() < 1e-9);
        // the last frame a window old still counts; two windows → stopped → 0
        assert!((st.recent_rate("s", now + 10_000, 10) - 10.0).abs() < 1e-9);
        assert_eq!(st.recent_rate("s", now + 60_000, 10), 0.0);
        assert_eq!(st.recent_rate("unknown", now, 10), 0.0);
    }
}
