//! Request paths as policies see them. A policy allowing `/api/v1/inventory/*` must not allow
//! `/api/v1/inventory/../admin`, which the service behind may well resolve to `/api/admin`: the
//! decision is made on the path with dot segments resolved, and paths that servers disagree
//! about (encoded slashes, backslashes) are refused outright.

/// The path a decision is made on, or why the request path is refused.
pub fn normalize(raw: &str) -> Result<String, String> {
    let path = raw.split(['?', '#']).next().unwrap_or_default();
    if !path.starts_with('/') {
        return Err(format!(
            "path `{}` does not start with `/`",
            path.escape_debug()
        ));
    }
    let lower = path.to_ascii_lowercase();
    if path.contains('\\')
        || lower.contains("%2f")
        || lower.contains("%5c")
        || lower.contains("%00")
    {
        return Err(format!(
            "path `{}` holds an encoded slash, a backslash or a NUL, which servers read differently",
            path.escape_debug()
        ));
    }
    if path.chars().any(char::is_control) {
        return Err("path holds a control character".to_owned());
    }
    let decoded = path.replace("%2e", ".").replace("%2E", ".");
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    let trailing = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    if out.is_empty() || trailing {
        out.push('/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::normalize;

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
}
