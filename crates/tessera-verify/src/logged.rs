//! "Is this credential in the issuer's transparency log?" — asked by a relying party that wants
//! unlogged issuance refused (`tessera verify --require-logged`, the agent's `--require-logged`).
//! The issuer answers `GET /log/proof` with the record, its audit path and a signed checkpoint;
//! everything is checked here against the log key the caller pinned (or fetched once), and the
//! record must name this very credential: its ID and the SHA-256 digest of its bytes.

use std::time::Duration;

use tessera_log::{credential_digest, InclusionProof, LeafRecord, NoteVerifier};

/// Why a credential was not shown to be in the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoggedError {
    #[error("the log cannot be asked: {0}")]
    Unavailable(String),
    #[error("the issuer's log has no record of it")]
    NotLogged,
    #[error("the proof does not hold: {0}")]
    BadProof(String),
    #[error("the logged record is not this credential: {0}")]
    Mismatch(&'static str),
}

/// The credential whose issuance is to be proved.
#[derive(Debug, Clone, Copy)]
pub enum Credential<'a> {
    /// A JWT (access token or JWT-SVID): its `jti` and its compact form.
    Token { jti: &'a str, compact: &'a str },
    /// An X.509 certificate: its serial (as the authority prints it) and its DER.
    Certificate { serial: &'a str, der: &'a [u8] },
}

/// Fetches the log's verifier key from `base` (`GET /log/key`): trust on first use, for callers
/// that did not pin one.
pub async fn fetch_log_key(
    client: &reqwest::Client,
    base: &str,
) -> Result<NoteVerifier, LoggedError> {
    let url = format!("{}/log/key", base.trim_end_matches('/'));
    let text = client
        .get(&url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| LoggedError::Unavailable(e.without_url().to_string()))?
        .text()
        .await
        .map_err(|e| LoggedError::Unavailable(e.without_url().to_string()))?;
    NoteVerifier::parse(&text).map_err(|e| LoggedError::BadProof(e.to_string()))
}

/// Asks `base`'s log for the issuance record of `credential` and checks the answer.
pub async fn check_logged(
    client: &reqwest::Client,
    base: &str,
    log: &NoteVerifier,
    credential: Credential<'_>,
) -> Result<LeafRecord, LoggedError> {
    let (param, id) = match credential {
        Credential::Token { jti, .. } => ("jti", jti),
        Credential::Certificate { serial, .. } => ("serial", serial),
    };
    let mut url = reqwest::Url::parse(&format!("{}/log/proof", base.trim_end_matches('/')))
        .map_err(|e| LoggedError::Unavailable(e.to_string()))?;
    url.query_pairs_mut().append_pair(param, id);
    let resp = client
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_err(|e| LoggedError::Unavailable(e.without_url().to_string()))?;
    if resp.status() == reqwest::StatusCode::NOT_FOUND {
        return Err(LoggedError::NotLogged);
    }
    if !resp.status().is_success() {
        return Err(LoggedError::Unavailable(format!("HTTP {}", resp.status())));
    }
    let proof: InclusionProof = resp
        .json()
        .await
        .map_err(|e| LoggedError::BadProof(e.without_url().to_string()))?;
    let (record, _) = proof
        .verify(log)
        .map_err(|e| LoggedError::BadProof(e.to_string()))?;
    check_record(&record, credential)?;
    Ok(record)
}

/// The record must be a successful issuance of exactly this credential.
pub fn check_record(record: &LeafRecord, credential: Credential<'_>) -> Result<(), LoggedError> {
    let detail = record.detail_json();
    let field = |name: &str| detail.get(name).and_then(|v| v.as_str());
    let (kind_ok, id_ok, digest) = match credential {
        Credential::Token { jti, compact } => (
            record.kind == "token.issued" || record.kind == "svid.issued",
            field("jti") == Some(jti),
            credential_digest(compact.as_bytes()),
        ),
        Credential::Certificate { serial, der } => (
            record.kind == "svid.issued",
            field("serial") == Some(serial),
            credential_digest(der),
        ),
    };
    if !kind_ok || record.outcome != "ok" {
        return Err(LoggedError::Mismatch("the record is not an issuance"));
    }
    if !id_ok {
        return Err(LoggedError::Mismatch("the record names another credential"));
    }
    if field("digest") != Some(digest.as_str()) {
        return Err(LoggedError::Mismatch(
            "the digest differs: another credential with the same ID",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: &str, detail: &str) -> LeafRecord {
        LeafRecord {
            seq: 1,
            at: 0,
            kind: kind.into(),
            actor: "a".into(),
            subject: "spiffe://example.org/x".into(),
            outcome: "ok".into(),
            detail: detail.into(),
        }
    }

    #[test]
    fn the_record_must_name_this_credential_by_id_and_digest() {
        let compact = "a.b.c";
        let digest = credential_digest(compact.as_bytes());
        let good = record(
            "token.issued",
            &format!(r#"{{"jti":"j1","digest":"{digest}"}}"#),
        );
        let token = Credential::Token { jti: "j1", compact };
        assert!(check_record(&good, token).is_ok());
        let other = Credential::Token {
            jti: "j1",
            compact: "a.b.d",
        };
        assert!(matches!(
            check_record(&good, other),
            Err(LoggedError::Mismatch(_))
        ));
        let wrong_id = Credential::Token { jti: "j2", compact };
        assert!(check_record(&good, wrong_id).is_err());
        let denied = record(
            "token.denied",
            &format!(r#"{{"jti":"j1","digest":"{digest}"}}"#),
        );
        assert!(check_record(&denied, token).is_err());
        let der = b"certificate";
        let cert = record(
            "svid.issued",
            &format!(r#"{{"serial":"0a","digest":"{}"}}"#, credential_digest(der)),
        );
        assert!(check_record(&cert, Credential::Certificate { serial: "0a", der }).is_ok());
        assert!(check_record(&cert, Credential::Certificate { serial: "0b", der }).is_err());
    }
}
