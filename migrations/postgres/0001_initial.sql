-- Users seen on tokens, appointments, in-call chat and direct calls.
-- Timestamps are milliseconds since the Unix epoch (UTC), the same on SQLite and PostgreSQL.

CREATE TABLE users (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    role         TEXT NOT NULL,
    last_seen_at BIGINT NOT NULL
);

CREATE TABLE appointments (
    id           TEXT PRIMARY KEY,
    patient_id   TEXT NOT NULL,
    doctor_id    TEXT NOT NULL,
    patient_name TEXT NOT NULL,
    doctor_name  TEXT NOT NULL,
    scheduled_at BIGINT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('pending', 'confirmed', 'cancelled')),
    created_by   TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);
CREATE INDEX appointments_patient ON appointments (patient_id, scheduled_at);
CREATE INDEX appointments_doctor ON appointments (doctor_id, scheduled_at);

CREATE TABLE chat_messages (
    seq            BIGSERIAL PRIMARY KEY,
    id             TEXT NOT NULL UNIQUE,
    appointment_id TEXT NOT NULL REFERENCES appointments (id),
    sender_id      TEXT NOT NULL,
    sender_name    TEXT NOT NULL,
    sender_role    TEXT NOT NULL,
    body           TEXT NOT NULL,
    sent_at        BIGINT NOT NULL
);
CREATE INDEX chat_messages_appointment ON chat_messages (appointment_id, seq);

CREATE TABLE calls (
    id             TEXT PRIMARY KEY,
    caller_id      TEXT NOT NULL,
    callee_id      TEXT NOT NULL,
    call_type      TEXT NOT NULL CHECK (call_type IN ('audio', 'video')),
    appointment_id TEXT,
    status         TEXT NOT NULL CHECK (status IN ('ringing', 'active', 'ended', 'rejected', 'missed', 'busy')),
    media          TEXT NOT NULL CHECK (media IN ('p2p', 'sfu')),
    started_at     BIGINT NOT NULL,
    answered_at    BIGINT,
    ended_at       BIGINT,
    end_reason     TEXT
);
CREATE INDEX calls_caller ON calls (caller_id, started_at);
CREATE INDEX calls_callee ON calls (callee_id, started_at);
CREATE INDEX calls_open ON calls (status);
