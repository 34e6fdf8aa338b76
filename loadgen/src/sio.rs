//! A small Socket.IO client (protocol v5 over engine.io v4, websocket transport only): enough
//! to speak callrelay's contract section 3 the way socket.io-client v4 does.
//!
//! Frames (text): `0{...}` engine.io open, `2`/`3` ping/pong (the server pings), `40{auth}` /
//! `40{"sid"}` namespace connect, `44{"message"}` connect error, `42[event, data]` events,
//! `42<id>[event, data]` events that want an ack, `43<id>[data]` acks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

use super::LoadError;

type Acks = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// A connected socket. Cheap to clone; dropping every clone closes it.
#[derive(Clone)]
pub struct SioClient {
    out: mpsc::UnboundedSender<String>,
    acks: Acks,
    next_ack: Arc<AtomicU64>,
    sid: String,
}

/// A server-to-client event: (name, first argument).
pub type Event = (String, Value);

impl SioClient {
    /// Connects to `base` (`http://host:port`) with `auth` (e.g. `{"token": ...}`); resolves once
    /// the namespace connect is accepted. Events arrive on the returned receiver.
    pub async fn connect(
        base: &str,
        auth: Value,
        limit: Duration,
    ) -> Result<(SioClient, mpsc::UnboundedReceiver<Event>), LoadError> {
        let ws_url = format!(
            "{}/socket.io/?EIO=4&transport=websocket",
            base.trim_end_matches('/')
                .replacen("http://", "ws://", 1)
                .replacen("https://", "wss://", 1)
        );
        let (ws, _) = tokio::time::timeout(limit, tokio_tungstenite::connect_async(ws_url))
            .await
            .map_err(|_| LoadError::Timeout("websocket connect".into()))?
            .map_err(|e| LoadError::Signaling(format!("websocket: {e}")))?;
        let (mut sink, mut stream) = ws.split();
        let (out_tx, mut out_rx) = mpsc::unbounded_channel::<String>();
        let (ev_tx, ev_rx) = mpsc::unbounded_channel::<Event>();
        let acks: Acks = Arc::default();
        let (sid_tx, sid_rx) = oneshot::channel::<Result<String, LoadError>>();

        tokio::spawn(async move {
            while let Some(text) = out_rx.recv().await {
                if sink.send(Message::text(text)).await.is_err() {
                    break;
                }
            }
            let _ = sink.close().await;
        });

        let reader_acks = Arc::clone(&acks);
        let pong = out_tx.clone();
        let connect_frame = format!("40{auth}");
        let hello = out_tx.clone();
        tokio::spawn(async move {
            let mut sid_tx = Some(sid_tx);
            while let Some(Ok(msg)) = stream.next().await {
                let Message::Text(text) = msg else { continue };
                let text = text.as_str();
                match text.as_bytes().first() {
                    Some(b'0') => {
                        let _ = hello.send(connect_frame.clone());
                    }
                    Some(b'2') => {
                        let _ = pong.send("3".into());
                    }
                    Some(b'1') => break,
                    Some(b'4') => handle_packet(&text[1..], &mut sid_tx, &ev_tx, &reader_acks),
                    _ => {}
                }
            }
            if let Some(tx) = sid_tx.take() {
                let _ = tx.send(Err(LoadError::Signaling("closed before connect".into())));
            }
            // Wake every pending ack: the socket is gone.
            reader_acks.lock().map(|mut a| a.clear()).ok();
        });

        let sid = tokio::time::timeout(limit, sid_rx)
            .await
            .map_err(|_| LoadError::Timeout("socket.io connect".into()))?
            .map_err(|_| LoadError::Signaling("closed before connect".into()))??;
        Ok((
            SioClient {
                out: out_tx,
                acks,
                next_ack: Arc::new(AtomicU64::new(1)),
                sid,
            },
            ev_rx,
        ))
    }

    /// The Socket.IO socket id.
    pub fn sid(&self) -> &str {
        &self.sid
    }

    /// Emits `event` without waiting for an ack.
    pub fn emit(&self, event: &str, data: &Value) {
        let _ = self.out.send(format!(
            "42{}",
            Value::Array(vec![event.into(), data.clone()])
        ));
    }

    /// Emits `event` and waits for its ack (the first ack argument).
    pub async fn call(
        &self,
        event: &str,
        data: &Value,
        limit: Duration,
    ) -> Result<Value, LoadError> {
        let id = self.next_ack.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.acks
            .lock()
            .map_err(|_| LoadError::Signaling("poisoned".into()))?
            .insert(id, tx);
        self.out
            .send(format!(
                "42{id}{}",
                Value::Array(vec![event.into(), data.clone()])
            ))
            .map_err(|_| LoadError::Signaling("socket closed".into()))?;
        tokio::time::timeout(limit, rx)
            .await
            .map_err(|_| LoadError::Timeout(format!("ack of {event}")))?
            .map_err(|_| LoadError::Signaling(format!("socket closed awaiting ack of {event}")))
    }

    /// Like [`SioClient::call`], but an ack other than `{ok:true}` is an error.
    pub async fn call_ok(
        &self,
        event: &str,
        data: &Value,
        limit: Duration,
    ) -> Result<Value, LoadError> {
        let ack = self.call(event, data, limit).await?;
        if ack.get("ok") == Some(&Value::Bool(true)) {
            Ok(ack)
        } else {
            Err(LoadError::Signaling(format!("{event} refused: {ack}")))
        }
    }

    /// Closes the socket (namespace disconnect, then the websocket).
    pub fn close(&self) {
        let _ = self.out.send("41".into());
        let _ = self.out.send("1".into());
    }
}

/// A Socket.IO packet (the engine.io `4` already stripped).
fn handle_packet(
    p: &str,
    sid_tx: &mut Option<oneshot::Sender<Result<String, LoadError>>>,
    events: &mpsc::UnboundedSender<Event>,
    acks: &Acks,
) {
    let (kind, rest) = p.split_at(p.len().min(1));
    // Namespace "/" is implicit; any other would be "/nsp," before the id.
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let (id, body) = rest.split_at(digits);
    let value: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    match kind {
        "0" => {
            if let Some(tx) = sid_tx.take() {
                let sid = value
                    .get("sid")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                let _ = tx.send(Ok(sid));
            }
        }
        "4" => {
            if let Some(tx) = sid_tx.take() {
                let msg = value
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("connect_error")
                    .to_owned();
                let _ = tx.send(Err(LoadError::Signaling(format!("connect_error: {msg}"))));
            }
        }
        "2" => {
            if let Value::Array(mut items) = value
                && !items.is_empty()
            {
                let name = items.remove(0).as_str().unwrap_or_default().to_owned();
                let arg = items.into_iter().next().unwrap_or(Value::Null);
                let _ = events.send((name, arg));
            }
        }
        "3" => {
            if let Ok(id) = id.parse::<u64>()
                && let Some(tx) = acks.lock().ok().and_then(|mut a| a.remove(&id))
            {
                let arg = match value {
                    Value::Array(items) => items.into_iter().next().unwrap_or(Value::Null),
                    other => other,
                };
                let _ = tx.send(arg);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_events_acks_and_connect_results() {
        let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
        let acks: Acks = Arc::default();
        let (tx, mut rx) = oneshot::channel();
        let mut sid_tx = Some(tx);
        handle_packet(r#"0{"sid":"abc"}"#, &mut sid_tx, &ev_tx, &acks);
        assert_eq!(rx.try_recv().unwrap().unwrap(), "abc");
        handle_packet(
            r#"2["relay-activated",{"roomId":"r"}]"#,
            &mut None,
            &ev_tx,
            &acks,
        );
        let (name, arg) = ev_rx.try_recv().unwrap();
        assert_eq!(
            (name.as_str(), arg["roomId"].as_str()),
            ("relay-activated", Some("r"))
        );
        let (atx, mut arx) = oneshot::channel();
        acks.lock().unwrap().insert(12, atx);
        handle_packet(r#"312[{"ok":true}]"#, &mut None, &ev_tx, &acks);
        assert_eq!(arx.try_recv().unwrap()["ok"], Value::Bool(true));
        let (tx, mut rx) = oneshot::channel();
        handle_packet(
            r#"4{"message":"unauthorized"}"#,
            &mut Some(tx),
            &ev_tx,
            &acks,
        );
        assert!(rx.try_recv().unwrap().is_err());
    }
}
