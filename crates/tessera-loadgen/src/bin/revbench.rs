//! Revocation propagation, measured from the revoke command returning to the revocation being
//! in force at each of N subscribers (the verifier library's `RevocationState`, as sidecars and
//! services hold it), each on its own connection to the authority.
//!
//!   tessera-revbench --subscribe URL --token-url URL --client-id ID --secret S \
//!       --tessera BIN --data DIR [--subscribers 100] [--rounds 20] [--kind token|workload] \
//!       [--poll 5s] [--sources 4] [--server-pid PID] [--restart ARGV_JSON]
//!
//! `--poll` measures the polling verifier instead (the design before the change stream, and
//! SPIRE's agent sync period). `--server-pid` reports the server's memory per subscriber and
//! CPU per change; with `--restart` the server is then killed, restarted, and the time for a
//! revocation made right after its restart to reach every subscriber is reported (the
//! reconnect storm). Prints one JSON object.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::Parser;
use serde_json::{json, Value};
use tessera_verify::{BundleSource, RevocationState};

#[derive(Parser)]
struct Args {
    /// The server the subscribers follow.
    #[arg(long)]
    subscribe: String,
    /// The issuer tokens are requested from.
    #[arg(long)]
    token_url: String,
    #[arg(long)]
    client_id: String,
    #[arg(long)]
    secret: String,
    /// The `tessera` binary and the data folder of the server revocations are made on.
    #[arg(long)]
    tessera: String,
    #[arg(long)]
    data: String,
    #[arg(long, default_value_t = 100)]
    subscribers: usize,
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    #[arg(long, default_value = "token")]
    kind: String,
    /// Workloads revoked by `--kind workload`: PREFIX0, PREFIX1, ...
    #[arg(long, default_value = "spiffe://example.org/bench/w")]
    workload_prefix: String,
    /// The number of the first workload to revoke.
    #[arg(long, default_value_t = 0)]
    first: usize,
    /// `--kind grant`: the service whose authorizers follow its policy bundle, an identity file
    /// that grants it a caller, and one without that grant (applied with `--prune`).
    #[arg(long)]
    service: Option<String>,
    #[arg(long)]
    with_grant: Option<String>,
    #[arg(long)]
    without_grant: Option<String>,
    /// Measure a verifier polling `GET /revocations` this often instead of the stream.
    #[arg(long, value_parser = humantime::parse_duration)]
    poll: Option<Duration>,
    /// Loopback source addresses to spread the subscribers over (127.0.0.1 ...).
    #[arg(long, default_value_t = 4)]
    sources: u8,
    #[arg(long)]
    server_pid: Option<u32>,
    /// The server's command line (JSON array), to kill and restart it after the rounds.
    #[arg(long)]
    restart: Option<String>,
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// User + system CPU time of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = s.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

async fn token(http: &reqwest::Client, a: &Args) -> anyhow::Result<Value> {
    let r = http
        .post(format!("{}/token", a.token_url.trim_end_matches('/')))
        .basic_auth(&a.client_id, Some(&a.secret))
        .form(&[
            ("grant_type", "client_credentials"),
            ("audience", a.token_url.trim_end_matches('/')),
        ])
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("token request: {}", r.status());
    }
    Ok(r.json().await?)
}

/// A fresh access token's `jti`, to revoke.
async fn fresh_jti(http: &reqwest::Client, a: &Args) -> anyhow::Result<String> {
    use base64::Engine;
    let t = token(http, a).await?;
    let part = t["access_token"]
        .as_str()
        .and_then(|t| t.split('.').nth(1))
        .ok_or_else(|| anyhow!("not a JWT"))?;
    let claims: Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part)?)?;
    claims["jti"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("no jti"))
}

/// A client for subscriber `i`, its connections from one of `sources` loopback addresses so
/// that the server's per-source share is not what is measured.
fn subscriber_client(i: usize, sources: u8) -> anyhow::Result<reqwest::Client> {
    let last = u8::try_from(1 + i % usize::from(sources.max(1))).unwrap_or(1);
    Ok(reqwest::Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
        .build()?)
}

fn apply(a: &Args, file: &str, prune: bool) -> anyhow::Result<()> {
    let mut cmd = Command::new(&a.tessera);
    cmd.arg("apply");
    if prune {
        cmd.arg("--prune");
    }
    let o = cmd.args(["-f", file, "--data", &a.data]).output()?;
    if !o.status.success() {
        bail!("apply: {}", String::from_utf8_lossy(&o.stderr));
    }
    Ok(())
}

/// A withdrawn grant at N authorizers of one service (each its own bundle long poll): from the
/// `apply --prune` that withdraws it returning (and from its start) to every authorizer holding
/// the bundle without it. Returns (after return, from start, command) in milliseconds.
async fn grants(a: &Args, token: String) -> anyhow::Result<(Vec<f64>, Vec<f64>, Vec<f64>)> {
    let service = tessera_core::SpiffeId::parse(a.service.as_deref().unwrap_or_default())
        .map_err(|e| anyhow!("--service: {e}"))?;
    let (with, without) = match (&a.with_grant, &a.without_grant) {
        (Some(w), Some(wo)) => (w.clone(), wo.clone()),
        _ => bail!("--kind grant needs --with-grant and --without-grant"),
    };
    let base: reqwest::Url = format!("{}/", a.subscribe.trim_end_matches('/')).parse()?;
    let mut authz = Vec::new();
    for i in 0..a.subscribers {
        let client = subscriber_client(i, a.sources)?;
        let t = token.clone();
        let source = BundleSource::new(base.clone(), client, move || {
            let t = t.clone();
            Box::pin(async move { Ok(t) })
        });
        let z = tessera_verify::Authorizer::new(service.clone());
        z.spawn_bundle_sync(source);
        authz.push(z);
    }
    let (mut after, mut from_start, mut command) = (Vec::new(), Vec::new(), Vec::new());
    let wait_all = |held: Vec<Option<String>>, within: Duration| {
        let authz = &authz;
        async move {
            let t0 = Instant::now();
            let mut out = Vec::new();
            let mut pending: Vec<usize> = (0..authz.len()).collect();
            while !pending.is_empty() {
                pending.retain(|i| {
                    let v = authz[*i].version();
                    if v.is_some() && v != held[*i] {
                        out.push(t0.elapsed().as_secs_f64() * 1000.0);
                        false
                    } else {
                        true
                    }
                });
                if t0.elapsed() > within {
                    bail!("{} authorizers never got the new bundle", pending.len());
                }
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            Ok(out)
        }
    };
    for _ in 0..a.rounds {
        // The grant in force everywhere first (not measured).
        let held: Vec<Option<String>> = authz.iter().map(|z| z.version()).collect();
        apply(a, &with, false)?;
        wait_all(held, Duration::from_secs(30)).await?;
        let held: Vec<Option<String>> = authz.iter().map(|z| z.version()).collect();
        let start = Instant::now();
        apply(a, &without, true)?;
        let cmd = start.elapsed().as_secs_f64() * 1000.0;
        let got = wait_all(held, Duration::from_secs(30)).await?;
        command.push(cmd);
        from_start.extend(got.iter().map(|ms| ms + cmd));
        after.extend(got);
    }
    Ok((after, from_start, command))
}

fn revoke(a: &Args, kind: &str, id: &str) -> anyhow::Result<()> {
    let o = Command::new(&a.tessera)
        .args(["revoke", kind, id, "--data", &a.data])
        .output()?;
    if !o.status.success() {
        bail!("revoke: {}", String::from_utf8_lossy(&o.stderr));
    }
    Ok(())
}

/// Milliseconds from `t0` until `done(state)` holds for each state.
async fn propagation(
    states: &[RevocationState],
    t0: Instant,
    within: Duration,
    done: impl Fn(&RevocationState) -> bool,
) -> anyhow::Result<Vec<f64>> {
    let mut pending: Vec<usize> = (0..states.len()).collect();
    let mut out = Vec::with_capacity(states.len());
    while !pending.is_empty() {
        let now = t0.elapsed();
        pending.retain(|i| {
            if done(&states[*i]) {
                out.push(now.as_secs_f64() * 1000.0);
                false
            } else {
                true
            }
        });
        if now > within {
            bail!("{} subscribers never saw the change", pending.len());
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    Ok(out)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let http = reqwest::Client::new();
    let base: reqwest::Url = format!("{}/", a.subscribe.trim_end_matches('/')).parse()?;
    let sub_token = token(&http, &a).await?["access_token"]
        .as_str()
        .ok_or_else(|| anyhow!("no access_token"))?
        .to_owned();
    if a.kind == "grant" {
        let (mut after, mut from_start, mut command) = grants(&a, sub_token).await?;
        for v in [&mut after, &mut from_start, &mut command] {
            v.sort_by(f64::total_cmp);
        }
        println!(
            "{}",
            json!({
                "subscribers": a.subscribers,
                "rounds": a.rounds,
                "kind": "grant",
                "mode": "bundle long poll",
                "p50_ms": pct(&after, 0.5),
                "p99_ms": pct(&after, 0.99),
                "max_ms": pct(&after, 1.0),
                "from_command_start_p50_ms": pct(&from_start, 0.5),
                "from_command_start_p99_ms": pct(&from_start, 0.99),
                "command_p50_ms": pct(&command, 0.5),
            })
        );
        return Ok(());
    }
    let rss_before = a.server_pid.and_then(rss_kib);
    let started = Instant::now();
    let mut states = Vec::with_capacity(a.subscribers);
    let mut tasks = Vec::with_capacity(a.subscribers);
    for i in 0..a.subscribers {
        let client = subscriber_client(i, a.sources)?;
        match a.poll {
            Some(every) => {
                let v = tessera_verify::Verifier::new(
                    tessera_verify::VerifierConfig::jwt_svid("spiffe://example.org/x")?,
                    tessera_verify::KeySet::default(),
                );
                tasks.push(v.spawn_revocation_poller_with(
                    client,
                    base.join("revocations")?,
                    every,
                ));
                states.push(v.revocations().clone());
            }
            None => {
                let t = sub_token.clone();
                let source = BundleSource::new(base.clone(), client, move || {
                    let t = t.clone();
                    Box::pin(async move { Ok(t) })
                });
                let state = RevocationState::new(None);
                tasks.push(tessera_verify::spawn_feed(source, state.clone()));
                states.push(state);
            }
        }
    }
    // Every subscriber holds a snapshot (the poller: after its first poll).
    match a.poll {
        Some(every) => tokio::time::sleep(every + Duration::from_millis(500)).await,
        None => {
            propagation(&states, started, Duration::from_secs(120), |s| {
                s.version().is_some()
            })
            .await
            .context("connecting")?;
        }
    }
    let connected_ms = started.elapsed().as_secs_f64() * 1000.0;
    let rss_after = a.server_pid.and_then(rss_kib);
    let cpu_before = a.server_pid.and_then(cpu_ticks);
    let within = a.poll.map_or(Duration::from_secs(30), |p| p * 3);
    let mut samples = Vec::new();
    let mut per_round_max = Vec::new();
    // The same times counted from the moment the revoke command was started (its own run, a
    // process start and an admin-socket round trip, included).
    let mut from_start = Vec::new();
    let mut command_ms = Vec::new();
    for round in 0..a.rounds {
        let got = match a.kind.as_str() {
            "token" => {
                let jti = fresh_jti(&http, &a).await?;
                let start = Instant::now();
                revoke(&a, "token", &jti)?;
                let t0 = Instant::now();
                command_ms.push((t0 - start).as_secs_f64() * 1000.0);
                propagation(&states, t0, within, |s| s.token_revoked(Some(&jti), "", 0)).await?
            }
            "workload" => {
                let id = format!("{}{}", a.workload_prefix, a.first + round);
                let start = Instant::now();
                revoke(&a, "workload", &id)?;
                let t0 = Instant::now();
                command_ms.push((t0 - start).as_secs_f64() * 1000.0);
                propagation(&states, t0, within, |s| s.workload_revoked(&id)).await?
            }
            k => bail!("--kind {k}: token or workload"),
        };
        per_round_max.push(got.iter().copied().fold(0.0, f64::max));
        let cmd = command_ms.last().copied().unwrap_or(0.0);
        from_start.extend(got.iter().map(|ms| ms + cmd));
        samples.extend(got);
    }
    let cpu_after = a.server_pid.and_then(cpu_ticks);
    samples.sort_by(f64::total_cmp);
    per_round_max.sort_by(f64::total_cmp);
    from_start.sort_by(f64::total_cmp);
    command_ms.sort_by(f64::total_cmp);
    let mut out = json!({
        "subscribers": a.subscribers,
        "rounds": a.rounds,
        "kind": a.kind,
        "mode": a.poll.map_or("stream".to_owned(), |p| format!("poll {}", humantime::format_duration(p))),
        "connected_ms": connected_ms,
        "p50_ms": pct(&samples, 0.5),
        "p99_ms": pct(&samples, 0.99),
        "max_ms": pct(&samples, 1.0),
        "last_subscriber_p50_ms": pct(&per_round_max, 0.5),
        "from_command_start_p50_ms": pct(&from_start, 0.5),
        "from_command_start_p99_ms": pct(&from_start, 0.99),
        "command_p50_ms": pct(&command_ms, 0.5),
    });
    if let (Some(b), Some(af)) = (rss_before, rss_after) {
        out["server_rss_per_subscriber_kib"] =
            json!((af.saturating_sub(b)) as f64 / a.subscribers as f64);
    }
    if let (Some(b), Some(af)) = (cpu_before, cpu_after) {
        // Clock ticks are 10 ms on Linux.
        out["server_cpu_ms_per_change"] =
            json!((af.saturating_sub(b)) as f64 * 10.0 / a.rounds.max(1) as f64);
    }
    if let (Some(pid), Some(argv)) = (a.server_pid, &a.restart) {
        let argv: Vec<String> = serde_json::from_str(argv)?;
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        let killed = Instant::now();
        let mut cmd = tokio::process::Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        let mut child = cmd.spawn()?;
        let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(
            child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?,
        ));
        while let Some(l) = lines.next_line().await? {
            if l.starts_with("tessera: ready") {
                break;
            }
        }
        let ready_ms = killed.elapsed().as_secs_f64() * 1000.0;
        let jti = fresh_jti(&http, &a).await?;
        revoke(&a, "token", &jti)?;
        let t0 = Instant::now();
        let mut got = propagation(&states, t0, Duration::from_secs(120), |s| {
            s.token_revoked(Some(&jti), "", 0)
        })
        .await?;
        got.sort_by(f64::total_cmp);
        out["restart"] = json!({
            "server_ready_ms": ready_ms,
            "first_change_after_restart_p50_ms": pct(&got, 0.5),
            "first_change_after_restart_max_ms": pct(&got, 1.0),
            "kill_to_all_current_ms": killed.elapsed().as_secs_f64() * 1000.0,
        });
        // The restarted server stays up for the driver to stop.
        println!("{out}");
        drop(lines);
        let _ = child.kill().await;
        for t in tasks {
            t.abort();
        }
        return Ok(());
    }
    println!("{out}");
    for t in tasks {
        t.abort();
    }
    Ok(())
}
