//! `tessera secret ...`: the vault's admin commands, through the admin socket or `--server`.
#![expect(
    clippy::indexing_slicing,
    reason = "indexing a serde_json::Value by key yields Null for a missing key; it cannot panic"
)]

use std::io::{Read, Write};

use anyhow::{anyhow, bail, Context};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde_json::{json, Value};

use crate::cli::{SecretCommand, ValueSource};
use crate::render;
use crate::support::{admin, parse_duration, print};

/// The value, read whole; at most 25 KiB (one byte more is read to say it is too large).
fn read_value(src: &ValueSource) -> anyhow::Result<Vec<u8>> {
    let limit = u64::try_from(tessera_vault::MAX_VALUE_BYTES).unwrap_or(u64::MAX) + 1;
    let mut buf = Vec::new();
    match &src.value_file {
        Some(path) => {
            std::fs::File::open(path)
                .with_context(|| format!("cannot read `{}`", path.display()))?
                .take(limit)
                .read_to_end(&mut buf)?;
        }
        None => {
            std::io::stdin().lock().take(limit).read_to_end(&mut buf)?;
        }
    }
    if buf.len() > tessera_vault::MAX_VALUE_BYTES {
        bail!("a secret value is at most 25 KiB");
    }
    if buf.is_empty() {
        bail!("the value is empty (give --value-file or pipe it on standard input)");
    }
    Ok(buf)
}

fn secs(s: Option<&str>) -> anyhow::Result<Option<i64>> {
    s.map(|s| parse_duration(s).map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)))
        .transpose()
}

pub(crate) async fn run(command: SecretCommand) -> anyhow::Result<u8> {
    match command {
        SecretCommand::Put {
            name,
            value,
            owner,
            purpose,
            content_type,
            environment,
            tags,
            rotation_period,
            not_before_in,
            expires_in,
            target,
        } => {
            let bytes = read_value(&value)?;
            let now = tessera_core::now_unix();
            let tags = if tags.is_empty() {
                None
            } else {
                Some(
                    tags.iter()
                        .map(|t| {
                            t.split_once('=')
                                .map(|(k, v)| (k.to_owned(), Value::String(v.to_owned())))
                                .ok_or_else(|| anyhow!("--tag `{t}` is not KEY=VALUE"))
                        })
                        .collect::<anyhow::Result<serde_json::Map<_, _>>>()?,
                )
            };
            let v = admin(&target)?
                .post(
                    "/v1/secrets/put",
                    json!({
                        "name": name,
                        "value": STANDARD.encode(&bytes),
                        "owner": owner,
                        "purpose": purpose,
                        "content_type": content_type,
                        "environment": environment,
                        "tags": tags,
                        "rotation_period": secs(rotation_period.as_deref())?,
                        "not_before": secs(not_before_in.as_deref())?.map(|s| now + s),
                        "expires_at": secs(expires_in.as_deref())?.map(|s| now + s),
                    }),
                )
                .await?;
            print(&target, &v, || {
                format!(
                    "{} version {}\n",
                    v["name"].as_str().unwrap_or_default(),
                    v["version"]
                )
            });
        }
        SecretCommand::Rotate {
            name,
            value,
            generate,
            target,
        } => {
            let bytes = match generate {
                Some(n) if (16..=4096).contains(&n) => {
                    let raw =
                        tessera_token::seal::random_bytes::<4096>().map_err(|e| anyhow!("{e}"))?;
                    URL_SAFE_NO_PAD
                        .encode(raw.get(..n).unwrap_or_default())
                        .into_bytes()
                }
                Some(n) => bail!("--generate {n}: 16 to 4096 bytes"),
                None => read_value(&value)?,
            };
            let v = admin(&target)?
                .post(
                    "/v1/secrets/put",
                    json!({"name": name, "value": STANDARD.encode(&bytes), "rotate": true}),
                )
                .await?;
            print(&target, &v, || {
                format!(
                    "{} rotated to version {}\n",
                    v["name"].as_str().unwrap_or_default(),
                    v["version"]
                )
            });
        }
        SecretCommand::Get {
            name,
            version,
            target,
        } => {
            let v = admin(&target)?
                .post("/v1/secrets/get", json!({"name": name, "version": version}))
                .await?;
            let value = STANDARD
                .decode(v["value_base64"].as_str().unwrap_or_default())
                .map_err(|_| anyhow!("the server's answer is not base64"))?;
            match target.output {
                crate::cli::Output::Json => print(&target, &v, String::new),
                crate::cli::Output::Text => {
                    // The value exactly as stored: no newline added.
                    let mut out = std::io::stdout().lock();
                    out.write_all(&value)?;
                    out.flush()?;
                }
            }
        }
        SecretCommand::List { deleted, target } => {
            let path = if deleted {
                "/v1/secrets?deleted=true"
            } else {
                "/v1/secrets"
            };
            let v = admin(&target)?.get(path).await?;
            print(&target, &v, || {
                let mut o = String::from("NAME\tVERSION\tOWNER\tUPDATED\tSTATE\n");
                for s in v.as_array().cloned().unwrap_or_default() {
                    o.push_str(&format!(
                        "{}\t{}\t{}\t{}\t{}\n",
                        s["name"].as_str().unwrap_or_default(),
                        s["current_version"],
                        s["owner"].as_str().unwrap_or_default(),
                        render::time(&s["updated_at"]),
                        state(&s),
                    ));
                }
                o
            });
        }
        SecretCommand::Versions { name, target } => {
            let v = admin(&target)?
                .post("/v1/secrets/describe", json!({"name": name}))
                .await?;
            let versions = v["versions"].clone();
            print(&target, &versions, || {
                let mut o = String::from("VERSION\tCREATED\tBY\tENABLED\tNOT BEFORE\tEXPIRES\n");
                for x in versions.as_array().cloned().unwrap_or_default() {
                    o.push_str(&format!(
                        "{}\t{}\t{}\t{}\t{}\t{}\n",
                        x["version"],
                        render::time(&x["created_at"]),
                        x["created_by"].as_str().unwrap_or_default(),
                        x["enabled"],
                        render::time(&x["not_before"]),
                        render::time(&x["expires_at"]),
                    ));
                }
                o
            });
        }
        SecretCommand::Describe { name, target } => {
            let v = admin(&target)?
                .post("/v1/secrets/describe", json!({"name": name}))
                .await?;
            print(&target, &v, || describe_text(&v));
        }
        SecretCommand::Disable {
            name,
            version,
            target,
        } => set_version(&name, version, false, &target).await?,
        SecretCommand::Enable {
            name,
            version,
            target,
        } => set_version(&name, version, true, &target).await?,
        SecretCommand::Delete {
            name,
            retention,
            target,
        } => {
            let v = admin(&target)?
                .post(
                    "/v1/secrets/delete",
                    json!({"name": name, "retention": secs(retention.as_deref())?}),
                )
                .await?;
            print(&target, &v, || {
                format!(
                    "{name} deleted; restorable until {} (`tessera secret restore {name}`)\n",
                    render::time(&v["purge_after"])
                )
            });
        }
        SecretCommand::Restore { name, target } => {
            let v = admin(&target)?
                .post("/v1/secrets/restore", json!({"name": name}))
                .await?;
            print(&target, &v, || format!("{name} restored\n"));
        }
        SecretCommand::Purge { name, target } => {
            let v = admin(&target)?
                .post("/v1/secrets/purge", json!({"name": name}))
                .await?;
            print(&target, &v, || format!("{name} purged\n"));
        }
    }
    Ok(0)
}

async fn set_version(
    name: &str,
    version: i64,
    enabled: bool,
    target: &crate::cli::Target,
) -> anyhow::Result<()> {
    let v = admin(target)?
        .post(
            "/v1/secrets/version",
            json!({"name": name, "version": version, "enabled": enabled}),
        )
        .await?;
    print(target, &v, || {
        format!(
            "{name} version {version} {}\n",
            if enabled { "enabled" } else { "disabled" }
        )
    });
    Ok(())
}

fn state(s: &Value) -> String {
    if !s["deleted_at"].is_null() {
        return format!("deleted (purge after {})", render::time(&s["purge_after"]));
    }
    let overdue: Vec<&str> = s["overdue"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if overdue.is_empty() {
        "ok".into()
    } else {
        format!("OVERDUE: {}", overdue.join(", "))
    }
}

fn describe_text(v: &Value) -> String {
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
    let mut o = format!(
        "secret {}\n  owner: {}\n  purpose: {}\n  content type: {}\n  current version: {}\n  state: {}\n",
        s("name"),
        s("owner"),
        s("purpose"),
        s("content_type"),
        v["current_version"],
        state(v)
    );
    if let Some(p) = v["rotation_period"].as_i64() {
        o.push_str(&format!(
            "  rotation expected every {}\n",
            humantime::format_duration(std::time::Duration::from_secs(p.unsigned_abs()))
        ));
    }
    o.push_str("  may read the value:\n");
    let readers = v["readers"].as_array().cloned().unwrap_or_default();
    if readers.is_empty() {
        o.push_str("    nobody\n");
    }
    for r in readers {
        let by: Vec<String> = r["by"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        o.push_str(&format!(
            "    {} (by {})\n",
            r["workload"].as_str().unwrap_or_default(),
            by.join(", ")
        ));
    }
    let viewers = v["metadata_readers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !viewers.is_empty() {
        o.push_str("  may read the metadata only:\n");
        for w in viewers {
            o.push_str(&format!("    {}\n", w.as_str().unwrap_or_default()));
        }
    }
    o.push_str(&format!(
        "  versions: {}\n  to revoke a reader, remove its secret_grant and `tessera apply`; to stop every read now, `tessera secret disable {} --version N` or `tessera secret delete {}`\n",
        v["versions"].as_array().map_or(0, Vec::len),
        s("name"),
        s("name")
    ));
    o
}
