//! Delivers the webhooks' outbox (`webhooks.urls`): each queued event is POSTed, signed, to its
//! receiver, in the order it was queued, until the receiver answers 2xx. A refusal or a silence is
//! retried with backoff (1 s, 2 s, 4 s … at most 5 min), forever and across restarts: the outbox
//! is in the database, and a row leaves it only once delivered. Delivery is at least once: a
//! receiver dedupes by the body's `id`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use sha2::Sha256;
use time::OffsetDateTime;

use crate::cluster::{self, Duty};
use crate::db::{Db, Delivery};

/// The signature header: `sha256=` and the hex HMAC-SHA256 of the raw body with
/// `webhooks.secret`.
pub const SIGNATURE_HEADER: &str = "x-callrelay-signature";
/// The event name (also in the body).
pub const EVENT_HEADER: &str = "x-callrelay-event";
/// This delivery's id: the same on every retry of it.
pub const DELIVERY_HEADER: &str = "x-callrelay-delivery";

/// How long a receiver may take to answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest wait between two attempts of one delivery.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Deliveries read from the outbox per pass.
const BATCH: i64 = 200;
/// The longest sleep with nothing due (the outbox is re-read then, in case another node queued).
const IDLE_POLL: Duration = Duration::from_secs(30);
/// How often the node delivering a cluster's webhooks looks at the outbox when idle.
const CLUSTER_POLL: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct WebhookMetrics {
    /// By outcome: `delivered`, `failed` (to be retried).
    attempts: IntCounterVec,
    pending: IntGauge,
}

impl WebhookMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let attempts = IntCounterVec::new(
            Opts::new(
                "callrelay_webhook_attempts_total",
                "Webhook POSTs by outcome: delivered (2xx) or failed (retried with backoff)",
            ),
            &["outcome"],
        )?;
        let pending = IntGauge::new(
            "callrelay_webhook_outbox_pending",
            "Webhook deliveries in the outbox, not yet taken by their receiver",
        )?;
        registry.register(Box::new(attempts.clone()))?;
        registry.register(Box::new(pending.clone()))?;
        for outcome in ["delivered", "failed"] {
            attempts.with_label_values(&[outcome]);
        }
        Ok(Self { attempts, pending })
    }
}

/// The value of [`SIGNATURE_HEADER`] for `body`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// A receiver as logs name it: its host, never the path or query (they may hold its token).
fn receiver(url: &str) -> String {
    reqwest::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(|host| format!("{}://{host}", u.scheme())))
        .unwrap_or_else(|| "<invalid url>".to_owned())
}

/// The wait before attempt `attempts + 1`, after `attempts` failures (at least one).
fn backoff(attempts: i64) -> Duration {
    let exponent = u32::try_from(attempts.saturating_sub(1))
        .unwrap_or(u32::MAX)
        .min(16);
    Duration::from_secs(1u64 << exponent).min(MAX_BACKOFF)
}

pub struct WebhookSender {
    db: Db,
    secret: Vec<u8>,
    client: reqwest::Client,
    metrics: WebhookMetrics,
    /// Set on a node of a cluster: deliveries only while this node holds the duty.
    cluster: Option<Arc<cluster::Registry>>,
}

impl WebhookSender {
    pub fn new(db: Db, secret: &str, metrics: WebhookMetrics) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            // A receiver's redirect is not followed: the signed body goes where it was
            // configured to go, or nowhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            db,
            secret: secret.as_bytes().to_vec(),
            client,
            metrics,
            cluster: None,
        })
    }

    /// On a node of a cluster: only while this node holds the webhook duty (every node writes
    /// to the shared outbox; one delivers, so a delivery is not made once per node).
    pub fn in_cluster(mut self, registry: Arc<cluster::Registry>) -> Self {
        self.cluster = Some(registry);
        self
    }

    /// Delivers until the task is aborted.
    pub async fn run(self) {
        loop {
            if let Some(registry) = &self.cluster {
                match registry.lead(Duty::Webhooks).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tokio::time::sleep(registry.renew_every()).await;
                        continue;
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "cluster registry unreachable: webhooks wait");
                        tokio::time::sleep(registry.renew_every()).await;
                        continue;
                    }
                }
            }
            let wait = match self.pass().await {
                Ok(wait) => wait,
                Err(err) => {
                    tracing::warn!(error = %err, "webhook outbox unavailable");
                    Duration::from_secs(5)
                }
            };
            if wait.is_zero() {
                continue;
            }
            // Other nodes' events wake no one here: poll, and renew the duty in time.
            let wait = match &self.cluster {
                Some(registry) => wait.min(CLUSTER_POLL).min(registry.renew_every()),
                None => wait,
            };
            tokio::select! {
                _ = self.db.outbox_queued() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Sends what is due, oldest first. A receiver that fails holds back its later deliveries
    /// (they keep their order); the others go on. Returns how long to wait before the next pass.
    async fn pass(&self) -> Result<Duration, crate::db::DbError> {
        let mut renewed = Instant::now();
        let pending = self.db.pending_deliveries(BATCH).await?;
        self.metrics.pending.set(self.db.outbox_len().await?);
        let now = OffsetDateTime::now_utc();
        let mut held: HashSet<&str> = HashSet::new();
        let mut next_due: Option<OffsetDateTime> = None;
        let mut delivered = 0;
        for delivery in &pending {
            if held.contains(delivery.url.as_str()) {
                continue;
            }
            if !self.still_on_duty(&mut renewed).await {
                // Another node delivers from now on: what is left is its.
                return Ok(Duration::ZERO);
            }
            let due = if delivery.next_attempt_at <= now {
                match self.post(delivery).await {
                    Ok(()) => {
                        self.db.delivered(&delivery.delivery_id).await?;
                        self.metrics
                            .attempts
                            .with_label_values(&["delivered"])
                            .inc();
                        delivered += 1;
                        continue;
                    }
                    Err(reason) => {
                        let attempts = delivery.attempts + 1;
                        let next = OffsetDateTime::now_utc() + backoff(attempts);
                        tracing::warn!(
                            receiver = %receiver(&delivery.url),
                            event = %delivery.event,
                            event_id = %delivery.event_id,
                            attempts,
                            retry_in_secs = backoff(attempts).as_secs(),
                            reason = %reason,
                            "webhook not delivered"
                        );
                        self.db
                            .delivery_failed(&delivery.delivery_id, next, &reason)
                            .await?;
                        self.metrics.attempts.with_label_values(&["failed"]).inc();
                        next
                    }
                }
            } else {
                delivery.next_attempt_at
            };
            held.insert(&delivery.url);
            next_due = Some(next_due.map_or(due, |t| t.min(due)));
        }
        if delivered > 0 {
            self.metrics.pending.set(self.db.outbox_len().await?);
        }
        // A full batch may have more behind it.
        if pending.len() as i64 == BATCH && delivered > 0 {
            return Ok(Duration::ZERO);
        }
        let wait = next_due
            .map(|t| {
                (t - OffsetDateTime::now_utc())
                    .try_into()
                    .unwrap_or(Duration::ZERO)
            })
            .unwrap_or(IDLE_POLL);
        Ok(wait.clamp(Duration::from_millis(10), IDLE_POLL))
    }

    /// Within a pass, on a node of a cluster: renews the webhook duty when a third of its lease
    /// has gone since `renewed` (a pass of slow receivers outlasts a lease); false once another
    /// node holds it. Always true on a single node.
    async fn still_on_duty(&self, renewed: &mut Instant) -> bool {
        let Some(registry) = &self.cluster else {
            return true;
        };
        if renewed.elapsed() < registry.renew_every() {
            return true;
        }
        *renewed = Instant::now();
        match registry.lead(Duty::Webhooks).await {
            Ok(held) => held,
            Err(err) => {
                tracing::warn!(error = %err, "cluster registry unreachable: webhooks wait");
                false
            }
        }
    }

    /// One POST; `Err` says why it does not count as delivered.
    async fn post(&self, delivery: &Delivery) -> Result<(), String> {
        let response = self
            .client
            .post(&delivery.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(
                SIGNATURE_HEADER,
                signature(&self.secret, delivery.body.as_bytes()),
            )
            .header(EVENT_HEADER, &delivery.event)
            .header(DELIVERY_HEADER, &delivery.delivery_id)
            .body(delivery.body.clone())
            .send()
            .await
            // Without the URL: it may carry a receiver's token in its query.
            .map_err(|e| e.without_url().to_string())?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!("the receiver answered {}", response.status()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_the_hex_hmac_sha256_of_the_body() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        let waits: Vec<u64> = (1..=11).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(backoff(i64::MAX), MAX_BACKOFF);
    }
}
