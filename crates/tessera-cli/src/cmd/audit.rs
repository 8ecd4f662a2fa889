//! `tessera audit tail|verify|checkpoint|prove|monitor|witness`: the audit trail and its
//! transparency log, from the admin's side, a monitor's and a witness's.

use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::json;
use tessera_core::admin_api::AuditVerifyResponse;
use tessera_log::api::CheckpointResponse;
use tessera_log::{
    AddCheckpoint, ConsistencyProof, Entries, Frontier, InclusionProof, KeyType, LeafRecord,
    NoteSigner, NoteVerifier, SignedCheckpoint, Witness, WitnessState,
};

use crate::admin_client::AdminClient;
use crate::cli::{AuditCommand, Output, Target};
use crate::render;
use crate::support::{admin, parse_duration, print};

pub(crate) async fn audit(command: AuditCommand) -> anyhow::Result<u8> {
    match command {
        AuditCommand::Tail { n, target } => {
            let v = admin(&target)?
                .get(&format!("/v1/audit/tail?n={n}"))
                .await?;
            print(&target, &v, || render::audit(&v));
            Ok(0)
        }
        AuditCommand::Verify { checkpoint, target } => verify(checkpoint.as_deref(), &target).await,
        AuditCommand::Checkpoint { now, target } => {
            let client = admin(&target)?;
            let v: CheckpointResponse = if now {
                client.send("/v1/audit/checkpoint", &json!({})).await?
            } else {
                client.fetch("/v1/audit/checkpoint").await?
            };
            print(&target, &v, || v.checkpoint.clone());
            Ok(0)
        }
        AuditCommand::Prove {
            what,
            log_key,
            target,
        } => prove(&what, log_key.as_deref(), &target).await,
        AuditCommand::Monitor {
            watch,
            expect_path,
            log_key,
            once,
            interval,
            target,
        } => {
            let interval = parse_duration(&interval)?;
            monitor(
                &watch,
                &expect_path,
                log_key.as_deref(),
                once,
                interval,
                &target,
            )
            .await
        }
        AuditCommand::Witness {
            listen,
            key,
            name,
            logs,
            state,
        } => witness(listen, &key, &name, &logs, &state).await,
    }
}

/// Every checkpoint named: the file, or each file of a folder.
fn checkpoint_files(path: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let read = |p: &Path| {
        std::fs::read_to_string(p).with_context(|| format!("cannot read `{}`", p.display()))
    };
    if !path.is_dir() {
        return Ok(vec![(path.display().to_string(), read(path)?)]);
    }
    let mut files: Vec<_> = std::fs::read_dir(path)
        .with_context(|| format!("cannot read `{}`", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| Ok((p.display().to_string(), read(p)?)))
        .collect()
}

async fn verify(checkpoint: Option<&Path>, target: &Target) -> anyhow::Result<u8> {
    let files = match checkpoint {
        None => Vec::new(),
        Some(p) => checkpoint_files(p)?,
    };
    // One walk of the log checks them all: a sink folder holds a checkpoint a second.
    let texts: Vec<&str> = files.iter().map(|(_, t)| t.as_str()).collect();
    let v: AuditVerifyResponse = admin(target)?
        .send("/v1/audit/verify", &json!({ "checkpoints": texts }))
        .await?;
    let against = match (checkpoint, files.as_slice()) {
        (Some(_), [(name, _)]) => format!(" and consistent with checkpoint `{name}`"),
        (Some(dir), all) => format!(
            " and consistent with the {} checkpoints in `{}`",
            all.len(),
            dir.display()
        ),
        (None, _) => String::new(),
    };
    print(target, &v, || {
        if v.ok {
            format!(
                "audit log intact: {} records{against}\n",
                v.records.unwrap_or_default()
            )
        } else {
            format!("audit log BROKEN: {}\n", v.error.as_deref().unwrap_or("?"))
        }
    });
    Ok(if v.ok { 0 } else { 1 })
}

async fn log_key(client: &AdminClient, pinned: Option<&str>) -> anyhow::Result<NoteVerifier> {
    let text = match pinned {
        Some(k) => k.to_owned(),
        None => {
            client
                .fetch::<CheckpointResponse>("/v1/audit/checkpoint")
                .await?
                .log_key
        }
    };
    NoteVerifier::parse(&text).map_err(|e| anyhow!("--log-key: {e}"))
}

async fn prove(what: &str, pinned: Option<&str>, target: &Target) -> anyhow::Result<u8> {
    let client = admin(target)?;
    let key = log_key(&client, pinned).await?;
    let q = percent_encode(what);
    let proof: InclusionProof = client.fetch(&format!("/v1/audit/prove?of={q}")).await?;
    match proof.verify(&key) {
        Ok((record, cp)) => {
            print(target, &proof, || {
                format!(
                    "record {} ({} {}) is in the log: leaf {} of checkpoint size {}, verified with `{}`\n\n{}\n{}",
                    record.seq,
                    record.kind,
                    record.subject,
                    proof.leaf_index,
                    cp.checkpoint.size,
                    key.name(),
                    serde_json::to_string_pretty(&proof).unwrap_or_default(),
                    proof.checkpoint
                )
            });
            Ok(0)
        }
        Err(e) => {
            eprintln!("tessera: the proof does not verify: {e}");
            Ok(1)
        }
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// What path a credential came by: the token's grant type, or how an agent asked.
fn issuance_path(leaf: &LeafRecord) -> Option<String> {
    let d = leaf.detail_json();
    match leaf.kind.as_str() {
        "token.issued" => Some(
            d.get("grant_type")
                .and_then(|v| v.as_str())
                .unwrap_or("unknown")
                .to_owned(),
        ),
        "svid.issued" => Some(
            match d.get("kind").and_then(|v| v.as_str()) {
                Some("jwt") => "jwt-svid",
                _ => "x509",
            }
            .to_owned(),
        ),
        _ => None,
    }
}

async fn monitor(
    watch: &[String],
    expect_path: &[String],
    pinned: Option<&str>,
    once: bool,
    interval: std::time::Duration,
    target: &Target,
) -> anyhow::Result<u8> {
    let client = admin(target)?;
    let key = log_key(&client, pinned).await?;
    let json_out = target.output == Output::Json;
    let mut frontier = Frontier::default();
    let mut last: Option<(u64, tessera_log::Hash)> = None;
    let mut alerts = 0u64;
    let alert = |fields: serde_json::Value, text: String| {
        if json_out {
            println!("{fields}");
        } else {
            println!("ALERT {text}");
        }
    };
    loop {
        let cp: CheckpointResponse = client.fetch("/v1/audit/checkpoint").await?;
        let signed = match SignedCheckpoint::open(&cp.checkpoint, &key) {
            Ok(s) => s,
            Err(e) => {
                alerts += 1;
                alert(
                    json!({"alert": "bad_checkpoint", "reason": e.to_string()}),
                    format!("checkpoint refused: {e}"),
                );
                if once {
                    return Ok(1);
                }
                tokio::time::sleep(interval).await;
                continue;
            }
        };
        let size = signed.checkpoint.size;
        if let Some((old, old_root)) = last {
            if size < old {
                alerts += 1;
                alert(
                    json!({"alert": "log_shrank", "old": old, "new": size}),
                    format!("the log shrank from {old} to {size}"),
                );
            } else if size > old {
                let c: ConsistencyProof = client
                    .fetch(&format!("/v1/audit/consistency?old={old}&new={size}"))
                    .await?;
                if let Err(e) = c.verify(&old_root, &signed.checkpoint.root) {
                    alerts += 1;
                    alert(
                        json!({"alert": "inconsistent", "old": old, "new": size, "reason": e.to_string()}),
                        format!("checkpoint {size} does not extend checkpoint {old}: {e}"),
                    );
                }
            }
        }
        while frontier.size() < size {
            let e: Entries = client
                .fetch(&format!(
                    "/v1/audit/entries?start={}&limit=1000",
                    frontier.size()
                ))
                .await?;
            if e.leaves.is_empty() {
                bail!(
                    "the server has no entries from {} (checkpoint size {size})",
                    frontier.size()
                );
            }
            for b64 in e
                .leaves
                .iter()
                .take(usize::try_from(size - frontier.size()).unwrap_or(usize::MAX))
            {
                let data = STANDARD.decode(b64).context("an entry is not base64")?;
                frontier.push(tessera_log::leaf_hash(&data));
                let Some(leaf) = LeafRecord::from_bytes(&data) else {
                    alerts += 1;
                    alert(
                        json!({"alert": "unreadable_entry", "index": frontier.size() - 1}),
                        format!("entry {} is not an audit record", frontier.size() - 1),
                    );
                    continue;
                };
                let Some(path) = issuance_path(&leaf) else {
                    continue;
                };
                if leaf.outcome != "ok" {
                    continue;
                }
                let detail = leaf.detail_json();
                let credential = detail
                    .get("jti")
                    .or_else(|| detail.get("serial"))
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                // (name in JSON, words in text, whether it applies)
                let reasons = [
                    (
                        "watched",
                        "watched",
                        watch
                            .iter()
                            .any(|g| tessera_core::glob::matches(g, &leaf.subject)),
                    ),
                    (
                        "unexpected_path",
                        "unexpected path",
                        !expect_path.is_empty() && !expect_path.iter().any(|p| p == &path),
                    ),
                ];
                for (name, words, _) in reasons.iter().filter(|r| r.2) {
                    alerts += 1;
                    alert(
                        json!({"alert": name, "seq": leaf.seq, "kind": leaf.kind, "subject": leaf.subject, "actor": leaf.actor, "path": path, "credential": credential}),
                        format!(
                            "{words}: record {} {} for {} by {} via {path} ({credential})",
                            leaf.seq, leaf.kind, leaf.subject, leaf.actor
                        ),
                    );
                }
            }
        }
        if frontier.root() != signed.checkpoint.root {
            alerts += 1;
            alert(json!({"alert": "entries_mismatch", "size": size}), format!("the entries do not hash to checkpoint {size}'s root: the log served is not the one signed"));
        }
        last = Some((size, signed.checkpoint.root));
        if once {
            if !json_out {
                eprintln!("tessera: monitored {size} records, {alerts} alerts");
            }
            return Ok(u8::from(alerts > 0));
        }
        tokio::time::sleep(interval).await;
    }
}

/// The witness's key: a 32-byte seed, made on first start.
fn witness_seed(path: &Path) -> anyhow::Result<Vec<u8>> {
    match std::fs::read(path) {
        Ok(b) if b.len() == 32 => Ok(b),
        Ok(_) => bail!("`{}` is not a 32-byte witness key", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let seed = tessera_token::seal::random_bytes::<32>().map_err(|e| anyhow!("{e}"))?;
            tessera_core::private_file::write_private(path, &seed)
                .with_context(|| format!("cannot write `{}`", path.display()))?;
            Ok(seed.to_vec())
        }
        Err(e) => Err(e).with_context(|| format!("cannot read `{}`", path.display())),
    }
}

async fn witness(
    listen: std::net::SocketAddr,
    key: &Path,
    name: &str,
    logs: &[String],
    state_path: &Path,
) -> anyhow::Result<u8> {
    let signer = NoteSigner::from_seed(name, KeyType::Cosignature, &witness_seed(key)?)
        .map_err(|e| anyhow!("--name: {e}"))?;
    let vkey = signer.verifier().to_vkey();
    let logs = logs
        .iter()
        .map(|l| NoteVerifier::parse(l).map_err(|e| anyhow!("--log: {e}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let state: WitnessState = match std::fs::read(state_path) {
        Ok(b) => serde_json::from_slice(&b)
            .with_context(|| format!("`{}` is not a witness state file", state_path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => WitnessState::default(),
        Err(e) => return Err(e).with_context(|| format!("cannot read `{}`", state_path.display())),
    };
    let shared = Arc::new(WitnessService {
        witness: Witness::new(signer, logs),
        state: Mutex::new(state),
        path: state_path.to_owned(),
    });
    let tcp = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on `{listen}`"))?;
    let local = tcp.local_addr()?;
    println!("tessera: witness ready url=http://{local}/ key={vkey}");
    let gate = tessera_listen::Gate::new(tessera_listen::Limits::from_nofile(0.5));
    let mut backoff = tessera_listen::Backoff::new("witness");
    loop {
        let Some((stream, peer)) = backoff.take(tcp.accept().await).await else {
            continue;
        };
        let Ok(ticket) = gate.admit(tessera_listen::Source::Ip(peer.ip())) else {
            continue;
        };
        let shared = shared.clone();
        let service = hyper::service::service_fn(move |req| {
            let shared = shared.clone();
            async move { Ok::<_, std::convert::Infallible>(shared.handle(req).await) }
        });
        tokio::spawn(tessera_listen::serve_http(
            stream,
            service,
            ticket,
            std::future::pending(),
        ));
    }
}

#[derive(Debug)]
struct WitnessService {
    witness: Witness,
    state: Mutex<WitnessState>,
    path: std::path::PathBuf,
}

type Reply = hyper::Response<http_body_util::Full<bytes::Bytes>>;

fn reply(status: u16, media: &str, body: String) -> Reply {
    let mut r = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::BAD_REQUEST);
    if let Ok(v) = hyper::header::HeaderValue::from_str(media) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

impl WitnessService {
    async fn handle(&self, req: hyper::Request<hyper::body::Incoming>) -> Reply {
        use http_body_util::BodyExt;
        if req.method() != hyper::Method::POST || req.uri().path() != "/add-checkpoint" {
            return reply(404, "text/plain", "POST /add-checkpoint\n".into());
        }
        let limited =
            http_body_util::Limited::new(req.into_body(), tessera_log::note::MAX_NOTE_BYTES + 4096);
        let body = match limited.collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return reply(413, "text/plain", "the request is too large\n".into()),
        };
        let Ok(body) = std::str::from_utf8(&body) else {
            return reply(400, "text/plain", "the body is not UTF-8\n".into());
        };
        let outcome = AddCheckpoint::parse(body).and_then(|req| {
            let mut state = self
                .state
                .lock()
                .map_err(|_| tessera_log::WitnessError::Malformed("state lock".into()))?;
            let mut next = state.clone();
            let line = self.witness.add(
                &mut next,
                &req,
                tessera_core::now_unix().try_into().unwrap_or(0),
            )?;
            // Durable before the cosignature leaves: a restart never cosigns a fork of what
            // it already vouched for.
            let bytes = serde_json::to_vec(&next).unwrap_or_default();
            tessera_core::private_file::write_private(&self.path, &bytes).map_err(|e| {
                tessera_log::WitnessError::Malformed(format!("cannot save the state: {e}"))
            })?;
            *state = next;
            Ok(line)
        });
        match outcome {
            Ok(line) => reply(200, "text/plain; charset=utf-8", line),
            Err(tessera_log::WitnessError::Conflict { size }) => reply(
                409,
                tessera_log::witness::SIZE_MEDIA_TYPE,
                format!("{size}\n"),
            ),
            Err(e) => {
                eprintln!("tessera: witness refused a checkpoint: {e}");
                reply(e.status(), "text/plain", format!("{e}\n"))
            }
        }
    }
}
