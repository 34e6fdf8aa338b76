//! The book of live direct calls: this node's own on a single node; in a cluster, one document
//! in the shared store ([`Doc::Calls`]), opened under its lock for each transition so that a
//! callee is busy, an answer wins and a ring times out the same whichever node its sockets are
//! on. The document also says which node each call's placing and answering sockets are on, so
//! that a node's shutdown ends only its own calls and a dead node's calls end for the other side.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};

use serde::{Deserialize, Serialize};

use crate::Signaling;
use crate::call::{Call, CallBook};
use crate::shared::{Doc, SharedError, SharedLock, parse};

/// The nodes a call's placing and answering sockets are connected to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CallHomes {
    pub caller: String,
    pub answerer: Option<String>,
}

impl CallHomes {
    /// Whether one of its sockets is connected to `node`.
    pub fn on(&self, node: &str) -> bool {
        self.caller == node || self.answerer.as_deref() == Some(node)
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct SharedCall {
    call: Call,
    homes: CallHomes,
}

/// The book, opened ([`Signaling::open_calls`]): changes made through it are kept by
/// [`Signaling::close_calls`].
pub(crate) struct OpenBook<'a> {
    book: tokio::sync::MutexGuard<'a, CallBook>,
    /// In a cluster: the document's lock, and where each call's sockets are.
    lock: Option<SharedLock>,
    pub homes: HashMap<String, CallHomes>,
}

impl Deref for OpenBook<'_> {
    type Target = CallBook;
    fn deref(&self) -> &CallBook {
        &self.book
    }
}

impl DerefMut for OpenBook<'_> {
    fn deref_mut(&mut self) -> &mut CallBook {
        &mut self.book
    }
}

impl Signaling {
    /// This node's id in the cluster ("" on a single node).
    pub(crate) fn node_id(&self) -> &str {
        self.shared.as_ref().map_or("", |s| s.node_id())
    }

    /// Opens the book: this node's, or (in a cluster) the cluster's, locked until closed.
    pub(crate) async fn open_calls(&self) -> Result<OpenBook<'_>, SharedError> {
        let mut book = self.calls.lock().await;
        let Some(shared) = &self.shared else {
            return Ok(OpenBook {
                book,
                lock: None,
                homes: HashMap::new(),
            });
        };
        let (lock, value) = shared.lock(Doc::Calls).await?;
        let calls: Vec<SharedCall> = match parse(Doc::Calls, value) {
            Ok(calls) => calls,
            Err(err) => {
                shared.unlock(Doc::Calls, lock).await;
                return Err(err);
            }
        };
        let (shared_book, homes) = into_book(calls);
        *book = shared_book;
        Ok(OpenBook {
            book,
            lock: Some(lock),
            homes,
        })
    }

    /// Closes the book, keeping its changes (`changed`: in a cluster, written back).
    pub(crate) async fn close_calls(
        &self,
        open: OpenBook<'_>,
        changed: bool,
    ) -> Result<(), SharedError> {
        let (Some(shared), Some(lock)) = (&self.shared, open.lock) else {
            return Ok(());
        };
        if !changed {
            shared.unlock(Doc::Calls, lock).await;
            return Ok(());
        }
        let mut calls: Vec<SharedCall> = open
            .book
            .iter()
            .map(|call| SharedCall {
                homes: open.homes.get(&call.id).cloned().unwrap_or_default(),
                call: call.clone(),
            })
            .collect();
        calls.sort_by(|a, b| a.call.id.cmp(&b.call.id));
        let value = (!calls.is_empty()).then(|| serde_json::json!(calls).to_string());
        shared.write_unlock(Doc::Calls, lock, value, &[]).await
    }

    /// Reads the live calls, and where their sockets are, at one moment, without the lock:
    /// `f` sees them (on a single node, this node's book under its mutex: nothing is copied).
    pub(crate) async fn read_calls<R>(
        &self,
        f: impl FnOnce(&CallsRead<'_>) -> R,
    ) -> Result<R, SharedError> {
        let Some(shared) = &self.shared else {
            let book = self.calls.lock().await;
            let homes = HashMap::new();
            return Ok(f(&CallsRead {
                book: &book,
                homes: &homes,
                node: None,
            }));
        };
        let calls: Vec<SharedCall> = parse(Doc::Calls, shared.read(Doc::Calls).await?)?;
        let (book, homes) = into_book(calls);
        Ok(f(&CallsRead {
            book: &book,
            homes: &homes,
            node: Some(shared.node_id()),
        }))
    }
}

/// The live calls as read ([`Signaling::read_calls`]).
pub(crate) struct CallsRead<'a> {
    pub book: &'a CallBook,
    /// Where each call's sockets are (empty on a single node).
    pub homes: &'a HashMap<String, CallHomes>,
    /// This node, in a cluster.
    node: Option<&'a str>,
}

impl CallsRead<'_> {
    /// Whether one of the call's sockets is on this node (every call is, on a single node).
    pub fn is_ours(&self, call: &Call) -> bool {
        match self.node {
            None => true,
            Some(node) => self.homes.get(&call.id).is_some_and(|h| h.on(node)),
        }
    }
}

/// The book and the calls' homes of a shared document.
fn into_book(calls: Vec<SharedCall>) -> (CallBook, HashMap<String, CallHomes>) {
    let mut book = CallBook::new();
    let mut homes = HashMap::new();
    for SharedCall { call, homes: home } in calls {
        homes.insert(call.id.clone(), home);
        if let Err(err) = book.insert(call) {
            tracing::warn!(error = %err, "a shared call could not be read back");
        }
    }
    (book, homes)
}
