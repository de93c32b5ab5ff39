//! Request keys: any path, query and header bytes, through route matching
//! and extraction, must give a key or an error — never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shardmap::key::{extract, KeySource, PathPattern, RegionSource};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(4, '\n');
    let pattern = parts.next().unwrap_or("");
    let path = parts.next().unwrap_or("");
    let query = parts.next();
    let header = parts.next().unwrap_or("").as_bytes();
    let patterns = [
        PathPattern::parse("/inventory/{sku}").ok(),
        PathPattern::parse("/r/{region}/p/{sku}/*").ok(),
        PathPattern::parse(pattern).ok(),
    ];
    for p in patterns.iter().flatten() {
        if let Some((sku, region)) = p.matches(path) {
            for (ks, rs) in [
                (KeySource::Path, RegionSource::Path),
                (KeySource::Query("sku".into()), RegionSource::Query("region".into())),
                (KeySource::Header("x-sku".into()), RegionSource::Header("x-region".into())),
            ] {
                if let Ok(k) = extract(&ks, &rs, sku, region, query, |_| Some(header)) {
                    assert!(!k.sku.is_empty() && k.sku.len() <= shardmap::key::MAX_SKU_LEN);
                }
            }
        }
    }
});
