//! Request path canonicalization (what every enforcement point decides on and forwards).
//! Oracles: no panic; the canonical form is a fixed point (a second enforcement point downstream
//! decides on the same path); it holds no dot segment, no `;`, no encoded `/`, `\` or `%`, no
//! control character; the case-insensitive form is lower-case.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_policy::path::{canonical, PathCase};

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    for case in [PathCase::Sensitive, PathCase::Insensitive] {
        let Ok(c) = canonical(raw, case) else {
            continue;
        };
        assert_eq!(canonical(&c, case).as_deref(), Ok(c.as_str()), "{raw:?}");
        assert!(c.starts_with('/'));
        let upper = c.to_ascii_uppercase();
        for bad in ["/../", "/./", ";", "%2F", "%5C", "%25", "\\"] {
            assert!(!upper.contains(bad), "{bad} in {c:?} from {raw:?}");
        }
        assert!(!c.ends_with("/..") && !c.ends_with("/."), "{c:?}");
        assert!(!c.chars().any(char::is_control), "{c:?}");
        if case == PathCase::Insensitive {
            // Escapes are upper-case hex; everything else is lower-case.
            let letters: String = c.split('%').enumerate().map(|(i, p)| if i == 0 { p } else { p.get(2..).unwrap_or("") }).collect();
            assert_eq!(letters.to_lowercase(), letters, "{c:?}");
        }
    }
});
