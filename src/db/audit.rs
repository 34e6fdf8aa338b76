//! The audit trail: an append-only, hash-chained log of who joined and left which consultation
//! (with the media path), who read a transcript, and every admin action.
//!
//! Record `n` stores `prev_hash` = the hash of record `n - 1` (64 zeros for the first) and
//! `hash` = SHA-256 over its own fields and `prev_hash`. Editing a record changes its hash;
//! deleting one leaves a gap in `seq` and a `prev_hash` that names no record. Both are found by
//! [`Db::verify_audit`]. Someone who can rewrite the whole table can rewrite the chain too: keep a
//! copy of the latest hash elsewhere (it is printed by `callrelay audit verify`) to catch that.

use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::{AnyConnection, Row};
use time::OffsetDateTime;

use callrelay_signaling::protocol::{from_unix_millis, rfc3339_millis, unix_millis};

use super::{Backend, Db, DbError};

/// `prev_hash` of the first record.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Any number: the key of the PostgreSQL advisory lock that orders appends across nodes.
const AUDIT_LOCK_KEY: i64 = 0x6361_6c6c_6175_6474; // "callaudt"

/// What an audit record says, before it is chained.
#[derive(Debug, Clone)]
pub struct AuditEntry {
    pub at: OffsetDateTime,
    /// Who did it (a user id).
    pub actor_id: String,
    /// e.g. `room.joined`, `room.left`, `transcript.read`, `admin.room_closed`.
    pub action: &'static str,
    pub appointment_id: Option<String>,
    /// Action-specific facts (JSON object).
    pub detail: serde_json::Value,
}

/// A stored audit record (`GET /api/admin/audit`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    pub seq: i64,
    /// RFC 3339, server clock.
    pub at: String,
    pub actor_id: String,
    pub action: String,
    pub appointment_id: Option<String>,
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
    pub prev_hash: String,
    pub hash: String,
}

/// The outcome of walking the whole chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditCheck {
    /// Records that were checked (all of them when intact).
    pub records: u64,
    /// The last record's hash (when intact and not empty).
    pub head: Option<String>,
    /// The first break found.
    pub broken: Option<AuditBreak>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditBreak {
    pub seq: i64,
    pub reason: String,
}

/// The hash of a record: SHA-256 over a version tag and each field, length-prefixed so no two
/// different records hash the same bytes.
fn record_hash(
    seq: i64,
    at_ms: i64,
    actor_id: &str,
    action: &str,
    appointment_id: Option<&str>,
    detail: &str,
    prev_hash: &str,
) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"callrelay-audit-v1");
    let seq = seq.to_string();
    let at = at_ms.to_string();
    let fields = [
        seq.as_str(),
        at.as_str(),
        actor_id,
        action,
        appointment_id.unwrap_or("\u{0}none"),
        detail,
        prev_hash,
    ];
    for field in fields {
        hasher.update((field.len() as u64).to_be_bytes());
        hasher.update(field.as_bytes());
    }
    hex::encode(hasher.finalize())
}

/// Appends `entry` inside the caller's transaction, which must have been begun with
/// [`Db::begin_audited`] (so appends are serialized and `seq` stays gap-free).
pub(super) async fn append(conn: &mut AnyConnection, entry: &AuditEntry) -> Result<(), DbError> {
    let last = sqlx::query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        .fetch_optional(&mut *conn)
        .await?;
    let (seq, prev_hash) = match last {
        Some(row) => (
            row.try_get::<i64, _>("seq")? + 1,
            row.try_get::<String, _>("hash")?,
        ),
        None => (1, GENESIS_HASH.to_owned()),
    };
    let at = unix_millis(entry.at);
    let detail = entry.detail.to_string();
    let hash = record_hash(
        seq,
        at,
        &entry.actor_id,
        entry.action,
        entry.appointment_id.as_deref(),
        &detail,
        &prev_hash,
    );
    sqlx::query(
        "INSERT INTO audit_log (seq, at, actor_id, action, appointment_id, detail, prev_hash, \
         hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(seq)
    .bind(at)
    .bind(&entry.actor_id)
    .bind(entry.action)
    .bind(entry.appointment_id.as_deref())
    .bind(&detail)
    .bind(&prev_hash)
    .bind(&hash)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

fn audit_record(row: &sqlx::any::AnyRow) -> Result<AuditRecord, DbError> {
    let detail: String = row.try_get("detail")?;
    Ok(AuditRecord {
        seq: row.try_get("seq")?,
        at: rfc3339_millis(from_unix_millis(row.try_get("at")?)),
        actor_id: row.try_get("actor_id")?,
        action: row.try_get("action")?,
        appointment_id: row.try_get("appointment_id")?,
        detail: serde_json::from_str(&detail)
            .map_err(|e| DbError::Corrupt(format!("audit detail: {e}")))?,
        prev_hash: row.try_get("prev_hash")?,
        hash: row.try_get("hash")?,
    })
}

/// How many records one page of `GET /api/admin/audit` holds at most.
const AUDIT_PAGE: i64 = 1000;

/// Records checked per query while verifying.
const VERIFY_BATCH: i64 = 5000;

impl Db {
    /// A transaction in which audit records may be appended: it holds the database's write
    /// lock (SQLite) or the audit advisory lock (PostgreSQL) from its start, so concurrent
    /// appends, from this process or another node, chain one after the other.
    pub(super) async fn begin_audited(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Any>, DbError> {
        match self.backend {
            Backend::Sqlite => Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?),
            Backend::Postgres => {
                let mut tx = self.pool.begin().await?;
                // Wrapped so that the row has a type the Any driver decodes (not `void`).
                sqlx::query("SELECT 1 AS locked FROM (SELECT pg_advisory_xact_lock($1)) AS l")
                    .bind(AUDIT_LOCK_KEY)
                    .execute(&mut *tx)
                    .await?;
                Ok(tx)
            }
        }
    }

    /// Appends one record on its own (a transcript read, an admin action).
    pub async fn audit(&self, entry: AuditEntry) -> Result<(), DbError> {
        let mut tx = self.begin_audited().await?;
        append(&mut tx, &entry).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The trail of one appointment, or everything, oldest first, from `after_seq` on (at most
    /// [`AUDIT_PAGE`] records).
    pub async fn audit_trail(
        &self,
        appointment_id: Option<&str>,
        after_seq: i64,
    ) -> Result<Vec<AuditRecord>, DbError> {
        let rows = match appointment_id {
            Some(id) => {
                sqlx::query(
                    "SELECT * FROM audit_log WHERE appointment_id = $1 AND seq > $2 \
                     ORDER BY seq LIMIT $3",
                )
                .bind(id)
                .bind(after_seq)
                .bind(AUDIT_PAGE)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query("SELECT * FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2")
                    .bind(after_seq)
                    .bind(AUDIT_PAGE)
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter().map(audit_record).collect()
    }

    /// Walks the whole chain in order, recomputing every hash.
    pub async fn verify_audit(&self) -> Result<AuditCheck, DbError> {
        let mut expected_seq = 1;
        let mut prev_hash = GENESIS_HASH.to_owned();
        let mut records = 0;
        loop {
            let rows = sqlx::query(
                "SELECT seq, at, actor_id, action, appointment_id, detail, prev_hash, hash \
                 FROM audit_log WHERE seq >= $1 ORDER BY seq LIMIT $2",
            )
            .bind(expected_seq)
            .bind(VERIFY_BATCH)
            .fetch_all(&self.pool)
            .await?;
            if rows.is_empty() {
                return Ok(AuditCheck {
                    records,
                    head: (records > 0).then_some(prev_hash),
                    broken: None,
                });
            }
            for row in &rows {
                let seq: i64 = row.try_get("seq")?;
                let broken = |reason: String| AuditCheck {
                    records,
                    head: None,
                    broken: Some(AuditBreak { seq, reason }),
                };
                if seq != expected_seq {
                    return Ok(broken(format!(
                        "record {expected_seq} is missing (the next one is {seq})"
                    )));
                }
                let stored_prev: String = row.try_get("prev_hash")?;
                if stored_prev != prev_hash {
                    return Ok(broken(
                        "its prev_hash is not the previous record's hash".to_owned(),
                    ));
                }
                let appointment_id: Option<String> = row.try_get("appointment_id")?;
                let actor_id: String = row.try_get("actor_id")?;
                let action: String = row.try_get("action")?;
                let detail: String = row.try_get("detail")?;
                let computed = record_hash(
                    seq,
                    row.try_get("at")?,
                    &actor_id,
                    &action,
                    appointment_id.as_deref(),
                    &detail,
                    &stored_prev,
                );
                let stored: String = row.try_get("hash")?;
                if computed != stored {
                    return Ok(broken(
                        "its content does not match its hash (edited)".to_owned(),
                    ));
                }
                prev_hash = stored;
                expected_seq += 1;
                records += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_changes_the_hash() {
        let base = record_hash(1, 2, "u", "room.joined", Some("a"), "{}", GENESIS_HASH);
        let variants = [
            record_hash(2, 2, "u", "room.joined", Some("a"), "{}", GENESIS_HASH),
            record_hash(1, 3, "u", "room.joined", Some("a"), "{}", GENESIS_HASH),
            record_hash(1, 2, "v", "room.joined", Some("a"), "{}", GENESIS_HASH),
            record_hash(1, 2, "u", "room.left", Some("a"), "{}", GENESIS_HASH),
            record_hash(1, 2, "u", "room.joined", None, "{}", GENESIS_HASH),
            record_hash(
                1,
                2,
                "u",
                "room.joined",
                Some("a"),
                "{\"x\":1}",
                GENESIS_HASH,
            ),
            record_hash(1, 2, "u", "room.joined", Some("a"), "{}", &"1".repeat(64)),
            // Moving a character between two fields is a different record.
            record_hash(1, 2, "uroom.joined", "", Some("a"), "{}", GENESIS_HASH),
        ];
        for variant in variants {
            assert_ne!(variant, base);
        }
        assert_eq!(
            base,
            record_hash(1, 2, "u", "room.joined", Some("a"), "{}", GENESIS_HASH)
        );
    }
}
