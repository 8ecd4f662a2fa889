//! Seed 003's operations, checked against the real tools: the alert rules pass `promtool`'s
//! check and unit tests; a real Prometheus scrapes the authority, an agent and both sidecars and
//! evaluates every rule and every dashboard panel without error, on metrics that exist; every
//! alert names a runbook that exists, and every `tessera` command in the runbooks is one the
//! binary accepts (the read-only ones are run against a live authority); `tessera doctor` finds
//! a skewed clock (the authority run under libfaketime) and an expired bundle.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn rules_dir() -> PathBuf {
    repo().join("deploy/prometheus")
}

/// The `tessera_*` metric names an expression reads (recording rules, `tessera:…`, excluded).
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("tessera_") {
        let before = rest[..i].chars().last();
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            out.push(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    out
}

/// (alert name, severity, runbook) of every alert, read from the rules file's lines.
fn alerts() -> Vec<(String, String, String)> {
    let text = std::fs::read_to_string(rules_dir().join("tessera-rules.yml")).unwrap();
    let mut out: Vec<(String, String, String)> = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("- alert: ") {
            out.push((name.to_owned(), String::new(), String::new()));
        } else if let (Some(v), Some(last)) = (line.strip_prefix("severity: "), out.last_mut()) {
            last.1 = v.to_owned();
        } else if let (Some(v), Some(last)) = (line.strip_prefix("runbook_url: "), out.last_mut()) {
            last.2 = v.to_owned();
        }
    }
    out
}

/// Every panel query of the dashboards.
fn panel_exprs() -> Vec<String> {
    let mut out = Vec::new();
    for name in ["executive", "oncall", "debug"] {
        let p = repo().join(format!("deploy/grafana/tessera-{name}.json"));
        let board: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        for panel in board["panels"].as_array().unwrap() {
            for t in panel["targets"].as_array().into_iter().flatten() {
                out.push(t["expr"].as_str().unwrap().to_owned());
            }
        }
    }
    assert!(out.len() > 30, "the dashboards lost their panels");
    out
}

#[test]
fn alert_rules_pass_promtool_check_and_unit_tests() {
    let o = Command::new("promtool")
        .args(["check", "rules", "tessera-rules.yml"])
        .current_dir(rules_dir())
        .output()
        .expect("promtool (Debian's `prometheus` package) is needed");
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let o = Command::new("promtool")
        .args(["check", "config", "prometheus.yml"])
        .current_dir(rules_dir())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let o = Command::new("promtool")
        .args([
            "test",
            "rules",
            "tessera-rules.test.yml",
            "tessera-rules-long.test.yml",
        ])
        .current_dir(rules_dir())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    // Every alert has a test that fires it and is silent in the healthy case.
    let tests = std::fs::read_to_string(rules_dir().join("tessera-rules.test.yml")).unwrap()
        + &std::fs::read_to_string(rules_dir().join("tessera-rules-long.test.yml")).unwrap();
    for (name, severity, runbook) in alerts() {
        assert!(
            severity == "page" || severity == "ticket",
            "{name}: severity `{severity}`"
        );
        assert!(
            repo().join(&runbook).is_file(),
            "{name}: runbook `{runbook}` does not exist"
        );
        let fired = tests.matches(&format!("alertname: {name}\n")).count();
        assert!(
            fired >= 2,
            "{name} needs a test that fires it and one that does not"
        );
    }
}

/// The subcommand path of a `tessera …` line and its `--flags`.
fn command_of(line: &str) -> (Vec<String>, Vec<String>) {
    let mut words = line.split_whitespace().skip(1);
    let mut path = Vec::new();
    for w in words.by_ref() {
        if w.starts_with('-') {
            let flags = std::iter::once(w)
                .chain(words)
                .filter(|w| w.starts_with("--"))
                .map(|w| w.split('=').next().unwrap().to_owned())
                .collect();
            return (path, flags);
        }
        path.push(w.to_owned());
    }
    (path, Vec::new())
}

/// Every `tessera` line of every runbook's `sh` blocks.
fn runbook_commands() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(repo().join("docs/runbooks")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let mut in_sh = false;
        for line in text.lines() {
            if line.starts_with("```") {
                in_sh = line == "```sh";
                continue;
            }
            if in_sh && line.starts_with("tessera ") {
                out.push((
                    path.file_name().unwrap().to_string_lossy().into_owned(),
                    line.to_owned(),
                ));
            }
        }
    }
    assert!(out.len() > 20, "the runbooks lost their commands");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runbook_commands_are_real_and_the_read_only_ones_run() {
    let index = std::fs::read_to_string(repo().join("docs/runbooks/README.md")).unwrap();
    for (name, _, runbook) in alerts() {
        let file = runbook.rsplit('/').next().unwrap().to_owned();
        assert!(
            index.contains(&name),
            "runbooks/README.md does not list {name}"
        );
        assert!(
            index.contains(&file),
            "runbooks/README.md does not link {file}"
        );
    }
    let mut helps: HashMap<Vec<String>, String> = HashMap::new();
    let mut help = |path: &[String]| {
        helps
            .entry(path.to_vec())
            .or_insert_with(|| {
                let o = Command::new(BIN).args(path).arg("--help").output().unwrap();
                assert!(
                    o.status.success(),
                    "`tessera {}` is not a command",
                    path.join(" ")
                );
                stdout(&o)
            })
            .clone()
    };
    let commands = runbook_commands();
    for (file, line) in &commands {
        let (words, flags) = command_of(line);
        // The longest prefix of the words that is a command; the rest are its arguments.
        let mut path: Vec<String> = Vec::new();
        for w in &words {
            let text = help(&path);
            let listed = text.split("Commands:").nth(1).is_some_and(|cmds| {
                cmds.lines()
                    .any(|l| l.trim_start().starts_with(&format!("{w} ")))
            });
            if !listed {
                break;
            }
            path.push(w.clone());
        }
        assert!(!path.is_empty(), "{file}: `{line}` names no command");
        let text = help(&path);
        for flag in flags {
            assert!(
                text.contains(&format!("{flag} ")) || text.contains(&format!("{flag}\n")),
                "{file}: `{line}`: `tessera {}` has no `{flag}`",
                path.join(" ")
            );
        }
    }

    // The read-only ones, against a live authority: an answer (0, or 1 for "no"), never a
    // usage or operational error.
    let s = server(Backend::Sqlite, &[]).unwrap();
    setup_mesh(&s);
    let data = s.data.to_str().unwrap();
    let read_only = [
        "tessera audit tail",
        "tessera audit verify",
        "tessera keys list",
        "tessera ca list",
        "tessera policy status",
        "tessera get ",
        "tessera doctor",
        "tessera explain",
    ];
    let mut ran = 0;
    for (file, line) in &commands {
        if !read_only.iter().any(|p| line.starts_with(p))
            || line.contains("SIDECAR_ADMIN")
            || line.contains("/etc/")
        {
            continue;
        }
        let line = line.replace("$DATA", data).replace("$SERVER", &s.url);
        let words: Vec<&str> = line.split_whitespace().skip(1).collect();
        let o = Command::new(BIN).args(&words).output().unwrap();
        assert!(
            matches!(o.status.code(), Some(0 | 1)),
            "{file}: `{line}`: {}{}",
            stdout(&o),
            stderr(&o)
        );
        ran += 1;
    }
    assert!(ran >= 10, "only {ran} runbook commands ran");
}

fn host_port(url: &str) -> String {
    url.split("://")
        .nth(1)
        .unwrap()
        .trim_end_matches('/')
        .to_owned()
}

async fn prom(http: &reqwest::Client, base: &str, path: &str, query: &[(&str, &str)]) -> Value {
    let v: Value = http
        .get(format!("{base}{path}"))
        .query(query)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["status"], "success", "{path} {query:?}: {v}");
    v["data"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_every_component_and_evaluates_every_rule_and_panel() {
    // The authority, an agent, and a sidecar pair with traffic of every kind.
    let Mesh {
        s,
        dir,
        socket,
        agent,
    } = start_mesh(&sidecar_mesh(), &["--admin-listen", "127.0.0.1:0"]);
    let agent_admin = agent
        .line
        .split_whitespace()
        .find_map(|f| f.strip_prefix("admin="))
        .unwrap()
        .to_owned();
    let upstream = {
        let app = axum::Router::new().fallback(|| async { "ok" });
        serve_app(app).await.to_string()
    };
    let (inbound, in_addr, outbound, out_addr) = sidecar_pair(&s, &upstream, &socket);
    let (in_admin, out_admin) = (addrs(&inbound).1, addrs(&outbound).1);
    // A service that verifies tokens too (M2's token half), idle.
    let verifying = proxy(
        &[
            "inbound",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &upstream,
            "--server",
            &s.url,
            "--require-token",
        ],
        &socket,
        BACKEND,
    );
    let (_, verifying_admin) = addrs(&verifying);
    let http = reqwest::Client::new();
    wait_allowed(&http, &[&out_addr]).await;
    let r = http
        .get(format!("http://{out_addr}/admin"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // A handshake without a client certificate.
    let o = Command::new("curl")
        .args([
            "-sk",
            "--max-time",
            "5",
            &format!("https://{in_addr}/api/a"),
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    // Token requests: issued, wrong secret, denied.
    let secret = stdout(&tessera(&s.data, &["client", "secret", "frontend"]))
        .lines()
        .next()
        .unwrap()
        .to_owned();
    let token_url = format!("{}/token", s.url);
    let form = [("grant_type", "client_credentials"), ("audience", BACKEND)];
    let (code, _) = post_form(&token_url, Some(("frontend", &secret)), &form).await;
    assert_eq!(code, 200);
    let (code, _) = post_form(&token_url, Some(("frontend", "wrong")), &form).await;
    assert_eq!(code, 401);
    let (code, _) = post_form(
        &token_url,
        Some(("frontend", &secret)),
        &[("grant_type", "client_credentials"), ("audience", STRANGER)],
    )
    .await;
    assert_eq!(code, 400);

    // Prometheus from Debian, scraping all four every second and evaluating the rules as often.
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let rules = rules_dir().join("tessera-rules.yml");
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {rules}\nscrape_configs:\n  - job_name: tessera-server\n    static_configs:\n      - targets: ['{server}']\n  - job_name: tessera-agent\n    static_configs:\n      - targets: ['{agent}']\n  - job_name: tessera-proxy\n    static_configs:\n      - targets: ['{inb}', '{outb}', '{verifying}']\n",
        rules = rules.display(),
        server = host_port(&s.url),
        agent = host_port(&agent_admin),
        inb = host_port(&in_admin),
        outb = host_port(&out_admin),
        verifying = host_port(&verifying_admin),
    );
    let cfg = write(dir.path(), "prometheus.yml", &config);
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _prometheus = Kill(
        Command::new("prometheus")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
            .spawn()
            .expect("prometheus (Debian's `prometheus` package) is needed"),
    );

    // Every target up.
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let up = match http.get(format!("{base}/api/v1/targets")).send().await {
            Ok(r) => r.json::<Value>().await.ok(),
            Err(_) => None,
        };
        let healths: Vec<(String, String)> = up
            .as_ref()
            .and_then(|v| v["data"]["activeTargets"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .map(|t| {
                (
                    t["labels"]["job"].as_str().unwrap_or("").to_owned(),
                    t["health"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect();
        if healths.len() == 5 && healths.iter().all(|(_, h)| h == "up") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "targets not all up: {healths:?}\n{}",
            std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Every rule evaluated, none with an error.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let groups = prom(&http, &base, "/api/v1/rules", &[]).await;
        let rules: Vec<Value> = groups["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap().clone())
            .collect();
        let bad: Vec<String> = rules
            .iter()
            .filter(|r| r["health"] == "err")
            .map(|r| format!("{}: {}", r["name"], r["lastError"]))
            .collect();
        assert!(bad.is_empty(), "rules that fail to evaluate: {bad:?}");
        if rules.len() >= 40 && rules.iter().all(|r| r["health"] == "ok") {
            break;
        }
        assert!(Instant::now() < deadline, "rules not all evaluated");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Every panel's expression runs.
    for expr in panel_exprs() {
        prom(&http, &base, "/api/v1/query", &[("query", expr.as_str())]).await;
    }
    // And reads only metrics that exist: a series Prometheus scraped, or a family whose
    // metadata a target declared (one with no sample yet, such as failures not seen).
    let names: BTreeSet<String> = prom(&http, &base, "/api/v1/label/__name__/values", &[])
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    let meta = prom(&http, &base, "/api/v1/metadata", &[]).await;
    let mut known = names.clone();
    for (family, m) in meta.as_object().unwrap() {
        let kind = m[0]["type"].as_str().unwrap_or("");
        let base_name = family.trim_end_matches("_total").to_owned();
        match kind {
            "counter" => {
                known.insert(format!("{base_name}_total"));
            }
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    known.insert(format!("{family}{suffix}"));
                }
            }
            _ => {
                known.insert(family.clone());
            }
        }
    }
    let rules_text = std::fs::read_to_string(&rules).unwrap();
    let mut read: BTreeSet<String> = metric_names(&rules_text).into_iter().collect();
    for expr in panel_exprs() {
        read.extend(metric_names(&expr));
    }
    let missing: Vec<&String> = read.iter().filter(|n| !known.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "rules or panels read metrics that no component exports: {missing:?}\nknown: {known:?}"
    );
    // The SLIs have values from the traffic above (a rate needs two scrapes).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // Calls while Prometheus watches, so that the counters move between scrapes.
        http.get(format!("http://{out_addr}/api/a"))
            .send()
            .await
            .unwrap();
        http.get(format!("http://{out_addr}/admin"))
            .send()
            .await
            .unwrap();
        let m1 = prom(
            &http,
            &base,
            "/api/v1/query",
            &[("query", "tessera:sli_m1_issuance_success:ratio_rate5m")],
        )
        .await;
        let m3 = prom(
            &http,
            &base,
            "/api/v1/query",
            &[(
                "query",
                "tessera:sli_m4_auth_failures:ratio_rate5m{kind=\"denial\"}",
            )],
        )
        .await;
        if m1["result"][0]["value"][1] == "1"
            && m3["result"][0]["value"][1]
                .as_str()
                .is_some_and(|v| v != "0")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the SLIs have no values: {m1} {m3}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(inbound);
    drop(outbound);
    drop(verifying);
    drop(agent);
}

/// Debian's libfaketime (package `faketime`), multi-threaded flavour.
fn libfaketime() -> PathBuf {
    std::fs::read_dir("/usr/lib")
        .unwrap()
        .filter_map(Result::ok)
        .map(|d| d.path().join("faketime/libfaketimeMT.so.1"))
        .find(|p| p.is_file())
        .expect("libfaketime (Debian's `faketime` package) is needed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_finds_a_skewed_clock_and_an_expired_bundle() {
    let dir = tempfile::tempdir().unwrap();
    // A healthy authority: every check passes.
    let s = server(Backend::Sqlite, &[]).unwrap();
    let o = Command::new(BIN)
        .args(["doctor", "--server", &s.url])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("0 failed"), "{}", stdout(&o));

    // An authority whose clock runs ten minutes ahead: libfaketime preloaded into the server
    // itself (the `faketime` wrapper would stand between the test and the server, and killing it
    // would leave the server running); monotonic time untouched.
    let data = tessera_testkit::data_dir();
    let mut cmd = Command::new(BIN);
    cmd.args(["server", "--dev", "--listen", "127.0.0.1:0", "--data"])
        .arg(data.path())
        .env("LD_PRELOAD", libfaketime())
        .env("FAKETIME", "+600s")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .env("TESSERA_LOG", "warn");
    let skewed = tessera_testkit::spawn_ready(cmd, "tessera: ready url=");
    let o = Command::new(BIN)
        .args(["doctor", "--server", &skewed.ready, "--output", "json"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    let found: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let skew = found
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == "clock skew")
        .unwrap();
    assert_eq!(skew["status"], "fail", "{skew}");
    assert!(skew["detail"].as_str().unwrap().contains("ahead"), "{skew}");
    assert_eq!(skew["runbook"], "docs/runbooks/mass-401s.md");

    // A bundle whose CA expired in 2020 (made by openssl under libfaketime), and a current one.
    let old = dir.path().join("old.pem");
    let o = Command::new("faketime")
        .args([
            "2020-01-01 00:00:00",
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "30",
            "-subj",
            "/CN=old",
            "-keyout",
        ])
        .arg(dir.path().join("old.key"))
        .arg("-out")
        .arg(&old)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let current = write(
        dir.path(),
        "current.json",
        &get_text(&format!("{}/bundle/example.org", s.url)).await,
    );
    let o = Command::new(BIN)
        .args(["doctor", "--server", &s.url, "--bundle"])
        .arg(&old)
        .arg("--bundle")
        .arg(&current)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("expired at 2020-01-31"), "{text}");
    assert!(
        text.contains("runbook: docs/runbooks/certificate-expiry.md"),
        "{text}"
    );
    assert!(text.contains("1 failed"), "{text}");
}
