//! Talks to a server's admin API over its unix socket.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;

#[derive(Debug)]
pub struct AdminClient {
    socket: PathBuf,
}

impl AdminClient {
    pub fn for_data_dir(data: &Path) -> Self {
        Self {
            socket: data.join("admin.sock"),
        }
    }

    pub fn at(socket: PathBuf) -> Self {
        Self { socket }
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.call(Method::POST, path, Some(body)).await
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let stream = match tokio::net::UnixStream::connect(&self.socket).await {
            Ok(s) => s,
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    || e.kind() == std::io::ErrorKind::ConnectionRefused =>
            {
                bail!(
                    "no server is running on this data folder (no admin socket at `{}`); start one with `tessera server` or pass --data",
                    self.socket.display()
                )
            }
            Err(e) => {
                return Err(e).with_context(|| format!("cannot reach `{}`", self.socket.display()))
            }
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
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status != StatusCode::OK {
            let msg = value
                .get("error_description")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).trim().to_owned());
            return Err(anyhow!(msg));
        }
        Ok(value)
    }
}
