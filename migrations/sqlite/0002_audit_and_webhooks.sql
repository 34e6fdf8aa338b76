-- The audit trail of consultations and admin actions, and the webhooks' outbox.

-- Append-only: a record is never updated or deleted. Each carries the hash of the one before
-- (prev_hash; 64 zeros for the first), and its own hash covers its fields and prev_hash, so an
-- edited or deleted record breaks the chain (`callrelay audit verify`). seq is assigned by the
-- writer, gap-free, under a lock.
CREATE TABLE audit_log (
    seq            BIGINT PRIMARY KEY,
    at             BIGINT NOT NULL,
    actor_id       TEXT NOT NULL,
    action         TEXT NOT NULL,
    appointment_id TEXT,
    detail         TEXT NOT NULL,
    prev_hash      TEXT NOT NULL,
    hash           TEXT NOT NULL
);
CREATE INDEX audit_log_appointment ON audit_log (appointment_id, seq);

-- One row per event and receiver URL, written in the transaction that records the event and
-- deleted once the receiver answered 2xx. Delivered in seq order per URL.
CREATE TABLE webhook_outbox (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id     TEXT NOT NULL UNIQUE,
    event_id        TEXT NOT NULL,
    event           TEXT NOT NULL,
    url             TEXT NOT NULL,
    body            TEXT NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    last_error      TEXT,
    created_at      BIGINT NOT NULL
);
CREATE INDEX webhook_outbox_url ON webhook_outbox (url, seq);
