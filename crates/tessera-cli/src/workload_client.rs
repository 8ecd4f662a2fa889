//! This workload talking to the authority: JWT-SVIDs from its node agent, and an HTTP client
//! for the authority's workload APIs (`tessera exec`, `tessera db creds`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::Value;
use tessera_agent::proto::JwtsvidRequest;
use tessera_agent::workload::{connect, request};
use tessera_vault::SecretRef;

use crate::cli::WorkloadTarget;

/// A JWT-SVID for `audience` from the agent at `socket` (which caches it).
pub(crate) async fn jwt_svid(
    socket: &Path,
    audience: &str,
    id: Option<&str>,
) -> anyhow::Result<String> {
    let mut client = connect(socket)
        .await
        .map_err(|e| anyhow!("the agent at `{}`: {e}", socket.display()))?;
    let resp = client
        .fetch_jwtsvid(request(JwtsvidRequest {
            audience: vec![audience.to_owned()],
            spiffe_id: id.unwrap_or_default().to_owned(),
        }))
        .await
        .map_err(|s| anyhow!("the agent gave no identity: {}", s.message()))?
        .into_inner();
    resp.svids
        .into_iter()
        .next()
        .map(|s| s.svid)
        .ok_or_else(|| anyhow!("the agent gave no JWT-SVID"))
}

/// This workload talking to the authority: its base URL, an HTTP client that trusts
/// `--server-ca`, and the agent that vouches for it (`tessera exec`, `tessera db creds`).
pub(crate) struct AsWorkload {
    pub http: reqwest::Client,
    pub base: String,
    socket: PathBuf,
    id: Option<String>,
}

impl AsWorkload {
    pub(crate) fn new(t: &WorkloadTarget) -> anyhow::Result<Self> {
        let mut http = reqwest::Client::builder();
        if let Some(ca) = &t.server_ca {
            let pem =
                std::fs::read(ca).with_context(|| format!("cannot read `{}`", ca.display()))?;
            http = http.add_root_certificate(reqwest::Certificate::from_pem(&pem)?);
        }
        Ok(Self {
            http: http.build()?,
            base: t.server.trim_end_matches('/').to_owned(),
            socket: PathBuf::from(t.socket.strip_prefix("unix://").unwrap_or(&t.socket)),
            id: t.id.clone(),
        })
    }

    /// A JWT-SVID for the authority, from the agent (which caches it).
    pub(crate) async fn credential(&self) -> anyhow::Result<String> {
        jwt_svid(&self.socket, &self.base, self.id.as_deref()).await
    }

    /// The value and its version; with `after`, waits (up to 55 s) for a newer version and
    /// answers `None` if there is none.
    pub(crate) async fn fetch(
        &self,
        r: &SecretRef,
        after: Option<i64>,
    ) -> anyhow::Result<Option<(i64, Vec<u8>)>> {
        let mut url = format!("{}/v1/secrets/{}", self.base, r.name);
        match (r.version, after) {
            (Some(v), _) => url.push_str(&format!("?version={v}")),
            (None, Some(a)) => url.push_str(&format!("?after={a}&wait=55")),
            (None, None) => {}
        }
        let resp = self
            .http
            .get(&url)
            .bearer_auth(self.credential().await?)
            .timeout(Duration::from_secs(70))
            .send()
            .await
            .map_err(|e| anyhow!("the authority is unreachable: {e}"))?;
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_MODIFIED {
            return Ok(None);
        }
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!(
                "`{r}`: {}",
                body.get("error_description")
                    .and_then(Value::as_str)
                    .unwrap_or(status.as_str())
            );
        }
        let version = body
            .get("version")
            .and_then(Value::as_i64)
            .ok_or_else(|| anyhow!("`{r}`: the authority's answer has no version"))?;
        let value = body
            .get("value_base64")
            .and_then(Value::as_str)
            .and_then(|v| STANDARD.decode(v).ok())
            .ok_or_else(|| anyhow!("`{r}`: the authority's answer has no value"))?;
        Ok(Some((version, value)))
    }
}
