//! Signing keys and CAs, sealed.

use crate::backend::with_read;
use crate::records::{CaRecord, KeyRecord};
use crate::{Result, Store};

impl Store {
    pub async fn keys(&self) -> Result<Vec<KeyRecord>> {
        Ok(with_read!(self, |pool| {
            sqlx::query_as(
                "SELECT kid, trust_domain, alg, sealed, public_jwk, created_at, activate_at, retire_at FROM signing_keys ORDER BY activate_at, kid",
            )
            .fetch_all(pool)
            .await?
        }))
    }

    pub async fn cas(&self) -> Result<Vec<CaRecord>> {
        Ok(with_read!(self, |pool| {
            sqlx::query_as(
                "SELECT id, trust_domain, sealed, cert, created_at, activate_at, retire_at, not_after FROM ca_certs ORDER BY activate_at, id",
            )
            .fetch_all(pool)
            .await?
        }))
    }
}
