//! The console's sessions: who signed in, with which role, until when, and the token that every
//! state change must carry (CSRF). Also the one-time sign-in links and the OIDC sign-ins under
//! way. In memory only: a restart signs everyone out, and each server of a cluster has its own.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tessera_token::strict::b64_encode;

/// How long a session lives at most, however active.
pub(crate) const SESSION_MAX: Duration = Duration::from_secs(8 * 3600);
/// How long a session lives without a request.
pub(crate) const SESSION_IDLE: Duration = Duration::from_secs(30 * 60);
/// How long a one-time sign-in link or an OIDC sign-in under way may wait.
pub(crate) const PENDING_MAX: Duration = Duration::from_secs(10 * 60);
/// Bounds on what requests can make the server hold: sessions (signed in), one-time links
/// (made by admins), OIDC sign-ins under way (anyone can start one: past the bound the oldest is
/// dropped, so a flood cannot lock people out for ten minutes, only race them).
const MAX_SESSIONS: usize = 10_000;
const MAX_LINKS: usize = 1_000;
const MAX_PENDING: usize = 10_000;

/// What a person may do in the console.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Role {
    /// Everything the admin API offers.
    Admin,
    /// Reading, and `explain` (which changes nothing).
    Viewer,
}

/// Who signed in: `admin:credential`, `admin:link` or `oidc:<issuer's name for them>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Person {
    pub name: String,
    pub role: Role,
}

impl Person {
    /// How the audit trail names the person.
    pub(crate) fn actor(&self) -> String {
        format!("console:{}", self.name)
    }
}

#[derive(Debug)]
struct Session {
    person: Person,
    csrf: String,
    created: Instant,
    last: Instant,
}

/// An OIDC sign-in between the redirect to the provider and its return.
#[derive(Debug, Clone)]
pub(crate) struct PendingLogin {
    pub verifier: String,
    pub nonce: String,
    /// Bound to the browser that started it (a cookie), so nobody can finish another's sign-in.
    pub browser: String,
    created: Instant,
}

/// A signed-in session as a request sees it.
#[derive(Debug, Clone)]
pub(crate) struct SessionView {
    pub person: Person,
    pub csrf: String,
    pub expires_in: Duration,
}

/// Sessions are keyed by the SHA-256 of the cookie's value, so a memory dump of this map does not
/// hold usable cookies.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    sessions: Mutex<HashMap<[u8; 32], Session>>,
    links: Mutex<HashMap<[u8; 32], Instant>>,
    pending: Mutex<HashMap<String, PendingLogin>>,
}

/// Where the console's OIDC provider signs people in and hands out tokens, from its discovery
/// document.
#[derive(Debug, Clone)]
pub(crate) struct OidcEndpoints {
    pub authorization: reqwest::Url,
    pub token: reqwest::Url,
}

/// The console's state: sessions, and what its OIDC sign-in needs at run time.
#[derive(Debug, Default)]
pub(crate) struct Console {
    pub sessions: Sessions,
    /// Discovered once, on the first sign-in (a failure is retried on the next).
    pub oidc_endpoints: tokio::sync::OnceCell<OidcEndpoints>,
    /// Read from `client_secret_file` at start.
    pub oidc_secret: Option<String>,
}

/// A random value of 32 bytes, base64url: session cookies, CSRF tokens, links, OIDC state.
pub(crate) fn random_token() -> Option<String> {
    tessera_token::seal::random_bytes::<32>()
        .ok()
        .map(b64_encode)
}

/// Whether two secret values are equal, comparing their SHA-256 digests: how long the
/// comparison takes says nothing about how much of a guess was right.
pub(crate) fn same_secret(a: &str, b: &str) -> bool {
    key(a) == key(b)
}

fn key(value: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, value.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave a map half-written: every update is one
    // insert or remove.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Sessions {
    /// Starts a session; returns the cookie's value. None when no randomness is to be had.
    pub(crate) fn create(&self, person: Person) -> Option<String> {
        let id = random_token()?;
        let csrf = random_token()?;
        let now = Instant::now();
        let mut s = lock(&self.sessions);
        s.retain(|_, v| alive(v, now));
        if s.len() >= MAX_SESSIONS {
            // The oldest goes first: a flood of sign-ins cannot grow memory without bound.
            if let Some(oldest) = s.iter().min_by_key(|(_, v)| v.created).map(|(k, _)| *k) {
                s.remove(&oldest);
            }
        }
        s.insert(
            key(&id),
            Session {
                person,
                csrf,
                created: now,
                last: now,
            },
        );
        Some(id)
    }

    /// The session of a cookie value, if it is alive; touching it.
    pub(crate) fn get(&self, cookie: &str) -> Option<SessionView> {
        let now = Instant::now();
        let mut s = lock(&self.sessions);
        let k = key(cookie);
        let session = s.get_mut(&k)?;
        if !alive(session, now) {
            s.remove(&k);
            return None;
        }
        session.last = now;
        let left_max = SESSION_MAX.saturating_sub(now.duration_since(session.created));
        Some(SessionView {
            person: session.person.clone(),
            csrf: session.csrf.clone(),
            expires_in: left_max.min(SESSION_IDLE),
        })
    }

    /// Ends a session.
    pub(crate) fn remove(&self, cookie: &str) -> Option<Person> {
        lock(&self.sessions).remove(&key(cookie)).map(|s| s.person)
    }

    /// A one-time sign-in code, valid for `PENDING_MAX`.
    pub(crate) fn create_link(&self) -> Option<String> {
        let code = random_token()?;
        let now = Instant::now();
        let mut l = lock(&self.links);
        l.retain(|_, t| now.duration_since(*t) < PENDING_MAX);
        if l.len() >= MAX_LINKS {
            return None;
        }
        l.insert(key(&code), now);
        Some(code)
    }

    /// Uses up a one-time code: true once, if it is known and fresh.
    pub(crate) fn take_link(&self, code: &str) -> bool {
        lock(&self.links)
            .remove(&key(code))
            .is_some_and(|t| t.elapsed() < PENDING_MAX)
    }

    /// Remembers an OIDC sign-in under way by its `state`.
    pub(crate) fn start_login(
        &self,
        state: &str,
        verifier: String,
        nonce: String,
        browser: String,
    ) {
        let now = Instant::now();
        let mut p = lock(&self.pending);
        p.retain(|_, v| now.duration_since(v.created) < PENDING_MAX);
        if p.len() >= MAX_PENDING {
            if let Some(oldest) = p
                .iter()
                .min_by_key(|(_, v)| v.created)
                .map(|(k, _)| k.clone())
            {
                p.remove(&oldest);
            }
        }
        p.insert(
            state.to_owned(),
            PendingLogin {
                verifier,
                nonce,
                browser,
                created: now,
            },
        );
    }

    /// Takes the sign-in under way for `state` (once), if fresh.
    pub(crate) fn finish_login(&self, state: &str) -> Option<PendingLogin> {
        lock(&self.pending)
            .remove(state)
            .filter(|p| p.created.elapsed() < PENDING_MAX)
    }
}

fn alive(s: &Session, now: Instant) -> bool {
    now.duration_since(s.created) < SESSION_MAX && now.duration_since(s.last) < SESSION_IDLE
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Person {
        Person {
            name: "oidc:alice".into(),
            role: Role::Viewer,
        }
    }

    #[test]
    fn a_session_is_found_by_its_cookie_only() {
        let s = Sessions::default();
        let id = s.create(alice()).unwrap();
        let view = s.get(&id).unwrap();
        assert_eq!(view.person, alice());
        assert_ne!(view.csrf, id);
        assert!(s.get("nope").is_none());
        assert_eq!(s.remove(&id), Some(alice()));
        assert!(s.get(&id).is_none());
    }

    #[test]
    fn a_link_works_once() {
        let s = Sessions::default();
        let code = s.create_link().unwrap();
        assert!(!s.take_link("other"));
        assert!(s.take_link(&code));
        assert!(!s.take_link(&code));
    }

    #[test]
    fn a_login_finishes_once() {
        let s = Sessions::default();
        s.start_login("st", "v".into(), "n".into(), "b".into());
        assert!(s.finish_login("other").is_none());
        assert_eq!(s.finish_login("st").unwrap().verifier, "v");
        assert!(s.finish_login("st").is_none());
    }

    #[test]
    fn a_flood_of_logins_drops_the_oldest() {
        let s = Sessions::default();
        s.start_login("first", "v".into(), "n".into(), "b".into());
        for i in 0..MAX_PENDING {
            s.start_login(&format!("s{i}"), "v".into(), "n".into(), "b".into());
        }
        assert!(s.finish_login("first").is_none(), "the oldest was dropped");
        assert!(s.finish_login(&format!("s{}", MAX_PENDING - 1)).is_some());
    }

    #[test]
    fn sessions_are_bounded() {
        let s = Sessions::default();
        let first = s.create(alice()).unwrap();
        for _ in 0..MAX_SESSIONS {
            s.create(alice()).unwrap();
        }
        assert!(s.get(&first).is_none(), "the oldest was evicted");
        assert_eq!(lock(&s.sessions).len(), MAX_SESSIONS);
    }
}
