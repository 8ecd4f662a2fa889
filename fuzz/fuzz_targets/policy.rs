//! Policy loading and point-of-use decisions: an arbitrary `.cedar` file beside a fixed mesh,
//! then a call with an arbitrary path. Oracles: no panic; a set that loads validated in strict
//! mode, so deciding with it never errors on the request's shape; a normalised path holds no
//! dot segment.
#![no_main]

use std::path::Path;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use tessera_core::manifest::{parse_str, DesiredState};
use tessera_core::SpiffeId;
use tessera_policy::{path, Authn, Call, Env, PolicyEngine};

const MESH: &str = r#"
[[workload]]
id = "spiffe://example.org/a"
owner = "o"
purpose = "p"
environment = "prod"
tags = { team = "x" }

[[workload]]
id = "spiffe://example.org/b"
owner = "o"
purpose = "p"
environment = "prod"
scopes = ["read"]

[[grant]]
from = "spiffe://example.org/a"
to = "spiffe://example.org/b"
scopes = ["read"]
routes = [{ methods = ["GET"], paths = ["/api/*"] }]
why = "fuzz"
"#;

static STATE: LazyLock<Option<DesiredState>> =
    LazyLock::new(|| parse_str(Path::new("mesh.toml"), MESH).ok());

fuzz_target!(|data: &[u8]| {
    let Some(state) = STATE.as_ref() else { return };
    let (policy, rest) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b"/api/x"[..]),
    };
    let (Ok(policy), Ok(raw_path)) = (std::str::from_utf8(policy), std::str::from_utf8(rest)) else {
        return;
    };
    if let Ok(p) = path::normalize(raw_path) {
        assert!(!p.split('/').any(|s| s == ".." || s == "."), "{p}");
    }
    let files = vec![("fuzz.cedar".to_owned(), policy.to_owned())];
    let Ok(engine) = PolicyEngine::build(&state.workloads, &state.grants, &files) else {
        return;
    };
    let (a, b) = (
        SpiffeId::parse("spiffe://example.org/a").unwrap(),
        SpiffeId::parse("spiffe://example.org/b").unwrap(),
    );
    for method in ["GET", "POST"] {
        let call = Call {
 actor: None, method, path: raw_path, scopes: &[], authn: Authn::Jwt };
        let _ = engine.decide_call(&a, &b, &call, &Env::at(1_800_000_000));
    }
    let _ = engine.decide_issue(&a, &b, &[], &Default::default(), &Env::at(1_800_000_000));
});
