//! Telemetry frames: what the proxy ships to the forecaster, per shard per
//! interval. JSON, one frame per POST (or per line in a file sink).
//!
//! [`Frame::decode`] is the only way bytes from a peer become a frame; it
//! checks sizes and invariants so a corrupt or hostile frame is an error,
//! never a panic or an unbounded allocation. It is fuzzed.

use serde::{Deserialize, Serialize};

/// Frame schema version; bumped on incompatible change.
pub const FRAME_VERSION: u32 = 1;
/// Largest encoded frame accepted.
pub const MAX_FRAME_BYTES: usize = 4 << 20;
const MAX_SHARDS: usize = 100_000;
const MAX_TOP: usize = 1_000;

/// Latency summary of one shard over one interval, in microseconds.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Latency {
    pub count: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

/// One shard's counters over one interval.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ShardSample {
    pub shard: String,
    pub requests: u64,
    pub errors: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub bytes: u64,
    pub latency: Latency,
    /// Hottest skus this interval, most requested first (bounded top-k).
    #[serde(default)]
    pub top_skus: Vec<(String, u64)>,
}

/// One batch from one proxy: every shard that saw traffic in
/// `[start_unix_ms, start_unix_ms + interval_ms)`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Frame {
    pub v: u32,
    /// Identifies the sending proxy.
    pub source: String,
    /// Per-source sequence number; gaps mean frames were dropped.
    pub seq: u64,
    pub start_unix_ms: u64,
    pub interval_ms: u64,
    /// The counter of the assignment version the proxy routed with.
    pub table_version: u64,
    /// Frames the sender dropped before this one (sink down or slow).
    #[serde(default)]
    pub dropped_before: u64,
    pub shards: Vec<ShardSample>,
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes exceeds the {MAX_FRAME_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("frame is not valid JSON for the schema: {0}")]
    Json(#[from] serde_json::Error),
    #[error("frame version {0} is not supported (expected {FRAME_VERSION})")]
    Version(u32),
    #[error("frame invalid: {0}")]
    Invalid(&'static str),
}

impl Frame {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parse and check a frame from untrusted bytes.
    pub fn decode(bytes: &[u8]) -> Result<Frame, FrameError> {
        if bytes.len() > MAX_FRAME_BYTES {
            return Err(FrameError::TooLarge(bytes.len()));
        }
        let f: Frame = serde_json::from_slice(bytes)?;
        if f.v != FRAME_VERSION {
            return Err(FrameError::Version(f.v));
        }
        if f.interval_ms == 0 || f.interval_ms > 3_600_000 {
            return Err(FrameError::Invalid("interval_ms out of range"));
        }
        if f.source.is_empty() || f.source.len() > 256 {
            return Err(FrameError::Invalid("source empty or too long"));
        }
        if f.shards.len() > MAX_SHARDS {
            return Err(FrameError::Invalid("too many shards"));
        }
        for s in &f.shards {
            if s.shard.is_empty() || s.shard.len() > 128 {
                return Err(FrameError::Invalid("shard id empty or too long"));
            }
            if s.errors > s.requests || s.cache_hits + s.cache_misses > s.requests.saturating_mul(2)
            {
                return Err(FrameError::Invalid("counters inconsistent"));
            }
            if s.top_skus.len() > MAX_TOP {
                return Err(FrameError::Invalid("top_skus too long"));
            }
            if !s.latency.mean_us.is_finite() || s.latency.mean_us < 0.0 {
                return Err(FrameError::Invalid(
                    "latency mean not a finite non-negative number",
                ));
            }
        }
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame() -> Frame {
        Frame {
            v: FRAME_VERSION,
            source: "p1".into(),
            seq: 3,
            start_unix_ms: 1,
            interval_ms: 1000,
            table_version: 2,
            dropped_before: 0,
            shards: vec![ShardSample {
                shard: "UK/X".into(),
                requests: 10,
                errors: 1,
                cache_hits: 7,
                cache_misses: 3,
                bytes: 100,
                latency: Latency {
                    count: 10,
                    p50_us: 100,
                    p90_us: 200,
                    p99_us: 300,
                    max_us: 400,
                    mean_us: 120.0,
                },
                top_skus: vec![("a".into(), 5)],
            }],
        }
    }

    #[test]
    fn round_trip_and_rejects() {
        let f = frame();
        assert_eq!(Frame::decode(&f.encode()).unwrap(), f);
        let mut bad = frame();
        bad.shards[0].errors = 11;
        assert!(Frame::decode(&bad.encode()).is_err());
        let mut bad = frame();
        bad.v = 9;
        assert!(matches!(
            Frame::decode(&bad.encode()),
            Err(FrameError::Version(9))
        ));
        let enc = f.encode();
        assert!(Frame::decode(&enc[..enc.len() / 2]).is_err());
        assert!(Frame::decode(b"{\"v\":1,\"zzz\":1}").is_err());
    }
}
