//! The webhooks' outbox: one row per event and receiver, written in the transaction that
//! records the event, deleted once the receiver took it. The sender is `crate::webhooks`.

use sqlx::{AnyConnection, Row};
use time::OffsetDateTime;

use callrelay_signaling::protocol::{rfc3339_millis, unix_millis};

use super::{Db, DbError};

/// One pending POST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub seq: i64,
    pub delivery_id: String,
    pub event_id: String,
    pub event: String,
    pub url: String,
    pub body: String,
    pub attempts: i64,
    pub next_attempt_at: OffsetDateTime,
}

/// Queues event `name` with `data` for every URL, inside the caller's transaction. The body is
/// fixed here, so a retry sends the very bytes that were signed the first time.
pub(super) async fn enqueue(
    conn: &mut AnyConnection,
    urls: &[String],
    name: &str,
    data: serde_json::Value,
    at: OffsetDateTime,
) -> Result<(), DbError> {
    let event_id = uuid::Uuid::new_v4().to_string();
    let body = serde_json::json!({
        "id": event_id,
        "event": name,
        "createdAt": rfc3339_millis(at),
        "data": data,
    })
    .to_string();
    for url in urls {
        sqlx::query(
            "INSERT INTO webhook_outbox (delivery_id, event_id, event, url, body, attempts, \
             next_attempt_at, created_at) VALUES ($1, $2, $3, $4, $5, 0, $6, $6)",
        )
        .bind(uuid::Uuid::new_v4().to_string())
        .bind(&event_id)
        .bind(name)
        .bind(url)
        .bind(&body)
        .bind(unix_millis(at))
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

impl Db {
    /// The oldest pending deliveries, in the order they were queued.
    pub async fn pending_deliveries(&self, limit: i64) -> Result<Vec<Delivery>, DbError> {
        let rows = sqlx::query(
            "SELECT seq, delivery_id, event_id, event, url, body, attempts, next_attempt_at \
             FROM webhook_outbox ORDER BY seq LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Delivery {
                    seq: row.try_get("seq")?,
                    delivery_id: row.try_get("delivery_id")?,
                    event_id: row.try_get("event_id")?,
                    event: row.try_get("event")?,
                    url: row.try_get("url")?,
                    body: row.try_get("body")?,
                    attempts: row.try_get("attempts")?,
                    next_attempt_at: callrelay_signaling::protocol::from_unix_millis(
                        row.try_get("next_attempt_at")?,
                    ),
                })
            })
            .collect()
    }

    /// The receiver took it: gone from the outbox.
    pub async fn delivered(&self, delivery_id: &str) -> Result<(), DbError> {
        sqlx::query("DELETE FROM webhook_outbox WHERE delivery_id = $1")
            .bind(delivery_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The receiver refused it or did not answer: try again at `next_attempt_at`.
    pub async fn delivery_failed(
        &self,
        delivery_id: &str,
        next_attempt_at: OffsetDateTime,
        error: &str,
    ) -> Result<(), DbError> {
        sqlx::query(
            "UPDATE webhook_outbox SET attempts = attempts + 1, next_attempt_at = $2, \
             last_error = $3 WHERE delivery_id = $1",
        )
        .bind(delivery_id)
        .bind(unix_millis(next_attempt_at))
        .bind(error)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Deliveries not yet taken by their receiver.
    pub async fn outbox_len(&self) -> Result<i64, DbError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM webhook_outbox")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("n")?)
    }
}
