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

/// Separators of the claims federation rules match (`repo:acme/orders:ref:refs/heads/main`).
pub const CLAIM_SEPARATORS: &[char] = &[':', '/'];

/// Whether `text` matches `pattern` where `*` stops at `separators` and `**` does not: so
/// `repo:acme/*:ref:refs/heads/main` cannot be met by a repository named `x:ref:refs/heads/main`
/// or a path with another segment.
pub fn matches_segments(pattern: &str, text: &str, separators: &[char]) -> bool {
    enum Tok {
        Lit(char),
        Star,
        Any,
    }
    let mut toks = Vec::new();
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '*' {
            if chars.peek() == Some(&'*') {
                while chars.peek() == Some(&'*') {
                    chars.next();
                }
                toks.push(Tok::Any);
            } else {
                toks.push(Tok::Star);
            }
        } else {
            toks.push(Tok::Lit(c));
        }
    }
    let text: Vec<char> = text.chars().collect();
    // reach[j]: the tokens so far can consume exactly text[..j].
    let mut reach = vec![false; text.len() + 1];
    if let Some(r) = reach.first_mut() {
        *r = true;
    }
    for tok in &toks {
        let mut next = vec![false; text.len() + 1];
        match tok {
            Tok::Lit(c) => {
                for j in 0..text.len() {
                    if reach.get(j) == Some(&true) && text.get(j) == Some(c) {
                        if let Some(n) = next.get_mut(j + 1) {
                            *n = true;
                        }
                    }
                }
            }
            Tok::Star | Tok::Any => {
                let mut open = false;
                for j in 0..=text.len() {
                    open |= reach.get(j) == Some(&true);
                    if open {
                        if let Some(n) = next.get_mut(j) {
                            *n = true;
                        }
                    }
                    // A single `*` cannot run over a separator.
                    if matches!(tok, Tok::Star)
                        && text.get(j).is_some_and(|c| separators.contains(c))
                    {
                        open = false;
                    }
                }
            }
        }
        reach = next;
    }
    reach.last() == Some(&true)
}

/// A warning for a `*` that is part of a segment (`orders*`): it also matches names that
/// merely start alike (`orders-fork`), which is seldom what a trust rule means.
pub fn partial_segment_warning(pattern: &str, separators: &[char]) -> Option<String> {
    let partial = pattern
        .split(|c| separators.contains(&c))
        .any(|seg| seg.contains('*') && !seg.trim_matches('*').is_empty());
    partial.then(|| {
        format!(
            "`{pattern}`: a `*` inside a segment also matches other names that start or end alike (`orders*` matches `orders-fork`); name the segment whole or use `*` for all of it"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::{matches, matches_segments, partial_segment_warning, CLAIM_SEPARATORS};

    #[test]
    fn claim_globs_stop_at_separators() {
        let m = |p: &str, t: &str| matches_segments(p, t, CLAIM_SEPARATORS);
        assert!(m(
            "repo:acme/*:ref:refs/heads/main",
            "repo:acme/orders:ref:refs/heads/main"
        ));
        assert!(!m(
            "repo:acme/*:ref:refs/heads/main",
            "repo:acme/x:y:ref:refs/heads/main"
        ));
        assert!(!m("repo:acme/*", "repo:acme/orders/sub"));
        assert!(m("repo:acme/**", "repo:acme/orders:ref:refs/heads/main"));
        assert!(m("refs/heads/*", "refs/heads/main"));
        assert!(!m("refs/heads/*", "refs/heads/feature/x"));
        assert!(m("refs/heads/**", "refs/heads/feature/x"));
        assert!(m("a*b", "aXXb") && !m("a*b", "aX/b"));
        assert!(m("*", "") && !m("*", "a:b") && m("**", "a:b"));
        assert!(m("exact", "exact") && !m("exact", "exactly"));
        assert!(partial_segment_warning("repo:acme/orders*", CLAIM_SEPARATORS).is_some());
        assert!(
            partial_segment_warning("repo:acme/*:ref:refs/heads/main", CLAIM_SEPARATORS).is_none()
        );
        assert!(partial_segment_warning("repo:acme/**", CLAIM_SEPARATORS).is_none());
    }
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
