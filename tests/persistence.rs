//! The repository code path on SQLite always, and on PostgreSQL when
//! `CALLRELAY_TEST_POSTGRES_URL` is set: the same scenario against both.

mod support;

use callrelay::db::{Db, NewAppointment};
use callrelay_signaling::call::{Call, CallType};
use callrelay_signaling::store::{AppointmentStatus, ChatMessage, ChatSender, Store};
use callrelay_signaling::{Identity, Role};
use time::macros::datetime;

async fn exercise(db: &Db) {
    db.record_user(&Identity {
        user_id: "pat1".into(),
        name: "Pat One".into(),
        role: Role::Patient,
    })
    .await
    .unwrap();
    let appt = db
        .create_appointment(NewAppointment {
            patient_id: "pat1".into(),
            doctor_id: "doc1".into(),
            patient_name: None,
            doctor_name: Some("Dr One".into()),
            scheduled_at: datetime!(2026-12-01 09:30 UTC),
            created_by: "doc1".into(),
        })
        .await
        .unwrap();
    assert_eq!(appt.patient_name, "Pat One");
    assert_eq!(appt.status, AppointmentStatus::Pending);
    let later = db
        .create_appointment(NewAppointment {
            patient_id: "pat2".into(),
            doctor_id: "doc1".into(),
            patient_name: None,
            doctor_name: None,
            scheduled_at: datetime!(2026-12-03 08:00 UTC),
            created_by: "staff".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        later.patient_name, "pat2",
        "unknown users fall back to their id"
    );

    let for_doctor: Vec<_> = db
        .appointments_for(Some("doc1"))
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(
        for_doctor,
        vec![appt.id.clone(), later.id.clone()],
        "soonest first"
    );
    assert_eq!(db.appointments_for(Some("pat2")).await.unwrap().len(), 1);
    assert_eq!(db.appointments_for(None).await.unwrap().len(), 2);

    let (confirmed, changed) = db
        .transition_appointment(
            &appt.id,
            &[AppointmentStatus::Pending],
            AppointmentStatus::Confirmed,
        )
        .await
        .unwrap()
        .unwrap();
    assert!(changed);
    assert_eq!(
        confirmed.join_url.as_deref(),
        Some(format!("/consult/{}", appt.id).as_str())
    );
    let (_, changed_again) = db
        .transition_appointment(
            &appt.id,
            &[AppointmentStatus::Pending],
            AppointmentStatus::Confirmed,
        )
        .await
        .unwrap()
        .unwrap();
    assert!(!changed_again, "a transition applies once");
    assert!(
        db.transition_appointment(
            "missing",
            &[AppointmentStatus::Pending],
            AppointmentStatus::Confirmed
        )
        .await
        .unwrap()
        .is_none()
    );

    let access = Store::appointment(db, &appt.id).await.unwrap().unwrap();
    assert_eq!(
        (access.patient_id.as_str(), access.status),
        ("pat1", AppointmentStatus::Confirmed)
    );
    assert!(db.has_care_relation("pat1", "doc1").await.unwrap());
    assert!(!db.has_care_relation("doc1", "pat1").await.unwrap());

    for (i, text) in ["hello", "ça va? 👋", "third"].iter().enumerate() {
        db.save_chat_message(&ChatMessage {
            id: format!("m{i}"),
            appointment_id: appt.id.clone(),
            from: ChatSender {
                user_id: "pat1".into(),
                name: "Pat One".into(),
                role: Role::Patient,
            },
            text: (*text).into(),
            sent_at: format!("2026-12-01T09:3{i}:00.123Z"),
        })
        .await
        .unwrap();
    }
    let transcript = db.chat_messages(&appt.id).await.unwrap();
    let texts: Vec<_> = transcript.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(
        texts,
        vec!["hello", "ça va? 👋", "third"],
        "oldest first, text intact"
    );
    assert_eq!(transcript[0].sent_at, "2026-12-01T09:30:00.123Z");
    assert!(db.chat_messages(&later.id).await.unwrap().is_empty());

    let t0 = datetime!(2026-12-01 10:00 UTC);
    let mut first = Call::ring(
        "c1",
        "pat1",
        "doc1",
        CallType::Video,
        Some(appt.id.clone()),
        "s1",
        t0,
    );
    db.save_call(&first).await.unwrap();
    let _ = first
        .answer("doc1", "s2", t0 + time::Duration::seconds(3))
        .unwrap();
    db.save_call(&first).await.unwrap();
    let _ = first.end("pat1", t0 + time::Duration::seconds(60)).unwrap();
    db.save_call(&first).await.unwrap();
    let second = Call::ring(
        "c2",
        "doc1",
        "pat1",
        CallType::Audio,
        None,
        "s2",
        t0 + time::Duration::minutes(5),
    );
    db.save_call(&second).await.unwrap();

    let calls = db.calls_for("pat1").await.unwrap();
    let ids: Vec<_> = calls.iter().map(|c| c.call_id.as_str()).collect();
    assert_eq!(ids, vec!["c2", "c1"], "newest first");
    assert_eq!(calls[1].status, "ended");
    assert_eq!(calls[1].end_reason.as_deref(), Some("hangup"));
    assert_eq!(
        calls[1].answered_at.as_deref(),
        Some("2026-12-01T10:00:03.000Z")
    );
    assert_eq!(calls[1].media, "p2p");
    assert_eq!(
        (calls[1].caller_name.as_str(), calls[1].callee_name.as_str()),
        ("Pat One", "doc1"),
        "the name pat1's token gave; doc1 was never seen, so its id"
    );
    assert!(db.calls_for("nobody").await.unwrap().is_empty());

    assert_eq!(
        db.close_interrupted_calls().await.unwrap(),
        1,
        "the ringing call is closed"
    );
    let calls = db.calls_for("doc1").await.unwrap();
    assert_eq!(calls[0].status, "missed");
    assert_eq!(calls[0].end_reason.as_deref(), Some("server-restart"));
    assert!(calls[0].ended_at.is_some());
    assert_eq!(calls[1].status, "ended", "finished calls are left alone");
    db.ping().await.unwrap();
}

#[tokio::test]
async fn repository_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}/nested/folder/db.sqlite?mode=rwc",
        dir.path().display()
    );
    let db = Db::connect(&url, 4).await.unwrap();
    exercise(&db).await;
    db.close().await;
    // Reopening applies no migration twice and keeps the data.
    let again = Db::connect(&url, 4).await.unwrap();
    assert_eq!(again.appointments_for(None).await.unwrap().len(), 2);
}

#[tokio::test]
async fn repository_on_postgres() {
    let Some(admin) = support::postgres_url() else {
        return;
    };
    let url = support::fresh_postgres_database(&admin, "repo").await;
    let db = Db::connect(&url, 4).await.unwrap();
    exercise(&db).await;
    db.close().await;
    let again = Db::connect(&url, 4).await.unwrap();
    assert_eq!(again.appointments_for(None).await.unwrap().len(), 2);
    again.close().await;
    support::drop_database(&admin, &url).await;
}
