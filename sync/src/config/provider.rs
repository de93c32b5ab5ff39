//! `[provider]`: the third party's database the copies are read from.

use std::path::Path;

use serde::Deserialize;

use super::resolve;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderFile {
    /// `sqlite:PATH` (relative to the config file) or a PostgreSQL url.
    #[serde(default = "d_provider")]
    pub url: String,
    /// Seed an empty provider from this catalog CSV (sqlite only; relative
    /// to the config file).
    #[serde(default)]
    pub seed_catalog: Option<String>,
    #[serde(default = "d_scale")]
    pub seed_scale: u32,
    /// Added to every provider read (a delta batch, a slow-path get), ms:
    /// the wide-area round trip to a third party's database, for
    /// benchmarks on one machine. 0 (the default) adds nothing — in
    /// production the network is real.
    #[serde(default)]
    pub read_latency_ms: u64,
}

fn d_provider() -> String {
    "sqlite:../var/provider.db".into()
}
fn d_scale() -> u32 {
    1
}

impl Default for ProviderFile {
    fn default() -> Self {
        ProviderFile {
            url: d_provider(),
            seed_catalog: None,
            seed_scale: 1,
            read_latency_ms: 0,
        }
    }
}

/// `sqlite:REL` → `sqlite:BASE/REL`; other urls unchanged.
pub(super) fn resolve_provider(base: &Path, url: &str) -> String {
    match url.strip_prefix("sqlite:") {
        Some(":memory:") => url.to_string(),
        Some(p) => format!("sqlite:{}", resolve(base, p).display()),
        None => url.to_string(),
    }
}

pub(super) fn check_read_latency(errs: &mut Vec<String>, ms: u64) {
    if ms > 10_000 {
        errs.push(format!(
            "provider.read_latency_ms: {ms} is over 10000 (a wide-area round trip is tens of ms)"
        ));
    }
}

pub(super) fn check_provider_url(errs: &mut Vec<String>, url: &str) {
    if !(url.starts_with("sqlite:") || url.starts_with("postgres") || url.contains("host=")) {
        errs.push(format!(
            "provider.url: `{url}` must be `sqlite:PATH` or a PostgreSQL url (`postgres://…`, `host=… user=…`)"
        ));
    }
}
