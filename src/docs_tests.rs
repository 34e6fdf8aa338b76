//! Keeps `docs/` true to the code: every Socket.IO event a client may send and every event the
//! server sends has a row in `docs/protocol.md` (and no row names an event that is gone), as do
//! the error codes, call end reasons and relay reasons; every route of the OpenAPI description is
//! in `docs/http.md` and every row there is a route; every webhook event is in
//! `docs/webhooks.md`; every metric is in `docs/metrics.md` with its type and labels.
//!
//! The names come from the code itself: the public lists (`payload::EVENTS`, `ErrorCode::ALL`,
//! `EndReason::ALL`, ...), the registries as `/metrics` serves them, the OpenAPI description,
//! and, where no list exists (the events the server emits, metric names), the non-test source.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use callrelay_signaling::call::{CallEvent, EndReason};
use callrelay_signaling::protocol::ErrorCode;
use callrelay_signaling::rooms::RelayReason;
use callrelay_signaling::{MediaMode, activity, payload};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn doc(name: &str) -> String {
    let path = root().join("docs").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The first cell of a Markdown table row, when it is one backquoted name: `| `name` | ...`.
fn first_cell(line: &str) -> Option<&str> {
    let cell = line.strip_prefix('|')?.split('|').next()?.trim();
    let name = cell.strip_prefix('`')?.strip_suffix('`')?;
    (!name.contains('`')).then_some(name)
}

/// The cells of a table row after the first, trimmed.
fn other_cells(line: &str) -> Vec<String> {
    line.trim()
        .trim_matches('|')
        .split('|')
        .skip(1)
        .map(|c| c.trim().to_owned())
        .collect()
}

/// Every row's first-cell name in `text`.
fn row_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(first_cell)
        .map(str::to_owned)
        .collect()
}

/// Which way the events of a `docs/protocol.md` table go, from the heading above it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Way {
    ToServer,
    ToClient,
}

/// The event rows of `docs/protocol.md`: those under a "Client to server" heading, and those
/// under a "Server to client" heading or in "Server-wide events".
fn protocol_events() -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut to_server, mut to_client) = (BTreeSet::new(), BTreeSet::new());
    let mut way = None;
    for line in doc("protocol.md").lines() {
        if line.starts_with('#') {
            way = if line.contains("Client to server") {
                Some(Way::ToServer)
            } else if line.contains("Server to client") || line.contains("Server-wide events") {
                Some(Way::ToClient)
            } else {
                None
            };
            continue;
        }
        let Some(name) = first_cell(line).filter(|n| *n != "event") else {
            continue;
        };
        match way {
            Some(Way::ToServer) => to_server.insert(name.to_owned()),
            Some(Way::ToClient) => to_client.insert(name.to_owned()),
            None => false,
        };
    }
    (to_server, to_client)
}

/// `code` with its comments and character literals blanked out (same length), so that what is
/// left of quotes are string literals.
fn without_comments(code: &str) -> String {
    let b = code.as_bytes();
    let mut out = b.to_vec();
    let blank = |out: &mut Vec<u8>, from: usize, to: usize| {
        for byte in &mut out[from..to] {
            if *byte != b'\n' {
                *byte = b' ';
            }
        }
    };
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                // A string: skip to its end.
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'r' if b.get(i + 1).is_some_and(|&c| c == b'#' || c == b'"')
                && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')) =>
            {
                let hashes = b[i + 1..].iter().take_while(|&&c| c == b'#').count();
                if b.get(i + 1 + hashes) != Some(&b'"') {
                    i += 1;
                    continue;
                }
                let end = format!("\"{}", "#".repeat(hashes));
                let body = i + 2 + hashes;
                let close = code[body..]
                    .find(&end)
                    .map_or(b.len(), |at| body + at + end.len());
                blank(&mut out, i, close);
                i = close;
            }
            b'/' if b.get(i + 1) == Some(&b'/') => {
                let end = code[i..].find('\n').map_or(b.len(), |at| i + at);
                blank(&mut out, i, end);
                i = end;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let end = code[i + 2..]
                    .find("*/")
                    .map_or(b.len(), |at| i + 2 + at + 2);
                blank(&mut out, i, end);
                i = end;
            }
            b'\'' => {
                // A character literal ('x', '\n', '\''), or a lifetime (left alone).
                let len = if b.get(i + 1) == Some(&b'\\') {
                    code[i + 3..].find('\'').map(|at| at + 4)
                } else {
                    code[i + 1..]
                        .chars()
                        .next()
                        .filter(|c| code[i + 1 + c.len_utf8()..].starts_with('\''))
                        .map(|c| c.len_utf8() + 2)
                };
                match len {
                    Some(len) => {
                        blank(&mut out, i, i + len);
                        i += len;
                    }
                    None => i += 1,
                }
            }
            _ => i += 1,
        }
    }
    String::from_utf8(out).expect("only ASCII bytes were replaced, by spaces")
}

/// The string literals of `code` (already [`without_comments`]), as written (escapes kept).
fn string_literals(code: &str) -> Vec<&str> {
    let b = code.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'"' {
            let start = i + 1;
            i = start;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            out.push(&code[start..i.min(b.len())]);
        }
        i += 1;
    }
    out
}

/// The `.rs` files under `dir`, with the text before their first `#[cfg(test)]` (test-only
/// files left out), comments blanked.
fn sources(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                // The media test kit: test code, not the product's.
                if name != "testkit" {
                    stack.push(path);
                }
            } else if name.ends_with(".rs") && !name.ends_with("tests.rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                let code = text.split("#[cfg(test)]").next().unwrap_or("");
                out.push((path, without_comments(code)));
            }
        }
    }
    out.sort();
    out
}

/// The arguments of the call whose `(` is at `open`, split at top-level commas.
fn call_args(code: &str, open: usize) -> Vec<&str> {
    let (mut depth, mut in_str, mut escaped) = (0usize, false, false);
    let mut start = open + 1;
    let mut args = Vec::new();
    for (i, c) in code[open..].char_indices().map(|(i, c)| (open + i, c)) {
        if in_str {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_str = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_str = true,
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => {
                depth -= 1;
                if depth == 0 {
                    args.push(code[start..i].trim());
                    return args;
                }
            }
            ',' if depth == 1 => {
                args.push(code[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    args
}

fn is_event_name(s: &str) -> bool {
    !s.is_empty()
        && s.split('-')
            .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_lowercase()))
}

/// Every event name signaling emits: the string literals passed to an `emit...(` call, the
/// call events, and the two the relay names in a match before emitting.
fn emitted_events() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut relay_source = String::new();
    for (path, code) in sources(&root().join("signaling/src")) {
        if path.ends_with("relay.rs") {
            relay_source = code.clone();
        }
        let mut from = 0;
        while let Some(at) = code[from..].find("emit") {
            let at = from + at;
            from = at + 4;
            let rest = &code[at..];
            let name_len = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            if !rest[name_len..].starts_with('(') {
                continue;
            }
            for arg in call_args(&code, at + name_len) {
                if let Some(lit) = arg.strip_prefix('"').and_then(|a| a.strip_suffix('"'))
                    && is_event_name(lit)
                {
                    names.insert(lit.to_owned());
                }
            }
        }
    }
    for event in [
        CallEvent::Answered,
        CallEvent::AnsweredElsewhere,
        CallEvent::Rejected,
        CallEvent::Ended(EndReason::Hangup),
    ] {
        names.insert(event.name().to_owned());
    }
    for name in ["sfu-subscribe-offer", "sfu-candidate"] {
        assert!(
            relay_source.contains(&format!("\"{name}\"")),
            "signaling/src/relay.rs no longer emits {name}: update this test"
        );
        names.insert(name.to_owned());
    }
    names
}

fn missing<'a>(
    wanted: impl IntoIterator<Item = &'a String>,
    have: &BTreeSet<String>,
) -> Vec<String> {
    wanted
        .into_iter()
        .filter(|n| !have.contains(*n))
        .cloned()
        .collect()
}

#[test]
fn every_socketio_event_is_in_docs_protocol() {
    let (to_server, to_client) = protocol_events();

    let events: BTreeSet<String> = payload::EVENTS.iter().map(|e| e.to_string()).collect();
    let undocumented = missing(&events, &to_server);
    assert!(
        undocumented.is_empty(),
        "client events without a row under a \"Client to server\" heading of docs/protocol.md: \
         {undocumented:?}"
    );
    let gone = missing(&to_server, &events);
    assert!(
        gone.is_empty(),
        "docs/protocol.md lists client events the server does not handle: {gone:?}"
    );

    let emitted = emitted_events();
    assert!(
        emitted.len() >= 20,
        "the source scan found too little: {emitted:?}"
    );
    let undocumented = missing(&emitted, &to_client);
    assert!(
        undocumented.is_empty(),
        "events the server emits without a row under a \"Server to client\" heading of \
         docs/protocol.md: {undocumented:?}"
    );
    let gone = missing(&to_client, &emitted);
    assert!(
        gone.is_empty(),
        "docs/protocol.md lists server events the server never sends: {gone:?}"
    );
}

#[test]
fn every_error_code_and_reason_is_in_docs_protocol() {
    let text = doc("protocol.md");
    let rows = row_names(&text);
    for code in ErrorCode::ALL {
        assert!(
            rows.contains(code.as_str()),
            "error code {} has no row in docs/protocol.md",
            code.as_str()
        );
    }
    for reason in EndReason::ALL {
        assert!(
            rows.contains(reason.as_str()),
            "call-ended reason {reason} has no row in docs/protocol.md"
        );
    }
    for reason in RelayReason::ALL {
        assert!(
            text.contains(&format!("`{}`", reason.as_str())),
            "relay reason {} is not in docs/protocol.md",
            reason.as_str()
        );
    }
    for mode in MediaMode::NAMES {
        assert!(
            text.contains(&format!("`{mode}`")),
            "media.mode {mode} is not in docs/protocol.md"
        );
    }
}

#[test]
fn every_webhook_event_is_in_docs_webhooks() {
    let rows: BTreeSet<String> = row_names(&doc("webhooks.md"))
        .into_iter()
        .filter(|n| n.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        .collect();
    let events: BTreeSet<String> = activity::WEBHOOK_EVENTS
        .iter()
        .map(|e| e.to_string())
        .collect();
    assert_eq!(
        rows, events,
        "docs/webhooks.md's event table against activity::WEBHOOK_EVENTS"
    );
}

#[test]
fn every_http_route_is_in_docs_http() {
    use utoipa::OpenApi;
    let spec = crate::http::openapi::ApiDoc::openapi();
    let mut routes = BTreeSet::from(["GET /api/openapi.json".to_owned()]);
    for (path, item) in &spec.paths.paths {
        for (method, op) in [
            ("GET", &item.get),
            ("POST", &item.post),
            ("PUT", &item.put),
            ("PATCH", &item.patch),
            ("DELETE", &item.delete),
        ] {
            if op.is_some() {
                routes.insert(format!("{method} {path}"));
            }
        }
    }
    let text = doc("http.md");
    let documented: BTreeSet<String> = row_names(&text)
        .into_iter()
        .filter(|n| {
            n.split_once(" /")
                .is_some_and(|(m, _)| m.bytes().all(|b| b.is_ascii_uppercase()))
        })
        .collect();
    assert_eq!(
        documented, routes,
        "docs/http.md's routes against /api/openapi.json"
    );
    let rows = row_names(&text);
    for action in crate::http::ADMIN_ACTIONS {
        assert!(
            rows.contains(action),
            "audit action {action} has no row in docs/http.md"
        );
    }
}

/// One documented metric: its type and label names.
#[derive(Debug, PartialEq, Eq)]
struct MetricDoc {
    kind: String,
    labels: BTreeSet<String>,
}

/// The metric rows of `docs/metrics.md`: `| `name` | type | `label`, ... | meaning |`.
fn documented_metrics() -> BTreeMap<String, MetricDoc> {
    let mut out = BTreeMap::new();
    for line in doc("metrics.md").lines() {
        let Some(name) = first_cell(line).filter(|n| n.contains('_')) else {
            continue;
        };
        let cells = other_cells(line);
        let labels = cells
            .get(1)
            .map(|c| {
                c.split('`')
                    .skip(1)
                    .step_by(2)
                    .map(|l| l.split('=').next().unwrap_or(l).to_owned())
                    .collect()
            })
            .unwrap_or_default();
        let entry = MetricDoc {
            kind: cells.first().cloned().unwrap_or_default(),
            labels,
        };
        assert!(
            out.insert(name.to_owned(), entry).is_none(),
            "{name} twice in docs/metrics.md"
        );
    }
    out
}

#[tokio::test]
async fn every_metric_is_in_docs_metrics() {
    let metrics = crate::metrics::Metrics::new().unwrap();
    callrelay_signaling::SignalingMetrics::register(&metrics.registry).unwrap();
    crate::webhooks::WebhookMetrics::register(&metrics.registry).unwrap();
    let media = callrelay_media::MediaConfig {
        bind: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        ..Default::default()
    };
    let _sfu = callrelay_media::Sfu::start(media, &metrics.registry)
        .await
        .unwrap();
    // Series whose labels are only known once a request came.
    metrics.http_requests.with_label_values(&["/livez", "200"]);
    metrics.http_duration.with_label_values(&["/livez"]);

    let documented = documented_metrics();
    let mut registered = BTreeSet::new();
    for family in metrics.registry.gather() {
        let name = family.name().to_owned();
        let kind = format!("{:?}", family.get_field_type()).to_ascii_lowercase();
        let labels: BTreeSet<String> = family
            .get_metric()
            .first()
            .map(|m| m.get_label().iter().map(|l| l.name().to_owned()).collect())
            .unwrap_or_default();
        let doc = documented
            .get(&name)
            .unwrap_or_else(|| panic!("{name} ({kind}) has no row in docs/metrics.md"));
        assert_eq!(
            doc,
            &MetricDoc { kind, labels },
            "{name} in docs/metrics.md"
        );
        registered.insert(name);
    }
    // Names in the source whose series may have no label values yet, and so are not gathered.
    for dir in ["src", "signaling/src", "media/src"] {
        for (path, code) in sources(&root().join(dir)) {
            for lit in string_literals(&code) {
                if lit.starts_with("callrelay_")
                    && lit
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                {
                    assert!(
                        documented.contains_key(lit),
                        "{lit} ({}) has no row in docs/metrics.md",
                        path.display()
                    );
                    registered.insert(lit.to_owned());
                }
            }
        }
    }
    let gone: Vec<&String> = documented
        .keys()
        .filter(|n| !registered.contains(*n))
        .collect();
    assert!(
        gone.is_empty(),
        "docs/metrics.md lists metrics that are not registered: {gone:?}"
    );
}
