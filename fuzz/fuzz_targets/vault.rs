//! The vault's parsers of untrusted input: secret names (request paths), grant patterns, secret
//! references, and sealed values read back from storage. Oracles: no panic; an accepted name has
//! no empty, `.` or `..` segment and round-trips; a reference round-trips; bytes that were not
//! sealed under the key never open.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_core::{SecretName, SecretPattern};
use tessera_vault::{Envelope, Sealed, SecretRef};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(n) = SecretName::parse(text) {
        assert!(n
            .as_str()
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != ".."));
        assert_eq!(SecretName::parse(n.as_str()).ok(), Some(n.clone()));
        if let Ok(p) = SecretPattern::parse(text) {
            assert!(p.matches(&n), "an exact pattern matches its own name");
        }
    }
    if let Ok(r) = SecretRef::parse(text) {
        assert_eq!(SecretRef::parse(&r.to_string()).ok(), Some(r));
    }
    let kek = tessera_token::Kek::from_bytes(&[7u8; 32]).expect("a 32-byte key");
    let name = SecretName::parse("fuzz/name").expect("a valid name");
    let (a, b) = data.split_at(data.len() / 2);
    let sealed = Sealed {
        ciphertext: String::from_utf8_lossy(a).into_owned(),
        wrapped_key: String::from_utf8_lossy(b).into_owned(),
    };
    assert!(Envelope::new(&kek).open(&name, 1, &sealed).is_err());
});
