//! `tessera-loadgen`: N keep-alive HTTP/1.1 connections against one URL.
//!
//! Without `--rate` each connection sends its next request when the previous one answered
//! (closed loop: the maximum rate). With `--rate R` requests are scheduled at R per second in
//! total and latency is measured from the scheduled time, so a slow server cannot hide its
//! queueing (no coordinated omission). Prints one JSON object.
#![expect(
    clippy::indexing_slicing,
    reason = "percentile indices are computed within the sorted vector's bounds"
)]

use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;

#[derive(Parser, Debug, Clone)]
struct Args {
    #[arg(long)]
    url: String,
    #[arg(long, default_value_t = 64)]
    connections: usize,
    #[arg(long, default_value = "10s")]
    duration: String,
    /// Total requests per second across connections (open loop); absent: as fast as possible.
    #[arg(long)]
    rate: Option<f64>,
    #[arg(long, default_value = "POST")]
    method: String,
    /// `Name: value`, repeatable.
    #[arg(long = "header")]
    headers: Vec<String>,
    #[arg(long, default_value = "")]
    body: String,
    /// A file of request bodies, one a line, each sent once (e.g. single-use client assertions);
    /// a connection stops when its share is used up.
    #[arg(long)]
    bodies: Option<std::path::PathBuf>,
}

struct Stats {
    latencies_us: Vec<u64>,
    ok: u64,
    non2xx: u64,
    errors: u64,
}

#[expect(
    clippy::too_many_arguments,
    reason = "a private task entry point; a struct would only rename them"
)]
async fn connection(
    args: Args,
    host: String,
    addr: String,
    path: String,
    until: Instant,
    interval: Option<Duration>,
    offset: Duration,
    bodies: std::sync::Arc<Vec<Bytes>>,
    index: usize,
) -> anyhow::Result<Stats> {
    let stream = tokio::net::TcpStream::connect(&addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    stream.set_nodelay(true)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut stats = Stats {
        latencies_us: Vec::with_capacity(1 << 16),
        ok: 0,
        non2xx: 0,
        errors: 0,
    };
    let body = Bytes::from(args.body.clone());
    let mut next = Instant::now() + offset;
    let mut own = (index..bodies.len()).step_by(args.connections.max(1));
    while Instant::now() < until {
        let body = if bodies.is_empty() {
            body.clone()
        } else {
            match own.next() {
                Some(i) => bodies[i].clone(),
                None => break,
            }
        };
        let scheduled = match interval {
            Some(i) => {
                tokio::time::sleep_until(next.into()).await;
                let s = next;
                next += i;
                s
            }
            None => Instant::now(),
        };
        let mut req = Request::builder()
            .method(args.method.as_str())
            .uri(&path)
            .header("host", &host);
        for h in &args.headers {
            if let Some((k, v)) = h.split_once(':') {
                req = req.header(k.trim(), v.trim());
            }
        }
        let req = req.body(Full::new(body))?;
        if sender.ready().await.is_err() {
            stats.errors += 1;
            break;
        }
        match sender.send_request(req).await {
            Ok(resp) => {
                let status = resp.status();
                let _ = resp.into_body().collect().await;
                stats
                    .latencies_us
                    .push(u64::try_from(scheduled.elapsed().as_micros()).unwrap_or(u64::MAX));
                if status.is_success() {
                    stats.ok += 1;
                } else {
                    stats.non2xx += 1;
                }
            }
            Err(_) => {
                stats.errors += 1;
                break;
            }
        }
    }
    Ok(stats)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let uri: hyper::Uri = args.url.parse()?;
    let host = uri
        .authority()
        .context("the URL needs host:port")?
        .to_string();
    let path = uri.path_and_query().map_or("/".into(), ToString::to_string);
    let duration = humantime::parse_duration(&args.duration)?;
    let interval = args
        .rate
        .map(|r| Duration::from_secs_f64(args.connections as f64 / r));
    let started = Instant::now();
    let until = started + duration;
    let bodies: Vec<Bytes> = match &args.bodies {
        Some(p) => std::fs::read_to_string(p)?
            .lines()
            .map(|l| Bytes::from(l.to_owned()))
            .collect(),
        None => Vec::new(),
    };
    let bodies = std::sync::Arc::new(bodies);
    let mut tasks = Vec::new();
    for i in 0..args.connections {
        // Spread the open-loop schedules of the connections evenly over one interval.
        let offset = interval.map_or(Duration::ZERO, |iv| {
            iv.mul_f64(i as f64 / args.connections as f64)
        });
        tasks.push(tokio::spawn(connection(
            args.clone(),
            host.clone(),
            host.clone(),
            path.clone(),
            until,
            interval,
            offset,
            bodies.clone(),
            i,
        )));
    }
    let mut all = Vec::new();
    let (mut ok, mut non2xx, mut errors) = (0, 0, 0);
    for t in tasks {
        let s = t.await??;
        all.extend(s.latencies_us);
        ok += s.ok;
        non2xx += s.non2xx;
        errors += s.errors;
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| -> u64 {
        if all.is_empty() {
            return 0;
        }
        let idx = ((all.len() as f64 - 1.0) * p).round() as usize;
        all[idx.min(all.len() - 1)]
    };
    let out = serde_json::json!({
        "requests": all.len(), "ok": ok, "non2xx": non2xx, "errors": errors,
        "seconds": elapsed, "rps": ok as f64 / elapsed,
        "p50_us": pct(0.50), "p90_us": pct(0.90), "p99_us": pct(0.99), "max_us": all.last().copied().unwrap_or(0),
    });
    println!("{out}");
    Ok(())
}
