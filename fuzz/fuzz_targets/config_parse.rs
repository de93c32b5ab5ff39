//! Config files: any bytes give a validated config or a list of errors.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        match shardmap::Config::from_toml(text, std::path::Path::new("/nonexistent/fuzz.toml")) {
            Ok(c) => {
                // A valid config always builds a table.
                let cat = std::sync::Arc::new(shardmap::Catalog::default());
                let t = shardmap::RoutingTable::build(&c, cat, 1);
                let _ = t.route("x", Some("UK"));
            }
            Err(e) => assert!(!e.errors.is_empty()),
        }
    }
});
