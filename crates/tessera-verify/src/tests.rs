use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::routing::get;
use axum::Router;
use serde_json::json;
use tessera_core::SpiffeId;
use tessera_token::{sign, Alg, JwkSet, SigningKey};

use super::*;

const ISS: &str = "http://127.0.0.1/example.org";
const AUD: &str = "spiffe://example.org/api";

fn claims(now: i64) -> Value {
    json!({"iss": ISS, "sub": "spiffe://example.org/caller", "aud": AUD, "client_id": "c",
           "scope": "a:read b:write", "iat": now, "exp": now + 300, "jti": "j1"})
}

fn keyset(keys: &[&SigningKey]) -> KeySet {
    let set = JwkSet::from_keys(keys.iter().map(|k| k.public()));
    KeySet::from_jwks(serde_json::to_string(&set).unwrap().as_bytes()).unwrap()
}

fn verifier(keys: &[&SigningKey]) -> Verifier {
    Verifier::new(
        VerifierConfig::access_token(ISS, AUD).unwrap(),
        keyset(keys),
    )
}

#[tokio::test]
async fn accepts_a_good_token() {
    let (k, _) = SigningKey::generate(Alg::ES256).unwrap();
    let now = tessera_core::now_unix();
    let t = sign(&k, "at+jwt", &claims(now)).unwrap();
    let v = verifier(&[&k]).verify(&t).await.unwrap();
    assert_eq!(v.subject, "spiffe://example.org/caller");
    assert!(v.has_scope("b:write"));
    assert!(v.require_scope("c").is_err());
}

#[tokio::test]
async fn refusals_name_their_reason() {
    let (k, _) = SigningKey::generate(Alg::ES256).unwrap();
    let (other, _) = SigningKey::generate(Alg::ES256).unwrap();
    let now = tessera_core::now_unix();
    let v = verifier(&[&k]);
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = claims(now);
        f(&mut c);
        sign(&k, "at+jwt", &c).unwrap()
    };
    let cases: Vec<(String, &str)> = vec![
        (with(&|c| c["iss"] = json!(format!("{ISS}/"))), "issuer"),
        (
            with(&|c| c["aud"] = json!("spiffe://example.org/other")),
            "audience",
        ),
        (with(&|c| c["aud"] = json!(["x", AUD])), "ok"),
        (with(&|c| c["exp"] = json!(now - 31)), "expired"),
        (with(&|c| c["exp"] = json!(now - 29)), "ok"),
        (
            with(&|c| c["exp"] = json!((now + 60).to_string())),
            "claims",
        ),
        (
            with(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
            "claims",
        ),
        (
            with(&|c| {
                c.as_object_mut().unwrap().remove("client_id");
            }),
            "claims",
        ),
        (with(&|c| c["nbf"] = json!(now + 100)), "not_yet_valid"),
        (sign(&k, "JWT", &claims(now)).unwrap(), "type"),
        (sign(&k, "application/at+jwt", &claims(now)).unwrap(), "ok"),
        (sign(&other, "at+jwt", &claims(now)).unwrap(), "unknown_key"),
        ("not.a.token".into(), "malformed"),
    ];
    for (token, want) in cases {
        let got = match v.verify(&token).await {
            Ok(_) => "ok",
            Err(e) => e.reason(),
        };
        assert_eq!(got, want, "token claims {token:.60}");
    }
    // A token signed by another key under a known kid fails the signature check.
    let forged = {
        let t = sign(&other, "at+jwt", &claims(now)).unwrap();
        let (_, rest) = t.split_once('.').unwrap();
        let header = tessera_token::strict::b64_encode(format!(
            r#"{{"alg":"ES256","kid":"{}","typ":"at+jwt"}}"#,
            k.kid()
        ));
        format!("{header}.{rest}")
    };
    assert_eq!(v.verify(&forged).await.unwrap_err().reason(), "signature");
}

#[tokio::test]
async fn jwt_svid_rules_are_apart() {
    let (k, _) = SigningKey::generate(Alg::ES256).unwrap();
    let now = tessera_core::now_unix();
    let svid = Verifier::new(VerifierConfig::jwt_svid(AUD).unwrap(), keyset(&[&k]));
    let at = sign(&k, "at+jwt", &claims(now)).unwrap();
    assert_eq!(
        svid.verify(&at).await.unwrap_err().reason(),
        "type",
        "an access token is no JWT-SVID"
    );
    let good = sign(
        &k,
        "JWT",
        &json!({"sub": "spiffe://example.org/x", "aud": [AUD], "exp": now + 60}),
    )
    .unwrap();
    assert!(svid.verify(&good).await.is_ok());
    let bad_sub = sign(&k, "JWT", &json!({"sub": "x", "aud": AUD, "exp": now + 60})).unwrap();
    assert_eq!(svid.verify(&bad_sub).await.unwrap_err().reason(), "claims");
}

#[tokio::test]
async fn jwt_svids_of_federated_domains_verify_with_their_own_bundle_only() {
    let (local, _) = SigningKey::generate(Alg::ES256).unwrap();
    let (partner, _) = SigningKey::generate(Alg::ES256).unwrap();
    let jwks = |k: &SigningKey| serde_json::to_vec(&JwkSet::from_keys([k.public()])).unwrap();
    let bundles = JwtBundles::new();
    let td = |s: &str| tessera_core::TrustDomain::parse(s).unwrap();
    bundles.set(td("example.org"), &jwks(&local)).unwrap();
    bundles.set(td("partner.example"), &jwks(&partner)).unwrap();
    let bundles = Arc::new(bundles);
    let v = Verifier::new(
        VerifierConfig::jwt_svid(AUD).unwrap(),
        Keys::PerTrustDomain(bundles.clone()),
    );
    let now = tessera_core::now_unix();
    let svid = |k: &SigningKey, sub: &str| {
        sign(k, "JWT", &json!({"sub": sub, "aud": AUD, "exp": now + 60})).unwrap()
    };
    let ok = v
        .verify(&svid(&partner, "spiffe://partner.example/orders"))
        .await
        .unwrap();
    assert_eq!(ok.subject, "spiffe://partner.example/orders");
    assert!(v
        .verify(&svid(&local, "spiffe://example.org/x"))
        .await
        .is_ok());
    // The partner's key does not vouch for a local identity, nor the local key for theirs.
    let forged = svid(&partner, "spiffe://example.org/x");
    assert_eq!(v.verify(&forged).await.unwrap_err().reason(), "unknown_key");
    let crossed = svid(&local, "spiffe://partner.example/orders");
    assert_eq!(
        v.verify(&crossed).await.unwrap_err().reason(),
        "unknown_key"
    );
    // An unfederated trust domain, and a relationship removed.
    let stranger = svid(&partner, "spiffe://elsewhere.example/x");
    assert_eq!(
        v.verify(&stranger).await.unwrap_err().reason(),
        "untrusted_domain"
    );
    bundles.remove(&td("partner.example"));
    let again = svid(&partner, "spiffe://partner.example/orders");
    assert_eq!(
        v.verify(&again).await.unwrap_err().reason(),
        "untrusted_domain"
    );
    // Access tokens are not verified by trust domain.
    let at = Verifier::new(
        VerifierConfig::access_token(ISS, AUD).unwrap(),
        Keys::PerTrustDomain(bundles),
    );
    let t = sign(&local, "at+jwt", &claims(now)).unwrap();
    assert_eq!(at.verify(&t).await.unwrap_err().reason(), "config");
}

#[tokio::test]
async fn revoked_jti_is_refused() {
    let (k, _) = SigningKey::generate(Alg::ES256).unwrap();
    let v = verifier(&[&k]);
    let t = sign(&k, "at+jwt", &claims(tessera_core::now_unix())).unwrap();
    v.set_revocations(Revocations {
        jtis: ["j1".to_owned()].into(),
        ..Revocations::default()
    });
    assert_eq!(v.verify(&t).await.unwrap_err(), VerifyError::Revoked);
}

#[tokio::test]
async fn clock_skew_matches_leeway() {
    let (k, _) = SigningKey::generate(Alg::ES256).unwrap();
    let now = tessera_core::now_unix();
    let v = verifier(&[&k]);
    let t = sign(&k, "at+jwt", &claims(now)).unwrap();
    // Verifier clock 2 minutes behind: iat is 120 s ahead of it, beyond 30 s leeway.
    assert_eq!(
        v.verify_at(&t, now - 120).await.unwrap_err().reason(),
        "claims"
    );
    assert!(v.verify_at(&t, now - 20).await.is_ok());
    // Verifier clock 2 minutes ahead: fine until exp + leeway.
    assert!(v.verify_at(&t, now + 120).await.is_ok());
    assert_eq!(
        v.verify_at(&t, now + 331).await.unwrap_err().reason(),
        "expired"
    );
    eprintln!("drill: verifier clock skew: -120 s refused (iat ahead beyond the 30 s leeway), -20 s and +120 s accepted, exp + 31 s refused");
}

/// A JWKS server whose key set and availability the test controls.
async fn jwks_server(body: Arc<Mutex<Option<String>>>, hits: Arc<AtomicUsize>) -> reqwest::Url {
    let app = Router::new().route(
        "/jwks",
        get(move || {
            let body = body.clone();
            let hits = hits.clone();
            async move {
                hits.fetch_add(1, Ordering::SeqCst);
                match body.lock().unwrap().clone() {
                    Some(b) => (http::StatusCode::OK, b),
                    None => (http::StatusCode::SERVICE_UNAVAILABLE, String::new()),
                }
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    format!("http://{addr}/jwks").parse().unwrap()
}

fn jwks_json(keys: &[&SigningKey]) -> String {
    serde_json::to_string(&JwkSet::from_keys(keys.iter().map(|k| k.public()))).unwrap()
}

#[tokio::test]
async fn cache_refreshes_on_unknown_kid_and_keeps_last_good_set() {
    let (k1, _) = SigningKey::generate(Alg::ES256).unwrap();
    let (k2, _) = SigningKey::generate(Alg::ES256).unwrap();
    let body = Arc::new(Mutex::new(Some(jwks_json(&[&k1]))));
    let hits = Arc::new(AtomicUsize::new(0));
    let url = jwks_server(body.clone(), hits.clone()).await;
    let mut cache = JwksCache::new(url);
    cache.min_refresh = Duration::from_millis(200);
    let v = Verifier::new(VerifierConfig::access_token(ISS, AUD).unwrap(), cache);
    let now = tessera_core::now_unix();
    let t1 = sign(&k1, "at+jwt", &claims(now)).unwrap();
    let t2 = sign(&k2, "at+jwt", &claims(now)).unwrap();
    v.verify(&t1).await.unwrap();
    v.verify(&t1).await.unwrap();
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "a warm cache does not fetch"
    );

    // Rotation: k2 appears in the JWKS. Unknown kid triggers one refresh (after min_refresh).
    *body.lock().unwrap() = Some(jwks_json(&[&k1, &k2]));
    tokio::time::sleep(Duration::from_millis(250)).await;
    v.verify(&t2).await.unwrap();
    assert_eq!(hits.load(Ordering::SeqCst), 2);

    // Unknown kids in a burst cause at most one fetch per interval.
    let (k3, _) = SigningKey::generate(Alg::ES256).unwrap();
    let t3 = sign(&k3, "at+jwt", &claims(now)).unwrap();
    for _ in 0..20 {
        assert_eq!(v.verify(&t3).await.unwrap_err().reason(), "unknown_key");
    }
    assert!(
        hits.load(Ordering::SeqCst) <= 3,
        "hits {}",
        hits.load(Ordering::SeqCst)
    );

    // The JWKS endpoint fails, or serves an empty set: the last good set stays.
    *body.lock().unwrap() = None;
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(v.verify(&t3).await.unwrap_err().reason(), "unknown_key");
    v.verify(&t1).await.unwrap();
    *body.lock().unwrap() = Some(r#"{"keys":[]}"#.into());
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(v.verify(&t3).await.is_err());
    v.verify(&t2).await.unwrap();
}

#[tokio::test]
async fn layer_protects_an_axum_service() {
    use axum::extract::Extension;
    let (k, _) = SigningKey::generate(Alg::ES256).unwrap();
    let metrics = VerifyMetrics::default();
    let v = verifier(&[&k]).with_metrics(metrics.clone());
    let app = Router::new()
        .route(
            "/data",
            get(|Extension(who): Extension<Verified>| async move { who.subject }),
        )
        .layer(RequireTokenLayer::new(v).scope("a:read"));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/data");
    let now = tessera_core::now_unix();

    let r = client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let good = sign(&k, "at+jwt", &claims(now)).unwrap();
    let r = client.get(&url).bearer_auth(&good).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "spiffe://example.org/caller");

    let mut c = claims(now);
    c["scope"] = json!("b:write");
    let narrow = sign(&k, "at+jwt", &c).unwrap();
    let r = client.get(&url).bearer_auth(&narrow).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("insufficient_scope"));

    let r = client.get(&url).bearer_auth("x.y.z").send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("invalid_token"));
    assert_eq!(metrics.count("valid", "ok"), 2);
    assert_eq!(metrics.count("refused", "malformed"), 1);
}

#[tokio::test]
async fn revocation_poller_pulls_the_list() {
    let (k, _) = SigningKey::generate(Alg::ES256).unwrap();
    let v = verifier(&[&k]);
    let t = sign(&k, "at+jwt", &claims(tessera_core::now_unix())).unwrap();
    let list = Arc::new(Mutex::new(json!({"revoked": [], "revoked_workloads": []})));
    let served = list.clone();
    let app = Router::new().route(
        "/revocations",
        get(move || {
            let served = served.clone();
            async move { axum::Json(served.lock().unwrap().clone()) }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    let poller = v.spawn_revocation_poller(
        format!("http://{addr}/revocations").parse().unwrap(),
        Duration::from_millis(50),
    );
    assert!(v.verify(&t).await.is_ok());
    *list.lock().unwrap() =
        json!({"revoked": [{"jti": "j1", "exp": 9_999_999_999i64}], "revoked_workloads": []});
    assert_eq!(eventually_refused(&v, &t).await, VerifyError::Revoked);
    // A revoked workload: its tokens issued up to the revocation are refused, later ones not.
    let now = tessera_core::now_unix();
    let mut c = claims(now);
    c["jti"] = json!("j2");
    let t2 = sign(&k, "at+jwt", &c).unwrap();
    assert!(v.verify(&t2).await.is_ok());
    *list.lock().unwrap() = json!({"revoked": [], "revoked_workloads": [{"sub": "spiffe://example.org/caller", "revoked_at": now}]});
    assert_eq!(eventually_refused(&v, &t2).await, VerifyError::Revoked);
    c["iat"] = json!(now + 1);
    c["jti"] = json!("j3");
    assert!(
        v.verify(&sign(&k, "at+jwt", &c).unwrap()).await.is_ok(),
        "issued after the revocation"
    );
    poller.abort();
}

/// Waits (at most 5 s) for the poller to refuse `token`, and returns the refusal.
async fn eventually_refused(v: &Verifier, token: &str) -> VerifyError {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match v.verify(token).await {
            Err(e) => return e,
            Ok(_) if std::time::Instant::now() > deadline => {
                panic!("the poller never picked up the revocation")
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

#[tokio::test]
async fn certificate_bound_tokens_pass_only_over_their_certificate() {
    let (key, _) = SigningKey::generate(Alg::ES256).unwrap();
    let v = verifier(&[&key]);
    let now = tessera_core::now_unix();
    let (cert, other) = (
        b"leaf certificate DER".as_slice(),
        b"another one".as_slice(),
    );
    let mut bound = claims(now);
    bound["cnf"] = json!({"x5t#S256": tessera_token::x5t_s256(cert)});
    let t = sign(&key, "at+jwt", &bound).unwrap();
    let ok = v.verify(&t).await.unwrap();
    assert_eq!(
        ok.bound_certificate(),
        Some(tessera_token::x5t_s256(cert).as_str())
    );
    ok.check_certificate_binding(Some(cert)).unwrap();
    for presented in [Some(other), None] {
        assert_eq!(
            ok.check_certificate_binding(presented),
            Err(VerifyError::CertificateBinding)
        );
    }
    // An unbound token passes with or without a certificate; a `cnf` of another kind fails closed.
    let plain = v
        .verify(&sign(&key, "at+jwt", &claims(now)).unwrap())
        .await
        .unwrap();
    plain.check_certificate_binding(None).unwrap();
    plain.check_certificate_binding(Some(cert)).unwrap();
    let mut jkt = claims(now);
    jkt["cnf"] = json!({"jkt": "abc"});
    let jkt = v
        .verify(&sign(&key, "at+jwt", &jkt).unwrap())
        .await
        .unwrap();
    assert_eq!(
        jkt.check_certificate_binding(Some(cert)),
        Err(VerifyError::CertificateBinding)
    );
    assert_eq!(
        VerifyError::CertificateBinding.reason(),
        "certificate_binding"
    );
}

/// Finding 5: a delegated token is decided for its subject *and* its current actor (the
/// actor gets no route of the subject's it lacks), policies see `context.actor`, the actor's
/// call rate applies, and revoking any workload in the chain refuses the call.
#[test]
fn delegated_calls_are_decided_for_the_actor_too() {
    let mesh = r#"
[[workload]]
id = "spiffe://example.org/user-svc"
owner = "o"
purpose = "p"

[[workload]]
id = "spiffe://example.org/batch"
owner = "o"
purpose = "p"

[[workload]]
id = "spiffe://example.org/api"
owner = "o"
purpose = "p"

[[grant]]
from = "spiffe://example.org/user-svc"
to = "spiffe://example.org/api"
routes = [{ methods = ["GET"], paths = ["/orders/*", "/admin/*"] }]
why = "w"

[[grant]]
from = "spiffe://example.org/batch"
to = "spiffe://example.org/api"
routes = [{ methods = ["GET"], paths = ["/orders/*"] }]
call_rate = "2/m"
why = "w"
"#;
    let s = tessera_core::manifest::parse_str(std::path::Path::new("mesh.toml"), mesh).unwrap();
    let files = vec![tessera_core::manifest::PolicyFile {
        name: "no-delegated-deletes.cedar".into(),
        text: "forbid (principal, action in Action::\"call\", resource) when { context.delegated && resource.path like \"/orders/42\" };\n".into(),
    }];
    let api = SpiffeId::parse("spiffe://example.org/api").unwrap();
    let user = SpiffeId::parse("spiffe://example.org/user-svc").unwrap();
    let batch = SpiffeId::parse("spiffe://example.org/batch").unwrap();
    let mut bundle = PolicyBundle::cut(Some(&api), &s.workloads, &s.grants, &files);
    let authz = Authorizer::new(api);
    authz.set_bundle(&bundle).unwrap();
    let env = Env::now();
    let decide = |subject: &SpiffeId, actors: &[SpiffeId], path: &str| {
        authz.decide_chain(subject, actors, "GET", path, &[], Authn::Jwt, &env)
    };
    let actor = std::slice::from_ref(&batch);
    assert!(
        decide(&user, &[], "/admin/x").allowed,
        "the subject alone may"
    );
    assert!(
        !decide(&user, actor, "/admin/x").allowed,
        "the actor may not, so neither may the delegated call"
    );
    assert!(decide(&user, actor, "/orders/1").allowed);
    assert!(
        !decide(&user, actor, "/orders/42").allowed,
        "a policy reads context.delegated"
    );
    assert!(decide(&user, &[], "/orders/42").allowed);
    // The actor's rate (2 a minute) applies; one was spent above.
    let limited = decide(&user, actor, "/orders/2");
    assert!(limited.allowed);
    let limited = decide(&user, actor, "/orders/3");
    assert!(limited.limited.is_some(), "{limited:?}");
    // Revoking a prior actor deep in the chain refuses the call.
    let prior = SpiffeId::parse("spiffe://example.org/prior").unwrap();
    bundle.revoked = vec![prior.clone()];
    authz.set_bundle(&bundle).unwrap();
    let d = decide(&user, &[batch.clone(), prior], "/orders/1");
    assert!(!d.allowed && d.reason.contains("revoked"), "{d:?}");
    // An `act` chain is read from the claims, the current actor first.
    let claims = json!({"act": {"sub": "spiffe://example.org/batch", "act": {"sub": "spiffe://example.org/prior"}}});
    let chain = actor_chain(claims.as_object().unwrap()).unwrap();
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[0], batch);
    let bad = json!({"act": {"sub": "not a spiffe id"}});
    assert!(actor_chain(bad.as_object().unwrap()).is_err());
}

/// The layer is the service's side of a hop: it continues the caller's `traceparent`, records the
/// verification and the caller, never the token, and hands the service its own context.
#[tokio::test]
async fn layer_continues_the_callers_trace_and_records_the_verification() {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
    use tower::ServiceExt;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::Layer as _;

    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry().with(
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("test"))
            .with_filter(
                tracing_subscriber::filter::Targets::new()
                    .with_target(tessera_telemetry::TARGET, tracing::Level::TRACE),
            ),
    );
    let _guard = tracing::subscriber::set_default(subscriber);

    let (k, _) = SigningKey::generate(Alg::ES256).unwrap();
    let seen: Arc<Mutex<Option<String>>> = Arc::default();
    let app = {
        let seen = seen.clone();
        Router::new()
            .route(
                "/data",
                get(move |headers: http::HeaderMap| async move {
                    *seen.lock().unwrap() = headers
                        .get("traceparent")
                        .map(|v| v.to_str().unwrap().to_owned());
                    "ok"
                }),
            )
            .layer(RequireTokenLayer::new(verifier(&[&k])))
    };
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let good = sign(&k, "at+jwt", &claims(tessera_core::now_unix())).unwrap();
    let request = |token: &str| {
        http::Request::builder()
            .uri("/data")
            .header("authorization", format!("Bearer {token}"))
            .header("traceparent", format!("00-{trace}-{parent}-01"))
            .body(axum::body::Body::empty())
            .unwrap()
    };
    let r = app.clone().oneshot(request(&good)).await.unwrap();
    assert_eq!(r.status(), 200);
    let r = app.oneshot(request("x.y.z")).await.unwrap();
    assert_eq!(r.status(), 401);

    let spans = exporter.get_finished_spans().unwrap();
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let attr = |s: &opentelemetry_sdk::trace::SpanData, k: &str| {
        s.attributes
            .iter()
            .find(|kv| kv.key.as_str() == k)
            .map(|kv| kv.value.to_string())
    };
    for s in &spans {
        assert_eq!(s.name, "tessera.verify");
        assert_eq!(s.span_context.trace_id().to_string(), trace);
        assert_eq!(s.parent_span_id.to_string(), parent);
        for kv in &s.attributes {
            assert!(
                !kv.value.to_string().contains(&good),
                "the token is in a span"
            );
        }
    }
    assert_eq!(
        attr(&spans[0], "tessera.verify.result").as_deref(),
        Some("valid")
    );
    assert_eq!(
        attr(&spans[0], "tessera.caller").as_deref(),
        Some("spiffe://example.org/caller")
    );
    assert_eq!(
        attr(&spans[1], "tessera.verify.result").as_deref(),
        Some("refused")
    );
    assert_eq!(
        attr(&spans[1], "tessera.verify.reason").as_deref(),
        Some("malformed")
    );
    // The service saw the verification span as its parent, in the same trace.
    let want = format!("00-{trace}-{}-01", spans[0].span_context.span_id());
    assert_eq!(seen.lock().unwrap().as_deref(), Some(want.as_str()));
}
