//! The token endpoint's form parser (RFC 6749 §3.2: one content type, no repeated parameter but
//! the RFC 8707/8693 targets, empty values absent). Oracles: no panic; parsing is a function of
//! its input (the same answer twice); an accepted form never yields an empty parameter value and
//! never more targets than the body has `&`-separated pairs.
#![no_main]

use libfuzzer_sys::fuzz_target;

const TYPES: &[&str] = &[
    "application/x-www-form-urlencoded",
    "application/x-www-form-urlencoded; charset=UTF-8",
    "APPLICATION/X-WWW-FORM-URLENCODED",
    "application/json",
    "",
];

fuzz_target!(|data: &[u8]| {
    let Some((first, body)) = data.split_first() else {
        return;
    };
    let mut headers = http::HeaderMap::new();
    let ct = TYPES[usize::from(*first) % TYPES.len()];
    if let Ok(v) = http::HeaderValue::from_str(ct) {
        headers.insert(http::header::CONTENT_TYPE, v);
    }
    let body = bytes::Bytes::copy_from_slice(body);
    let a = tessera_server::Form::parse(&headers, &body);
    let b = tessera_server::Form::parse(&headers, &body);
    assert_eq!(a.is_ok(), b.is_ok());
    if let (Ok(a), Ok(b)) = (a, b) {
        assert_eq!(a.targets(), b.targets());
        let pairs = body.split(|c| *c == b'&').count();
        assert!(a.targets().len() <= pairs);
        assert!(a.targets().iter().all(|t| !t.is_empty()));
        for name in ["grant_type", "client_id", "scope", "subject_token", "client_assertion"] {
            assert_eq!(a.get(name), b.get(name));
            assert!(a.get(name).is_none_or(|v| !v.is_empty()));
        }
    }
});
