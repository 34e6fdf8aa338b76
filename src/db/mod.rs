//! Persistence over sqlx's `Any` driver: one set of queries for SQLite and PostgreSQL.
//!
//! Every timestamp is stored as milliseconds since the Unix epoch (BIGINT) so that both backends
//! sort and compare them the same way; the API renders them as RFC 3339.

mod audit;
mod outbox;

pub use audit::{AuditBreak, AuditCheck, AuditEntry, AuditRecord};
pub use outbox::Delivery;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor, Row};
use time::OffsetDateTime;

use callrelay_signaling::activity::{Activity, RelayedRoom};
use callrelay_signaling::call::Call;
use callrelay_signaling::protocol::{from_unix_millis, rfc3339_millis, unix_millis};
use callrelay_signaling::store::{
    AppointmentAccess, AppointmentStatus, ChatMessage, ChatSender, Store, StoreError,
};
use callrelay_signaling::{Identity, Role};

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database URL must start with sqlite: or postgres://")]
    UnsupportedUrl,
    #[error("could not create the database folder {path}: {source}")]
    CreateDir {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Sqlx(#[from] sqlx::Error),
    #[error("migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

impl From<DbError> for StoreError {
    fn from(err: DbError) -> Self {
        StoreError(err.to_string())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
    /// `webhooks.urls`: each recorded activity's events are queued for each of them.
    webhook_urls: Arc<[String]>,
    /// Woken when deliveries were queued.
    outbox_queued: Arc<tokio::sync::Notify>,
}

/// An appointment as the API shows it (contract: Appointment).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Appointment {
    pub id: String,
    pub patient_id: String,
    pub doctor_id: String,
    pub patient_name: String,
    pub doctor_name: String,
    pub scheduled_at: String,
    #[schema(value_type = String, example = "pending")]
    pub status: AppointmentStatus,
    /// Present once the appointment is confirmed: where its consult room is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join_url: Option<String>,
    pub created_at: String,
}

pub struct NewAppointment {
    pub patient_id: String,
    pub doctor_id: String,
    pub patient_name: Option<String>,
    pub doctor_name: Option<String>,
    pub scheduled_at: OffsetDateTime,
    pub created_by: String,
}

/// A stored direct call (contract: Call), with both parties' display names beside their ids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CallRecord {
    pub call_id: String,
    pub caller_id: String,
    /// The caller's display name: the name of its latest token (the users table), else its id.
    pub caller_name: String,
    pub callee_id: String,
    /// The callee's display name: the name of its latest token (the users table), else its id.
    pub callee_name: String,
    pub call_type: String,
    pub status: String,
    pub started_at: String,
    pub answered_at: Option<String>,
    pub ended_at: Option<String>,
    pub end_reason: Option<String>,
    pub media: String,
}

/// `SELECT <appointment columns> FROM appointments <rest>`, as one static string.
macro_rules! select_appointments {
    ($rest:literal) => {
        concat!(
            "SELECT id, patient_id, doctor_id, patient_name, doctor_name, scheduled_at, status, ",
            "created_at FROM appointments ",
            $rest
        )
    };
}

impl Db {
    /// Connects, creating an SQLite file (and its folder) on first run, and applies migrations.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Db, DbError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(DbError::UnsupportedUrl);
        };
        if backend == Backend::Sqlite {
            create_sqlite_folder(url)?;
        }
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL lets readers run beside the writer; the busy timeout makes
                        // concurrent writers wait instead of failing with "database is locked".
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA busy_timeout = 5000").await?;
                        conn.execute("PRAGMA foreign_keys = ON").await?;
                    }
                    Ok(())
                })
            })
            .connect(url)
            .await?;
        match backend {
            Backend::Sqlite => SQLITE_MIGRATIONS.run(&pool).await?,
            Backend::Postgres => POSTGRES_MIGRATIONS.run(&pool).await?,
        }
        Ok(Db {
            pool,
            backend,
            webhook_urls: Arc::from([]),
            outbox_queued: Arc::default(),
        })
    }

    /// Queues the webhook events of every recorded activity for `urls` from now on.
    pub fn with_webhooks(mut self, urls: &[String]) -> Db {
        self.webhook_urls = Arc::from(urls);
        self
    }

    /// Resolves when deliveries were queued since the last call (or right away if they were).
    pub async fn outbox_queued(&self) {
        self.outbox_queued.notified().await;
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Readiness probe: one round trip to the database.
    pub async fn ping(&self) -> Result<(), DbError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    pub async fn user_name(&self, user_id: &str) -> Result<Option<String>, DbError> {
        let row = sqlx::query("SELECT name FROM users WHERE id = $1")
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("name")).transpose()?)
    }

    pub async fn upsert_user(&self, who: &Identity) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO users (id, name, role, last_seen_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, role = excluded.role, \
             last_seen_at = excluded.last_seen_at",
        )
        .bind(&who.user_id)
        .bind(&who.name)
        .bind(who.role.as_str())
        .bind(unix_millis(OffsetDateTime::now_utc()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn create_appointment(&self, new: NewAppointment) -> Result<Appointment, DbError> {
        let patient_name = match new.patient_name {
            Some(name) => name,
            None => self
                .user_name(&new.patient_id)
                .await?
                .unwrap_or_else(|| new.patient_id.clone()),
        };
        let doctor_name = match new.doctor_name {
            Some(name) => name,
            None => self
                .user_name(&new.doctor_id)
                .await?
                .unwrap_or_else(|| new.doctor_id.clone()),
        };
        let id = uuid::Uuid::new_v4().to_string();
        let now = unix_millis(OffsetDateTime::now_utc());
        sqlx::query(
            "INSERT INTO appointments (id, patient_id, doctor_id, patient_name, doctor_name, \
             scheduled_at, status, created_by, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7, $8, $8)",
        )
        .bind(&id)
        .bind(&new.patient_id)
        .bind(&new.doctor_id)
        .bind(&patient_name)
        .bind(&doctor_name)
        .bind(unix_millis(new.scheduled_at))
        .bind(&new.created_by)
        .bind(now)
        .execute(&self.pool)
        .await?;
        self.appointment(&id)
            .await?
            .ok_or_else(|| DbError::Corrupt("inserted appointment vanished".into()))
    }

    pub async fn appointment(&self, id: &str) -> Result<Option<Appointment>, DbError> {
        let row = sqlx::query(select_appointments!("WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| appointment_from_row(&r)).transpose()
    }

    /// Appointments where `user_id` is patient or doctor, or all of them; soonest first.
    pub async fn appointments_for(
        &self,
        user_id: Option<&str>,
    ) -> Result<Vec<Appointment>, DbError> {
        let rows = match user_id {
            Some(user) => {
                sqlx::query(select_appointments!(
                    "WHERE patient_id = $1 OR doctor_id = $1 ORDER BY scheduled_at, id"
                ))
                .bind(user)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(select_appointments!("ORDER BY scheduled_at, id"))
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter().map(appointment_from_row).collect()
    }

    /// Moves an appointment to `to` if it is currently in one of `from`. Returns the appointment
    /// as it now is, and whether it changed.
    pub async fn transition_appointment(
        &self,
        id: &str,
        from: &[AppointmentStatus],
        to: AppointmentStatus,
    ) -> Result<Option<(Appointment, bool)>, DbError> {
        let mut changed = false;
        for status in from {
            let done = sqlx::query(
                "UPDATE appointments SET status = $1, updated_at = $2 WHERE id = $3 AND status = $4",
            )
            .bind(to.as_str())
            .bind(unix_millis(OffsetDateTime::now_utc()))
            .bind(id)
            .bind(status.as_str())
            .execute(&self.pool)
            .await?;
            if done.rows_affected() > 0 {
                changed = true;
                break;
            }
        }
        Ok(self.appointment(id).await?.map(|a| (a, changed)))
    }

    /// The transcript of a consult, oldest first.
    pub async fn chat_messages(&self, appointment_id: &str) -> Result<Vec<ChatMessage>, DbError> {
        let rows = sqlx::query(
            "SELECT id, appointment_id, sender_id, sender_name, sender_role, body, sent_at \
             FROM chat_messages WHERE appointment_id = $1 ORDER BY seq",
        )
        .bind(appointment_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let role: String = r.try_get("sender_role")?;
                Ok(ChatMessage {
                    id: r.try_get("id")?,
                    appointment_id: r.try_get("appointment_id")?,
                    from: ChatSender {
                        user_id: r.try_get("sender_id")?,
                        name: r.try_get("sender_name")?,
                        role: Role::parse(&role)
                            .ok_or_else(|| DbError::Corrupt(format!("role {role:?}")))?,
                    },
                    text: r.try_get("body")?,
                    sent_at: rfc3339_millis(from_unix_millis(r.try_get("sent_at")?)),
                })
            })
            .collect()
    }

    /// Calls `user_id` took part in, newest first, with the parties' names as last seen.
    pub async fn calls_for(&self, user_id: &str) -> Result<Vec<CallRecord>, DbError> {
        let rows = sqlx::query(
            "SELECT c.id, c.caller_id, COALESCE(caller.name, c.caller_id) AS caller_name, \
             c.callee_id, COALESCE(callee.name, c.callee_id) AS callee_name, c.call_type, \
             c.status, c.media, c.started_at, c.answered_at, c.ended_at, c.end_reason \
             FROM calls c \
             LEFT JOIN users caller ON caller.id = c.caller_id \
             LEFT JOIN users callee ON callee.id = c.callee_id \
             WHERE c.caller_id = $1 OR c.callee_id = $1 \
             ORDER BY c.started_at DESC, c.id DESC",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let millis = |col: &str| -> Result<Option<String>, sqlx::Error> {
                    Ok(r.try_get::<Option<i64>, _>(col)?
                        .map(|ms| rfc3339_millis(from_unix_millis(ms))))
                };
                Ok(CallRecord {
                    call_id: r.try_get("id")?,
                    caller_id: r.try_get("caller_id")?,
                    caller_name: r.try_get("caller_name")?,
                    callee_id: r.try_get("callee_id")?,
                    callee_name: r.try_get("callee_name")?,
                    call_type: r.try_get("call_type")?,
                    status: r.try_get("status")?,
                    media: r.try_get("media")?,
                    started_at: rfc3339_millis(from_unix_millis(r.try_get("started_at")?)),
                    answered_at: millis("answered_at")?,
                    ended_at: millis("ended_at")?,
                    end_reason: r.try_get("end_reason")?,
                })
            })
            .collect()
    }

    /// Closes calls left ringing or active by a previous run (crash or restart): ringing ones
    /// become missed, active ones ended, both with end reason `server-restart`.
    pub async fn close_interrupted_calls(&self) -> Result<u64, DbError> {
        let done = sqlx::query(
            "UPDATE calls SET status = CASE WHEN status = 'ringing' THEN 'missed' ELSE 'ended' END, \
             end_reason = 'server-restart', ended_at = $1 WHERE status IN ('ringing', 'active')",
        )
        .bind(unix_millis(OffsetDateTime::now_utc()))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}

fn appointment_from_row(r: &AnyRow) -> Result<Appointment, DbError> {
    let status: String = r.try_get("status")?;
    let status = AppointmentStatus::parse(&status)
        .ok_or_else(|| DbError::Corrupt(format!("appointment status {status:?}")))?;
    let id: String = r.try_get("id")?;
    Ok(Appointment {
        join_url: (status == AppointmentStatus::Confirmed).then(|| format!("/consult/{id}")),
        id,
        patient_id: r.try_get("patient_id")?,
        doctor_id: r.try_get("doctor_id")?,
        patient_name: r.try_get("patient_name")?,
        doctor_name: r.try_get("doctor_name")?,
        scheduled_at: rfc3339_millis(from_unix_millis(r.try_get("scheduled_at")?)),
        status,
        created_at: rfc3339_millis(from_unix_millis(r.try_get("created_at")?)),
    })
}

fn create_sqlite_folder(url: &str) -> Result<(), DbError> {
    let path = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:");
    let path = path.split('?').next().unwrap_or_default();
    if path.is_empty() || path.starts_with(":memory:") {
        return Ok(());
    }
    if let Some(parent) = Path::new(path)
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
    {
        std::fs::create_dir_all(parent).map_err(|source| DbError::CreateDir {
            path: parent.display().to_string(),
            source,
        })?;
    }
    Ok(())
}

#[async_trait]
impl Store for Db {
    async fn appointment(&self, id: &str) -> Result<Option<AppointmentAccess>, StoreError> {
        Ok(Db::appointment(self, id).await?.map(|a| AppointmentAccess {
            id: a.id,
            patient_id: a.patient_id,
            doctor_id: a.doctor_id,
            status: a.status,
        }))
    }

    async fn record_user(&self, who: &Identity) -> Result<(), StoreError> {
        Ok(self.upsert_user(who).await?)
    }

    async fn save_chat_message(&self, m: &ChatMessage) -> Result<(), StoreError> {
        let sent_at =
            time::OffsetDateTime::parse(&m.sent_at, &time::format_description::well_known::Rfc3339)
                .map_err(|e| StoreError(format!("bad sentAt: {e}")))?;
        sqlx::query(
            "INSERT INTO chat_messages (id, appointment_id, sender_id, sender_name, sender_role, \
             body, sent_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&m.id)
        .bind(&m.appointment_id)
        .bind(&m.from.user_id)
        .bind(&m.from.name)
        .bind(m.from.role.as_str())
        .bind(&m.text)
        .bind(unix_millis(sent_at))
        .execute(&self.pool)
        .await
        .map_err(DbError::from)?;
        Ok(())
    }

    async fn has_care_relation(
        &self,
        patient_id: &str,
        doctor_id: &str,
    ) -> Result<bool, StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM appointments WHERE patient_id = $1 AND doctor_id = $2 \
             AND status <> 'cancelled'",
        )
        .bind(patient_id)
        .bind(doctor_id)
        .fetch_one(&self.pool)
        .await
        .map_err(DbError::from)?;
        let n: i64 = row.try_get("n").map_err(DbError::from)?;
        Ok(n > 0)
    }

    async fn save_call(&self, call: &Call) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO calls (id, caller_id, callee_id, call_type, appointment_id, status, media, \
             started_at, answered_at, ended_at, end_reason) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
             ON CONFLICT (id) DO UPDATE SET status = excluded.status, media = excluded.media, \
             answered_at = excluded.answered_at, ended_at = excluded.ended_at, \
             end_reason = excluded.end_reason",
        )
        .bind(&call.id)
        .bind(&call.caller_id)
        .bind(&call.callee_id)
        .bind(call.call_type.as_str())
        .bind(call.appointment_id.as_deref())
        .bind(call.status.as_str())
        .bind(call.media.as_str())
        .bind(unix_millis(call.started_at))
        .bind(call.answered_at.map(unix_millis))
        .bind(call.ended_at.map(unix_millis))
        .bind(call.end_reason.map(|r| r.as_str()))
        .execute(&self.pool)
        .await
        .map_err(DbError::from)?;
        Ok(())
    }

    async fn record(&self, at: OffsetDateTime, activity: &Activity) -> Result<(), StoreError> {
        let entry = audit_entry(at, activity);
        let events = if self.webhook_urls.is_empty() {
            Vec::new()
        } else {
            activity.webhook_events()
        };
        if entry.is_none() && events.is_empty() {
            return Ok(());
        }
        let queued = !events.is_empty();
        // Audit record and webhook events commit together, or neither does.
        let mut tx = match entry {
            Some(_) => self.begin_audited().await?,
            None => self.pool.begin().await.map_err(DbError::from)?,
        };
        if let Some(entry) = &entry {
            audit::append(&mut tx, entry).await?;
        }
        for (name, data) in events {
            outbox::enqueue(&mut tx, &self.webhook_urls, name, data, at).await?;
        }
        tx.commit().await.map_err(DbError::from)?;
        if queued {
            self.outbox_queued.notify_one();
        }
        Ok(())
    }
}

/// The audit record of an activity, for those the trail keeps: who entered and left which
/// consultation with which media path, when a consultation's media went through the relay, and
/// who waited to be admitted and who admitted or declined them.
fn audit_entry(at: OffsetDateTime, activity: &Activity) -> Option<AuditEntry> {
    use serde_json::json;
    let (actor_id, action, detail) = match activity {
        Activity::ParticipantJoined { member, media, .. } => (
            member.user_id.clone(),
            "room.joined",
            json!({"socketId": member.socket_id, "name": member.name, "role": member.role,
                   "media": media}),
        ),
        Activity::ParticipantLeft {
            member,
            media,
            reason,
            ..
        } => (
            member.user_id.clone(),
            "room.left",
            json!({"socketId": member.socket_id, "reason": reason, "media": media}),
        ),
        Activity::RelayActivated {
            room: RelayedRoom::Consult { .. },
            reason,
        } => (
            SERVER_ACTOR.to_owned(),
            "room.relayed",
            json!({"reason": reason.as_str()}),
        ),
        Activity::WaitingEntered {
            member, replaces, ..
        } => (
            member.user_id.clone(),
            "waiting.entered",
            json!({"socketId": member.socket_id, "name": member.name, "role": member.role,
                   "replaces": replaces}),
        ),
        Activity::WaitingAdmitted { member, by, .. } => (
            by.user_id.clone(),
            "waiting.admitted",
            json!({"userId": member.user_id, "name": member.name, "socketId": member.socket_id,
                   "byRole": by.role}),
        ),
        Activity::WaitingDeclined { member, by, .. } => (
            by.user_id.clone(),
            "waiting.declined",
            json!({"userId": member.user_id, "name": member.name, "socketId": member.socket_id,
                   "byRole": by.role}),
        ),
        Activity::WaitingLeft { member, reason, .. } => (
            member.user_id.clone(),
            "waiting.left",
            json!({"socketId": member.socket_id, "reason": reason}),
        ),
        _ => return None,
    };
    Some(AuditEntry {
        at,
        actor_id,
        action,
        appointment_id: activity.appointment_id().map(str::to_owned),
        detail,
    })
}

/// The actor of what the server did by itself.
pub const SERVER_ACTOR: &str = "server";
