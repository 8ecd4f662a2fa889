//! The transparency log over the audit records (RFC 9162): the tree, kept in tiles and grown
//! off the request path by [`Store::extend_log`]; signed checkpoints; and the walk that checks
//! the records against the tree and against checkpoints kept elsewhere.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use tessera_log::tiles::{self, TileId, TileSet};
use tessera_log::tree::{NodeSource, NodesRead, TreeError};
use tessera_log::{leaf_hash, Frontier, Hash};

use crate::audit::{AuditRecord, ChainError};
use crate::backend::{with_read, with_write_tx};
use crate::{Result, Store, StoreError};

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

fn to_i64(n: u64) -> Result<i64> {
    i64::try_from(n).map_err(|_| corrupt(format!("log size `{n}` is out of range")))
}

impl Store {
    /// How many records the tree covers.
    pub async fn log_size(&self) -> Result<u64> {
        Ok(self
            .meta("log_size")
            .await?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }

    /// Adds up to `max` records not yet in the tree: hashes them outside any transaction, then
    /// writes the changed tiles and the new size in one short one, only if no other server
    /// extended the tree meanwhile. Returns the tree's size after.
    pub async fn extend_log(&self, max: i64) -> Result<u64> {
        let size = self.log_size().await?;
        let records = self.audit_after(to_i64(size)?, max).await?;
        if records.is_empty() {
            return Ok(size);
        }
        let mut leaves = Vec::with_capacity(records.len());
        for (expected, r) in (to_i64(size)? + 1..).zip(&records) {
            if r.seq != expected {
                return Err(corrupt(ChainError::Gap {
                    expected,
                    found: r.seq,
                }));
            }
            leaves.push(leaf_hash(&r.leaf().to_bytes()));
        }
        let edge_ids: Vec<TileId> = tiles::right_edge(size)
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        let edge = self.read_tiles(&edge_ids).await?;
        let changed = tiles::extend(size, &edge.tiles, &leaves).map_err(corrupt)?;
        let new_size = size + leaves.len() as u64;
        let rows: Vec<(i64, i64, String)> = changed
            .iter()
            .map(|(id, hs)| {
                Ok((
                    i64::from(id.level),
                    to_i64(id.index)?,
                    STANDARD.encode(tiles::tile_bytes(hs)),
                ))
            })
            .collect::<Result<_>>()?;
        let extended = with_write_tx!(self, |tx, is_pg| {
            let current: Option<String> =
                sqlx::query_scalar("SELECT value FROM meta WHERE key = 'log_size'")
                    .fetch_optional(&mut *tx)
                    .await?;
            if current.and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) != size {
                false
            } else {
                for chunk in rows.chunks(300) {
                    let mut qb =
                        sqlx::QueryBuilder::new("INSERT INTO audit_tiles (level, idx, hashes) ");
                    qb.push_values(chunk, |mut b, (level, idx, hashes)| {
                        b.push_bind(*level)
                            .push_bind(*idx)
                            .push_bind(hashes.as_str());
                    });
                    qb.push(" ON CONFLICT (level, idx) DO UPDATE SET hashes = excluded.hashes");
                    qb.build().execute(&mut *tx).await?;
                }
                sqlx::query(
                    "INSERT INTO meta (key, value) VALUES ('log_size', $1) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                )
                .bind(new_size.to_string())
                .execute(&mut *tx)
                .await?;
                true
            }
        });
        if extended {
            Ok(new_size)
        } else {
            self.log_size().await
        }
    }

    /// The stored tiles `ids` (those not stored yet are left out).
    pub async fn read_tiles(&self, ids: &[TileId]) -> Result<TileSet> {
        let mut set = TileSet::default();
        for id in ids {
            let text: Option<String> = with_read!(self, |pool| {
                sqlx::query_scalar("SELECT hashes FROM audit_tiles WHERE level = $1 AND idx = $2")
                    .bind(i64::from(id.level))
                    .bind(to_i64(id.index)?)
                    .fetch_optional(pool)
                    .await?
            });
            if let Some(text) = text {
                let hashes = STANDARD
                    .decode(text)
                    .ok()
                    .and_then(|b| tiles::tile_from_bytes(&b))
                    .ok_or_else(|| {
                        corrupt(format!("tile {}/{} is unreadable", id.level, id.index))
                    })?;
                set.tiles.insert(*id, hashes);
            }
        }
        Ok(set)
    }

    /// Runs `f` over the stored tree: once against a recorder to learn which tiles it reads,
    /// then against exactly those tiles, read in one go.
    pub async fn with_tree<T>(
        &self,
        f: impl Fn(&dyn NodeSource) -> std::result::Result<T, TreeError>,
    ) -> Result<T> {
        let rec = NodesRead::default();
        let _ = f(&rec);
        let set = self
            .read_tiles(&tiles::tiles_for(&rec.into_inner()))
            .await?;
        f(&set).map_err(corrupt)
    }

    /// Stores a signed checkpoint (again, when cosignatures were added).
    pub async fn store_checkpoint(&self, size: u64, note: &str) -> Result<()> {
        let now = tessera_core::now_unix();
        with_write_tx!(self, |tx, is_pg| {
            sqlx::query(
                "INSERT INTO audit_checkpoints (size, at, note) VALUES ($1, $2, $3) ON CONFLICT (size) DO UPDATE SET note = excluded.note",
            )
            .bind(to_i64(size)?)
            .bind(now)
            .bind(note)
            .execute(&mut *tx)
            .await?;
        });
        Ok(())
    }

    /// Thins the stored checkpoints: all of the last hour, then the last of each hour before.
    /// They narrow a rewrite down to a range (`verify_log`); older ranges may be an hour wide.
    pub async fn prune_checkpoints(&self, now: i64) -> Result<u64> {
        let cutoff = now - 3600;
        Ok(with_write_tx!(self, |tx, is_pg| {
            sqlx::query(
                "DELETE FROM audit_checkpoints WHERE at < $1 AND size NOT IN \
                 (SELECT MAX(size) FROM audit_checkpoints WHERE at < $1 GROUP BY at / 3600)",
            )
            .bind(cutoff)
            .execute(&mut *tx)
            .await?
            .rows_affected()
        }))
    }

    /// The checkpoint of the largest size: (size, signed note).
    pub async fn latest_checkpoint(&self) -> Result<Option<(u64, String)>> {
        let row: Option<(i64, String)> = with_read!(self, |pool| {
            sqlx::query_as("SELECT size, note FROM audit_checkpoints ORDER BY size DESC LIMIT 1")
                .fetch_optional(pool)
                .await?
        });
        Ok(row.map(|(s, n)| (u64::try_from(s).unwrap_or(0), n)))
    }

    /// Every stored checkpoint, smallest first: (size, signed note).
    pub async fn checkpoints(&self) -> Result<Vec<(u64, String)>> {
        let rows: Vec<(i64, String)> = with_read!(self, |pool| {
            sqlx::query_as("SELECT size, note FROM audit_checkpoints ORDER BY size")
                .fetch_all(pool)
                .await?
        });
        Ok(rows
            .into_iter()
            .map(|(s, n)| (u64::try_from(s).unwrap_or(0), n))
            .collect())
    }

    /// The issuance record of a credential, by `jti` or serial.
    pub async fn record_of_credential(&self, credential: &str) -> Result<Option<AuditRecord>> {
        Ok(with_read!(self, |pool| {
            sqlx::query_as("SELECT * FROM audit WHERE credential = $1 ORDER BY seq LIMIT 1")
                .bind(credential)
                .fetch_optional(pool)
                .await?
        }))
    }

    /// Record `seq`.
    pub async fn audit_record(&self, seq: i64) -> Result<Option<AuditRecord>> {
        Ok(self
            .audit_after(seq - 1, 1)
            .await?
            .into_iter()
            .find(|r| r.seq == seq))
    }

    /// The leaf hash the tree holds for record `seq`, through a one-tile cache.
    pub(crate) async fn stored_leaf(
        &self,
        seq: i64,
        cache: &mut Option<(u64, Vec<Hash>)>,
    ) -> Result<Hash> {
        let index = u64::try_from(seq - 1).map_err(corrupt)?;
        let tile = index / tiles::TILE_WIDTH;
        if cache.as_ref().is_none_or(|(t, _)| *t != tile) {
            let id = TileId {
                level: 0,
                index: tile,
            };
            let mut set = self.read_tiles(&[id]).await?;
            *cache = Some((tile, set.tiles.remove(&id).unwrap_or_default()));
        }
        let offset = usize::try_from(index % tiles::TILE_WIDTH).map_err(corrupt)?;
        // A tile missing or shorter than the tree says: the tree was cut; no record matches.
        Ok(cache
            .as_ref()
            .and_then(|(_, hs)| hs.get(offset))
            .copied()
            .unwrap_or([0; 32]))
    }
}

/// One pass over the records, in order, checking each against the tree and every checkpoint.
pub(crate) struct LogWalk {
    frontier: Frontier,
    /// Stored checkpoints still ahead, smallest first.
    stored: std::vec::IntoIter<(u64, Hash)>,
    next_stored: Option<(u64, Hash)>,
    /// The largest size whose stored checkpoint matched the records.
    good_through: u64,
    /// The same, at or below the external checkpoint's size.
    good_before_external: u64,
    external_size: Option<u64>,
    external_root: Option<Hash>,
    /// The level-0 tile last read.
    pub(crate) tile: Option<(u64, Vec<Hash>)>,
}

impl LogWalk {
    pub(crate) fn new(stored: &[(u64, Hash)], external_size: Option<u64>) -> Self {
        let mut sorted = stored.to_vec();
        sorted.sort_unstable_by_key(|(s, _)| *s);
        let mut stored = sorted.into_iter();
        Self {
            frontier: Frontier::default(),
            next_stored: stored.next(),
            stored,
            good_through: 0,
            good_before_external: 0,
            external_size,
            external_root: None,
            tile: None,
        }
    }

    /// Takes the next record and the leaf the tree holds for it (`None` beyond the tree).
    pub(crate) fn push(
        &mut self,
        r: &AuditRecord,
        stored_leaf: Option<Hash>,
    ) -> std::result::Result<(), ChainError> {
        let leaf = leaf_hash(&r.leaf().to_bytes());
        if stored_leaf.is_some_and(|s| s != leaf) {
            return Err(ChainError::LeafMismatch { seq: r.seq });
        }
        self.frontier.push(leaf);
        let size = self.frontier.size();
        while let Some((cp_size, cp_root)) = self.next_stored {
            if cp_size > size {
                break;
            }
            if cp_size == size && cp_root != self.frontier.root() {
                return Err(ChainError::Rewritten {
                    from: self.good_through + 1,
                    to: cp_size,
                });
            }
            if cp_size == size {
                self.good_through = size;
                if self.external_size.is_some_and(|e| size < e) {
                    self.good_before_external = size;
                }
            }
            self.next_stored = self.stored.next();
        }
        if self.external_size == Some(size) {
            self.external_root = Some(self.frontier.root());
        }
        Ok(())
    }

    /// After the last record (`last`): the tree and every checkpoint must be covered, and the
    /// checkpoint kept elsewhere must match.
    pub(crate) fn finish(
        &self,
        last: i64,
        log_size: u64,
        external: Option<&tessera_log::Checkpoint>,
    ) -> std::result::Result<(), ChainError> {
        let size = self.frontier.size();
        let head = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        if let Some(cp) = external {
            if cp.size > size {
                return Err(ChainError::ShorterThanCheckpoint {
                    found: last,
                    size: cp.size,
                });
            }
            let matches = if cp.size == 0 {
                cp.root == tessera_log::hash::empty_root()
            } else {
                self.external_root == Some(cp.root)
            };
            if !matches {
                return Err(ChainError::Rewritten {
                    from: self.good_before_external + 1,
                    to: cp.size,
                });
            }
        }
        if log_size > size {
            return Err(ChainError::Truncated {
                found: last,
                head: head(log_size),
            });
        }
        if let Some((cp_size, _)) = self.next_stored {
            return Err(ChainError::Truncated {
                found: last,
                head: head(cp_size),
            });
        }
        Ok(())
    }
}
