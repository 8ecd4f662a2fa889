//! `tessera db ...`: dynamic PostgreSQL credentials. `creds` and `renew` run as the workload
//! (its JWT-SVID from the agent); the rest are admin commands.
#![expect(
    clippy::indexing_slicing,
    reason = "indexing a serde_json::Value by key yields Null for a missing key; it cannot panic"
)]

use anyhow::{anyhow, bail};
use serde_json::{json, Value};

use crate::cli::{DbCommand, WorkloadTarget};
use crate::render;
use crate::support::{admin, parse_duration, print, print_as};

fn secs(s: &str) -> anyhow::Result<i64> {
    parse_duration(s).map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A POST to the authority as this workload.
async fn as_workload(t: &WorkloadTarget, path: &str, body: Value) -> anyhow::Result<Value> {
    let w = crate::workload_client::AsWorkload::new(t)?;
    let resp = w
        .http
        .post(format!("{}{path}", w.base))
        .bearer_auth(w.credential().await?)
        .json(&body)
        .send()
        .await
        .map_err(|e| anyhow!("the authority is unreachable: {e}"))?;
    let status = resp.status();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!(
            "{}",
            v["error_description"].as_str().unwrap_or(status.as_str())
        );
    }
    Ok(v)
}

pub(crate) async fn run(command: DbCommand) -> anyhow::Result<u8> {
    match command {
        DbCommand::Creds {
            role,
            ttl,
            output,
            target,
        } => {
            let ttl = ttl.as_deref().map(secs).transpose()?;
            let v = as_workload(
                &target,
                &format!("/v1/db/creds/{role}"),
                json!({"ttl": ttl}),
            )
            .await?;
            print_as(output, &v, || {
                format!(
                    "username={}\npassword={}\ndatabase={}\nlease={}\nexpires={}\n",
                    v["username"].as_str().unwrap_or_default(),
                    v["password"].as_str().unwrap_or_default(),
                    v["database"].as_str().unwrap_or_default(),
                    v["lease_id"].as_str().unwrap_or_default(),
                    render::time(&v["expires_at"]),
                )
            });
        }
        DbCommand::Renew {
            lease,
            ttl,
            output,
            target,
        } => {
            let ttl = ttl.as_deref().map(secs).transpose()?;
            let v = as_workload(
                &target,
                &format!("/v1/db/leases/{lease}/renew"),
                json!({"ttl": ttl}),
            )
            .await?;
            print_as(output, &v, || {
                format!(
                    "lease {lease} now ends {}\n",
                    render::time(&v["expires_at"])
                )
            });
        }
        DbCommand::Connection {
            name,
            url,
            admin_user,
            password_secret,
            target,
        } => {
            let v = admin(&target)?
                .post(
                    "/v1/db/connections",
                    json!({"name": name, "url": url, "admin_user": admin_user, "password_secret": password_secret}),
                )
                .await?;
            print(&target, &v, || {
                format!("database {name}: logged in, declared\n")
            });
        }
        DbCommand::Role {
            name,
            connection,
            creation,
            revocation,
            default_ttl,
            max_ttl,
            target,
        } => {
            let v = admin(&target)?
                .post(
                    "/v1/db/roles",
                    json!({"name": name, "connection": connection, "creation": creation,
                           "revocation": revocation, "default_ttl": secs(&default_ttl)?, "max_ttl": secs(&max_ttl)?}),
                )
                .await?;
            print(&target, &v, || {
                format!(
                    "role {name} declared; workloads need a secret_grant naming `{}`\n",
                    v["read_as"].as_str().unwrap_or_default()
                )
            });
        }
        DbCommand::Leases { target } => {
            let v = admin(&target)?.get("/v1/db/leases").await?;
            print(&target, &v, || {
                let mut o = String::from("LEASE\tROLE\tUSERNAME\tWORKLOAD\tENDS\tSTATE\n");
                for l in v.as_array().cloned().unwrap_or_default() {
                    let mut state = l["state"].as_str().unwrap_or_default().to_owned();
                    if let Some(e) = l["last_error"].as_str() {
                        state.push_str(&format!(" (retrying: {e})"));
                    }
                    o.push_str(&format!(
                        "{}\t{}\t{}\t{}\t{}\t{}\n",
                        l["lease_id"].as_str().unwrap_or_default(),
                        l["role"].as_str().unwrap_or_default(),
                        l["username"].as_str().unwrap_or_default(),
                        l["workload"].as_str().unwrap_or_default(),
                        render::time(&l["expires_at"]),
                        state
                    ));
                }
                o
            });
        }
        DbCommand::Revoke { lease, target } => {
            let v = admin(&target)?
                .post("/v1/db/leases/revoke", json!({"id": lease}))
                .await?;
            print(&target, &v, || {
                format!("lease {lease}: its role is being dropped and its sessions ended\n")
            });
        }
    }
    Ok(0)
}
