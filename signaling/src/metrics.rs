//! Signaling's Prometheus series (names fixed by the contract, section 4).

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

#[derive(Clone)]
pub struct SignalingMetrics {
    pub sockets_connected: IntGauge,
    pub rooms_active: IntGauge,
    pub room_participants: IntGauge,
    pub events: IntCounterVec,
    pub calls: IntCounterVec,
    pub chat_messages: IntCounter,
    pub relay_activations: IntCounterVec,
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
        };
        registry.register(Box::new(m.sockets_connected.clone()))?;
        registry.register(Box::new(m.rooms_active.clone()))?;
        registry.register(Box::new(m.room_participants.clone()))?;
        registry.register(Box::new(m.events.clone()))?;
        registry.register(Box::new(m.calls.clone()))?;
        registry.register(Box::new(m.chat_messages.clone()))?;
        registry.register(Box::new(m.relay_activations.clone()))?;
        Ok(m)
    }
}
