//! The exporter: closes each interval's window over every shard into a
//! [`Frame`], keeps a bounded queue of frames not yet sent (the oldest
//! dropped and counted when the sink is down), and sends one to the sink.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use shardmap::config::TelemetrySink;
use shardmap::telemetry::{Frame, ShardSample, FRAME_VERSION};

use super::ShardStats;

/// Counters of the exporter itself.
#[derive(Debug, Default)]
pub struct ExportCounters {
    pub frames_sent: AtomicU64,
    pub frames_dropped: AtomicU64,
    pub send_errors: AtomicU64,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Builds frames every interval and ships them to the sink.
pub struct Exporter {
    pub source: String,
    pub seq: u64,
    pub queue: VecDeque<Frame>,
    pub dropped_pending: u64,
}

impl Exporter {
    pub fn new(source: String) -> Self {
        Self {
            source,
            seq: 0,
            queue: VecDeque::new(),
            dropped_pending: 0,
        }
    }

    /// Close a window over `stats` and queue its frame (bounded by `cap`).
    pub fn collect(
        &mut self,
        stats: &[Arc<ShardStats>],
        interval: Duration,
        top_k: usize,
        table_version: u64,
        cap: usize,
        counters: &ExportCounters,
    ) {
        let shards: Vec<ShardSample> = stats.iter().filter_map(|s| s.take_sample(top_k)).collect();
        self.seq += 1;
        let f = Frame {
            v: FRAME_VERSION,
            source: self.source.clone(),
            seq: self.seq,
            start_unix_ms: unix_ms().saturating_sub(interval.as_millis() as u64),
            interval_ms: interval.as_millis() as u64,
            table_version,
            dropped_before: 0,
            shards,
        };
        if self.queue.len() >= cap {
            self.queue.pop_front();
            self.dropped_pending += 1;
            counters.frames_dropped.fetch_add(1, Relaxed);
        }
        self.queue.push_back(f);
    }
}

/// Send one frame to the sink.
pub async fn send(
    sink: &TelemetrySink,
    client: &crate::http_client::Client,
    frame: &Frame,
) -> Result<(), String> {
    let body = frame.encode();
    match sink {
        TelemetrySink::None => Ok(()),
        TelemetrySink::File(path) => {
            let path = path.clone();
            tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)?;
                let mut line = body;
                line.push(b'\n');
                f.write_all(&line)
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("telemetry file: {e}"))
        }
        TelemetrySink::Http(url) => client.post_json(url, body, Duration::from_secs(2)).await,
    }
}
