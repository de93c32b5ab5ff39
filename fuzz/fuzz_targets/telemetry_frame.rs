//! Telemetry frames from a peer: decode or reject, bounded, never panic;
//! what decodes re-encodes to an equal frame.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = shardmap::Frame::decode(data) {
        let again = shardmap::Frame::decode(&f.encode()).expect("re-encoded frame decodes");
        assert_eq!(again.seq, f.seq);
        assert_eq!(again.shards.len(), f.shards.len());
    }
});
