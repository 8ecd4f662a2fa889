//! What the store holds, one type per table (or per row a query returns). Rows decode with
//! `sqlx::FromRow`; JSON documents stored as text decode through [`JsonText`].

use serde::{Deserialize, Serialize};
use tessera_core::manifest::{
    Client, Cluster, Federation, Grant, PolicyFile, Selector, Trust, Workload,
};

use crate::audit::{AuditEvent, AuditRecord};

/// A JSON document stored as TEXT (both backends keep specs and lists this way): decodes the
/// text, then the document, as one column.
#[derive(Debug)]
pub struct JsonText<T>(pub T);

impl<DB: sqlx::Database, T> sqlx::Type<DB> for JsonText<T>
where
    String: sqlx::Type<DB>,
{
    fn type_info() -> DB::TypeInfo {
        <String as sqlx::Type<DB>>::type_info()
    }

    fn compatible(ty: &DB::TypeInfo) -> bool {
        <String as sqlx::Type<DB>>::compatible(ty)
    }
}

impl<'r, DB: sqlx::Database, T: serde::de::DeserializeOwned> sqlx::Decode<'r, DB> for JsonText<T>
where
    String: sqlx::Decode<'r, DB>,
{
    fn decode(value: DB::ValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        let text = <String as sqlx::Decode<'r, DB>>::decode(value)?;
        Ok(Self(serde_json::from_str(&text)?))
    }
}

/// What FromRow's `try_from` needs: each JSON-stored type out of its [`JsonText`] (`From` gives
/// the `TryFrom`).
macro_rules! from_json_text {
    ($($t:ty),* $(,)?) => {
        $(
            impl From<JsonText<$t>> for $t {
                fn from(j: JsonText<$t>) -> Self {
                    j.0
                }
            }
        )*
    };
}

from_json_text!(
    std::collections::BTreeMap<String, String>,
    Vec<String>,
    Vec<Grant>,
    Vec<PolicyFile>,
    Vec<Selector>,
    Workload,
);

/// A signing key as stored: the private part sealed under the key-encryption key.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct KeyRecord {
    pub kid: String,
    pub trust_domain: String,
    pub alg: String,
    /// base64 of the sealed PKCS#8 document.
    pub sealed: String,
    pub public_jwk: String,
    pub created_at: i64,
    /// The key signs from this time on (it is published before, so verifiers know it first).
    pub activate_at: i64,
    /// The key is withdrawn from the JWKS after this time (every token it signed has expired).
    pub retire_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct WorkloadRecord {
    #[sqlx(try_from = "JsonText<Workload>")]
    pub spec: Workload,
    pub revoked_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientSecretRecord {
    /// base64 of HMAC-SHA-256(server key, secret).
    pub hash: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientRecord {
    pub spec: Client,
    pub secret: Option<ClientSecretRecord>,
}

/// The last good bundle of a federated trust domain, as fetched (SPIFFE bundle JSON).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct FederatedBundleRecord {
    pub trust_domain: String,
    pub bundle: String,
    pub sequence: Option<i64>,
    /// When this content was first stored.
    pub fetched_at: i64,
}

/// A CA of a trust domain as stored: the private key sealed under the key-encryption key.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CaRecord {
    pub id: String,
    pub trust_domain: String,
    /// base64 of the sealed PKCS#8 document.
    pub sealed: String,
    /// base64 of the certificate (DER).
    pub cert: String,
    pub created_at: i64,
    /// The CA signs from this time on; it is in the bundle from creation ("prepared").
    pub activate_at: i64,
    /// Withdrawn from the bundle after this time (every SVID it signed has expired).
    pub retire_at: Option<i64>,
    pub not_after: i64,
}

/// A one-time join token for a node agent, stored only as a keyed hash.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct JoinTokenRecord {
    pub token_hash: String,
    pub trust_domain: String,
    pub agent_id: String,
    pub created_at: i64,
    pub expires_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct AgentRecord {
    pub id: String,
    pub trust_domain: String,
    pub joined_at: i64,
    pub svid_serial: String,
    pub svid_not_after: i64,
    pub last_seen: i64,
    pub revoked_at: Option<i64>,
    /// What the agent was attested with (`k8s:cluster:prod`, ...); empty for a join token.
    #[sqlx(try_from = "JsonText<Vec<Selector>>")]
    #[serde(default)]
    pub selectors: Vec<Selector>,
}

/// One version of the policy set (grants and policy files), as applied or loaded in shadow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct PolicySetRecord {
    pub version: i64,
    #[sqlx(try_from = "String")]
    pub status: PolicySetStatus,
    #[sqlx(try_from = "JsonText<Vec<Grant>>")]
    pub grants: Vec<Grant>,
    #[sqlx(try_from = "JsonText<Vec<PolicyFile>>")]
    pub policies: Vec<PolicyFile>,
    pub created_at: i64,
    pub actor: String,
    pub note: String,
}

/// A policy set version without its grants and policy files.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PolicySetHead {
    pub version: i64,
    #[sqlx(try_from = "String")]
    pub status: PolicySetStatus,
    pub created_at: i64,
    pub actor: String,
    pub note: String,
}

/// One X.509-SVID as issued, for review: who got it, through which agent, until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct SvidRecord {
    pub serial: String,
    pub spiffe_id: String,
    pub agent_id: String,
    pub issued_at: i64,
    pub not_after: i64,
}

/// A vault secret's metadata. Its values are in [`SecretVersionRecord`]s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct SecretRecord {
    pub name: String,
    pub owner: String,
    pub purpose: String,
    pub content_type: String,
    pub environment: String,
    #[sqlx(try_from = "JsonText<std::collections::BTreeMap<String, String>>")]
    pub tags: std::collections::BTreeMap<String, String>,
    /// Seconds between expected rotations, if any.
    pub rotation_period: Option<i64>,
    /// The newest version; 0 before the first.
    pub current_version: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub deleted_at: Option<i64>,
    pub purge_after: Option<i64>,
}

/// One immutable version of a secret: the value sealed (never in the clear) and its state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct SecretVersionRecord {
    pub name: String,
    pub version: i64,
    #[serde(skip_serializing)]
    pub ciphertext: String,
    #[serde(skip_serializing)]
    pub wrapped_key: String,
    pub created_at: i64,
    pub created_by: String,
    pub enabled: bool,
    pub not_before: Option<i64>,
    pub expires_at: Option<i64>,
}

/// A PostgreSQL database Tessera makes roles in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct DbConnectionRecord {
    pub name: String,
    pub url: String,
    pub admin_user: String,
    pub password_secret: String,
    pub created_at: i64,
}

/// A role template of a database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct DbRoleRecord {
    pub name: String,
    pub connection: String,
    #[sqlx(try_from = "JsonText<Vec<String>>")]
    pub creation: Vec<String>,
    #[sqlx(try_from = "JsonText<Vec<String>>")]
    pub revocation: Vec<String>,
    pub default_ttl: i64,
    pub max_ttl: i64,
    pub created_at: i64,
}

/// One set of dynamic credentials: a role made for a workload until `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct LeaseRecord {
    pub id: String,
    pub role: String,
    pub connection: String,
    pub username: String,
    pub workload: String,
    #[sqlx(try_from = "JsonText<Vec<String>>")]
    pub revocation: Vec<String>,
    pub created_at: i64,
    pub expires_at: i64,
    pub max_expires_at: i64,
    #[sqlx(try_from = "String")]
    pub state: LeaseState,
    pub revoked_at: Option<i64>,
    pub attempts: i64,
    pub last_error: Option<String>,
}

/// The configuration state, loaded whole into memory by each server.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoredState {
    pub workloads: Vec<WorkloadRecord>,
    pub grants: Vec<Grant>,
    pub clients: Vec<ClientRecord>,
    pub trusts: Vec<Trust>,
    pub policies: Vec<PolicyFile>,
    pub federations: Vec<Federation>,
    pub federated_bundles: Vec<FederatedBundleRecord>,
    pub clusters: Vec<Cluster>,
    pub agents: Vec<AgentRecord>,
    /// The policy set loaded in shadow, if any.
    pub shadow: Option<PolicySetRecord>,
    /// The version of the active policy set; 0 before the first recorded change.
    pub policy_version: i64,
}

/// A client assertion's `jti`, recorded until the assertion expires so it is used only once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssertionClaim {
    pub client_id: String,
    pub jti: String,
    pub expires_at: i64,
}

/// One hot-path request's writes: an optional `jti` claim and an optional audit event.
#[derive(Debug, Clone)]
pub struct BatchItem {
    pub claim: Option<AssertionClaim>,
    pub event: Option<AuditEvent>,
}

/// What a [`BatchItem`] got: `fresh` is false for a replayed claim (its event was not written).
#[derive(Debug, Clone)]
pub struct BatchResult {
    pub fresh: bool,
    pub record: Option<AuditRecord>,
}

/// Which leases [`Store::leases`] returns.
#[derive(Debug, Clone, Copy)]
pub enum LeaseFilter<'a> {
    Id(&'a str),
    Workload(&'a str),
    Open,
    /// Revoking, or active and past their end at this time.
    Due(i64),
}

/// Declares a status word stored as text: its variants, their words, and the conversions.
macro_rules! status_word {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $word:literal,)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vdoc])* $variant,)*
        }

        impl $name {
            /// The stored word.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $word,)*
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;

            fn try_from(s: String) -> Result<Self, String> {
                match s.as_str() {
                    $($word => Ok(Self::$variant),)*
                    other => Err(format!(
                        "`{other}` is not a {}",
                        stringify!($name)
                    )),
                }
            }
        }
    };
}

status_word! {
    /// Where a policy set version stands.
    PolicySetStatus {
        /// Enforced now.
        Active => "active",
        /// Evaluated beside the active set, not enforced.
        Shadow => "shadow",
        /// Was active; a later version replaced it (a rollback target).
        Superseded => "superseded",
        /// A shadow set that became active (recorded again as a new active version).
        Promoted => "promoted",
        /// A shadow set dropped unpromoted.
        Discarded => "discarded",
    }
}

status_word! {
    /// Where a database lease stands.
    LeaseState {
        Active => "active",
        /// Asked to end, or past its end, and its role not yet dropped.
        Revoking => "revoking",
        /// Its role is dropped.
        Revoked => "revoked",
    }
}
