//! Keeps each socket's events in arrival order.
//!
//! socketioxide spawns a task per incoming message, so two events sent back to back (an offer and
//! the ICE candidates that follow it, or two chat messages) could otherwise be handled, relayed or
//! stored out of order. Extraction runs synchronously in arrival order, so the `InOrder` extractor
//! takes a ticket there; the handler then waits for its turn before doing anything observable.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::adapter::NodeAdapter;
use socketioxide::handler::FromMessageParts;
use socketioxide::socket::Socket;
use tokio::sync::watch;

/// Per-socket ticket dispenser, stored in the socket's extensions at connect time.
#[derive(Clone)]
pub struct OrderGate(Arc<GateState>);

struct GateState {
    next_ticket: AtomicU64,
    serving: watch::Sender<u64>,
}

impl Default for OrderGate {
    fn default() -> Self {
        Self(Arc::new(GateState {
            next_ticket: AtomicU64::new(0),
            serving: watch::channel(0).0,
        }))
    }
}

impl OrderGate {
    /// Takes the next place in the queue (for work that does not come through an extractor,
    /// like disconnect clean-up, which must run after every event received before it).
    pub fn enqueue(&self) -> InOrder {
        InOrder {
            gate: Some(self.clone()),
            ticket: self.0.next_ticket.fetch_add(1, Ordering::SeqCst),
        }
    }
}

/// A handler's place in its socket's queue.
pub struct InOrder {
    gate: Option<OrderGate>,
    ticket: u64,
}

/// Held while a handler runs; the next event's handler starts when it is dropped.
pub struct Turn {
    gate: Option<OrderGate>,
}

impl InOrder {
    pub async fn turn(self) -> Turn {
        if let Some(gate) = &self.gate {
            let mut rx = gate.0.serving.subscribe();
            // The sender lives as long as the gate, which we hold: wait_for cannot fail here.
            let _ = rx.wait_for(|serving| *serving >= self.ticket).await;
        }
        Turn { gate: self.gate }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        if let Some(gate) = &self.gate {
            gate.0.serving.send_modify(|serving| *serving += 1);
        }
    }
}

impl FromMessageParts<NodeAdapter> for InOrder {
    type Error = std::convert::Infallible;

    fn from_message_parts(
        s: &Arc<Socket<NodeAdapter>>,
        _: &mut socketioxide_core::Value,
        _: &Option<i64>,
    ) -> Result<Self, Self::Error> {
        Ok(match s.extensions.get::<OrderGate>() {
            Some(gate) => gate.enqueue(),
            None => InOrder {
                gate: None,
                ticket: 0,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn turns_are_served_in_ticket_order_even_when_tasks_start_reversed() {
        let gate = OrderGate::default();
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let tickets: Vec<InOrder> = (0..5).map(|_| gate.enqueue()).collect();
        let mut tasks = Vec::new();
        for (i, ticket) in tickets.into_iter().enumerate().rev() {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                let _turn = ticket.turn().await;
                tokio::time::sleep(Duration::from_millis(2)).await;
                log.lock().unwrap().push(i);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*log.lock().unwrap(), vec![0, 1, 2, 3, 4]);
    }
}
