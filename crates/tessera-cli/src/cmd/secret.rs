//! `tessera secret ...`: the vault's admin commands, through the admin socket or `--server`.

use std::io::{Read, Write};

use anyhow::{anyhow, bail, Context};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use tessera_core::admin_api::{
    PutSecretRequest, SecretChanged, SecretDeleted, SecretDescription, SecretMetadata,
    SecretRequest, SecretValue, SecretVersionSet, SecretWritten,
};

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
                                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                                .ok_or_else(|| anyhow!("--tag `{t}` is not KEY=VALUE"))
                        })
                        .collect::<anyhow::Result<_>>()?,
                )
            };
            let req = PutSecretRequest {
                name,
                value: STANDARD.encode(&bytes),
                rotate: false,
                owner,
                purpose,
                content_type,
                environment,
                tags,
                rotation_period: secs(rotation_period.as_deref())?,
                not_before: secs(not_before_in.as_deref())?.map(|s| now + s),
                expires_at: secs(expires_in.as_deref())?.map(|s| now + s),
            };
            let v: SecretWritten = admin(&target)?.send("/v1/secrets/put", &req).await?;
            print(&target, &v, || {
                format!("{} version {}\n", v.name, v.version)
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
            let req = PutSecretRequest {
                name,
                value: STANDARD.encode(&bytes),
                rotate: true,
                ..PutSecretRequest::default()
            };
            let v: SecretWritten = admin(&target)?.send("/v1/secrets/put", &req).await?;
            print(&target, &v, || {
                format!("{} rotated to version {}\n", v.name, v.version)
            });
        }
        SecretCommand::Get {
            name,
            version,
            target,
        } => {
            let req = SecretRequest {
                name,
                version,
                ..SecretRequest::default()
            };
            let v: SecretValue = admin(&target)?.send("/v1/secrets/get", &req).await?;
            let value = STANDARD
                .decode(&v.value_base64)
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
            let v: Vec<SecretMetadata> = admin(&target)?.fetch(path).await?;
            print(&target, &v, || {
                let mut o = String::from("NAME\tVERSION\tOWNER\tUPDATED\tSTATE\n");
                for s in &v {
                    o.push_str(&format!(
                        "{}\t{}\t{}\t{}\t{}\n",
                        s.name,
                        s.current_version,
                        s.owner,
                        render::at(Some(s.updated_at)),
                        state(s),
                    ));
                }
                o
            });
        }
        SecretCommand::Versions { name, target } => {
            let v: SecretDescription = admin(&target)?
                .send("/v1/secrets/describe", &named(name))
                .await?;
            let versions = v.metadata.versions.unwrap_or_default();
            print(&target, &versions, || {
                let mut o = String::from("VERSION\tCREATED\tBY\tENABLED\tNOT BEFORE\tEXPIRES\n");
                for x in &versions {
                    o.push_str(&format!(
                        "{}\t{}\t{}\t{}\t{}\t{}\n",
                        x.version,
                        render::at(Some(x.created_at)),
                        x.created_by,
                        x.enabled,
                        render::at(x.not_before),
                        render::at(x.expires_at),
                    ));
                }
                o
            });
        }
        SecretCommand::Describe { name, target } => {
            let v: SecretDescription = admin(&target)?
                .send("/v1/secrets/describe", &named(name))
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
            let req = SecretRequest {
                retention: secs(retention.as_deref())?,
                ..named(name.clone())
            };
            let v: SecretDeleted = admin(&target)?.send("/v1/secrets/delete", &req).await?;
            print(&target, &v, || {
                format!(
                    "{name} deleted; restorable until {} (`tessera secret restore {name}`)\n",
                    render::at(Some(v.purge_after))
                )
            });
        }
        SecretCommand::Restore { name, target } => {
            let v: SecretChanged = admin(&target)?
                .send("/v1/secrets/restore", &named(name.clone()))
                .await?;
            print(&target, &v, || format!("{name} restored\n"));
        }
        SecretCommand::Purge { name, target } => {
            let v: SecretChanged = admin(&target)?
                .send("/v1/secrets/purge", &named(name.clone()))
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
    let req = SecretRequest {
        version: Some(version),
        enabled: Some(enabled),
        ..named(name.to_owned())
    };
    let v: SecretVersionSet = admin(target)?.send("/v1/secrets/version", &req).await?;
    print(target, &v, || {
        format!(
            "{name} version {version} {}\n",
            if enabled { "enabled" } else { "disabled" }
        )
    });
    Ok(())
}

/// A request that names only a secret.
fn named(name: String) -> SecretRequest {
    SecretRequest {
        name,
        ..SecretRequest::default()
    }
}

fn state(s: &SecretMetadata) -> String {
    if s.deleted_at.is_some() {
        return format!("deleted (purge after {})", render::at(s.purge_after));
    }
    if s.overdue.is_empty() {
        "ok".into()
    } else {
        format!("OVERDUE: {}", s.overdue.join(", "))
    }
}

fn describe_text(v: &SecretDescription) -> String {
    let m = &v.metadata;
    let mut o = format!(
        "secret {}\n  owner: {}\n  purpose: {}\n  content type: {}\n  current version: {}\n  state: {}\n",
        m.name,
        m.owner,
        m.purpose,
        m.content_type,
        m.current_version,
        state(m)
    );
    if let Some(p) = m.rotation_period {
        o.push_str(&format!(
            "  rotation expected every {}\n",
            humantime::format_duration(std::time::Duration::from_secs(p.unsigned_abs()))
        ));
    }
    o.push_str("  may read the value:\n");
    if v.readers.is_empty() {
        o.push_str("    nobody\n");
    }
    for r in &v.readers {
        o.push_str(&format!("    {} (by {})\n", r.workload, r.by.join(", ")));
    }
    if !v.metadata_readers.is_empty() {
        o.push_str("  may read the metadata only:\n");
        for w in &v.metadata_readers {
            o.push_str(&format!("    {w}\n"));
        }
    }
    o.push_str(&format!(
        "  versions: {}\n  to revoke a reader, remove its secret_grant and `tessera apply`; to stop every read now, `tessera secret disable {} --version N` or `tessera secret delete {}`\n",
        m.versions.as_ref().map_or(0, Vec::len),
        m.name,
        m.name
    ));
    o
}
