//! `tessera-httpbench`: HTTP GET load, plain or with a client certificate, for the sidecar
//! benchmark against nginx (the same generator for every peer).
//!
//!   tessera-httpbench --url URL [--cert PEM --key PEM] [--connections 32] [--seconds 10]
//!                     [--new-connection] [--rate N] [--method POST] [--header 'K: V']...
//!                     [--body TEXT]
//!
//! Closed loop: each connection sends the next request when the last answered. With `--rate N`,
//! open loop instead: requests are due at a fixed pace (N per second over all connections); a
//! request sent late because the previous answer was late counts from when it was due, so a slow
//! answer is not hidden by the requests it delayed. With `--new-connection` every request opens (and handshakes) a new connection.
//! Prints one JSON line: requests per second, p50/p99/max latency in µs, errors.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::print_stdout,
    reason = "a benchmark: a failure should stop it loudly"
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    url: String,
    #[arg(long)]
    cert: Option<String>,
    #[arg(long)]
    key: Option<String>,
    #[arg(long, default_value_t = 32)]
    connections: usize,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long)]
    new_connection: bool,
    /// Open loop at this many requests per second in total.
    #[arg(long)]
    rate: Option<f64>,
    #[arg(long, default_value = "GET")]
    method: String,
    /// `Name: value`, repeatable.
    #[arg(long = "header")]
    headers: Vec<String>,
    /// A request body (with `--method POST`).
    #[arg(long)]
    body: Option<String>,
}

fn client(a: &Args) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        // A benchmark client: the servers present SPIFFE certificates (no DNS name); the peers'
        // own client-certificate checks are what is measured, not this client's.
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(10));
    if let (Some(c), Some(k)) = (&a.cert, &a.key) {
        let pem = [std::fs::read(c).unwrap(), std::fs::read(k).unwrap()].concat();
        b = b.identity(reqwest::Identity::from_pem(&pem).unwrap());
    }
    if a.new_connection {
        b = b.pool_max_idle_per_host(0);
    } else {
        b = b.pool_max_idle_per_host(1);
    }
    b.build().unwrap()
}

#[tokio::main]
async fn main() {
    let a = Args::parse();
    let stop = Instant::now() + Duration::from_secs(a.seconds);
    let url = Arc::new(a.url.clone());
    let method: reqwest::Method = a.method.parse().unwrap();
    let mut headers = reqwest::header::HeaderMap::new();
    for h in &a.headers {
        let (k, v) = h.split_once(':').expect("--header 'Name: value'");
        headers.insert(
            reqwest::header::HeaderName::from_bytes(k.trim().as_bytes()).unwrap(),
            v.trim().parse().unwrap(),
        );
    }
    let start = Instant::now();
    // Each connection's pace: one request every `interval`, offset so the whole is even.
    let interval = a
        .rate
        .map(|r| Duration::from_secs_f64(a.connections as f64 / r));
    let mut tasks = Vec::new();
    for i in 0..a.connections {
        // One client per connection, so keep-alive means one connection each.
        let (c, url, method, headers) = (client(&a), url.clone(), method.clone(), headers.clone());
        let body = a.body.clone().unwrap_or_default();
        let offset = interval.map(|iv| iv.mul_f64(i as f64 / a.connections as f64));
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut errors) = (Vec::new(), 0u64);
            let mut n = 0u32;
            while Instant::now() < stop {
                let t = match (interval, offset) {
                    (Some(iv), Some(off)) => {
                        let due = start + off + iv * n;
                        n += 1;
                        if due >= stop {
                            break;
                        }
                        if due > Instant::now() {
                            // On time: the clock starts when the timer fires (it may fire up to
                            // a millisecond late; that lateness is the generator's, not the
                            // server's).
                            tokio::time::sleep_until(due.into()).await;
                            Instant::now()
                        } else {
                            // Late because the last answer was: count from when it was due.
                            due
                        }
                    }
                    _ => Instant::now(),
                };
                match c
                    .request(method.clone(), url.as_str())
                    .headers(headers.clone())
                    .body(body.clone())
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        lat.push(t.elapsed().as_micros() as u64);
                    }
                    _ => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    let (mut all, mut errors) = (Vec::new(), 0);
    for t in tasks {
        let (l, e) = t.await.unwrap();
        all.extend(l);
        errors += e;
    }
    all.sort_unstable();
    let pct = |q: f64| {
        all.get(((all.len() as f64 * q) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "{}",
        serde_json::json!({
            "rps": all.len() as f64 / a.seconds as f64,
            "p50_us": pct(0.5),
            "p99_us": pct(0.99),
            "max_us": all.last().copied().unwrap_or(0),
            "errors": errors,
        })
    );
}
