//! A federated authority's bundle as the refresher reads it (`tessera_core::bundle`): any bytes
//! from whoever answers at the bundle endpoint. Oracles: no panic; a parsed bundle respects the
//! caps, holds no private key member and at least one authority; and it reads back the same from
//! the document it writes (what agents and `describe` are given).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_core::bundle::{SpiffeBundle, MAX_BUNDLE_BYTES, MAX_BUNDLE_KEYS};

fuzz_target!(|data: &[u8]| {
    let Ok(b) = SpiffeBundle::parse(data) else {
        return;
    };
    assert!(data.len() <= MAX_BUNDLE_BYTES);
    assert!(b.x509_authorities.len() + b.jwt_authorities.len() <= MAX_BUNDLE_KEYS);
    assert!(!(b.x509_authorities.is_empty() && b.jwt_authorities.is_empty()));
    for k in &b.jwt_authorities {
        assert!(!k.contains_key("d"));
    }
    let again = SpiffeBundle::parse(b.to_document().to_string().as_bytes())
        .expect("a bundle's own document parses");
    assert_eq!(again, b);
});
