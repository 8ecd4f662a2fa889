//! Request paths as policies see them, in one canonical form (RFC 3986 §6.2.2): unreserved
//! characters percent-decoded, other escapes in upper-case hex, dot segments resolved, empty
//! segments collapsed. A policy allowing `/api/v1/inventory/*` must not allow
//! `/api/v1/inventory/../admin`, nor forbid `/api/v1/admin/*` and let `/api/v1/%61dmin` pass,
//! which the service behind decodes to the forbidden path.
//!
//! What servers read differently is refused rather than guessed at: an encoded `/` or `\`, a
//! backslash, NUL and control characters, `;` (Tomcat and Spring drop `;params` from a segment,
//! so `..;/` climbs), an encoded `%` (double encoding), and escapes that are not UTF-8 (the
//! overlong `%C0%AE` some decoders read as `.`). Enforcement points forward exactly the
//! canonical form they decided on.

use std::fmt::Write as _;

/// Whether a service's paths differ by case. `Insensitive` decides (and forwards) the
/// lower-case form, for services that route `/ADMIN` to `/admin`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PathCase {
    #[default]
    Sensitive,
    Insensitive,
}

/// Why a request path is refused (a 400 at an enforcement point).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path `{0}` does not start with `/`")]
    NotAbsolute(String),
    #[error("path `{0}` holds `{1}`, which servers read differently")]
    Ambiguous(String, &'static str),
    #[error("path `{0}` holds a malformed percent-encoding")]
    BadEscape(String),
    #[error("path `{0}` holds percent-encoded bytes that are not UTF-8")]
    NotUtf8(String),
}

/// RFC 3986 `unreserved`: decoded wherever it was encoded.
fn unreserved(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~')
}

/// Characters a path segment carries as they are (`pchar` less `%`, `;` and `/`).
fn plain_in_segment(c: char) -> bool {
    unreserved(c)
        || matches!(
            c,
            '!' | '$' | '&' | '\'' | '(' | ')' | '*' | '+' | ',' | '=' | ':' | '@'
        )
}

fn shown(raw: &str) -> String {
    raw.chars()
        .take(200)
        .collect::<String>()
        .escape_debug()
        .to_string()
}

/// The canonical form of `raw` (a request target's path; a query or fragment is cut off).
pub fn canonical(raw: &str, case: PathCase) -> Result<String, PathError> {
    let path = raw.split(['?', '#']).next().unwrap_or_default();
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute(shown(path)));
    }
    let ambiguous = |what: &'static str| PathError::Ambiguous(shown(path), what);
    // Decode every escape to bytes; refuse what must not be decoded.
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| PathError::BadEscape(shown(path)))?;
            match hex {
                b'/' => return Err(ambiguous("an encoded `/`")),
                b'\\' => return Err(ambiguous("an encoded `\\`")),
                b'%' => return Err(ambiguous("an encoded `%` (double encoding)")),
                b';' => return Err(ambiguous("an encoded `;`")),
                _ => {}
            }
            decoded.push(hex);
            i += 3;
        } else {
            match b {
                b'\\' => return Err(ambiguous("a backslash")),
                b';' => return Err(ambiguous("`;` (path parameters)")),
                _ => {}
            }
            decoded.push(b);
            i += 1;
        }
    }
    let text = String::from_utf8(decoded).map_err(|_| PathError::NotUtf8(shown(path)))?;
    if text.chars().any(char::is_control) {
        return Err(ambiguous("a control character or NUL"));
    }
    let text = match case {
        PathCase::Sensitive => text,
        PathCase::Insensitive => text.to_lowercase(),
    };
    let mut segments: Vec<&str> = Vec::new();
    for segment in text.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(text.len() + 8);
    for s in &segments {
        out.push('/');
        for c in s.chars() {
            if plain_in_segment(c) {
                out.push(c);
            } else {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    let _ = write!(out, "%{b:02X}");
                }
            }
        }
    }
    let trailing = text.ends_with('/') || text.ends_with("/.") || text.ends_with("/..");
    if out.is_empty() || trailing {
        out.push('/');
    }
    Ok(out)
}

/// The path a decision is made on (case-sensitive), or why the request path is refused.
pub fn normalize(raw: &str) -> Result<String, String> {
    canonical(raw, PathCase::Sensitive).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_resolve_and_tricks_are_refused() {
        let ok = |a: &str, b: &str| assert_eq!(normalize(a).unwrap(), b, "{a}");
        ok("/", "/");
        ok("/api/v1/x", "/api/v1/x");
        ok("/api/v1/x/", "/api/v1/x/");
        ok("/api//v1///x", "/api/v1/x");
        ok("/api/v1/inventory/../admin", "/api/v1/admin");
        ok("/api/v1/inventory/%2e%2e/admin", "/api/v1/admin");
        ok("/api/v1/inventory/%2E%2E/%2E%2E/%2E%2E/etc", "/etc");
        ok("/../../x", "/x");
        ok("/a/./b?c=../d#e", "/a/b");
        ok("/a/b/..", "/a/");
        for bad in [
            "/a%2fb",
            "/a%2F..%2Fb",
            "/a\\..\\b",
            "/a%5cb",
            "/a%00",
            "a/b",
            "",
            "/a\nb",
        ] {
            assert!(normalize(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn encodings_of_a_forbidden_path_all_reach_it_or_are_refused() {
        let ok = |a: &str, b: &str| assert_eq!(normalize(a).unwrap(), b, "{a}");
        ok("/api/v1/%61dmin", "/api/v1/admin");
        ok("/api/v1/%61%64%6D%69%6E/x", "/api/v1/admin/x");
        ok("/api/v1/x/%2e%2E/admin", "/api/v1/admin");
        // Other escapes stay encoded, in one (upper-case) form.
        ok("/a%20b", "/a%20b");
        ok("/caf%c3%a9", "/caf%C3%A9");
        ok("/caf\u{e9}", "/caf%C3%A9");
        for bad in [
            "/api/v1/admin;x=1",
            "/api/v1/x/..;/admin",
            "/api/v1/%2561dmin",
            "/api/v1/%3Badmin",
            "/api/%C0%AE%C0%AE/admin",
            "/api/%zz",
            "/api/%6",
            "/api/%00/x",
            "/api/%0a",
        ] {
            assert!(normalize(bad).is_err(), "{bad:?}");
        }
        assert_eq!(normalize("/ADMIN").unwrap(), "/ADMIN");
        assert_eq!(
            canonical("/ADMIN/%41", PathCase::Insensitive).unwrap(),
            "/admin/a"
        );
    }

    proptest::proptest! {
        /// Canonicalization is idempotent: what was decided is what is forwarded, and a second
        /// enforcement point downstream decides on the same path.
        #[test]
        fn canonical_is_a_fixed_point(raw in "/[a-zA-Z0-9%./;_~\\-\u{e9}]{0,40}") {
            if let Ok(c) = canonical(&raw, PathCase::Sensitive) {
                proptest::prop_assert_eq!(canonical(&c, PathCase::Sensitive).unwrap(), c.as_str());
                proptest::prop_assert!(!c.contains("/../") && !c.contains("/./") && !c.contains(';'));
            }
        }
    }
}
