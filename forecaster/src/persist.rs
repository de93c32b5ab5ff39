//! Store snapshots: the whole store in one checksummed file, written
//! atomically (temp file, fsync, rename) every `interval_s` and on shutdown,
//! and reloaded at start. A restart therefore loses at most one snapshot
//! interval of telemetry. A corrupt or truncated snapshot is reported and
//! the forecaster starts empty (then re-seeds from the sales history)
//! rather than crashing.
//!
//! Layout (little endian): `SCFSNAP1`, body length u64, body, xxh3-64 of the
//! body. Body: sources (count u32; name, last seq u64), shards (count u32;
//! id, totals, then seconds/minutes/hours rings as end i64, len u32, f32s).

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::path::Path;

use crate::store::{Retention, Ring, ShardSeries, Store, Totals};

const MAGIC: &[u8; 8] = b"SCFSNAP1";

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("snapshot {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("snapshot {path} is corrupt: {what}")]
    Corrupt { path: String, what: &'static str },
}

/// Serialise the store.
pub fn encode(store: &Store) -> Vec<u8> {
    let shards = store.export();
    let sources = store.sources();
    let mut b = Vec::with_capacity(64 + shards.iter().map(|(_, s)| s.bytes()).sum::<usize>());
    let put_str = |b: &mut Vec<u8>, s: &str| {
        b.extend_from_slice(&(s.len() as u32).to_le_bytes());
        b.extend_from_slice(s.as_bytes());
    };
    b.extend_from_slice(&(sources.len() as u32).to_le_bytes());
    for (k, v) in &sources {
        put_str(&mut b, k);
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend_from_slice(&(shards.len() as u32).to_le_bytes());
    for (id, s) in &shards {
        put_str(&mut b, id);
        let t = &s.totals;
        for v in [t.requests, t.errors, t.cache_hits, t.cache_misses, t.bytes] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&t.last_seen_unix_ms.to_le_bytes());
        for r in [&s.seconds, &s.minutes, &s.hours] {
            b.extend_from_slice(&r.end.to_le_bytes());
            b.extend_from_slice(&(r.vals.len() as u32).to_le_bytes());
            for v in &r.vals {
                b.extend_from_slice(&v.to_le_bytes());
            }
        }
    }
    let mut out = Vec::with_capacity(b.len() + 24);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(b.len() as u64).to_le_bytes());
    out.extend_from_slice(&b);
    out.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(&b).to_le_bytes());
    out
}

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.b.len() < n {
            return None;
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Some(h)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|x| u32::from_le_bytes(x.try_into().unwrap_or([0; 4])))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|x| u64::from_le_bytes(x.try_into().unwrap_or([0; 8])))
    }
    fn str(&mut self) -> Option<String> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
}

/// Parsed snapshot contents.
pub type Contents = (Vec<(String, ShardSeries)>, HashMap<String, u64>);

/// Parse a snapshot; every length is checked against the bytes present.
pub fn decode(bytes: &[u8], retention: Retention, path: &str) -> Result<Contents, PersistError> {
    let bad = |what| PersistError::Corrupt {
        path: path.to_string(),
        what,
    };
    if bytes.len() < 24 || &bytes[..8] != MAGIC {
        return Err(bad("bad magic or too short"));
    }
    let len = u64::from_le_bytes(bytes[8..16].try_into().map_err(|_| bad("header"))?) as usize;
    if bytes.len() != 16usize.saturating_add(len).saturating_add(8) {
        return Err(bad("length does not match (truncated?)"));
    }
    let body = &bytes[16..16 + len];
    let sum = u64::from_le_bytes(bytes[16 + len..].try_into().map_err(|_| bad("checksum"))?);
    if xxhash_rust::xxh3::xxh3_64(body) != sum {
        return Err(bad("checksum mismatch"));
    }
    let mut r = Reader { b: body };
    let trunc = || bad("truncated body");
    let ns = r.u32().ok_or_else(trunc)? as usize;
    let mut sources = HashMap::new();
    for _ in 0..ns {
        let k = r.str().ok_or_else(trunc)?;
        let v = r.u64().ok_or_else(trunc)?;
        sources.insert(k, v);
    }
    let n = r.u32().ok_or_else(trunc)? as usize;
    let mut shards = Vec::with_capacity(n.min(1 << 20));
    for _ in 0..n {
        let id = r.str().ok_or_else(trunc)?;
        let mut t = [0u64; 6];
        for x in &mut t {
            *x = r.u64().ok_or_else(trunc)?;
        }
        let totals = Totals {
            requests: t[0],
            errors: t[1],
            cache_hits: t[2],
            cache_misses: t[3],
            bytes: t[4],
            last_seen_unix_ms: t[5] as i64,
        };
        let mut rings = Vec::with_capacity(3);
        for cap in [retention.seconds, retention.minutes, retention.hours] {
            let end = r.u64().ok_or_else(trunc)? as i64;
            let len = r.u32().ok_or_else(trunc)? as usize;
            let raw = r
                .take(len.checked_mul(4).ok_or_else(trunc)?)
                .ok_or_else(trunc)?;
            let vals: VecDeque<f32> = raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            if vals.iter().any(|v| !v.is_finite()) {
                return Err(bad("non-finite value"));
            }
            rings.push(Ring {
                end,
                cap: cap.max(1),
                vals,
            });
        }
        let hours = rings.pop().ok_or_else(trunc)?;
        let minutes = rings.pop().ok_or_else(trunc)?;
        let seconds = rings.pop().ok_or_else(trunc)?;
        shards.push((
            id,
            ShardSeries {
                seconds,
                minutes,
                hours,
                totals,
                changed: 0,
            },
        ));
    }
    if !r.b.is_empty() {
        return Err(bad("trailing bytes"));
    }
    Ok((shards, sources))
}

/// Write `bytes` to `path` atomically: a temp file beside it, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), PersistError> {
    let io = |source| PersistError::Io {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    {
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Snapshot the store to `path`.
pub fn save(store: &Store, path: &Path) -> Result<usize, PersistError> {
    let bytes = encode(store);
    write_atomic(path, &bytes)?;
    Ok(bytes.len())
}

/// Restore the store from `path`. `Ok(false)` when there is no snapshot;
/// an error (store untouched, i.e. empty) when it is unreadable or corrupt.
pub fn restore(store: &Store, path: &Path) -> Result<bool, PersistError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(source) => {
            return Err(PersistError::Io {
                path: path.display().to_string(),
                source,
            })
        }
    };
    let (shards, sources) = decode(&bytes, store.retention(), &path.display().to_string())?;
    store.import(shards, sources);
    Ok(true)
}
