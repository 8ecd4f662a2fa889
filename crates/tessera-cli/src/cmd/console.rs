//! `tessera advise` and `tessera console link`: the console's advisor and sign-in from the
//! command line.

use anyhow::Context;
use serde_json::json;
use tessera_core::admin_api::{Advice, ConsoleLink};

use crate::cli::{AdviseArgs, ConsoleCommand};
use crate::render;
use crate::support::{admin, parse_duration, print};

pub(crate) async fn advise(a: AdviseArgs) -> anyhow::Result<u8> {
    let window = parse_duration(&a.window)?.as_secs();
    let v: Advice = admin(&a.target)?
        .fetch(&format!("/v1/advise?window={window}"))
        .await?;
    if let Some(dir) = &a.write {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create `{}`", dir.display()))?;
        let path = dir.join("advised-grants.toml");
        std::fs::write(&path, v.narrower_file())
            .with_context(|| format!("cannot write `{}`", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    print(&a.target, &v, || render::advice(&v));
    Ok(u8::from(!v.findings.is_empty()))
}

pub(crate) async fn run(command: ConsoleCommand) -> anyhow::Result<u8> {
    match command {
        ConsoleCommand::Link { target } => {
            let v: ConsoleLink = admin(&target)?.send("/v1/console/link", &json!({})).await?;
            print(&target, &v, || {
                format!(
                    "{}\n(one sign-in, within {} seconds)\n",
                    render::clean(&v.url),
                    v.expires_in
                )
            });
            Ok(0)
        }
    }
}
