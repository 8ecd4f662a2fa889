//! The floor rule of `lib.rs` (and of the CLI's `main.rs`), checked on the source: every
//! `crate::` path a file names goes to a file on the same floor or a lower one, `api/` features
//! never name each other (nor `cmd/` files), and no files import each other in a cycle.
#![expect(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "a test over the source tree: a failed step should stop it where it failed"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `src`, by its path relative to `src`.
fn sources(src: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let rel = p.strip_prefix(src).unwrap().to_string_lossy().into_owned();
                out.insert(rel, std::fs::read_to_string(&p).unwrap());
            }
        }
    }
    out
}

/// The file a `crate::a::b::c` path names: the deepest module of it that is a file.
fn target(files: &BTreeMap<String, String>, segments: &[&str]) -> Option<String> {
    let mut found = None;
    for n in 1..=segments.len() {
        let base = segments[..n].join("/");
        for candidate in [format!("{base}.rs"), format!("{base}/mod.rs")] {
            if files.contains_key(&candidate) {
                found = Some(candidate);
            }
        }
    }
    found
}

/// Edges `file -> file` from `crate::` paths (in `use` lines and in code), tests excluded.
fn edges(files: &BTreeMap<String, String>) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (file, text) in files {
        // Unit tests at the end of a file may reach anywhere in the crate.
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            let path: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            let segments: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
            if let Some(t) = target(files, &segments) {
                if &t != file {
                    out.insert((file.clone(), t));
                }
            }
        }
    }
    out
}

/// Files that import each other, directly or through others.
fn cycle(edges: &BTreeSet<(String, String)>) -> Option<Vec<String>> {
    let mut next: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (a, b) in edges {
        next.entry(a).or_default().push(b);
    }
    fn visit<'a>(
        n: &'a str,
        next: &BTreeMap<&'a str, Vec<&'a str>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| *p == n) {
            return Some(path[at..].iter().map(|s| s.to_string()).collect());
        }
        if !done.insert(n) {
            return None;
        }
        path.push(n);
        for m in next.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, next, path, done) {
                return Some(c);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    for n in next.keys() {
        if let Some(c) = visit(n, &next, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

fn src(krate: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(krate)
        .join("src")
}

/// The server's floors, top first (`lib.rs` is the face and may name anything).
fn server_floor(file: &str) -> u8 {
    match file {
        "lib.rs" => 9,
        "boot.rs" | "router.rs" => 8,
        f if f.starts_with("api/") => 6,
        "admin_socket.rs" | "extract.rs" => 5,
        "error.rs" => 4,
        f if f.starts_with("domain/") => 3,
        f if f.starts_with("app/") => 2,
        _ => 1,
    }
}

/// The feature an `api/` file belongs to: `api/oauth/token.rs` -> `oauth`.
fn feature(file: &str) -> Option<&str> {
    let rest = file.strip_prefix("api/")?;
    Some(rest.split(['/', '.']).next().unwrap_or(rest))
}

#[test]
fn server_imports_run_down_the_floors() {
    let files = sources(&src("tessera-server"));
    assert!(files.len() > 30, "{} files", files.len());
    let edges = edges(&files);
    for (a, b) in &edges {
        assert!(
            server_floor(b) <= server_floor(a),
            "`{a}` imports `{b}`, a higher floor"
        );
        if let (Some(fa), Some(fb)) = (feature(a), feature(b)) {
            assert!(
                fa == fb || a == "api/mod.rs",
                "api feature `{a}` imports another feature, `{b}`"
            );
        }
        if a.starts_with("domain/") || a.starts_with("app/") {
            let names_axum = files[a.as_str()]
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .any(|l| l.contains("axum"));
            assert!(
                !names_axum,
                "`{a}` names axum, which only the floors above `domain/` may"
            );
        }
    }
    assert_eq!(cycle(&edges), None, "an import cycle");
    // Only boot.rs spawns background tasks, and the two listeners one task per connection;
    // only router.rs mounts.
    for (file, text) in &files {
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        if file != "boot.rs" && file != "tls.rs" && file != "admin_socket.rs" {
            assert!(!code.contains("tokio::spawn("), "`{file}` spawns a task");
        }
        if file != "router.rs" {
            assert!(
                !code.contains(".nest(") && !code.contains(".merge("),
                "`{file}` mounts routes"
            );
        }
    }
}

#[test]
fn cli_imports_run_down_the_floors() {
    let files = sources(&src("tessera-cli"));
    let edges = edges(&files);
    let floor = |f: &str| match f {
        "main.rs" => 3,
        f if f.starts_with("cmd/") => 2,
        _ => 1,
    };
    for (a, b) in &edges {
        assert!(floor(b) <= floor(a), "`{a}` imports `{b}`, a higher floor");
        assert!(
            !(a.starts_with("cmd/") && b.starts_with("cmd/")) || a == "cmd/mod.rs",
            "`{a}` imports another command file, `{b}`"
        );
    }
    assert_eq!(cycle(&edges), None, "an import cycle");
}

#[test]
fn the_checker_sees_an_upward_import_and_a_cycle() {
    // The rule's own control: a ground file naming the app floor, and two files naming each
    // other, are found.
    let mut files = BTreeMap::new();
    files.insert("config.rs".to_owned(), "use crate::app::App;".to_owned());
    files.insert("app/mod.rs".to_owned(), "use crate::config::X;".to_owned());
    let e = edges(&files);
    assert!(e.contains(&("config.rs".to_owned(), "app/mod.rs".to_owned())));
    assert!(server_floor("app/mod.rs") > server_floor("config.rs"));
    assert!(cycle(&e).is_some());
}
