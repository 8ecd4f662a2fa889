//! The SPIFFE Workload API on a unix socket: the caller is attested from the socket's peer
//! credentials, and gets the SVIDs of every registration its selectors match, and only those.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tonic::transport::server::Connected;
use tonic::{Request, Response, Status};

use crate::attest::{self, Binding, Peer, Process};
use crate::proto::spiffe_workload_api_server::{SpiffeWorkloadApi, SpiffeWorkloadApiServer};
use crate::proto::{
    JwtBundlesRequest, JwtBundlesResponse, Jwtsvid, JwtsvidRequest, JwtsvidResponse,
    ValidateJwtsvidRequest, ValidateJwtsvidResponse, X509BundlesRequest, X509BundlesResponse,
    X509svid, X509svidRequest, X509svidResponse,
};
use crate::{Agent, AgentError, CallerRefusal, State};

/// Binds the Workload API socket. A stale socket file (no one answers on it) is replaced; a
/// live one, a non-socket file, or a missing folder is refused with a clear message.
pub fn bind_socket(path: &Path) -> Result<UnixListener, AgentError> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let err = |m: String| AgentError::File {
        path: path.display().to_string(),
        message: m,
    };
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() && !dir.is_dir() => {
            return Err(err(format!(
                "its folder `{}` does not exist",
                dir.display()
            )))
        }
        _ => {}
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(err("a file that is not a socket is in the way".into()));
        }
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => return Err(err("another process is serving on this socket".into())),
            Err(_) => {
                tracing::info!(socket = %path.display(), "removing a stale socket file");
                std::fs::remove_file(path).map_err(|e| err(e.to_string()))?;
            }
        }
    }
    let listener = UnixListener::bind(path).map_err(|e| err(e.to_string()))?;
    // Any local process may ask; what it gets is decided by attestation, not by file mode.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777))
        .map_err(|e| err(e.to_string()))?;
    Ok(listener)
}

/// A connection with what the kernel said about its peer when it was accepted.
#[derive(Debug)]
pub struct PeerStream {
    inner: UnixStream,
    info: PeerInfo,
    /// The connection's place under the listener's cap, held while it is open. Streams are
    /// long-lived by design, so a Workload API connection counts as busy and is never evicted:
    /// past its user's share, a new connection is refused instead.
    _place: (tessera_listen::Ticket, tessera_listen::gate::BusyGuard),
}

#[derive(Clone, Debug)]
pub struct PeerInfo {
    /// The peer as it was at accept, or why it could not be bound.
    binding: Result<Binding, String>,
    attested: Arc<OnceLock<Process>>,
}

impl Connected for PeerStream {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

fn accept(stream: UnixStream, place: tessera_listen::Ticket) -> PeerStream {
    let accepted_uptime = attest::uptime();
    let peer = stream.peer_cred().ok().and_then(|c| {
        Some(Peer {
            pid: c.pid()?,
            uid: c.uid(),
            gid: c.gid(),
            accepted_uptime,
        })
    });
    let binding = match peer {
        None => Err(attest::AttestError::NoPeer.to_string()),
        Some(peer) => {
            // The kernel's handle on the process that connected (Linux 6.5 and later).
            let pidfd =
                nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerPidfd).ok();
            let socket = crate::sockets::unix_peer_inode(&stream, peer.pid);
            Binding::new(peer, pidfd, socket).map_err(|e| e.to_string())
        }
    };
    let busy = place.busy();
    PeerStream {
        inner: stream,
        info: PeerInfo {
            binding,
            attested: Arc::new(OnceLock::new()),
        },
        _place: (place, busy),
    }
}

/// The Workload API's cap: a quarter of the descriptor budget, an eighth of that per user.
fn workload_gate() -> tessera_listen::Gate {
    let mut limits = tessera_listen::Limits::from_nofile(0.25);
    limits.max_per_source = (limits.max_connections / 8).max(4);
    tessera_listen::Gate::new(limits)
}

pub async fn serve(agent: Arc<Agent>, listener: UnixListener) {
    let gate = workload_gate();
    let backoff = tessera_listen::Backoff::new("workload api");
    let incoming = futures_util::stream::unfold(
        (listener, gate, backoff),
        |(l, gate, mut backoff)| async move {
            loop {
                let Some((s, _)) = backoff.take(l.accept().await).await else {
                    continue;
                };
                let uid = s.peer_cred().map_or(u32::MAX, |c| c.uid());
                // Refused: dropped, so closed.
                if let Ok(place) = gate.admit(tessera_listen::Source::Uid(uid)) {
                    let next: io::Result<PeerStream> = Ok(accept(s, place));
                    return Some((next, (l, gate, backoff)));
                }
            }
        },
    );
    let svc = SpiffeWorkloadApiServer::new(WorkloadApi { agent });
    if let Err(e) = tonic::transport::Server::builder()
        .add_service(svc)
        .serve_with_incoming(incoming)
        .await
    {
        tracing::error!(error = %e, "the Workload API stopped");
    }
}

struct WorkloadApi {
    agent: Arc<Agent>,
}

/// Every Workload API request carries this metadata (SPIFFE Workload Endpoint §4), which a
/// browser or a proxied request cannot set: a guard against request forgery.
fn check_header<T>(req: &Request<T>) -> Result<(), Status> {
    match req.metadata().get("workload.spiffe.io") {
        Some(v) if v.as_bytes() == b"true" => Ok(()),
        _ => Err(Status::invalid_argument(
            "security header missing from request: `workload.spiffe.io: true`",
        )),
    }
}

/// The attested process on the current Workload API span (its pid and unix user only).
fn trace_process(p: &Process) {
    let span = tracing::Span::current();
    span.record("process.pid", p.pid);
    span.record("process.owner.uid", i64::from(p.uid));
}

/// A refusal's gRPC code on the current span.
fn trace_status(s: &Status) {
    tracing::Span::current().record("error.type", format!("{:?}", s.code()).as_str());
}

fn refused(e: &attest::AttestError) -> Status {
    Status::permission_denied(format!("attestation failed: {e}"))
}

impl WorkloadApi {
    /// The caller, attested: its binding checked now (before and after the slow reads of a
    /// first attestation), so what is attested is the process that connected, as it was.
    async fn caller<T>(&self, req: &Request<T>) -> Result<(Process, Binding), Status> {
        let info = req
            .extensions()
            .get::<PeerInfo>()
            .ok_or_else(|| Status::permission_denied("the caller cannot be attested"))?
            .clone();
        let binding = info.binding.clone().map_err(|e| {
            Status::permission_denied(format!("the caller cannot be attested: {e}"))
        })?;
        self.agent
            .attest_caller(binding, Some(info.attested))
            .await
            .map_err(|e| match e {
                CallerRefusal::Refused(why) => {
                    Status::permission_denied(format!("attestation failed: {why}"))
                }
                CallerRefusal::Unavailable => Status::unavailable(e.to_string()),
            })
    }
}

impl WorkloadApi {
    /// A stream of bundles for a caller that has at least one identity (like SPIRE, bundles go
    /// only to attested workloads); refused at once otherwise.
    fn bundle_stream<T, B>(
        &self,
        (p, binding): (Process, Binding),
        bundles: B,
    ) -> Result<Response<ResponseStream<T>>, Status>
    where
        T: PartialEq + Clone + Send + 'static,
        B: Fn(&State, &Process) -> T + Send + 'static,
    {
        let f = move |state: &State, p: &Process| {
            if state.matching(p).next().is_none() {
                return Err(Status::permission_denied("no identity issued"));
            }
            Ok(Some(bundles(state, p)))
        };
        f(&self.agent.state(), &p)?;
        Ok(Response::new(watch_stream(&self.agent, p, binding, f)))
    }
}

fn concat(ders: &[Vec<u8>]) -> Vec<u8> {
    ders.concat()
}

/// The caller's X.509-SVIDs now: `Ok(None)` when it is registered but its SVIDs are not issued
/// yet (the stream waits), `Err` when it matches no registration.
fn x509_for(state: &State, p: &Process) -> Result<Option<X509svidResponse>, Status> {
    let mut ids: Vec<_> = state.matching(p).map(|r| r.spiffe_id.clone()).collect();
    if ids.is_empty() {
        return Err(Status::permission_denied("no identity issued"));
    }
    ids.sort();
    let bundle = concat(&state.bundle);
    let now = tessera_core::now_unix();
    let svids: Vec<X509svid> = ids
        .iter()
        .filter_map(|id| state.svids.get(id))
        // Never an expired SVID, even before the rotation loop has pruned it (it backs off
        // while the server is away).
        .filter(|s| s.not_after > now)
        .map(|s| X509svid {
            spiffe_id: s.spiffe_id.to_string(),
            x509_svid: concat(&s.chain),
            x509_svid_key: s.key.clone(),
            bundle: bundle.clone(),
            hint: String::new(),
        })
        .collect();
    if svids.is_empty() {
        return Ok(None);
    }
    Ok(Some(X509svidResponse {
        svids,
        crl: Vec::new(),
        federated_bundles: state
            .federated_for(p)
            .into_iter()
            .map(|(td, b)| (td.to_string(), concat(&b.x509)))
            .collect(),
    }))
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// A stream that sends `f(state)` at once and again whenever it changes, for as long as the
/// connection stays bound to the attested process (checked before every message). `f`
/// returning `Ok(None)` means "nothing to send yet".
fn watch_stream<T, F>(agent: &Agent, process: Process, binding: Binding, f: F) -> ResponseStream<T>
where
    T: PartialEq + Clone + Send + 'static,
    F: Fn(&State, &Process) -> Result<Option<T>, Status> + Send + 'static,
{
    let rx = agent.subscribe();
    let init = (rx, (process, binding), f, None::<T>, true, false);
    Box::pin(futures_util::stream::unfold(
        init,
        |(mut rx, bound, f, mut last, mut first, done)| async move {
            if done {
                return None;
            }
            loop {
                if !first && rx.changed().await.is_err() {
                    return None;
                }
                // The caller was checked just before its stream began (`caller`): a second walk
                // of every descriptor table for the first message would only double its cost.
                let checked_just_now = first;
                first = false;
                let (process, binding) = &bound;
                if !checked_just_now {
                    let b = binding.clone();
                    let checked = tokio::task::spawn_blocking(move || b.check())
                        .await
                        .unwrap_or(Err(crate::attest::AttestError::Unbound));
                    if let Err(e) = checked {
                        return Some((Err(refused(&e)), (rx, bound, f, last, first, true)));
                    }
                }
                let state = rx.borrow_and_update().clone();
                match f(&state, process) {
                    Ok(Some(msg)) if last.as_ref() != Some(&msg) => {
                        last = Some(msg.clone());
                        return Some((Ok(msg), (rx, bound, f, last, first, false)));
                    }
                    Ok(_) => continue,
                    Err(status) => return Some((Err(status), (rx, bound, f, last, first, true))),
                }
            }
        },
    ))
}

fn jwt_bundle(state: &State) -> Vec<u8> {
    let mut jwks = state.jwt_keys.clone();
    if let Some(keys) = jwks.get_mut("keys").and_then(|k| k.as_array_mut()) {
        for k in keys {
            if let Some(o) = k.as_object_mut() {
                o.insert("use".into(), "jwt-svid".into());
            }
        }
    }
    serde_json::to_vec(&jwks).unwrap_or_default()
}

fn to_prost(v: &serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.iter().map(to_prost).collect(),
        }),
        serde_json::Value::Object(o) => Kind::StructValue(prost_types::Struct {
            fields: o.iter().map(|(k, v)| (k.clone(), to_prost(v))).collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadApi {
    type FetchX509SVIDStream = ResponseStream<X509svidResponse>;
    type FetchX509BundlesStream = ResponseStream<X509BundlesResponse>;
    type FetchJWTBundlesStream = ResponseStream<JwtBundlesResponse>;

    #[tracing::instrument(target = "otel", name = "workload_api", skip_all, fields(
        otel.name = "SpiffeWorkloadAPI/FetchX509SVID", otel.kind = "server",
        rpc.system = "grpc", rpc.method = "FetchX509SVID", process.pid, process.owner.uid,
        tessera.spiffe_ids, error.type))]
    async fn fetch_x509svid(
        &self,
        req: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        check_header(&req)?;
        let (p, binding) = self.caller(&req).await.inspect_err(trace_status)?;
        trace_process(&p);
        // Refuse at once a caller that matches nothing.
        let first = x509_for(&self.agent.state(), &p).inspect_err(trace_status)?;
        let span = tracing::Span::current();
        if !span.is_disabled() {
            let ids: Vec<&str> = first
                .iter()
                .flat_map(|r| r.svids.iter().map(|s| s.spiffe_id.as_str()))
                .collect();
            span.record("tessera.spiffe_ids", ids.join(",").as_str());
        }
        Ok(Response::new(watch_stream(
            &self.agent,
            p,
            binding,
            x509_for,
        )))
    }

    async fn fetch_x509_bundles(
        &self,
        req: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        check_header(&req)?;
        let p = self.caller(&req).await?;
        let td = self.agent.td.to_string();
        self.bundle_stream(p, move |state, p| {
            let mut bundles = HashMap::from([(td.clone(), concat(&state.bundle))]);
            for (ftd, b) in state.federated_for(p) {
                bundles.insert(ftd.to_string(), concat(&b.x509));
            }
            X509BundlesResponse {
                crl: Vec::new(),
                bundles,
            }
        })
    }

    #[tracing::instrument(target = "otel", name = "workload_api", skip_all, fields(
        otel.name = "SpiffeWorkloadAPI/FetchJWTSVID", otel.kind = "server",
        rpc.system = "grpc", rpc.method = "FetchJWTSVID", process.pid, process.owner.uid,
        tessera.audience, tessera.spiffe_ids, error.type))]
    async fn fetch_jwtsvid(
        &self,
        req: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        check_header(&req)?;
        let (p, _) = self.caller(&req).await.inspect_err(trace_status)?;
        trace_process(&p);
        let body = req.get_ref();
        if body.audience.is_empty() || body.audience.iter().any(String::is_empty) {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        let state = self.agent.state();
        let mut ids: Vec<_> = state.matching(&p).map(|r| r.spiffe_id.clone()).collect();
        ids.sort();
        if ids.is_empty() {
            return Err(Status::permission_denied("no identity issued"));
        }
        if !body.spiffe_id.is_empty() {
            ids.retain(|id| id.as_str() == body.spiffe_id);
            if ids.is_empty() {
                return Err(Status::permission_denied(format!(
                    "no identity `{}` for this caller",
                    body.spiffe_id.chars().take(200).collect::<String>()
                )));
            }
        }
        let span = tracing::Span::current();
        if !span.is_disabled() {
            span.record("tessera.audience", body.audience.join(",").as_str());
            let names: Vec<&str> = ids.iter().map(|i| i.as_str()).collect();
            span.record("tessera.spiffe_ids", names.join(",").as_str());
        }
        let mut svids = Vec::new();
        for id in ids {
            let token = self
                .agent
                .jwt_svid(&id, &body.audience)
                .await
                .map_err(|e| Status::unavailable(format!("cannot get a JWT-SVID: {e}")))?;
            svids.push(Jwtsvid {
                spiffe_id: id.to_string(),
                svid: token,
                hint: String::new(),
            });
        }
        Ok(Response::new(JwtsvidResponse { svids }))
    }

    async fn fetch_jwt_bundles(
        &self,
        req: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        check_header(&req)?;
        let p = self.caller(&req).await?;
        let td = self.agent.td.to_string();
        self.bundle_stream(p, move |state, p| {
            let mut bundles = HashMap::from([(td.clone(), jwt_bundle(state))]);
            for (ftd, b) in state.federated_for(p) {
                bundles.insert(
                    ftd.to_string(),
                    serde_json::to_vec(&b.jwt_keys).unwrap_or_default(),
                );
            }
            JwtBundlesResponse { bundles }
        })
    }

    async fn validate_jwtsvid(
        &self,
        req: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        check_header(&req)?;
        let (p, _) = self.caller(&req).await?;
        let body = req.get_ref();
        if body.audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        if body.svid.is_empty() {
            return Err(Status::invalid_argument("svid must be specified"));
        }
        // The caller's own trust domain, and the federated ones its registrations trust: each
        // JWT-SVID is checked against the bundle of its own trust domain only.
        let state = self.agent.state();
        let bundles = tessera_verify::JwtBundles::new();
        bundles
            .set(self.agent.td.clone(), &jwt_bundle(&state))
            .map_err(|e| Status::unavailable(format!("no usable JWT bundle: {e}")))?;
        for (td, b) in state.federated_for(&p) {
            if let Ok(jwks) = serde_json::to_vec(&b.jwt_keys) {
                // A federated bundle whose keys do not parse trusts nobody from there.
                let _ = bundles.set(td.clone(), &jwks);
            }
        }
        let config = tessera_verify::VerifierConfig::jwt_svid(&body.audience)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let verified = tessera_verify::Verifier::new(config, bundles)
            .verify(&body.svid)
            .await
            .map_err(|e| Status::invalid_argument(format!("the JWT-SVID is not valid: {e}")))?;
        Ok(Response::new(ValidateJwtsvidResponse {
            spiffe_id: verified.subject.clone(),
            claims: Some(prost_types::Struct {
                fields: verified
                    .claims
                    .iter()
                    .map(|(k, v)| (k.clone(), to_prost(v)))
                    .collect(),
            }),
        }))
    }
}

/// A Workload API client on a unix socket (for `tessera svid` and the demo; workloads use any
/// SPIFFE library). Requests need the `workload.spiffe.io: true` metadata; see [`request`].
pub async fn connect(
    socket: &Path,
) -> Result<
    crate::proto::spiffe_workload_api_client::SpiffeWorkloadApiClient<tonic::transport::Channel>,
    AgentError,
> {
    let path = socket.to_path_buf();
    // The URI is a placeholder: the connector below dials the socket.
    let channel = tonic::transport::Endpoint::from_static("http://workload.local")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                UnixStream::connect(path)
                    .await
                    .map(hyper_util::rt::TokioIo::new)
            }
        }))
        .await
        .map_err(|e| AgentError::Unreachable(format!("`{}`: {e}", socket.display())))?;
    Ok(crate::proto::spiffe_workload_api_client::SpiffeWorkloadApiClient::new(channel))
}

/// A Workload API request with the security header set.
pub fn request<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut().insert(
        "workload.spiffe.io",
        tonic::metadata::MetadataValue::from_static("true"),
    );
    r
}
