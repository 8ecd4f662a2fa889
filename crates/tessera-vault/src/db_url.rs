//! The URL of a database Tessera makes credentials for. It names a place, never a credential:
//! the admin user is declared apart and its password is a vault secret, and the URL is stored,
//! audited and handed to every workload that gets credentials.

/// Query parameters libpq and sqlx read as credentials (or as where credentials are).
const CREDENTIAL_PARAMS: &[&str] = &["user", "password", "passfile", "sslpassword", "service"];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DbUrlError {
    #[error("`url` is not a URL: {0}")]
    NotAUrl(String),
    #[error("`url` must be `postgres://` or `postgresql://`, not `{0}://`")]
    Scheme(String),
    #[error("`url` holds a credential (`{0}`): the admin user is `admin_user`, its password a vault secret")]
    Credential(String),
}

/// A credential-free PostgreSQL URL. Built only by [`DbUrl::parse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbUrl(String);

impl DbUrl {
    /// Parses `raw` as libpq would read it and refuses a credential anywhere in it: user
    /// information, or a query parameter naming a user, a password or a password file
    /// (matched without regard to case or percent-encoding, as the driver decodes them).
    pub fn parse(raw: &str) -> Result<Self, DbUrlError> {
        let url = url::Url::parse(raw).map_err(|e| DbUrlError::NotAUrl(e.to_string()))?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(DbUrlError::Scheme(url.scheme().to_owned()));
        }
        if !url.username().is_empty() {
            return Err(DbUrlError::Credential("user information".into()));
        }
        if url.password().is_some() {
            return Err(DbUrlError::Credential("user information".into()));
        }
        for (key, _) in url.query_pairs() {
            let key = key.to_ascii_lowercase();
            if CREDENTIAL_PARAMS.contains(&key.as_str()) || key.contains("password") {
                return Err(DbUrlError::Credential(key));
            }
        }
        if url.fragment().is_some() {
            return Err(DbUrlError::NotAUrl("a fragment has no meaning here".into()));
        }
        Ok(Self(url.to_string()))
    }

    /// A stored URL as workloads see it: whatever user information or credential parameter it
    /// holds (a record written before these were refused) removed.
    pub fn sanitized(raw: &str) -> String {
        let Ok(mut url) = url::Url::parse(raw) else {
            return String::new();
        };
        let _ = url.set_username("");
        let _ = url.set_password(None);
        let kept: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(k, _)| {
                let k = k.to_ascii_lowercase();
                !CREDENTIAL_PARAMS.contains(&k.as_str()) && !k.contains("password")
            })
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        if kept.is_empty() {
            url.set_query(None);
        } else {
            url.query_pairs_mut().clear().extend_pairs(kept);
        }
        url.to_string()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for DbUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_refused_wherever_they_hide() {
        assert!(DbUrl::parse("postgres://db.internal:5432/app?sslmode=require").is_ok());
        for bad in [
            "postgres://admin@db/app",
            "postgres://admin:pw@db/app",
            "postgres://:pw@db/app",
            "postgres://db/app?user=admin&password=pw",
            "postgres://db/app?password=pw",
            "postgres://db/app?PassWord=pw",
            "postgres://db/app?%70assword=pw",
            "postgres://db/app?passfile=/tmp/p",
            "postgres://db/app?sslpassword=x",
            "postgres://db/app?service=prod",
            "mysql://db/app",
            "not a url",
        ] {
            assert!(DbUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn stored_urls_reach_workloads_without_credentials() {
        assert_eq!(
            DbUrl::sanitized("postgres://u:p@db:5432/app?user=x&password=y&sslmode=require"),
            "postgres://db:5432/app?sslmode=require"
        );
        assert_eq!(
            DbUrl::sanitized("postgres://db/app?password=y"),
            "postgres://db/app"
        );
    }
}
