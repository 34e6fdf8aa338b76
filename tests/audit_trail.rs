//! The audit trail and the webhooks' outbox as the database keeps them, on SQLite always and on
//! PostgreSQL when `CALLRELAY_TEST_POSTGRES_URL` is set: what a consultation leaves behind, the
//! chain verified, an edit and a deletion found, concurrent appends chained in order.

mod support;

use callrelay::db::{AuditEntry, Db};
use callrelay_signaling::Role;
use callrelay_signaling::activity::{Activity, Member, RelayedRoom};
use callrelay_signaling::call::MediaPath;
use callrelay_signaling::rooms::RelayReason;
use callrelay_signaling::store::Store;
use serde_json::{Value, json};
use time::macros::datetime;

fn member(user: &str, socket: &str, role: Role) -> Member {
    Member {
        user_id: user.into(),
        name: format!("{user} name"),
        role,
        socket_id: socket.into(),
    }
}

/// A raw connection beside the repository, as someone with database access would have.
async fn raw(url: &str) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    sqlx::AnyPool::connect(url).await.unwrap()
}

async fn exercise(url: &str) {
    let hook = "http://127.0.0.1:9/hook".to_owned();
    let db = Db::connect(url, 4)
        .await
        .unwrap()
        .with_webhooks(std::slice::from_ref(&hook));
    let t = datetime!(2026-12-07 09:00 UTC);
    let (pat, doc) = (
        member("pat1", "s1", Role::Patient),
        member("doc1", "s2", Role::Doctor),
    );
    let consultation = [
        Activity::ParticipantJoined {
            appointment_id: "a1".into(),
            member: pat.clone(),
            media: MediaPath::P2p,
            room_started: true,
        },
        Activity::ParticipantJoined {
            appointment_id: "a1".into(),
            member: doc.clone(),
            media: MediaPath::P2p,
            room_started: false,
        },
        Activity::RelayActivated {
            room: RelayedRoom::Consult {
                appointment_id: "a1".into(),
            },
            reason: RelayReason::P2pFailed,
        },
        Activity::ChatMessage {
            appointment_id: "a1".into(),
            message_id: "m1".into(),
            user_id: "pat1".into(),
        },
        Activity::ParticipantLeft {
            appointment_id: "a1".into(),
            member: pat,
            reason: "left",
            media: MediaPath::Sfu,
            room_finished: false,
        },
        Activity::ParticipantLeft {
            appointment_id: "a1".into(),
            member: doc,
            reason: "disconnected",
            media: MediaPath::Sfu,
            room_finished: true,
        },
    ];
    for (i, activity) in consultation.iter().enumerate() {
        db.record(t + time::Duration::seconds(i as i64), activity)
            .await
            .unwrap();
    }
    db.audit(AuditEntry {
        at: t + time::Duration::minutes(10),
        actor_id: "admin1".into(),
        action: "transcript.read",
        appointment_id: Some("a1".into()),
        detail: json!({"messages": 1}),
    })
    .await
    .unwrap();

    // What an auditor reads for the appointment: who, when, with which media path.
    let trail = db.audit_trail(Some("a1"), 0).await.unwrap();
    let summary: Vec<(String, String, Value)> = trail
        .iter()
        .map(|r| {
            (
                r.actor_id.clone(),
                r.action.clone(),
                r.detail["media"].clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("pat1".into(), "room.joined".into(), json!("p2p")),
            ("doc1".into(), "room.joined".into(), json!("p2p")),
            ("server".into(), "room.relayed".into(), Value::Null),
            ("pat1".into(), "room.left".into(), json!("sfu")),
            ("doc1".into(), "room.left".into(), json!("sfu")),
            ("admin1".into(), "transcript.read".into(), Value::Null),
        ]
    );
    assert_eq!(trail[0].at, "2026-12-07T09:00:00.000Z");
    assert_eq!(trail[4].detail["reason"], "disconnected");
    assert_eq!(trail[2].detail["reason"], "p2p-failed");
    for pair in trail.windows(2) {
        assert_eq!(
            pair[1].prev_hash, pair[0].hash,
            "each record names the one before"
        );
    }
    assert_eq!(db.audit_trail(Some("a2"), 0).await.unwrap(), []);
    assert_eq!(db.audit_trail(None, 4).await.unwrap().len(), 2, "paging");

    // Every webhook event, in order, for the receiver; the chat message by id only.
    let pending = db.pending_deliveries(100).await.unwrap();
    let events: Vec<&str> = pending.iter().map(|d| d.event.as_str()).collect();
    assert_eq!(
        events,
        [
            "room_started",
            "participant_joined",
            "participant_joined",
            "relay_activated",
            "chat_message",
            "participant_left",
            "participant_left",
            "room_finished",
        ]
    );
    for delivery in &pending {
        assert_eq!(delivery.url, hook);
        let body: Value = serde_json::from_str(&delivery.body).unwrap();
        assert_eq!(body["event"], delivery.event.as_str());
        assert_eq!(body["id"], delivery.event_id.as_str());
    }
    let chat: Value = serde_json::from_str(&pending[4].body).unwrap();
    assert_eq!(chat["data"]["messageId"], "m1");
    assert!(chat["data"].get("text").is_none());
    db.delivered(&pending[0].delivery_id).await.unwrap();
    assert_eq!(db.outbox_len().await.unwrap(), 7);

    // Concurrent appends (two requests at once) still make one gap-free chain.
    let appends = (0..24).map(|i| {
        let db = db.clone();
        tokio::spawn(async move {
            db.audit(AuditEntry {
                at: t + time::Duration::hours(1),
                actor_id: format!("reader{i}"),
                action: "transcript.read",
                appointment_id: Some("a2".into()),
                detail: json!({}),
            })
            .await
        })
    });
    for append in appends.collect::<Vec<_>>() {
        append.await.unwrap().unwrap();
    }
    let check = db.verify_audit().await.unwrap();
    assert_eq!(check.broken, None);
    assert_eq!(check.records, trail.len() as u64 + 24);

    // Someone with database access edits a record: found, at that record.
    let pool = raw(url).await;
    let original = trail[1].detail.to_string();
    sqlx::query("UPDATE audit_log SET detail = $1 WHERE seq = 2")
        .bind(r#"{"socketId":"s2","name":"someone else","role":"doctor","media":"p2p"}"#)
        .execute(&pool)
        .await
        .unwrap();
    let check = db.verify_audit().await.unwrap();
    let broken = check.broken.expect("an edit is found");
    assert_eq!(broken.seq, 2);
    assert!(broken.reason.contains("edited"), "{}", broken.reason);
    assert_eq!(check.records, 1, "the record before it is intact");
    sqlx::query("UPDATE audit_log SET detail = $1 WHERE seq = 2")
        .bind(&original)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(db.verify_audit().await.unwrap().broken, None, "restored");

    // ... or deletes one: found where the chain breaks.
    sqlx::query("DELETE FROM audit_log WHERE seq = 3")
        .execute(&pool)
        .await
        .unwrap();
    let broken = db
        .verify_audit()
        .await
        .unwrap()
        .broken
        .expect("a deletion is found");
    assert_eq!(broken.seq, 4);
    assert!(broken.reason.contains("missing"), "{}", broken.reason);
    pool.close().await;
    db.close().await;
}

#[tokio::test]
async fn audit_trail_and_outbox_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/audit.db?mode=rwc", dir.path().display());
    exercise(&url).await;
}

#[tokio::test]
async fn audit_trail_and_outbox_on_postgres() {
    let Some(admin) = support::postgres_url() else {
        return;
    };
    let url = support::fresh_postgres_database(&admin, "audit").await;
    exercise(&url).await;
    support::drop_database(&admin, &url).await;
}
