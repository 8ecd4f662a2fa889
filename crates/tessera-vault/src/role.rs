//! Role templates for dynamic PostgreSQL credentials (as HashiCorp Vault's database engine):
//! SQL statements with `{{name}}`, `{{password}}` and `{{expiry}}`, filled with values Tessera
//! makes itself. Those values are drawn from `[a-z0-9_]` (name), `[A-Za-z0-9_-]` (password) and a
//! timestamp, never from a request, so filling them in cannot change a statement's structure.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use tessera_token::seal::random_bytes;

/// The statements that make a role and those that remove it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleTemplate {
    pub creation: Vec<String>,
    pub revocation: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("a role template needs at least one creation statement")]
    Empty,
    #[error("creation statements must use `{{{{name}}}}` and `{{{{password}}}}`")]
    MissingPlaceholder,
    #[error("unknown placeholder `{0}` (only {{{{name}}}}, {{{{password}}}} and {{{{expiry}}}})")]
    Unknown(String),
    #[error("randomness unavailable")]
    Random,
}

const KNOWN: &[&str] = &["name", "password", "expiry"];

/// The default revocation: no new logins, end the role's sessions, drop what it owns or was
/// granted here, drop it.
pub const DEFAULT_REVOCATION: &[&str] = &[
    "ALTER ROLE \"{{name}}\" NOLOGIN",
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{{name}}'",
    "DROP OWNED BY \"{{name}}\"",
    "DROP ROLE IF EXISTS \"{{name}}\"",
];

fn check(statements: &[String]) -> Result<(), TemplateError> {
    for s in statements {
        let mut rest = s.as_str();
        while let Some(i) = rest.find("{{") {
            let after = rest.get(i + 2..).unwrap_or_default();
            let Some(j) = after.find("}}") else {
                return Err(TemplateError::Unknown("{{".into()));
            };
            let key = after.get(..j).unwrap_or_default().trim();
            if !KNOWN.contains(&key) {
                return Err(TemplateError::Unknown(key.chars().take(40).collect()));
            }
            rest = after.get(j + 2..).unwrap_or_default();
        }
    }
    Ok(())
}

impl RoleTemplate {
    /// Checks the statements; `revocation` empty means [`DEFAULT_REVOCATION`].
    pub fn new(creation: Vec<String>, revocation: Vec<String>) -> Result<Self, TemplateError> {
        if creation.is_empty() {
            return Err(TemplateError::Empty);
        }
        let all = creation.join("\n");
        if !all.contains("{{name}}") || !all.contains("{{password}}") {
            return Err(TemplateError::MissingPlaceholder);
        }
        check(&creation)?;
        check(&revocation)?;
        let revocation = if revocation.is_empty() {
            DEFAULT_REVOCATION.iter().map(|s| (*s).to_owned()).collect()
        } else {
            revocation
        };
        Ok(Self {
            creation,
            revocation,
        })
    }

    pub fn creation_sql(&self, c: &Credentials) -> Vec<String> {
        self.creation.iter().map(|s| c.fill(s)).collect()
    }

    pub fn revocation_sql(&self, username: &str) -> Vec<String> {
        self.revocation
            .iter()
            .map(|s| s.replace("{{name}}", username))
            .collect()
    }
}

/// A generated username and password, and the role's `VALID UNTIL`.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    /// `YYYY-MM-DD HH:MM:SS+00`.
    pub expiry: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"…")
            .finish()
    }
}

/// A Unix time as a PostgreSQL timestamp literal in UTC (`YYYY-MM-DD HH:MM:SS+00`), for
/// `VALID UNTIL`.
pub fn pg_timestamp(unix: i64) -> Option<String> {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()?
        .format(time::macros::format_description!(
            "[year]-[month]-[day] [hour]:[minute]:[second]+00"
        ))
        .ok()
}

impl Credentials {
    /// `role` names the template (letters, digits, `-` and `_`); the username is
    /// `t_<role>_<random>`, at most 63 bytes (PostgreSQL's identifier limit).
    pub fn generate(role: &str, expires_at: i64) -> Result<Self, TemplateError> {
        let tag: String = role
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .take(32)
            .collect();
        let suffix = random_bytes::<8>().map_err(|_| TemplateError::Random)?;
        let suffix: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
        let password = random_bytes::<24>().map_err(|_| TemplateError::Random)?;
        let expiry = pg_timestamp(expires_at).ok_or(TemplateError::Random)?;
        Ok(Self {
            username: format!("t_{tag}_{suffix}"),
            password: URL_SAFE_NO_PAD.encode(password),
            expiry,
        })
    }

    fn fill(&self, s: &str) -> String {
        s.replace("{{name}}", &self.username)
            .replace("{{password}}", &self.password)
            .replace("{{expiry}}", &self.expiry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates() {
        let t = RoleTemplate::new(
            vec![
                "CREATE ROLE \"{{name}}\" LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiry}}'"
                    .into(),
                "GRANT SELECT ON orders TO \"{{name}}\"".into(),
            ],
            vec![],
        )
        .unwrap();
        assert_eq!(t.revocation.len(), DEFAULT_REVOCATION.len());
        let c = Credentials::generate("orders-read", 1_800_000_000).unwrap();
        assert!(c.username.starts_with("t_orders_read_") && c.username.len() <= 63);
        assert!(c
            .password
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        let sql = t.creation_sql(&c);
        assert!(sql[0].contains(&c.password) && sql[0].contains("2027-01-15 08:00:00+00"));
        assert!(!format!("{c:?}").contains(&c.password));
        assert!(t.revocation_sql(&c.username)[3].contains(&c.username));
        assert_eq!(
            RoleTemplate::new(vec!["CREATE ROLE \"{{name}}\"".into()], vec![]),
            Err(TemplateError::MissingPlaceholder)
        );
        assert_eq!(
            RoleTemplate::new(
                vec!["CREATE ROLE \"{{name}}\" PASSWORD '{{password}}' {{secret}}".into()],
                vec![]
            ),
            Err(TemplateError::Unknown("secret".into()))
        );
        assert_eq!(RoleTemplate::new(vec![], vec![]), Err(TemplateError::Empty));
    }
}
