//! Identity-file parsing (TOML, selectors, SPIFFE IDs, TTLs, trusts): no panic on any input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = tessera_core::manifest::parse_str(std::path::Path::new("fuzz.toml"), text);
    }
});
