//! Signaling's Prometheus series (names fixed by the contract, section 4).

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::call::{CallStatus, CallType};
use crate::payload;
use crate::protocol::ErrorCode;
use crate::rooms::RelayReason;

/// The `event` label of events the server does not route.
pub const UNKNOWN_EVENT: &str = "unknown";

/// The statuses a finished call is counted under in `callrelay_calls_total`.
const FINAL_CALL_STATUSES: [CallStatus; 4] = [
    CallStatus::Ended,
    CallStatus::Rejected,
    CallStatus::Missed,
    CallStatus::Busy,
];

#[derive(Clone)]
pub struct SignalingMetrics {
    pub sockets_connected: IntGauge,
    pub rooms_active: IntGauge,
    pub room_participants: IntGauge,
    /// Sockets waiting in a consult room's lobby to be admitted.
    pub waiting_participants: IntGauge,
    pub events: IntCounterVec,
    pub calls: IntCounterVec,
    pub chat_messages: IntCounter,
    pub relay_activations: IntCounterVec,
    /// Activities the store refused after the fact (audit records and webhooks missing).
    pub activity_not_recorded: IntCounter,
}

impl SignalingMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = Self {
            sockets_connected: IntGauge::new(
                "callrelay_sockets_connected",
                "Socket.IO sockets currently connected",
            )?,
            rooms_active: IntGauge::new(
                "callrelay_rooms_active",
                "Consult rooms with at least one member",
            )?,
            room_participants: IntGauge::new(
                "callrelay_room_participants",
                "Sockets currently in a consult room",
            )?,
            waiting_participants: IntGauge::new(
                "callrelay_waiting_participants",
                "Sockets currently waiting in a consult room's waiting room to be admitted",
            )?,
            events: IntCounterVec::new(
                Opts::new(
                    "callrelay_signaling_events_total",
                    "Socket.IO events handled, by event and outcome (ok or the error code)",
                ),
                &["event", "outcome"],
            )?,
            calls: IntCounterVec::new(
                Opts::new(
                    "callrelay_calls_total",
                    "Direct calls by type and final status",
                ),
                &["call_type", "outcome"],
            )?,
            chat_messages: IntCounter::new(
                "callrelay_chat_messages_total",
                "Chat messages stored and broadcast",
            )?,
            relay_activations: IntCounterVec::new(
                Opts::new(
                    "callrelay_relay_activations_total",
                    "Rooms switched to relay through the SFU, by reason",
                ),
                &["reason"],
            )?,
            activity_not_recorded: IntCounter::new(
                "callrelay_activity_not_recorded_total",
                "Room and call activities the database refused when nothing could be undone \
                 (missing from the audit trail and the webhooks)",
            )?,
        };
        registry.register(Box::new(m.sockets_connected.clone()))?;
        registry.register(Box::new(m.rooms_active.clone()))?;
        registry.register(Box::new(m.room_participants.clone()))?;
        registry.register(Box::new(m.waiting_participants.clone()))?;
        registry.register(Box::new(m.events.clone()))?;
        registry.register(Box::new(m.calls.clone()))?;
        registry.register(Box::new(m.chat_messages.clone()))?;
        registry.register(Box::new(m.relay_activations.clone()))?;
        registry.register(Box::new(m.activity_not_recorded.clone()))?;
        m.create_known_series();
        Ok(m)
    }

    /// Creates every series whose labels are known in advance at zero, so dashboards and
    /// alerts (`rate()`, `increase()`) see them before their first event.
    fn create_known_series(&self) {
        let outcomes = std::iter::once("ok").chain(ErrorCode::ALL.map(ErrorCode::as_str));
        for outcome in outcomes {
            for event in payload::EVENTS.iter().copied().chain([UNKNOWN_EVENT]) {
                self.events.with_label_values(&[event, outcome]);
            }
        }
        for call_type in CallType::ALL {
            for status in FINAL_CALL_STATUSES {
                self.calls
                    .with_label_values(&[call_type.as_str(), status.as_str()]);
            }
        }
        for reason in RelayReason::ALL {
            self.relay_activations.with_label_values(&[reason.as_str()]);
        }
    }
}
