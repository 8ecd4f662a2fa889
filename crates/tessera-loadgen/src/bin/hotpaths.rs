//! The hot paths, one at a time, for instruction counts under callgrind (`bench/callgrind`).
//!
//! `tessera-hotpaths OP N` builds what OP needs, then runs it N times. Running it with N = 0
//! and N = n under `valgrind --tool=callgrind` and dividing the difference by n gives the
//! instructions of one operation without the setup: repeatable on a noisy machine, so a
//! regression shows as a number in review.

use std::hint::black_box;
use std::path::Path;

use anyhow::{bail, Context, Result};
use rustls::pki_types::UnixTime;
use serde_json::json;
use tessera_ca::{new_key_and_csr, verify_chain, CertificateAuthority, StaticBundles, Usage};
use tessera_core::manifest::parse_str;
use tessera_core::{Scope, SpiffeId, TrustDomain};
use tessera_policy::{Env, IssueContext, PolicyEngine};
use tessera_token::{sign, Alg, JwkSet, SigningKey};
use tessera_verify::{KeySet, Verifier, VerifierConfig};

const ISSUER: &str = "https://tessera.example.org";
const TARGET: &str = "spiffe://example.org/target";

const OPS: &str = "ring_sign | ring_verify | sign_token | verify_token | decide_issue | decide_issue_cached | sign_csr | verify_chain | match_registrations | match_registrations_scan";

fn claims(now: i64) -> serde_json::Value {
    json!({"iss": ISSUER, "sub": "spiffe://example.org/caller", "aud": TARGET, "client_id": "caller",
           "scope": "read", "iat": now, "exp": now + 86_400, "jti": "hotpaths"})
}

/// The peer: one raw ES256 operation, on a message the size of an access token's signing input.
fn ring_raw(op: &str, n: u64) -> Result<()> {
    use ring::rand::SystemRandom;
    use ring::signature::{
        EcdsaKeyPair, KeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED,
        ECDSA_P256_SHA256_FIXED_SIGNING,
    };
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .map_err(|_| anyhow::anyhow!("key generation failed"))?;
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
        .map_err(|_| anyhow::anyhow!("key parsing failed"))?;
    let msg = [7u8; 300];
    let sig = key
        .sign(&rng, &msg)
        .map_err(|_| anyhow::anyhow!("signing failed"))?;
    let public =
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, key.public_key().as_ref().to_vec());
    for _ in 0..n {
        if op == "ring_sign" {
            black_box(
                key.sign(&rng, black_box(&msg))
                    .map_err(|_| anyhow::anyhow!("signing failed"))?,
            );
        } else {
            #[expect(clippy::disallowed_methods, reason = "the raw peer measurement")]
            public
                .verify(black_box(&msg), sig.as_ref())
                .map_err(|_| anyhow::anyhow!("verification failed"))?;
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(op), Some(n)) = (args.next(), args.next()) else {
        bail!("usage: tessera-hotpaths OP N   (OP: {OPS})");
    };
    let n: u64 = n.parse().context("N must be a number")?;
    let now = tessera_core::now_unix();
    match op.as_str() {
        "ring_sign" | "ring_verify" => ring_raw(&op, n)?,
        "sign_token" => {
            let (key, _) = SigningKey::generate(Alg::ES256)?;
            let c = claims(now);
            for _ in 0..n {
                black_box(sign(&key, "at+jwt", black_box(&c))?);
            }
        }
        "verify_token" => {
            let (key, _) = SigningKey::generate(Alg::ES256)?;
            let token = sign(&key, "at+jwt", &claims(now))?;
            let jwks = serde_json::to_vec(&JwkSet::from_keys([key.public()]))?;
            let verifier = Verifier::new(
                VerifierConfig::access_token(ISSUER, TARGET)?,
                KeySet::from_jwks(&jwks)?,
            );
            let rt = tokio::runtime::Builder::new_current_thread().build()?;
            for _ in 0..n {
                black_box(rt.block_on(verifier.verify(black_box(&token)))?);
            }
        }
        "decide_issue" | "decide_issue_cached" => {
            let text = format!(
                "[[workload]]\nid = \"{TARGET}\"\nowner = \"o\"\npurpose = \"p\"\nenvironment = \"prod\"\nscopes = [\"read\"]\n\
                 [[workload]]\nid = \"spiffe://example.org/caller\"\nowner = \"o\"\npurpose = \"p\"\nenvironment = \"prod\"\n\
                 [[grant]]\nfrom = \"spiffe://example.org/caller\"\nto = \"{TARGET}\"\nscopes = [\"read\"]\nwhy = \"hot path\"\n"
            );
            let s = parse_str(Path::new("hotpaths.toml"), &text)?;
            let engine = PolicyEngine::build(&s.workloads, &s.grants, &[])?;
            let (caller, target) = (
                SpiffeId::parse("spiffe://example.org/caller")?,
                SpiffeId::parse(TARGET)?,
            );
            let scopes = vec![Scope::parse("read")?];
            let cached = op == "decide_issue_cached";
            for _ in 0..n {
                let ctx = IssueContext::default();
                let d = if cached {
                    engine.decide_issue(&caller, &target, &scopes, &ctx, &Env::now())
                } else {
                    engine.evaluate_issue(&caller, &target, &scopes, &ctx, &Env::now())
                };
                if !d.allowed {
                    bail!("the decision should allow");
                }
            }
        }
        "sign_csr" | "verify_chain" => {
            let td = TrustDomain::parse("example.org")?;
            let id = SpiffeId::parse("spiffe://example.org/api")?;
            let (ca, _) = CertificateAuthority::generate(&td, now, 86_400)?;
            let (_, csr) = new_key_and_csr(&id)?;
            if op == "sign_csr" {
                for _ in 0..n {
                    black_box(ca.sign_csr(black_box(&csr), &id, now, 3600)?);
                }
            } else {
                let svid = ca.sign_csr(&csr, &id, now, 3600)?;
                let bundles = StaticBundles::new([(td, ca.cert().clone())]);
                let t = UnixTime::now();
                for _ in 0..n {
                    black_box(verify_chain(
                        std::slice::from_ref(&svid.cert),
                        &bundles,
                        t,
                        Usage::Client,
                    )?);
                }
            }
        }
        "match_registrations" | "match_registrations_scan" => {
            // The Workload API's first step with 10,000 registrations on the agent (as in
            // `bench/identity`): which of them the caller matches. `_scan` tries every one, as
            // the agent did before its index.
            use tessera_agent::matching::RegistrationIndex;
            use tessera_core::agent_api::Registration;
            use tessera_core::manifest::Selector;
            let reg = |id: String, sel: String| -> Result<(SpiffeId, Registration)> {
                let id = SpiffeId::parse(&id)?;
                Ok((
                    id.clone(),
                    Registration {
                        spiffe_id: id,
                        selectors: vec![Selector::parse(&sel)?],
                        x509_ttl_secs: 3600,
                        jwt_ttl_secs: 300,
                        nodes: Vec::new(),
                        node_selectors: Vec::new(),
                        federates_with: Vec::new(),
                        revision: 1,
                    },
                ))
            };
            let mut regs = std::collections::HashMap::new();
            for i in 0..10_000 {
                let (id, r) = reg(
                    format!("spiffe://example.org/w/{i:05}"),
                    "unix:uid:54321".into(),
                )?;
                regs.insert(id, r);
            }
            let (id, r) = reg("spiffe://example.org/me".into(), "unix:uid:1000".into())?;
            regs.insert(id, r);
            let p = tessera_agent::attest::Process {
                pid: 1,
                uid: 1000,
                gid: 1000,
                groups: vec![1000],
                user: Some("me".into()),
                group_names: vec!["me".into()],
                exe: Some("/usr/bin/me".into()),
                sha256: None,
                start_ticks: 0,
                placement: None,
                container: None,
                pod: None,
            };
            let idx = RegistrationIndex::build(&regs);
            for _ in 0..n {
                let found = if op == "match_registrations" {
                    idx.matching(black_box(&regs), black_box(&p)).count()
                } else {
                    regs.values()
                        .filter(|r| p.matches_all(&r.selectors))
                        .count()
                };
                if black_box(found) != 1 {
                    bail!("the caller should match one registration");
                }
            }
        }
        other => bail!("unknown operation `{other}` (OP: {OPS})"),
    }
    Ok(())
}
