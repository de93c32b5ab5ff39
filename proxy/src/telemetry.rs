//! Per-shard request telemetry: recorded on the request path, exported
//! every interval as a [`shardmap::telemetry::Frame`] by a background task.
//!
//! The request path takes no lock that another worker takes: counters are
//! atomics, and latencies and sampled skus go to the recording worker's own
//! window ([`SLOTS`] per shard, one per worker thread, each behind its own
//! uncontended lock). The background tasks merge the windows once per tick
//! and per export ([`ShardStats::tick`], [`ShardStats::take_sample`]), so
//! the merge costs per shard and per second, not per request.
//!
//! The request path never waits on the sink: frames go through a bounded
//! queue; when it is full (sink down or slow) the oldest frame is dropped and
//! counted, and the next frame says how many were lost.

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use shardmap::telemetry::{Latency, ShardSample};

/// Record every Nth request's sku into the top-k counter: keeps the
/// per-request cost flat while still finding the hot skus.
const TOPK_SAMPLE: u64 = 8;

fn new_hist() -> Histogram<u64> {
    // 1 µs .. 60 s at 2 significant digits: ~20 KiB per histogram.
    Histogram::new_with_bounds(1, 60_000_000, 2).expect("constant histogram bounds are valid")
}

/// Space-saving top-k: at most `cap` counters; a new key evicts the
/// smallest. Good enough for "which skus are hot", bounded memory.
///
/// Keyed by skus from requests, so hashed with a seeded hash (a client
/// cannot choose colliding skus), but aHash rather than std's SipHash-1-3:
/// a sampled request hashes its sku two or three times here (look-up, and
/// on a miss the eviction's remove and insert), which SipHash made most of
/// the sample's cost.
#[derive(Debug, Default)]
struct TopK {
    cap: usize,
    counts: HashMap<Box<str>, u64, ahash::RandomState>,
}

impl TopK {
    fn add(&mut self, sku: &str, by: u64) {
        if let Some(c) = self.counts.get_mut(sku) {
            *c += by;
            return;
        }
        if self.counts.len() < self.cap {
            self.counts.insert(sku.into(), by);
            return;
        }
        if let Some((k, &min)) = self.counts.iter().min_by_key(|(_, c)| **c) {
            let k = k.clone();
            self.counts.remove(&k);
            self.counts.insert(sku.into(), min + by);
        }
    }

    /// Move every counter of `other` into this one (bounded like `add`).
    fn absorb(&mut self, other: &mut TopK) {
        for (sku, c) in other.counts.drain() {
            if let Some(n) = self.counts.get_mut(&sku) {
                *n += c;
            } else if self.counts.len() < self.cap {
                self.counts.insert(sku, c);
            } else {
                self.add(&sku, c);
            }
        }
    }

    fn take(&mut self, k: usize) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = self.counts.drain().map(|(s, c)| (s.into(), c)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v.truncate(k);
        v
    }
}

/// What the background tasks hold between merges. The histograms are
/// made on the first merge that has a latency in it: a shard that never
/// sees a request costs none of them (at 10k shards, three ~20 KiB
/// histograms each would be 600 MB).
#[derive(Debug)]
struct Window {
    /// Since the last exported frame.
    hist: Option<Histogram<u64>>,
    /// Since the last dashboard tick (independent of the export interval,
    /// which may be a minute or more).
    recent: Option<Histogram<u64>>,
    /// Sum of the latencies in `hist` (µs): the mean without a pass over
    /// every bucket.
    sum_us: u64,
    top: TopK,
}

/// Per-worker windows per shard. A worker thread takes slot
/// `its number % SLOTS`; two workers share a slot (and its lock) only past
/// this many threads.
pub const SLOTS: usize = 8;

/// Latencies a slot holds as they came before they go into its histogram.
/// A merge then records what arrived since the last one instead of adding
/// whole histograms (a pass over every one of ~2,500 counts per add, and a
/// reset that zeroes them, for each slot twice a second): under a few
/// hundred requests per shard and worker a second, the slot's histogram is
/// never touched; past that, each full buffer goes into it in one go.
const PENDING: usize = 256;

/// One worker's window of a shard: latencies and sampled skus since the
/// last merge. The pending buffer is made on the slot's first request and
/// the histogram when that buffer first fills (a worker that never serves
/// a shard costs it nothing).
#[derive(Debug, Default)]
struct Slot {
    pending: Vec<u32>,
    hist: Option<Histogram<u64>>,
    sum_us: u64,
    top: TopK,
}

impl Slot {
    /// Move the pending latencies into the slot's histogram.
    fn spill(&mut self) {
        let h = self.hist.get_or_insert_with(new_hist);
        for &us in &self.pending {
            let _ = h.record(u64::from(us));
        }
        self.pending.clear();
    }
}

/// Cache-line aligned, so two workers' slots never share a line.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded(Mutex<Slot>);

static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static MY_SLOT: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// This thread's slot, numbered on its first request.
#[inline]
fn my_slot() -> usize {
    MY_SLOT.with(|c| {
        let s = c.get();
        if s != usize::MAX {
            return s;
        }
        let s = NEXT_SLOT.fetch_add(1, Relaxed) % SLOTS;
        c.set(s);
        s
    })
}

/// Dashboard ticks kept per shard: with one tick a second, rates and
/// latency quantiles cover the last ten seconds.
pub const RECENT_TICKS: usize = 11;

/// One dashboard tick: counter values at `at_ms` and the latencies recorded
/// since the previous tick, as (µs, count) pairs (a few hundred at most,
/// where a full histogram would be ~20 KiB).
#[derive(Debug, Clone)]
struct Tick {
    at_ms: u64,
    /// requests, errors, cache hits, cache misses
    counts: [u64; 4],
    latencies: Vec<(u64, u64)>,
}

/// A shard's activity over the last few seconds (see [`RECENT_TICKS`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Recent {
    /// Seconds covered; 0 until two ticks exist.
    pub window_s: f64,
    pub requests: u64,
    pub errors: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
}

impl Recent {
    /// Requests per second over the window, if there is one.
    pub fn requests_per_s(&self) -> Option<f64> {
        (self.window_s > 0.0).then(|| self.requests as f64 / self.window_s)
    }

    /// Hits ÷ (hits + misses) over the window, if any response said.
    pub fn hit_rate(&self) -> Option<f64> {
        hit_rate(self.cache_hits, self.cache_misses)
    }

    pub fn add(&mut self, o: &Recent) {
        self.window_s = self.window_s.max(o.window_s);
        self.requests += o.requests;
        self.errors += o.errors;
        self.cache_hits += o.cache_hits;
        self.cache_misses += o.cache_misses;
    }
}

/// Hits ÷ (hits + misses), `None` when both are 0.
pub fn hit_rate(hits: u64, misses: u64) -> Option<f64> {
    let n = hits + misses;
    (n > 0).then(|| hits as f64 / n as f64)
}

/// An empty latency histogram with the bounds every shard uses (for
/// merging recent windows across shards).
pub fn latency_histogram() -> Histogram<u64> {
    new_hist()
}

/// Counters of one shard, shared by every table that has the shard.
#[derive(Debug)]
pub struct ShardStats {
    pub id: String,
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    pub bytes: AtomicU64,
    /// Since start, for /metrics; made at the first export with a latency.
    lifetime: Mutex<Option<Histogram<u64>>>,
    /// Written by the request path, one per worker.
    slots: [Padded; SLOTS],
    /// The slots merged; only the background tasks lock it.
    window: Mutex<Window>,
    /// Counter values at the last export.
    exported: Mutex<[u64; 5]>,
    /// The last dashboard ticks, oldest first.
    ticks: Mutex<VecDeque<Tick>>,
}

/// What a finished request contributes.
#[derive(Debug, Clone, Copy)]
pub struct Outcome<'a> {
    /// The sku's bytes (UTF-8, checked when the key was extracted; read
    /// only for the sampled top-k).
    pub sku: &'a [u8],
    pub error: bool,
    /// From the node's `x-cache` header: Some(true) hit, Some(false) miss.
    pub cache_hit: Option<bool>,
    pub bytes: u64,
    pub latency_us: u64,
}

impl ShardStats {
    pub fn new(id: &str, top_k: usize) -> Self {
        Self {
            id: id.to_string(),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
            cache_misses: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            lifetime: Mutex::new(None),
            slots: std::array::from_fn(|_| {
                Padded(Mutex::new(Slot {
                    pending: Vec::new(),
                    hist: None,
                    sum_us: 0,
                    top: TopK {
                        cap: (top_k * 4).max(8),
                        counts: HashMap::default(),
                    },
                }))
            }),
            window: Mutex::new(Window {
                hist: None,
                recent: None,
                sum_us: 0,
                top: TopK {
                    cap: (top_k * 4).max(8),
                    counts: HashMap::default(),
                },
            }),
            exported: Mutex::new([0; 5]),
            ticks: Mutex::new(VecDeque::with_capacity(RECENT_TICKS)),
        }
    }

    /// Called once per request from the logging phase: atomics, and one
    /// histogram record in this worker's own slot.
    #[inline]
    pub fn record(&self, o: Outcome<'_>) {
        let n = self.requests.fetch_add(1, Relaxed);
        if o.error {
            self.errors.fetch_add(1, Relaxed);
        }
        match o.cache_hit {
            Some(true) => {
                self.cache_hits.fetch_add(1, Relaxed);
            }
            Some(false) => {
                self.cache_misses.fetch_add(1, Relaxed);
            }
            None => {}
        }
        self.bytes.fetch_add(o.bytes, Relaxed);
        let us = o.latency_us.clamp(1, 60_000_000);
        let mut slot = self.slots[my_slot()].0.lock();
        if slot.pending.len() >= PENDING {
            slot.spill();
        } else if slot.pending.capacity() == 0 {
            slot.pending.reserve_exact(PENDING);
        }
        // within u32: clamped to 60 s in µs above
        slot.pending.push(us as u32);
        slot.sum_us += us;
        if n % TOPK_SAMPLE == 0 {
            // The sku's bytes were checked when the key was extracted; an
            // empty or non-UTF-8 one (too long to keep) is not counted.
            if let Some(sku) = std::str::from_utf8(o.sku).ok().filter(|s| !s.is_empty()) {
                slot.top.add(sku, TOPK_SAMPLE);
            }
        }
    }

    /// Move every worker's window into the merged one. Off the request
    /// path: each slot is locked just long enough to add its histogram.
    fn merge_slots(&self, w: &mut Window) {
        for slot in &self.slots {
            let mut slot = slot.0.lock();
            w.sum_us += std::mem::take(&mut slot.sum_us);
            if !slot.pending.is_empty() {
                let hist = w.hist.get_or_insert_with(new_hist);
                let recent = w.recent.get_or_insert_with(new_hist);
                for &us in &slot.pending {
                    let _ = hist.record(u64::from(us));
                    let _ = recent.record(u64::from(us));
                }
                slot.pending.clear();
            }
            if let Some(h) = slot.hist.as_mut().filter(|h| !h.is_empty()) {
                let _ = w.hist.get_or_insert_with(new_hist).add(&*h);
                let _ = w.recent.get_or_insert_with(new_hist).add(&*h);
                h.reset();
            }
            if !slot.top.counts.is_empty() {
                w.top.absorb(&mut slot.top);
            }
        }
    }

    /// Cumulative latency histogram since start (for /metrics), as counts
    /// at or below each bound in µs.
    pub fn cumulative_buckets(&self, bounds_us: &[u64]) -> (Vec<u64>, u64, f64) {
        let h = self.lifetime.lock();
        let Some(h) = h.as_ref() else {
            return (vec![0; bounds_us.len()], 0, 0.0);
        };
        let counts = bounds_us.iter().map(|&b| h.count_between(0, b)).collect();
        (counts, h.len(), h.mean() * h.len() as f64)
    }

    /// Whether the shard has seen a request since start.
    pub fn seen(&self) -> bool {
        self.requests.load(Relaxed) > 0
    }

    /// Whether any of the shard's latency histograms, or a worker's buffer
    /// of pending latencies, exists (made on its first request; for the
    /// memory they cost).
    pub fn holds_histograms(&self) -> bool {
        let w = self.window.lock();
        w.hist.is_some()
            || w.recent.is_some()
            || self.lifetime.lock().is_some()
            || self.slots.iter().any(|s| {
                let s = s.0.lock();
                s.hist.is_some() || s.pending.capacity() > 0
            })
    }

    /// Requests, errors, cache hits and cache misses since start.
    pub fn totals(&self) -> [u64; 4] {
        [
            self.requests.load(Relaxed),
            self.errors.load(Relaxed),
            self.cache_hits.load(Relaxed),
            self.cache_misses.load(Relaxed),
        ]
    }

    /// Close the dashboard's current tick at `at_ms` (monotonic ms, see
    /// [`crate::node::now_ms`]). Called about once a second by the
    /// dashboard sampler, off the request path.
    pub fn tick(&self, at_ms: u64) {
        let latencies = {
            let mut w = self.window.lock();
            self.merge_slots(&mut w);
            match w.recent.as_mut().filter(|h| !h.is_empty()) {
                None => Vec::new(),
                Some(recent) => {
                    // In place: a new histogram each tick would be ~20 KiB
                    // allocated and zeroed per shard per second.
                    let v = recent
                        .iter_recorded()
                        .map(|v| (v.value_iterated_to(), v.count_at_value()))
                        .collect();
                    recent.reset();
                    v
                }
            }
        };
        let t = Tick {
            at_ms,
            counts: self.totals(),
            latencies,
        };
        let mut ticks = self.ticks.lock();
        if ticks.len() >= RECENT_TICKS {
            ticks.pop_front();
        }
        ticks.push_back(t);
    }

    /// Activity between the oldest and the newest tick; latencies recorded
    /// in that span are added to `latency` (when given).
    pub fn recent(&self, latency: Option<&mut Histogram<u64>>) -> Recent {
        let ticks = self.ticks.lock();
        let (Some(first), Some(last)) = (ticks.front(), ticks.back()) else {
            return Recent::default();
        };
        if let Some(h) = latency {
            for t in ticks.iter().skip(1) {
                for &(v, c) in &t.latencies {
                    let _ = h.record_n(v, c);
                }
            }
        }
        let d = |i: usize| last.counts[i].saturating_sub(first.counts[i]);
        Recent {
            window_s: last.at_ms.saturating_sub(first.at_ms) as f64 / 1e3,
            requests: d(0),
            errors: d(1),
            cache_hits: d(2),
            cache_misses: d(3),
        }
    }

    /// Close the current window: its sample, or None if idle.
    pub fn take_sample(&self, top_k: usize) -> Option<ShardSample> {
        let now = [
            self.requests.load(Relaxed),
            self.errors.load(Relaxed),
            self.cache_hits.load(Relaxed),
            self.cache_misses.load(Relaxed),
            self.bytes.load(Relaxed),
        ];
        let (latency, top) = {
            let mut w = self.window.lock();
            self.merge_slots(&mut w);
            let sum_us = std::mem::take(&mut w.sum_us);
            let latency = match w.hist.as_mut().filter(|h| !h.is_empty()) {
                None => Latency::default(),
                Some(h) => {
                    let _ = self.lifetime.lock().get_or_insert_with(new_hist).add(&*h);
                    let l = Latency {
                        count: h.len(),
                        p50_us: h.value_at_quantile(0.5),
                        p90_us: h.value_at_quantile(0.9),
                        p99_us: h.value_at_quantile(0.99),
                        max_us: h.max(),
                        mean_us: sum_us as f64 / h.len() as f64,
                    };
                    // In place, as the dashboard's window.
                    h.reset();
                    l
                }
            };
            (latency, w.top.take(top_k))
        };
        let mut last = self.exported.lock();
        let d: Vec<u64> = now
            .iter()
            .zip(last.iter())
            .map(|(a, b)| a.saturating_sub(*b))
            .collect();
        *last = now;
        if d[0] == 0 {
            return None;
        }
        Some(ShardSample {
            shard: self.id.clone(),
            requests: d[0],
            errors: d[1].min(d[0]),
            cache_hits: d[2],
            cache_misses: d[3],
            bytes: d[4],
            latency,
            top_skus: top,
        })
    }
}

/// id → stats, for every shard any table has named.
#[derive(Debug, Default)]
pub struct StatsRegistry {
    shards: Mutex<HashMap<String, Arc<ShardStats>>>,
}

impl StatsRegistry {
    pub fn get(&self, id: &str, top_k: usize) -> Arc<ShardStats> {
        self.shards
            .lock()
            .entry(id.to_string())
            .or_insert_with(|| Arc::new(ShardStats::new(id, top_k)))
            .clone()
    }

    pub fn all(&self) -> Vec<Arc<ShardStats>> {
        let mut v: Vec<_> = self.shards.lock().values().cloned().collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }
}

mod export;

pub use export::{send, ExportCounters, Exporter};

#[cfg(test)]
mod tests;
