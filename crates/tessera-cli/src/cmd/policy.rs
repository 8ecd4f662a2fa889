//! `tessera explain` and `tessera policy …`.

use std::path::Path;

use anyhow::Context;
use serde::Deserialize;
use serde_json::{json, Value};
use tessera_core::admin_api::{
    ExplainRequest, PolicyActivated, PolicyDiscarded, PolicyStatus, RollbackRequest, ShadowDiff,
};
use tessera_core::{Scope, SpiffeId};
use tessera_policy::{Authn, Call, Env, Explanation, IssueContext, PolicyBundle, PolicyEngine};

use crate::cli::{ExplainArgs, PolicyCommand, Target};
use crate::render;
use crate::support::{admin, print};

pub(crate) async fn explain(a: ExplainArgs) -> anyhow::Result<u8> {
    let scopes: Vec<String> = a
        .scope
        .iter()
        .flat_map(|s| s.split_whitespace().map(str::to_owned))
        .collect();
    let req = ExplainRequest {
        from: SpiffeId::parse(&a.from).map_err(|e| anyhow::anyhow!("--from: {e}"))?,
        to: SpiffeId::parse(&a.to).map_err(|e| anyhow::anyhow!("--to: {e}"))?,
        scopes: if scopes.is_empty() {
            Vec::new()
        } else {
            Scope::parse_list(&scopes.join(" ")).map_err(|e| anyhow::anyhow!("--scope: {e}"))?
        },
        method: a.method,
        path: a.path,
        shadow: a.shadow,
        source_ip: a.source_ip,
    };
    let v: Explanation = admin(&a.target)?.send("/v1/explain", &req).await?;
    print(&a.target, &v, || render::explanation(&v));
    Ok(if v.decision.allowed { 0 } else { 1 })
}

pub(crate) async fn run(command: PolicyCommand) -> anyhow::Result<u8> {
    match command {
        PolicyCommand::Validate { path } => validate(&path),
        PolicyCommand::Test {
            cases,
            candidate,
            shadow,
            target,
        } => test(&cases, candidate.as_deref(), shadow, &target).await,
        PolicyCommand::Status { target } => {
            let v: PolicyStatus = admin(&target)?.fetch("/v1/policy").await?;
            print(&target, &v, || render_status(&v));
            Ok(0)
        }
        PolicyCommand::Diff { target } => {
            let v: ShadowDiff = admin(&target)?.fetch("/v1/policy/diff").await?;
            print(&target, &v, || render_diff(&v));
            Ok(0)
        }
        PolicyCommand::Promote { target } => {
            let v: PolicyActivated = admin(&target)?
                .send("/v1/policy/promote", &json!({}))
                .await?;
            print(&target, &v, || render_activated(&v));
            Ok(0)
        }
        PolicyCommand::Rollback { to, target } => {
            let v: PolicyActivated = admin(&target)?
                .send("/v1/policy/rollback", &RollbackRequest { to })
                .await?;
            print(&target, &v, || render_activated(&v));
            Ok(0)
        }
        PolicyCommand::Discard { target } => {
            let v: PolicyDiscarded = admin(&target)?
                .send("/v1/policy/discard", &json!({}))
                .await?;
            print(&target, &v, || {
                format!("shadow policy set {} discarded\n", v.discarded)
            });
            Ok(0)
        }
    }
}

fn engine_from_files(path: &Path) -> anyhow::Result<Result<(PolicyEngine, String), String>> {
    let state = tessera_core::manifest::load(path)?;
    Ok(
        match PolicyEngine::from_files_federated(
            &state.workloads,
            &state.grants,
            &state.policies,
            &state
                .federations
                .iter()
                .map(|f| f.trust_domain.clone())
                .collect::<Vec<_>>(),
        ) {
            Ok(e) => {
                let summary = format!(
                    "{} workload(s), {} grant(s), {} policy file(s): {} Cedar policies, valid against the Tessera schema",
                    state.workloads.len(),
                    state.grants.len(),
                    state.policies.len(),
                    e.policy_count()
                );
                Ok((e, summary))
            }
            Err(e) => Err(e.to_string()),
        },
    )
}

fn validate(path: &Path) -> anyhow::Result<u8> {
    match engine_from_files(path)? {
        Ok((_, summary)) => {
            println!("{summary}");
            Ok(0)
        }
        Err(e) => {
            eprintln!("tessera: invalid: {e}");
            Ok(1)
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Cases {
    case: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    #[serde(default)]
    name: Option<String>,
    from: SpiffeId,
    to: SpiffeId,
    #[serde(default)]
    scopes: Vec<Scope>,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    path: Option<String>,
    /// `allow` or `deny`.
    expect: String,
    /// Unix seconds to decide at (for time windows); default now.
    #[serde(default)]
    at: Option<i64>,
}

async fn test(
    cases: &Path,
    candidate: Option<&Path>,
    shadow: bool,
    target: &Target,
) -> anyhow::Result<u8> {
    let text = std::fs::read_to_string(cases)
        .with_context(|| format!("cannot read `{}`", cases.display()))?;
    let table: Cases = toml::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "`{}`: {}",
            cases.display(),
            e.message().trim_end().replace('\n', "; ")
        )
    })?;
    let (engine, against) = match candidate {
        Some(p) => match engine_from_files(p)? {
            Ok((e, _)) => (e, format!("candidate `{}`", p.display())),
            Err(e) => {
                eprintln!("tessera: the candidate is invalid: {e}");
                return Ok(1);
            }
        },
        None => {
            let path = if shadow {
                "/v1/policy/bundle?shadow=true"
            } else {
                "/v1/policy/bundle"
            };
            let v = admin(target)?.get(path).await?;
            let bundle: PolicyBundle = serde_json::from_value(v)
                .context("the server sent a policy bundle that does not parse")?;
            let engine = bundle.engine().map_err(|e| {
                anyhow::anyhow!("the server's policy set does not compile here: {e}")
            })?;
            let which = if shadow { "shadow" } else { "active" };
            (
                engine,
                format!("the server's {which} set ({})", bundle.version),
            )
        }
    };
    let mut results = Vec::new();
    let mut failed = 0;
    for (i, c) in table.case.iter().enumerate() {
        let expect_allow = match c.expect.as_str() {
            "allow" => true,
            "deny" => false,
            other => anyhow::bail!(
                "case {}: `expect` must be `allow` or `deny`, not `{other}`",
                i + 1
            ),
        };
        let env = c.at.map_or_else(Env::now, Env::at);
        let d = match (c.method.as_deref(), c.path.as_deref()) {
            (Some(m), Some(p)) => engine.decide_call(
                &c.from,
                &c.to,
                &Call {
                    actor: None,
                    method: m,
                    path: p,
                    scopes: &c.scopes,
                    authn: Authn::Jwt,
                },
                &env,
            ),
            (None, None) => {
                engine.evaluate_issue(&c.from, &c.to, &c.scopes, &IssueContext::default(), &env)
            }
            _ => anyhow::bail!("case {}: a call needs both `method` and `path`", i + 1),
        };
        let name = c.name.clone().unwrap_or_else(|| format!("case {}", i + 1));
        let ok = d.allowed == expect_allow;
        if !ok {
            failed += 1;
        }
        results.push(json!({
            "name": name, "ok": ok, "expected": c.expect,
            "got": if d.allowed { "allow" } else { "deny" }, "reason": d.reason(),
        }));
    }
    let v =
        json!({"against": against, "cases": results.len(), "failed": failed, "results": results});
    print(target, &v, || {
        let mut o = format!("testing {against}\n");
        for r in &results {
            if r["ok"] == Value::Bool(true) {
                o.push_str(&format!(
                    "ok    {} ({})\n",
                    r["name"].as_str().unwrap_or_default(),
                    r["got"].as_str().unwrap_or_default()
                ));
            } else {
                o.push_str(&format!(
                    "FAIL  {}: expected {}, got {}: {}\n",
                    r["name"].as_str().unwrap_or_default(),
                    r["expected"].as_str().unwrap_or_default(),
                    r["got"].as_str().unwrap_or_default(),
                    r["reason"].as_str().unwrap_or_default()
                ));
            }
        }
        o.push_str(&format!("{} case(s), {failed} failed\n", results.len()));
        o
    });
    Ok(u8::from(failed > 0))
}

fn render_activated(v: &PolicyActivated) -> String {
    format!(
        "policy set {} is active ({}; {} change(s))\n",
        v.version, v.note, v.changed
    )
}

fn render_status(v: &PolicyStatus) -> String {
    let mut o = format!(
        "active policy set: {} ({} Cedar policies)\n",
        v.active_version, v.policies
    );
    match &v.shadow {
        Some(s) => o.push_str(&format!(
            "shadow policy set: {} ({} Cedar policies; see `tessera policy diff`)\n",
            s.version, s.policies
        )),
        None => o.push_str("shadow policy set: none\n"),
    }
    if let Some(e) = &v.shadow_error {
        o.push_str(&format!("shadow error: {e}\n"));
    }
    o.push_str("\nVERSION  STATUS      GRANTS  FILES  BY                NOTE\n");
    for h in &v.history {
        o.push_str(&format!(
            "{:<8} {:<11} {:<7} {:<6} {:<17} {}\n",
            h.version, h.status, h.grants, h.policies, h.actor, h.note
        ));
    }
    o
}

fn render_diff(v: &ShadowDiff) -> String {
    let mut o = format!(
        "shadow {} vs active {}: {} decision(s) evaluated, {} would be newly denied, {} newly allowed\n",
        v.shadow_version, v.active_version, v.evaluated, v.newly_denied, v.newly_allowed
    );
    if v.changed.is_empty() {
        o.push_str("no decision would change\n");
        return o;
    }
    o.push_str("\nCOUNT  ACTIVE  SHADOW  CALLER -> TARGET  (example; shadow reason)\n");
    for c in &v.changed {
        o.push_str(&format!(
            "{:<6} {:<7} {:<7} {} -> {}  ({}; {})\n",
            c.count, c.active, c.shadow, c.caller, c.target, c.example, c.shadow_reason
        ));
    }
    o
}
