//! The one glob matcher: `*` matches any run of characters (including none); nothing else is
//! special. Used for identity-file paths (`policies/*.cedar`) and federation mapping rules
//! (`ref = "refs/heads/*"`).

/// Whether `text` matches `pattern`.
pub fn matches(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let (Some(first), Some(last)) = (parts.first(), parts.last()) else {
        return false;
    };
    if parts.len() == 1 {
        return pattern == text;
    }
    // The prefix and the suffix may not overlap in `text`.
    if text.len() < first.len() + last.len() || !text.starts_with(first) || !text.ends_with(last) {
        return false;
    }
    let mut rest = text.get(first.len()..text.len() - last.len()).unwrap_or("");
    for mid in parts.iter().skip(1).take(parts.len().saturating_sub(2)) {
        match rest.find(mid) {
            Some(i) => rest = rest.get(i + mid.len()..).unwrap_or(""),
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::matches;
    use proptest::prelude::*;

    #[test]
    fn globs() {
        assert!(matches("refs/heads/*", "refs/heads/main"));
        assert!(matches(
            "repo:acme/*:ref:refs/heads/main",
            "repo:acme/orders:ref:refs/heads/main"
        ));
        assert!(!matches(
            "repo:acme/*:ref:refs/heads/main",
            "repo:acme/orders:ref:refs/heads/dev"
        ));
        assert!(matches("*", ""));
        assert!(matches("a*b*c", "aXXbYYc"));
        assert!(!matches("a*b*c", "aXXcYYb"));
        assert!(!matches("ab*ba", "aba"));
        assert!(!matches("a*a", "a"));
        assert!(matches("exact", "exact"));
        assert!(!matches("exact", "exactly"));
        assert!(matches("*.cedar", "a.cedar"));
        assert!(!matches("*.cedar", "a.cedar.bak"));
        assert!(matches("p*-*.cedar", "prod-x.cedar"));
    }

    proptest! {
        /// A pattern made from a text by replacing any slice with `*` matches it; the text
        /// itself matches only itself; nothing panics on any input (multi-byte included).
        #[test]
        fn star_for_a_slice_matches(text in "\\PC{0,24}", a in 0usize..25, b in 0usize..25) {
            let chars: Vec<char> = text.chars().collect();
            let (a, b) = (a.min(chars.len()), b.min(chars.len()));
            let (a, b) = (a.min(b), a.max(b));
            let pattern: String = chars[..a].iter().chain(std::iter::once(&'*')).chain(chars[b..].iter()).collect();
            prop_assert!(matches(&pattern, &text));
            if !text.contains('*') {
                prop_assert!(matches(&text, &text));
                let longer = format!("{text}x");
                prop_assert!(!matches(&text, &longer));
            }
        }

        #[test]
        fn never_panics(p in "\\PC{0,12}", t in "\\PC{0,12}") {
            let _ = matches(&p, &t);
        }
    }
}
