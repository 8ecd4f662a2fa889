//! The trust authority end to end, through the real binary, on both storage backends.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;
use serde_json::Value;

async fn issuance_flow(backend: Backend) {
    let Some(s) = server(backend, &[]) else {
        return;
    };
    let (orders, inventory) = setup_mesh(&s);

    // Discovery per RFC 8414, at the base and per trust domain (path insertion).
    let meta: Value = get_json(&format!("{}/.well-known/oauth-authorization-server", s.url)).await;
    assert_eq!(meta["issuer"], s.url.as_str());
    assert_eq!(meta["token_endpoint"], format!("{}/token", s.url));
    let td_meta: Value = get_json(&format!(
        "{}/.well-known/oauth-authorization-server/example.org",
        s.url
    ))
    .await;
    assert_eq!(td_meta["issuer"], format!("{}/example.org", s.url));
    let oidc: Value = get_json(&format!(
        "{}/example.org/.well-known/openid-configuration",
        s.url
    ))
    .await;
    assert_eq!(oidc["jwks_uri"], format!("{}/example.org/jwks", s.url));
    let jwks = reqwest::get(format!("{}/jwks", s.url)).await.unwrap();
    assert!(jwks.headers()["cache-control"]
        .to_str()
        .unwrap()
        .contains("max-age="));
    let jwks: Value = jwks.json().await.unwrap();
    assert_eq!(jwks["keys"][0]["alg"], "ES256");
    let bundle: Value = get_json(&format!("{}/bundle/example.org", s.url)).await;
    let uses: Vec<&str> = bundle["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["use"].as_str().unwrap())
        .collect();
    assert_eq!(uses, ["x509-svid", "jwt-svid"], "{bundle}");
    assert_eq!(bundle["keys"][0]["x5c"].as_array().unwrap().len(), 1);
    assert!(bundle["spiffe_sequence"].is_number());
    assert_eq!(
        reqwest::get(format!("{}/bundle/other.org", s.url))
            .await
            .unwrap()
            .status(),
        404
    );

    // Allowed, by alias; `aud` is the canonical SPIFFE ID; scope narrows.
    let (st, body) = token(
        &s,
        &orders,
        &[
            ("resource", "https://inventory.internal.example.org"),
            ("scope", "inventory:read"),
        ],
    )
    .await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 120, "per-workload jwt_ttl");
    assert_eq!(body["scope"], "inventory:read");
    let at = body["access_token"].as_str().unwrap().to_owned();

    // `tessera verify` discovers the keys from the issuer and checks everything.
    let o = cli(&[
        "verify",
        "--issuer",
        &s.url,
        "--audience",
        "spiffe://example.org/prod/inventory-api",
        "--scope",
        "inventory:read",
        &at,
    ]);
    assert!(o.status.success(), "verify: {}", stderr(&o));
    let claims: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(claims["sub"], "spiffe://example.org/prod/order-processor");
    assert_eq!(claims["aud"], "spiffe://example.org/prod/inventory-api");
    assert_eq!(claims["client_id"], "orders");
    assert_eq!(claims["environment"], "prod");
    for c in ["iss", "iat", "exp", "jti"] {
        assert!(claims.get(c).is_some(), "missing {c}");
    }
    let o = cli(&[
        "verify",
        "--issuer",
        &s.url,
        "--audience",
        "spiffe://example.org/prod/payments-api",
        &at,
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("not for this audience"),
        "{}",
        stderr(&o)
    );
    let o = cli(&[
        "verify",
        "--issuer",
        &s.url,
        "--audience",
        "spiffe://example.org/prod/inventory-api",
        "--scope",
        "inventory:admin",
        &at,
    ]);
    assert_eq!(o.status.code(), Some(1));

    // No scope asked: the granted ones. client_secret_post works too.
    let (st, body) = post_form(
        &format!("{}/token", s.url),
        None,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "orders"),
            ("client_secret", &orders),
            ("audience", "inventory-api"),
        ],
    )
    .await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["scope"], "inventory:read inventory:reserve");

    // Deny by default, with the right RFC 6749 errors.
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (
            vec![("resource", "spiffe://example.org/prod/payments-api")],
            "invalid_target",
        ),
        (vec![("resource", "nonexistent")], "invalid_target"),
        (vec![], "invalid_target"),
        (
            vec![
                ("resource", "inventory-api"),
                ("resource", "spiffe://example.org/prod/payments-api"),
            ],
            "invalid_target",
        ),
        (
            vec![("resource", "inventory-api"), ("scope", "inventory:admin")],
            "invalid_scope",
        ),
        (
            vec![("resource", "inventory-api"), ("scope", "inventory:nope")],
            "invalid_scope",
        ),
        (
            vec![("resource", "inventory-api"), ("scope", "bad\"scope")],
            "invalid_scope",
        ),
    ];
    for (form, want) in cases {
        let (st, body) = token(&s, &orders, &form).await;
        assert_eq!(
            (st, body["error"].as_str().unwrap()),
            (400, want),
            "{form:?}: {body}"
        );
        assert!(!body["error_description"].as_str().unwrap().is_empty());
    }
    let (st, body) = token(&s, "tsk_wrong", &[("resource", "inventory-api")]).await;
    assert_eq!(
        (st, body["error"].as_str().unwrap()),
        (401, "invalid_client")
    );

    // Introspection: the audience's own client sees it active; another client does not.
    let introspect = |who: &'static str, secret: String, tok: String| {
        let url = format!("{}/introspect", s.url);
        async move { post_form(&url, Some((who, &secret)), &[("token", &tok)]).await }
    };
    let (st, body) = introspect("inventory", inventory.clone(), at.clone()).await;
    assert_eq!(st, 200);
    assert_eq!(body["active"], true, "{body}");
    assert_eq!(body["sub"], "spiffe://example.org/prod/order-processor");
    let (_, body) = introspect("inventory", inventory.clone(), "garbage".into()).await;
    assert_eq!(body, serde_json::json!({"active": false}));

    // Revocation (RFC 7009) by the holder; introspection reflects it at once.
    let (st, _) = post_form(
        &format!("{}/revoke", s.url),
        Some(("orders", &orders)),
        &[("token", &at)],
    )
    .await;
    assert_eq!(st, 200);
    let (_, body) = introspect("inventory", inventory.clone(), at.clone()).await;
    assert_eq!(body, serde_json::json!({"active": false}));
    let list: Value = get_json(&format!("{}/revocations", s.url)).await;
    let jti = claims["jti"].as_str().unwrap();
    assert!(
        list["revoked"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["jti"] == jti),
        "{list}"
    );

    // Describe: owner, grants with reasons and overdue review, last issuance, how to revoke.
    let o = tessera(
        &s.data,
        &[
            "describe",
            "workload",
            "spiffe://example.org/prod/order-processor",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let d = stdout(&o);
    for needle in [
        "team-orders",
        "-> spiffe://example.org/prod/inventory-api",
        "The order flow checks and reserves stock",
        "REVIEW OVERDUE",
        "client orders",
        "tessera revoke workload spiffe://example.org/prod/order-processor",
    ] {
        assert!(d.contains(needle), "describe lacks {needle:?}:\n{d}");
    }
    assert!(!d.contains("Last token:   never"), "{d}");
    let metrics = get_text(&format!("{}/metrics", s.url)).await;
    assert!(
        metrics.contains("tessera_grants_overdue_review 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "tessera_tokens_total{grant_type=\"client_credentials\",result=\"issued\"} 2"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("tessera_client_auth_failures_total{method=\"client_secret_basic\"} 1"),
        "{metrics}"
    );

    // Revoke the workload: no new credentials, and its live tokens go inactive.
    let (_, body) = token(&s, &orders, &[("resource", "inventory-api")]).await;
    let live = body["access_token"].as_str().unwrap().to_owned();
    let o = tessera(
        &s.data,
        &[
            "revoke",
            "workload",
            "spiffe://example.org/prod/order-processor",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let (st, body) = token(&s, &orders, &[("resource", "inventory-api")]).await;
    assert_eq!(
        (st, body["error"].as_str().unwrap()),
        (400, "unauthorized_client"),
        "{body}"
    );
    let (_, body) = introspect("inventory", inventory.clone(), live).await;
    assert_eq!(body["active"], false);

    // The audit trail holds every issuance, denial, failure and change, and verifies.
    let o = tessera(&s.data, &["audit", "tail", "-n", "200", "--output", "json"]);
    let records: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let kinds: Vec<&str> = records
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    for k in [
        "apply",
        "client.secret_issued",
        "token.issued",
        "token.denied",
        "client.auth_failed",
        "revoke.token",
        "revoke.workload",
    ] {
        assert!(kinds.contains(&k), "no {k} record in {kinds:?}");
    }
    let all = serde_json::to_string(&records).unwrap();
    assert!(!all.contains(&at), "a whole token reached the audit trail");
    assert!(!all.contains(&orders), "a secret reached the audit trail");
    let o = tessera(&s.data, &["audit", "verify"]);
    assert!(o.status.success(), "{}", stdout(&o));
    assert!(
        !s.proc.stderr().contains(&orders),
        "a secret reached the log"
    );
}

#[tokio::test]
async fn issuance_flow_sqlite() {
    issuance_flow(Backend::Sqlite).await;
}

#[tokio::test]
async fn issuance_flow_postgres() {
    issuance_flow(Backend::Postgres).await;
}

#[tokio::test]
async fn apply_is_idempotent_all_or_nothing_and_located() {
    let s = server(Backend::Sqlite, &[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "mesh.toml", MESH);
    let path = p.to_str().unwrap();

    let o = tessera(&s.data, &["apply", "-f", path, "--dry-run"]);
    assert!(
        stdout(&o).contains("dry run: 6 change(s) not applied"),
        "{}",
        stdout(&o)
    );
    let o = tessera(&s.data, &["get", "workloads"]);
    assert_eq!(stdout(&o).lines().count(), 1, "dry run changed nothing");
    let o = tessera(&s.data, &["apply", "-f", path]);
    assert!(stdout(&o).contains("applied 6 change(s)"), "{}", stdout(&o));
    let o = tessera(&s.data, &["apply", "-f", path]);
    assert_eq!(stdout(&o), "no changes\n", "apply is idempotent");

    // Errors name the file and line, leave stored state untouched, exit 2 with one line.
    let bad = write(
        dir.path(),
        "bad.toml",
        &MESH.replace(
            "owner = \"team-payments\"",
            "owner = \"team-payments\"\nownr = 1",
        ),
    );
    let o = tessera(&s.data, &["apply", "-f", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.starts_with(&format!(
            "tessera: {}:20:1: unknown field `ownr`",
            bad.display()
        )),
        "{e}"
    );
    assert_eq!(e.lines().count(), 1, "{e}");

    let other_td = write(
        dir.path(),
        "td.toml",
        "[[workload]]\nid = \"spiffe://other.org/x\"\nowner = \"o\"\npurpose = \"p\"\n",
    );
    let o = tessera(&s.data, &["apply", "-f", other_td.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("td.toml:1: workload `spiffe://other.org/x` is in trust domain `other.org`, which this authority does not serve"), "{}", stderr(&o));

    // A grant to a workload that does not exist: refused, and the new workload in the same
    // file is not half-applied.
    let dangling = write(
        dir.path(),
        "dangling.toml",
        "[[workload]]\nid = \"spiffe://example.org/new\"\nowner = \"o\"\npurpose = \"p\"\n[[grant]]\nfrom = \"spiffe://example.org/new\"\nto = \"spiffe://example.org/ghost\"\nwhy = \"x\"\n",
    );
    let o = tessera(&s.data, &["apply", "-f", dangling.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o)
            .contains("dangling.toml:5: grant to `spiffe://example.org/ghost`: no such workload"),
        "{}",
        stderr(&o)
    );
    let o = tessera(&s.data, &["get", "workloads", "--output", "json"]);
    assert!(
        !stdout(&o).contains("spiffe://example.org/new"),
        "half-applied"
    );

    let bad_scope = write(
        dir.path(),
        "scope.toml",
        &MESH.replace(
            "scopes = [\"inventory:read\", \"inventory:reserve\"]\nwhy",
            "scopes = [\"inventory:write\"]\nwhy",
        ),
    );
    let o = tessera(&s.data, &["apply", "-f", bad_scope.to_str().unwrap()]);
    assert!(
        stderr(&o).contains("scope `inventory:write` is not one of the scopes it defines"),
        "{}",
        stderr(&o)
    );

    // Prune deletes what the files no longer mention.
    let smaller = write(dir.path(), "smaller.toml", &MESH.replace("[[client]]\nid = \"inventory\"\nworkload = \"spiffe://example.org/prod/inventory-api\"\nauth = \"client_secret\"\n", ""));
    let o = tessera(
        &s.data,
        &["apply", "-f", smaller.to_str().unwrap(), "--prune"],
    );
    assert_eq!(stdout(&o), "- client inventory\napplied 1 change(s)\n");
}

#[tokio::test]
async fn bad_requests_get_clear_4xx_answers() {
    let s = server(Backend::Sqlite, &[]).unwrap();
    let (orders, _) = setup_mesh(&s);
    let client = reqwest::Client::new();
    let url = format!("{}/token", s.url);

    let r = client
        .post(&url)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "invalid_request");

    let huge = "a=".to_owned() + &"x".repeat(200_000);
    let r = client
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);

    let (st, body) = post_form(
        &url,
        Some(("orders", &orders)),
        &[("grant_type", "password")],
    )
    .await;
    assert_eq!(
        (st, body["error"].as_str().unwrap()),
        (400, "unsupported_grant_type")
    );
    let (st, body) = post_form(
        &url,
        Some(("orders", &orders)),
        &[
            ("grant_type", "client_credentials"),
            ("grant_type", "client_credentials"),
        ],
    )
    .await;
    assert_eq!(
        (st, body["error"].as_str().unwrap()),
        (400, "invalid_request")
    );
    let (st, body) = post_form(
        &url,
        None,
        &[
            ("grant_type", "client_credentials"),
            ("resource", "inventory-api"),
        ],
    )
    .await;
    assert_eq!(
        (st, body["error"].as_str().unwrap()),
        (401, "invalid_client")
    );
    let r = client
        .post(&url)
        .header("authorization", "Basic !!!")
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().contains_key("www-authenticate"));
    let (st, body) = post_form(
        &url,
        None,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "orders"),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", "a.b.c"),
        ],
    )
    .await;
    assert_eq!(
        (st, body["error"].as_str().unwrap()),
        (401, "invalid_client"),
        "{body}"
    );
    let r = client.get(format!("{}/nope", s.url)).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = client
        .get(format!("{}/example.org/jwks", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client
        .get(format!("{}/other.org/jwks", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        client
            .get(format!("{}/healthz", s.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        client
            .get(format!("{}/readyz", s.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert!(!s.proc.stderr().contains("panicked"), "{}", s.proc.stderr());
}

#[tokio::test]
async fn secret_expiry_and_rotation() {
    let s = server(Backend::Sqlite, &[]).unwrap();
    let _ = setup_mesh(&s);
    let o = tessera(&s.data, &["client", "secret", "orders", "--ttl", "2s"]);
    let short = stdout(&o).lines().next().unwrap().to_owned();
    assert!(short.len() >= 43, "at least 256 bits");
    let (st, _) = token(&s, &short, &[("resource", "inventory-api")]).await;
    assert_eq!(st, 200);
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let (st, body) = token(&s, &short, &[("resource", "inventory-api")]).await;
    assert_eq!(st, 401);
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{body}"
    );
    // A new secret replaces the old one.
    let o = tessera(&s.data, &["client", "secret", "orders"]);
    let fresh = stdout(&o).lines().next().unwrap().to_owned();
    assert_eq!(
        token(&s, &fresh, &[("resource", "inventory-api")]).await.0,
        200
    );
    assert_eq!(
        token(&s, &short, &[("resource", "inventory-api")]).await.0,
        401
    );
    let o = tessera(&s.data, &["client", "secret", "nobody"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no client `nobody`"), "{}", stderr(&o));
}

#[test]
fn admin_commands_without_a_server_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let o = tessera(dir.path(), &["get", "workloads"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("no server is running on this data folder"),
        "{}",
        stderr(&o)
    );
}
