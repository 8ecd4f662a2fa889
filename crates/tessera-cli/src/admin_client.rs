//! Talks to a server's admin API: over its unix socket (authorized by the caller's unix user), or
//! over HTTP(S) with an admin credential (`--server URL`).

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

#[derive(Debug, Clone)]
pub(crate) enum AdminClient {
    Socket(PathBuf),
    Http {
        base: String,
        token: String,
        client: reqwest::Client,
    },
}

impl AdminClient {
    pub(crate) fn for_data_dir(data: &Path) -> Self {
        Self::Socket(data.join("admin.sock"))
    }

    pub(crate) fn at(socket: PathBuf) -> Self {
        Self::Socket(socket)
    }

    /// `--server URL`: the credential comes from `TESSERA_ADMIN_TOKEN` or `token_file`.
    pub(crate) fn http(
        server: &str,
        token_file: Option<&Path>,
        ca_file: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let token = match (std::env::var("TESSERA_ADMIN_TOKEN").ok(), token_file) {
            (Some(t), _) => t,
            (None, Some(f)) => std::fs::read_to_string(f)
                .with_context(|| format!("cannot read the admin credential `{}`", f.display()))?,
            (None, None) => bail!(
                "--server needs an admin credential: set TESSERA_ADMIN_TOKEN or pass --admin-token-file (the server wrote DATA/admin-token)"
            ),
        };
        let mut builder = reqwest::Client::builder().timeout(ADMIN_TIMEOUT);
        if let Some(ca) = ca_file {
            let pem =
                std::fs::read(ca).with_context(|| format!("cannot read `{}`", ca.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .with_context(|| format!("`{}` is not a PEM certificate", ca.display()))?;
            builder = builder.add_root_certificate(cert);
        }
        if let Ok(url) = reqwest::Url::parse(server) {
            let loopback = url.host_str().is_some_and(tessera_core::is_loopback_host);
            if url.scheme() == "http" && !loopback {
                eprintln!(
                    "warning: the admin credential goes to `{server}` over plain http://: anyone on the path can read it; use https://"
                );
            }
        }
        Ok(Self::Http {
            base: server.trim_end_matches('/').to_owned(),
            token: token.trim().to_owned(),
            client: builder.build()?,
        })
    }

    pub(crate) async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(Method::GET, path, None).await
    }

    pub(crate) async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.call(Method::POST, path, Some(body)).await
    }

    /// `GET path`, its answer read as the admin API's type for it.
    pub(crate) async fn fetch<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        typed(path, self.get(path).await?)
    }

    /// `POST path` with a typed request, its answer read as the admin API's type for it.
    pub(crate) async fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        let body = serde_json::to_value(body)?;
        typed(path, self.post(path, body).await?)
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        match self {
            // No admin call waits on purpose; a server that died mid-request must not leave
            // the command hanging.
            Self::Socket(socket) => {
                tokio::time::timeout(ADMIN_TIMEOUT, call_socket(socket, method, path, body))
                    .await
                    .map_err(|_| {
                        anyhow::anyhow!(
                            "the server did not answer within {} s on `{}`",
                            ADMIN_TIMEOUT.as_secs(),
                            socket.display()
                        )
                    })?
            }
            Self::Http {
                base,
                token,
                client,
            } => {
                let mut req = client
                    .request(method, format!("{base}/admin{path}"))
                    .bearer_auth(token);
                if let Some(b) = body {
                    req = req.json(&b);
                }
                let resp = req
                    .send()
                    .await
                    .with_context(|| format!("cannot reach `{base}`"))?;
                let status = resp.status();
                let bytes = resp.bytes().await.context("admin response")?;
                answer(status, &bytes)
            }
        }
    }
}

/// Longer than any admin call takes (an `apply` of 10,000 workloads takes about 4 s).
const ADMIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

async fn call_socket(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let stream = match tokio::net::UnixStream::connect(socket).await {
        Ok(s) => s,
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                || e.kind() == std::io::ErrorKind::ConnectionRefused =>
        {
            bail!(
                "no server is running on this data folder (no admin socket at `{}`); start one with `tessera server` or pass --data",
                socket.display()
            )
        }
        Err(e) => return Err(e).with_context(|| format!("cannot reach `{}`", socket.display())),
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("admin socket handshake")?;
    tokio::spawn(conn);
    let body = match body {
        Some(v) => Full::new(Bytes::from(serde_json::to_vec(&v)?)),
        None => Full::new(Bytes::new()),
    };
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "tessera-admin")
        .header("content-type", "application/json")
        .body(body)?;
    let resp = sender.send_request(req).await.context("admin request")?;
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .context("admin response")?
        .to_bytes();
    answer(status, &bytes)
}

/// An answer as the type the admin API documents for `path`.
fn typed<T: DeserializeOwned>(path: &str, v: Value) -> anyhow::Result<T> {
    serde_json::from_value(v)
        .map_err(|e| anyhow!("the server's answer to `{path}` is not what this CLI expects: {e}"))
}

/// The API's JSON on success; its `error_description` as the error otherwise.
fn answer(status: StatusCode, bytes: &[u8]) -> anyhow::Result<Value> {
    let value: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
    if status != StatusCode::OK {
        let msg = value
            .get("error_description")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| String::from_utf8_lossy(bytes).trim().to_owned());
        return Err(anyhow!(msg));
    }
    Ok(value)
}
