//! Standards interop: independent OAuth 2.0 and JOSE implementations (Python authlib, joserfc,
//! PyJWT) against the real server. CI installs them (`.ci/run`); without them this test fails.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::process::Command;

use common::*;

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/interop/oauth_interop.py"
);

#[test]
fn python_oauth_and_jose_libraries() {
    let s = server(Backend::Sqlite, &[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let keygen = Command::new("python3")
        .args([SCRIPT, "keygen"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        keygen.status.success(),
        "python keygen failed (pip install authlib joserfc pyjwt requests): {}",
        String::from_utf8_lossy(&keygen.stderr)
    );
    let mesh = format!(
        "{MESH}\n[[client]]\nid = \"batch\"\nworkload = \"spiffe://example.org/prod/order-processor\"\nauth = \"private_key_jwt\"\njwks_file = \"client.jwks.json\"\n"
    );
    let p = write(dir.path(), "mesh.toml", &mesh);
    let o = tessera(&s.data, &["apply", "-f", p.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let secret = |id: &str| {
        stdout(&tessera(&s.data, &["client", "secret", id]))
            .lines()
            .next()
            .unwrap()
            .to_owned()
    };
    let (orders, inventory) = (secret("orders"), secret("inventory"));
    let run = Command::new("python3")
        .args([SCRIPT, "run", &s.url, &orders])
        .arg(dir.path())
        .arg(&inventory)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&run.stdout);
    println!("{out}");
    assert!(
        run.status.success(),
        "interop failed:\n{out}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(out.contains("interop: 19 passed, 0 failed"), "{out}");
}
