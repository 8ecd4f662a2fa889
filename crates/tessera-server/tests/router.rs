//! The router over real HTTP: a `--dev` server on `127.0.0.1:0` (plain HTTP on loopback), every
//! feature's routes with their status codes, error bodies and body limits per route group. The
//! admin socket is exercised over a real unix socket as well.
#![expect(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "test helpers: a failed step should stop the test where it failed"
)]

use std::path::Path;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use tessera_server::{ServerConfig, StartError};

const TD: &str = "example.org";
const MESH: &str = r#"
[[workload]]
id = "spiffe://example.org/prod/caller"
owner = "team-a"
purpose = "Calls the target in the router tests"
environment = "prod"

[[workload]]
id = "spiffe://example.org/prod/target"
owner = "team-b"
purpose = "Is called in the router tests"
environment = "prod"
scopes = ["read", "write"]

[[grant]]
from = "spiffe://example.org/prod/caller"
to = "spiffe://example.org/prod/target"
scopes = ["read"]
why = "The router tests need one grant"

[[client]]
id = "caller-client"
workload = "spiffe://example.org/prod/caller"
auth = "client_secret"
"#;

struct Server {
    running: tessera_server::Running,
    url: String,
    admin: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = ServerConfig::new(dir.path().join("server"));
        cfg.dev = true;
        cfg.listen = "127.0.0.1:0".parse().unwrap();
        let running = tessera_server::start(cfg, None).await.unwrap();
        let admin = std::fs::read_to_string(dir.path().join("server/admin-token"))
            .unwrap()
            .trim()
            .to_owned();
        Self {
            url: running.url.clone(),
            running,
            admin,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            _dir: dir,
        }
    }

    fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let r = self.http.get(self.at(path)).send().await.unwrap();
        body(r).await
    }

    async fn form(&self, path: &str, form: &str) -> (StatusCode, Value) {
        let r = self
            .http
            .post(self.at(path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form.to_owned())
            .send()
            .await
            .unwrap();
        body(r).await
    }

    async fn admin_post(&self, path: &str, v: &Value) -> (StatusCode, Value) {
        let r = self
            .http
            .post(self.at(path))
            .bearer_auth(&self.admin)
            .json(v)
            .send()
            .await
            .unwrap();
        body(r).await
    }

    /// A form posted as the test client (`client_secret_basic`).
    async fn as_client(
        &self,
        path: &str,
        secret: &str,
        form: &[(&str, &str)],
    ) -> reqwest::Response {
        self.http
            .post(self.at(path))
            .basic_auth("caller-client", Some(secret))
            .form(form)
            .send()
            .await
            .unwrap()
    }

    /// `GET` on the admin API over HTTP, with `credential` as the bearer.
    async fn admin_get(&self, path: &str, credential: Option<&str>) -> (StatusCode, Value) {
        let mut req = self.http.get(self.at(path));
        if let Some(c) = credential {
            req = req.bearer_auth(c);
        }
        body(req.send().await.unwrap()).await
    }

    /// Applies the test mesh and issues the client's secret.
    async fn with_mesh(&self) -> String {
        let state = tessera_core::manifest::parse_str(Path::new("mesh.toml"), MESH).unwrap();
        let (s, v) = self
            .admin_post("/admin/v1/apply", &json!({"state": state}))
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["applied"], true);
        let (s, v) = self
            .admin_post(
                "/admin/v1/client/secret",
                &json!({"client_id": "caller-client"}),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v["secret"].as_str().unwrap().to_owned()
    }

    async fn stop(self) {
        self.running.shutdown();
        self.running.wait().await;
    }
}

async fn body(r: reqwest::Response) -> (StatusCode, Value) {
    let status = r.status();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn error_of(v: &Value) -> &str {
    v["error"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn discovery_routes() {
    let s = Server::start().await;
    let r = s.http.get(s.at("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await.unwrap(), "ok\n");
    let (st, _) = s.get("/readyz").await;
    assert_eq!(st, StatusCode::OK);
    let r = s.http.get(s.at("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));

    // RFC 8414 at the base URL and per trust domain; both name their own issuer.
    let (st, meta) = s.get("/.well-known/oauth-authorization-server").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(meta["issuer"], s.url);
    assert_eq!(meta["token_endpoint"], s.at("/token"));
    assert_eq!(
        meta["grant_types_supported"],
        json!([
            "client_credentials",
            "urn:ietf:params:oauth:grant-type:token-exchange",
            "urn:ietf:params:oauth:grant-type:jwt-bearer"
        ])
    );
    let (st, meta) = s
        .get(&format!("/{TD}/.well-known/openid-configuration"))
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(meta["issuer"], s.at(&format!("/{TD}")));
    let (st, meta) = s
        .get(&format!("/.well-known/oauth-authorization-server/{TD}"))
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(meta["tessera_trust_domain"], TD);

    let (st, jwks) = s.get("/jwks").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1);
    let (st, bundle) = s.get(&format!("/bundle/{TD}")).await;
    assert_eq!(st, StatusCode::OK);
    assert!(bundle["spiffe_sequence"].is_i64());
    let uses: Vec<&str> = bundle["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["use"].as_str().unwrap())
        .collect();
    assert!(
        uses.contains(&"x509-svid") && uses.contains(&"jwt-svid"),
        "{uses:?}"
    );
    let (st, rev) = s.get("/revocations").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(rev["revoked"], json!([]));

    // A trust domain this authority does not serve, and a path nobody serves: 404 with a body.
    for path in [
        "/other.org/jwks",
        "/bundle/other.org",
        "/other.org/revocations",
        "/other.org/.well-known/openid-configuration",
        "/no/such/thing",
    ] {
        let (st, v) = s.get(path).await;
        assert_eq!(st, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(error_of(&v), "not_found", "{path}: {v}");
    }
    s.stop().await;
}

#[tokio::test]
async fn token_endpoint_errors_are_rfc6749() {
    let s = Server::start().await;
    let secret = s.with_mesh().await;

    // Not a form.
    let r = s
        .http
        .post(s.at("/token"))
        .json(&json!({"grant_type": "client_credentials"}))
        .send()
        .await
        .unwrap();
    let (st, v) = body(r).await;
    assert_eq!(
        (st, error_of(&v)),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
    let (st, v) = s.form("/token", "scope=read").await;
    assert_eq!(
        (st, error_of(&v)),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
    assert!(v["error_description"]
        .as_str()
        .unwrap()
        .contains("grant_type"));
    let (st, v) = s.form("/token", "grant_type=password").await;
    assert_eq!(
        (st, error_of(&v)),
        (StatusCode::BAD_REQUEST, "unsupported_grant_type")
    );
    let (st, v) = s
        .form("/token", "grant_type=client_credentials&scope=a&scope=b")
        .await;
    assert_eq!(
        (st, error_of(&v)),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
    // No client authentication, and a wrong secret: 401 invalid_client.
    let (st, v) = s
        .form(
            "/token",
            "grant_type=client_credentials&audience=spiffe://example.org/prod/target",
        )
        .await;
    assert_eq!(
        (st, error_of(&v)),
        (StatusCode::UNAUTHORIZED, "invalid_client")
    );
    let r = s
        .http
        .post(s.at("/token"))
        .basic_auth("caller-client", Some("tsk_wrong"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("audience", "spiffe://example.org/prod/target"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["www-authenticate"], "Basic realm=\"tessera\"");
    let (st, v) = body(r).await;
    assert_eq!(
        (st, error_of(&v)),
        (StatusCode::UNAUTHORIZED, "invalid_client")
    );

    // The genuine request: a token, not cached; under the trust domain's own path too.
    for path in ["/token", "/example.org/token"] {
        let r = s
            .as_client(
                path,
                &secret,
                &[
                    ("grant_type", "client_credentials"),
                    ("audience", "spiffe://example.org/prod/target"),
                ],
            )
            .await;
        assert_eq!(r.headers()["cache-control"], "no-store");
        let (st, v) = body(r).await;
        assert_eq!(st, StatusCode::OK, "{path}: {v}");
        assert_eq!(v["scope"], "read");
        assert_eq!(v["token_type"], "Bearer");
    }
    // A scope the grant does not give, a target that does not exist: 400 with their codes.
    let ask = |aud: &'static str, scope: &'static str| {
        s.http
            .post(s.at("/token"))
            .basic_auth("caller-client", Some(&secret))
            .form(&[
                ("grant_type", "client_credentials"),
                ("audience", aud),
                ("scope", scope),
            ])
            .send()
    };
    let (st, v) = body(
        ask("spiffe://example.org/prod/target", "write")
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (st, error_of(&v)),
        (StatusCode::BAD_REQUEST, "invalid_scope")
    );
    let (st, v) = body(
        ask("spiffe://example.org/prod/nobody", "read")
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (st, error_of(&v)),
        (StatusCode::BAD_REQUEST, "invalid_target")
    );
    // Another trust domain's token endpoint does not exist here.
    let (st, v) = s
        .form("/other.org/token", "grant_type=client_credentials")
        .await;
    assert_eq!((st, error_of(&v)), (StatusCode::NOT_FOUND, "not_found"));
    // The body limit of the OAuth group: 64 KiB.
    let big = format!(
        "grant_type=client_credentials&pad={}",
        "a".repeat(70 * 1024)
    );
    let (st, _) = s.form("/token", &big).await;
    assert_eq!(st, StatusCode::PAYLOAD_TOO_LARGE);
    s.stop().await;
}

#[tokio::test]
async fn introspection_and_revocation() {
    let s = Server::start().await;
    let secret = s.with_mesh().await;
    let r = s
        .as_client(
            "/token",
            &secret,
            &[
                ("grant_type", "client_credentials"),
                ("audience", "spiffe://example.org/prod/target"),
            ],
        )
        .await;
    let token = body(r).await.1["access_token"].as_str().unwrap().to_owned();

    let (st, v) = s.form("/introspect", &format!("token={token}")).await;
    assert_eq!(
        (st, error_of(&v)),
        (StatusCode::UNAUTHORIZED, "invalid_client")
    );
    let introspect = || {
        s.http
            .post(s.at("/introspect"))
            .basic_auth("caller-client", Some(&secret))
            .form(&[("token", token.as_str())])
            .send()
    };
    let (st, v) = body(introspect().await.unwrap()).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["active"], true);
    assert_eq!(v["sub"], "spiffe://example.org/prod/caller");
    // `token` is required.
    let r = s.as_client("/introspect", &secret, &[("x", "y")]).await;
    let (st, v) = body(r).await;
    assert_eq!(
        (st, error_of(&v)),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );

    // RFC 7009: revoked by its holder, then inactive; the revocation list names its jti.
    let r = s
        .as_client("/revoke", &secret, &[("token", token.as_str())])
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let (_, v) = body(introspect().await.unwrap()).await;
    assert_eq!(v, json!({"active": false}));
    let (_, rev) = s.get("/revocations").await;
    assert_eq!(rev["revoked"].as_array().unwrap().len(), 1);
    s.stop().await;
}

#[tokio::test]
async fn admin_over_http_needs_the_credential() {
    let s = Server::start().await;
    let (st, v) = s.admin_get("/admin/v1/get/workloads", None).await;
    assert_eq!(
        (st, error_of(&v)),
        (StatusCode::UNAUTHORIZED, "invalid_client")
    );
    let r = s
        .http
        .get(s.at("/admin/v1/get/workloads"))
        .bearer_auth("tat_not-the-credential")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // A workload's token is not an admin credential either (routes of both groups).
    let r = s
        .http
        .post(s.at("/admin/v1/secrets/put"))
        .header("authorization", "Basic Zm9vOmJhcg==")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    s.with_mesh().await;
    let (st, v) = s.admin_get("/admin/v1/get/workloads", Some(&s.admin)).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v.as_array().unwrap().len(), 2);
    let (st, v) = s.admin_get("/admin/v1/get/nothing", Some(&s.admin)).await;
    assert_eq!((st, error_of(&v)), (StatusCode::NOT_FOUND, "not_found"));
    // Typed refusals from the domain floor reach HTTP through error.rs.
    let (st, v) = s
        .admin_post(
            "/admin/v1/revoke/workload",
            &json!({"id": "not a spiffe id"}),
        )
        .await;
    assert_eq!(
        (st, error_of(&v)),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
    let (st, v) = s.admin_post("/admin/v1/policy/promote", &json!({})).await;
    assert_eq!((st, error_of(&v)), (StatusCode::NOT_FOUND, "not_found"));
    assert!(v["error_description"].as_str().unwrap().contains("shadow"));
    let (st, v) = s
        .admin_post(
            "/admin/v1/keys/rotate",
            &json!({"trust_domain": "other.org"}),
        )
        .await;
    assert_eq!((st, error_of(&v)), (StatusCode::NOT_FOUND, "not_found"));
    // Identity files larger than the OAuth cap are fine on the admin group.
    let state = tessera_core::manifest::parse_str(Path::new("mesh.toml"), MESH).unwrap();
    let pad = "x".repeat(200 * 1024);
    let (st, v) = s
        .admin_post(
            "/admin/v1/apply",
            &json!({"state": state, "dry_run": true, "pad": pad}),
        )
        .await;
    assert_ne!(st, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    s.stop().await;
}

#[tokio::test]
async fn agent_and_workload_apis_refuse_strangers() {
    let s = Server::start().await;
    s.with_mesh().await;
    // The agents' API needs an agent's SVID on the connection (plain HTTP has none).
    let (st, v) = s.get("/agent/v1/sync?since=0").await;
    assert_eq!(
        (st, error_of(&v)),
        (StatusCode::UNAUTHORIZED, "invalid_client")
    );
    let r = s
        .http
        .post(s.at("/agent/v1/join"))
        .json(&json!({"join_token": "tjt_unknown", "csr": "AAAA"}))
        .send()
        .await
        .unwrap();
    let (st, v) = body(r).await;
    assert_eq!(
        (st, error_of(&v)),
        (StatusCode::UNAUTHORIZED, "invalid_client")
    );
    // `server-ca` is served by a --dev server only.
    let r = s
        .http
        .get(s.at("/agent/v1/server-ca"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.text().await.unwrap().contains("BEGIN CERTIFICATE"));

    // Workload APIs: no credential, a token that is not ours, a non-text Authorization header.
    for path in [
        "/v1/secrets/app/db-password",
        "/v1/secret-metadata/app/db-password",
        "/v1/policy/bundle?service=spiffe://example.org/prod/target",
    ] {
        let (st, v) = s.get(path).await;
        assert_eq!(
            (st, error_of(&v)),
            (StatusCode::UNAUTHORIZED, "invalid_client"),
            "{path}"
        );
        let r = s
            .http
            .get(s.at(path))
            .bearer_auth("e30.e30.e30")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path}");
        let r = s
            .http
            .get(s.at(path))
            .header(
                "authorization",
                reqwest::header::HeaderValue::from_bytes(b"Bearer \xff").unwrap(),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    let r = s
        .http
        .post(s.at("/v1/db/creds/reporting"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    s.stop().await;
}

#[tokio::test]
async fn body_limits_per_route_group() {
    let s = Server::start().await;
    let post = |path: &str, bytes: usize| {
        s.http
            .post(s.at(path))
            .header("content-type", "application/json")
            .body(vec![b' '; bytes])
            .send()
    };
    // (path, the group's cap): one byte over is refused before any handler runs.
    for (path, cap) in [
        ("/token", 64 * 1024),
        ("/agent/v1/sign", 1024 * 1024),
        ("/v1/db/creds/reporting", 64 * 1024),
        ("/v1/policy/decisions", 2 * 1024 * 1024),
    ] {
        let r = post(path, cap + 1).await.unwrap();
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE, "{path}");
        // Just under the cap is read (and then refused for what it is, not for its size).
        let r = post(path, cap - 1).await.unwrap();
        assert_ne!(r.status(), StatusCode::PAYLOAD_TOO_LARGE, "{path}");
    }
    s.stop().await;
}

#[tokio::test]
async fn admin_socket_serves_the_same_admin_api() {
    use http_body_util::BodyExt;
    let s = Server::start().await;
    s.with_mesh().await;
    let stream = tokio::net::UnixStream::connect(&s.running.admin_socket)
        .await
        .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get("/v1/get/workloads")
        .header("host", "localhost")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
    s.stop().await;
}

#[tokio::test]
async fn a_second_server_on_the_same_data_folder_is_refused() {
    let s = Server::start().await;
    let mut cfg = ServerConfig::new(s.running.admin_socket.parent().unwrap().to_path_buf());
    cfg.dev = true;
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    match tessera_server::start(cfg, None).await {
        Err(StartError::Listen { message, .. }) => {
            assert!(message.contains("another server"), "{message}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    s.stop().await;
}
