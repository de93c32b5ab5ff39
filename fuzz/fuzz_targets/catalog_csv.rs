//! Catalog CSV: any bytes give a catalog or a row error.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = shardmap::Catalog::from_csv(data, "sku", "category", &[]) {
        let _ = c.get("85123A");
    }
});
