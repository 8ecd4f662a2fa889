//! `tessera db ...`: dynamic PostgreSQL credentials. `creds` and `renew` run as the workload
//! (its JWT-SVID from the agent); the rest are admin commands.

use anyhow::{anyhow, bail};
use serde_json::{json, Value};
use tessera_core::admin_api::{
    DbConnectionDeclared, DbConnectionRequest, DbRoleDeclared, DbRoleRequest, LeaseEnding,
    LeaseInfo, LeaseRequest,
};

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
            v.get("error_description")
                .and_then(Value::as_str)
                .unwrap_or(status.as_str())
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
            let text = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default();
            print_as(output, &v, || {
                format!(
                    "username={}\npassword={}\ndatabase={}\nlease={}\nexpires={}\n",
                    text("username"),
                    text("password"),
                    text("database"),
                    text("lease_id"),
                    render::at(v.get("expires_at").and_then(Value::as_i64)),
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
                    render::at(v.get("expires_at").and_then(Value::as_i64))
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
            let req = DbConnectionRequest {
                name: name.clone(),
                url,
                admin_user,
                password_secret,
            };
            let v: DbConnectionDeclared = admin(&target)?.send("/v1/db/connections", &req).await?;
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
            let req = DbRoleRequest {
                name: name.clone(),
                connection,
                creation,
                revocation,
                default_ttl: Some(secs(&default_ttl)?),
                max_ttl: Some(secs(&max_ttl)?),
            };
            let v: DbRoleDeclared = admin(&target)?.send("/v1/db/roles", &req).await?;
            print(&target, &v, || {
                format!(
                    "role {name} declared; workloads need a secret_grant naming `{}`\n",
                    v.read_as
                )
            });
        }
        DbCommand::Leases { target } => {
            let v: Vec<LeaseInfo> = admin(&target)?.fetch("/v1/db/leases").await?;
            print(&target, &v, || {
                let mut o = String::from("LEASE\tROLE\tUSERNAME\tWORKLOAD\tENDS\tSTATE\n");
                for l in &v {
                    let mut state = l.state.clone();
                    if let Some(e) = &l.last_error {
                        state.push_str(&format!(" (retrying: {e})"));
                    }
                    o.push_str(&format!(
                        "{}\t{}\t{}\t{}\t{}\t{}\n",
                        l.lease_id,
                        l.role,
                        l.username,
                        l.workload,
                        render::at(Some(l.expires_at)),
                        state
                    ));
                }
                o
            });
        }
        DbCommand::Revoke { lease, target } => {
            let v: LeaseEnding = admin(&target)?
                .send("/v1/db/leases/revoke", &LeaseRequest { id: lease.clone() })
                .await?;
            print(&target, &v, || {
                format!("lease {lease}: its role is being dropped and its sessions ended\n")
            });
        }
    }
    Ok(0)
}
