//! `tessera exec`: runs a program with vault secrets resolved from `tessera://secret/...`
//! references into its environment or into files, fetched with the workload's own JWT-SVID from
//! the local agent (no secret in the program's configuration). Waits on each unpinned secret
//! and, when it is rotated, rewrites its files and signals or restarts the program.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use tessera_core::SecretName;
use tessera_vault::SecretRef;
use tokio::sync::mpsc;

use crate::cli::ExecArgs;
use crate::support::wait_for_signal;
use crate::workload_client::AsWorkload;

/// What the program gets when a secret rotates.
#[derive(Debug, Clone, Copy)]
enum OnRotate {
    Nothing,
    Restart,
    Signal(nix::sys::signal::Signal),
}

fn on_rotate(s: &str) -> anyhow::Result<OnRotate> {
    match s {
        "none" => Ok(OnRotate::Nothing),
        "restart" => Ok(OnRotate::Restart),
        other => {
            let name = other
                .strip_prefix("signal:")
                .ok_or_else(|| anyhow!("--on-rotate `{other}`: none, restart or signal:NAME"))?;
            let full = if name.starts_with("SIG") {
                name.to_owned()
            } else {
                format!("SIG{name}")
            };
            full.parse::<nix::sys::signal::Signal>()
                .map(OnRotate::Signal)
                .map_err(|_| anyhow!("--on-rotate `{other}`: `{name}` is not a signal"))
        }
    }
}

fn split(item: &str, what: &str) -> anyhow::Result<(String, SecretRef)> {
    let (left, reference) = item
        .split_once('=')
        .ok_or_else(|| anyhow!("--{what} `{item}` is not {}=REF", what.to_uppercase()))?;
    let r = SecretRef::parse(reference).map_err(|e| anyhow!("--{what} `{left}`: {e}"))?;
    Ok((left.to_owned(), r))
}

/// A private folder for relative `--file` paths: on tmpfs where there is one.
fn secrets_dir() -> anyhow::Result<PathBuf> {
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .or_else(|| Some(PathBuf::from("/dev/shm")).filter(|p| p.is_dir()))
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("tessera-exec-{}", std::process::id()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("cannot make `{}`", dir.display()))?;
    Ok(dir)
}

struct Resolved {
    envs: Vec<(String, SecretRef)>,
    files: Vec<(PathBuf, SecretRef)>,
    values: BTreeMap<String, (i64, Vec<u8>)>,
}

impl Resolved {
    fn key(r: &SecretRef) -> String {
        r.to_string()
    }

    fn write_files(&self) -> anyhow::Result<()> {
        for (path, r) in &self.files {
            if let Some((_, v)) = self.values.get(&Self::key(r)) {
                tessera_core::private_file::write_private(path, v)
                    .with_context(|| format!("cannot write `{}`", path.display()))?;
            }
        }
        Ok(())
    }

    fn spawn(&self, command: &[String], dir: &Path) -> anyhow::Result<tokio::process::Child> {
        let (program, args) = command
            .split_first()
            .ok_or_else(|| anyhow!("no program to run"))?;
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args).env("TESSERA_SECRETS_DIR", dir);
        for (name, r) in &self.envs {
            let (_, v) = self
                .values
                .get(&Self::key(r))
                .ok_or_else(|| anyhow!("`{r}` was not fetched"))?;
            let text = std::str::from_utf8(v)
                .map_err(|_| anyhow!("--env {name}: `{r}` is not text; use --file"))?;
            cmd.env(name, text);
        }
        cmd.spawn()
            .with_context(|| format!("cannot start `{program}`"))
    }
}

fn send(child: &tokio::process::Child, signal: nix::sys::signal::Signal) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
    }
}

pub(crate) async fn run(a: ExecArgs) -> anyhow::Result<u8> {
    let rotate = on_rotate(&a.on_rotate)?;
    let mut envs = Vec::new();
    for e in &a.envs {
        let (name, r) = split(e, "env")?;
        let valid = name
            .bytes()
            .enumerate()
            .all(|(i, b)| b == b'_' || b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit()));
        if name.is_empty() || !valid {
            bail!("--env `{name}`: not an environment variable name");
        }
        envs.push((name, r));
    }
    let dir = secrets_dir()?;
    let mut files = Vec::new();
    for f in &a.files {
        let (path, r) = split(f, "file")?;
        let path = PathBuf::from(path);
        if path
            .components()
            .any(|c| c == std::path::Component::ParentDir)
        {
            bail!("--file `{}`: no `..` in the path", path.display());
        }
        let path = if path.is_absolute() {
            path
        } else {
            dir.join(path)
        };
        if let Some(parent) = path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)?;
        }
        files.push((path, r));
    }
    let fetcher = std::sync::Arc::new(AsWorkload::new(&a.target)?);
    let mut resolved = Resolved {
        envs,
        files,
        values: BTreeMap::new(),
    };
    let refs: BTreeSet<String> = resolved
        .envs
        .iter()
        .map(|(_, r)| r)
        .chain(resolved.files.iter().map(|(_, r)| r))
        .map(Resolved::key)
        .collect();
    let all: Vec<SecretRef> = refs
        .iter()
        .filter_map(|k| SecretRef::parse(k).ok())
        .collect();
    let result: anyhow::Result<u8> = async {
        for r in &all {
            let (v, value) = fetcher
                .fetch(r, None)
                .await?
                .ok_or_else(|| anyhow!("`{r}`: no value"))?;
            resolved.values.insert(Resolved::key(r), (v, value));
        }
        resolved.write_files()?;
        let mut child = resolved.spawn(&a.command, &dir)?;

        // One watcher per unpinned secret; each reports the new version it saw.
        let (tx, mut rx) = mpsc::channel::<(SecretName, i64, Vec<u8>)>(16);
        for r in all.iter().filter(|r| r.version.is_none()) {
            let (fetcher, tx, r) = (fetcher.clone(), tx.clone(), r.clone());
            let mut seen = resolved
                .values
                .get(&Resolved::key(&r))
                .map_or(0, |(v, _)| *v);
            tokio::spawn(async move {
                loop {
                    match fetcher.fetch(&r, Some(seen)).await {
                        Ok(Some((v, value))) if v > seen => {
                            seen = v;
                            if tx.send((r.name.clone(), v, value)).await.is_err() {
                                return;
                            }
                        }
                        Ok(_) => {}
                        Err(e) => {
                            eprintln!("tessera exec: watching `{r}`: {e:#}; retrying");
                            tokio::time::sleep(Duration::from_secs(5)).await;
                        }
                    }
                }
            });
        }
        let signals = wait_for_signal();
        tokio::pin!(signals);
        loop {
            tokio::select! {
                status = child.wait() => {
                    let status = status?;
                    return Ok(status.code().and_then(|c| u8::try_from(c).ok()).unwrap_or(1));
                }
                () = &mut signals => {
                    send(&child, nix::sys::signal::Signal::SIGTERM);
                    let status = child.wait().await?;
                    return Ok(status.code().and_then(|c| u8::try_from(c).ok()).unwrap_or(1));
                }
                Some((name, version, value)) = rx.recv() => {
                    let key = SecretRef { name: name.clone(), version: None }.to_string();
                    resolved.values.insert(key, (version, value));
                    resolved.write_files()?;
                    eprintln!("tessera exec: `{name}` rotated to version {version}");
                    match rotate {
                        OnRotate::Nothing => {}
                        OnRotate::Signal(s) => send(&child, s),
                        OnRotate::Restart => {
                            send(&child, nix::sys::signal::Signal::SIGTERM);
                            let _ = child.wait().await;
                            child = resolved.spawn(&a.command, &dir)?;
                        }
                    }
                }
            }
        }
    }
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    match result {
        Ok(code) => Ok(code),
        Err(e) => {
            eprintln!("tessera exec: {e:#}");
            Ok(2)
        }
    }
}
