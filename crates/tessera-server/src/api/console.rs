//! The web console at `/ui/`: its assets (embedded in the binary), signing in (the admin
//! credential, a one-time link, or an outside OIDC provider) and out. Everything the console
//! shows and does goes through the admin API under `/admin`, which `router.rs` opens to a console
//! session (with its CSRF token on every state change; viewers read only).

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tessera_core::admin_api::ConsoleLink;
use tessera_store::{AuditEvent, AuditKind, Outcome};

use crate::app::console::{random_token, same_secret, Person, Role, SESSION_MAX};
use crate::app::App;
use crate::domain::caller::Actor;
use crate::domain::console_oidc;
use crate::error::ApiError;
use crate::extract::{cookie_value, session_cookie_name, ConsoleSession};

const INDEX_HTML: &str = include_str!("../../ui/index.html");
const APP_JS: &str = include_str!("../../ui/app.js");
const APP_CSS: &str = include_str!("../../ui/app.css");

/// The cookie that binds an OIDC sign-in to the browser that started it.
const LOGIN_COOKIE: &str = "tessera_console_login";

/// What every console response carries: nothing runs but our own script, nothing frames us, no
/// address leaks in a `Referer`.
pub(crate) const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The console's routes, all under `/ui/`.
pub(crate) fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(index))
        .route("/ui/app.js", get(app_js))
        .route("/ui/app.css", get(app_css))
        .route("/ui/session", get(get_session))
        .route("/ui/signin", post(post_signin))
        .route("/ui/signin/link", get(link_signin))
        .route("/ui/signout", post(post_signout))
        .route("/ui/oidc/start", get(oidc_start))
        .route("/ui/oidc/callback", get(oidc_callback))
}

/// The admin route that makes one-time sign-in links (`tessera dev`, `tessera console link`).
pub(crate) fn admin_routes() -> Router<Arc<App>> {
    Router::new().route("/v1/console/link", post(post_link))
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn index() -> Response {
    asset(INDEX_HTML, "text/html; charset=utf-8")
}

async fn app_js() -> Response {
    asset(APP_JS, "text/javascript; charset=utf-8")
}

async fn app_css() -> Response {
    asset(APP_CSS, "text/css; charset=utf-8")
}

/// `GET /ui/session`: who is signed in, their role and CSRF token; or that nobody is, and
/// which ways in there are.
async fn get_session(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let oidc = app.config.console_oidc.is_some();
    let body = match ConsoleSession::of(&app, &headers) {
        Some(s) => json!({
            "signed_in": true, "name": s.view.person.name, "role": s.view.person.role,
            "csrf": s.view.csrf, "expires_in": s.view.expires_in.as_secs(), "oidc": oidc,
        }),
        None => json!({"signed_in": false, "oidc": oidc}),
    };
    ([(header::CACHE_CONTROL, "no-store")], Json(body)).into_response()
}

fn set_cookie(app: &App, name: &str, value: &str, max_age: i64, same_site: &str) -> HeaderValue {
    let secure = if app.config.dev { "" } else { "; Secure" };
    let text = format!(
        "{name}={value}; Path=/; HttpOnly; SameSite={same_site}; Max-Age={max_age}{secure}"
    );
    // INVARIANT: cookie names are constants and values base64url, all visible ASCII.
    HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static(""))
}

/// Starts a session for `person` after its audit record is durable; the answer sets the cookie.
async fn start_session(app: &App, person: Person, how: &str) -> Result<HeaderValue, ApiError> {
    app.audit
        .append(AuditEvent {
            kind: AuditKind::ConsoleSignIn,
            actor: person.actor(),
            subject: "console".into(),
            outcome: Outcome::Ok,
            detail: json!({"how": how, "role": person.role}),
        })
        .await?;
    let id = app
        .console
        .sessions
        .create(person)
        .ok_or_else(|| ApiError::unavailable("no randomness for a session"))?;
    // The browser keeps the cookie for the session's longest life; the server ends it sooner
    // when it is idle.
    let max_age = i64::try_from(SESSION_MAX.as_secs()).unwrap_or(28_800);
    Ok(set_cookie(
        app,
        session_cookie_name(app),
        &id,
        max_age,
        "Strict",
    ))
}

/// A refused sign-in, aggregated per window like every unauthenticated refusal.
async fn refused(app: &App, who: &str, why: &str) {
    app.audit_refusal(AuditEvent {
        kind: AuditKind::ConsoleSignInRefused,
        actor: format!("console:{who}"),
        subject: "console".into(),
        outcome: Outcome::Denied,
        detail: json!({"reason": why}),
    })
    .await;
}

#[derive(Deserialize)]
struct SignIn {
    credential: String,
}

/// `POST /ui/signin` with `{"credential": "tat_..."}`: the admin credential signs in an admin.
/// A JSON body cannot be sent across sites without a preflight we never answer, so a page
/// elsewhere cannot sign a browser in under our credential.
async fn post_signin(
    State(app): State<Arc<App>>,
    Json(req): Json<SignIn>,
) -> Result<Response, ApiError> {
    if !app.is_admin_token(req.credential.trim()) {
        refused(&app, "credential", "the admin credential is wrong").await;
        return Err(ApiError::Client {
            description: "that is not the admin credential".into(),
            basic: false,
        });
    }
    let person = Person {
        name: "admin:credential".into(),
        role: Role::Admin,
    };
    let cookie = start_session(&app, person, "credential").await?;
    Ok((
        [(header::SET_COOKIE, cookie)],
        Json(json!({"signed_in": true})),
    )
        .into_response())
}

#[derive(Deserialize)]
struct LinkQuery {
    code: String,
}

/// `GET /ui/signin/link?code=`: a one-time link signs in an admin, once, within ten minutes.
async fn link_signin(State(app): State<Arc<App>>, Query(q): Query<LinkQuery>) -> Response {
    if q.code.len() > 128 || !app.console.sessions.take_link(&q.code) {
        refused(&app, "link", "an unknown, used or expired sign-in link").await;
        return Redirect::to("/ui/?error=link").into_response();
    }
    let person = Person {
        name: "admin:link".into(),
        role: Role::Admin,
    };
    match start_session(&app, person, "link").await {
        Ok(cookie) => ([(header::SET_COOKIE, cookie)], Redirect::to("/ui/")).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `POST /ui/signout`: ends the session (the CSRF header is required, as on every state change).
async fn post_signout(
    State(app): State<Arc<App>>,
    session: ConsoleSession,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if !csrf_ok(&headers, &session.view.csrf) {
        return Err(ApiError::Forbidden(
            "the console's CSRF token is missing or wrong".into(),
        ));
    }
    if let Some(person) = app.console.sessions.remove(&session.cookie) {
        let event = AuditEvent {
            kind: AuditKind::ConsoleSignOut,
            actor: person.actor(),
            subject: "console".into(),
            outcome: Outcome::Ok,
            detail: json!({}),
        };
        app.audit.append(event).await?;
    }
    let gone = set_cookie(&app, session_cookie_name(&app), "", 0, "Strict");
    Ok(([(header::SET_COOKIE, gone)], StatusCode::NO_CONTENT).into_response())
}

/// Whether the request's `X-CSRF-Token` is the session's, in constant time.
pub(crate) fn csrf_ok(headers: &HeaderMap, expected: &str) -> bool {
    headers
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|got| same_secret(got, expected))
}

/// `GET /ui/oidc/start`: off to the provider, with state, nonce and a PKCE challenge; the state
/// is bound to this browser by a short-lived cookie.
async fn oidc_start(State(app): State<Arc<App>>) -> Response {
    let (Some(state), Some(verifier), Some(nonce), Some(browser)) = (
        random_token(),
        random_token(),
        random_token(),
        random_token(),
    ) else {
        return ApiError::unavailable("no randomness for a sign-in").into_response();
    };
    app.console
        .sessions
        .start_login(&state, verifier.clone(), nonce.clone(), browser.clone());
    match console_oidc::authorization_url(&app, &state, &verifier, &nonce).await {
        Ok(url) => {
            // Lax: the provider sends the browser back by a top-level navigation from its site.
            let cookie = set_cookie(&app, LOGIN_COOKIE, &browser, 600, "Lax");
            ([(header::SET_COOKIE, cookie)], Redirect::to(&url)).into_response()
        }
        Err(e) => {
            tracing::warn!(error = %e, "console: OIDC sign-in cannot start");
            Redirect::to(&format!("/ui/?error={}", e.code())).into_response()
        }
    }
}

#[derive(Deserialize)]
struct Callback {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    /// RFC 9207: the provider that answered, when it says.
    iss: Option<String>,
}

/// `GET /ui/oidc/callback`: the provider's answer. The state must be one this server issued to
/// this browser, the code is exchanged with the PKCE verifier, and the ID token is checked.
async fn oidc_callback(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(q): Query<Callback>,
) -> Response {
    let back = |code: &str| {
        let gone = set_cookie(&app, LOGIN_COOKIE, "", 0, "Lax");
        (
            [(header::SET_COOKIE, gone)],
            Redirect::to(&format!("/ui/?error={code}")),
        )
            .into_response()
    };
    if q.error.is_some() {
        refused(&app, "oidc", "the provider refused the sign-in").await;
        return back("provider");
    }
    let (Some(code), Some(state)) = (q.code, q.state) else {
        return back("state");
    };
    let Some(pending) = app.console.sessions.finish_login(&state) else {
        refused(&app, "oidc", "an unknown or expired sign-in state").await;
        return back("state");
    };
    // A mix-up: an answer from another provider than the one configured (RFC 9207). The state
    // is used up either way.
    let ours = app.config.console_oidc.as_ref().map(|o| o.issuer.as_str());
    if q.iss.is_some() && q.iss.as_deref() != ours {
        refused(&app, "oidc", "the answer names another issuer").await;
        return back("provider");
    }
    let browser = cookie_value(&headers, LOGIN_COOKIE).unwrap_or_default();
    if !same_secret(&browser, &pending.browser) {
        refused(&app, "oidc", "the sign-in was started by another browser").await;
        return back("state");
    }
    match console_oidc::finish(&app, &code, &pending.verifier, &pending.nonce).await {
        Ok(person) => match start_session(&app, person, "oidc").await {
            Ok(cookie) => {
                let gone = set_cookie(&app, LOGIN_COOKIE, "", 0, "Lax");
                let mut resp = Redirect::to("/ui/").into_response();
                resp.headers_mut().append(header::SET_COOKIE, cookie);
                resp.headers_mut().append(header::SET_COOKIE, gone);
                resp
            }
            Err(e) => e.into_response(),
        },
        Err(e) => {
            tracing::warn!(error = %e, "console: OIDC sign-in refused");
            let who = match &e {
                console_oidc::SignInError::NoRole(n) => format!("oidc:{n}"),
                _ => "oidc".into(),
            };
            refused(&app, &who, &e.to_string()).await;
            back(e.code())
        }
    }
}

/// `POST /admin/v1/console/link`: a one-time sign-in link, valid for ten minutes.
async fn post_link(
    State(app): State<Arc<App>>,
    actor: Actor,
) -> Result<Json<ConsoleLink>, ApiError> {
    let code = app
        .console
        .sessions
        .create_link()
        .ok_or_else(|| ApiError::RateLimited {
            description: "too many sign-in links outstanding".into(),
            retry_after_secs: 60,
        })?;
    tracing::info!(actor = %actor.0, "console: one-time sign-in link made");
    Ok(Json(ConsoleLink {
        url: format!(
            "{}/ui/signin/link?code={code}",
            app.base_url.trim_end_matches('/')
        ),
        expires_in: crate::app::console::PENDING_MAX.as_secs(),
    }))
}
