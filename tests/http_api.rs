//! The HTTP API of contract section 2 and the process contract of section 1, against the real
//! binary over real HTTP.

mod support;

use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use support::TestServer;

async fn get(server: &TestServer, path: &str, token: Option<&str>) -> (StatusCode, Value) {
    let mut req = Client::new().get(server.url(path));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let res = req.send().await.expect("request");
    let status = res.status();
    (status, res.json().await.unwrap_or(Value::Null))
}

async fn post(
    server: &TestServer,
    path: &str,
    token: Option<&str>,
    body: Value,
) -> (StatusCode, Value) {
    let mut req = Client::new().post(server.url(path)).json(&body);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let res = req.send().await.expect("request");
    let status = res.status();
    (status, res.json().await.unwrap_or(Value::Null))
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<none>")
}

fn appointment_body(patient: &str, doctor: &str) -> Value {
    json!({"patientId": patient, "doctorId": doctor, "scheduledAt": "2026-12-01T09:30:00Z"})
}

#[tokio::test]
async fn health_metrics_and_openapi_are_public() {
    let server = TestServer::start(&[]).await;
    assert_eq!(get(&server, "/livez", None).await.0, StatusCode::OK);
    assert_eq!(get(&server, "/readyz", None).await.0, StatusCode::OK);

    let metrics = Client::new()
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "callrelay_sockets_connected",
        "callrelay_rooms_active",
        "callrelay_room_participants",
        "callrelay_chat_messages_total",
        "callrelay_http_requests_total",
        "callrelay_http_request_duration_seconds",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    ] {
        assert!(metrics.contains(name), "/metrics lacks {name}");
    }
    assert!(
        metrics.contains(r#"callrelay_http_requests_total{route="/livez",status="200"}"#),
        "requests are counted by route and status:\n{metrics}"
    );

    let (status, doc) = get(&server, "/api/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap_or("").starts_with('3'));
    for path in [
        "/api/dev/token",
        "/api/me",
        "/api/appointments",
        "/api/appointments/{id}",
        "/api/appointments/{id}/confirm",
        "/api/appointments/{id}/cancel",
        "/api/appointments/{id}/messages",
        "/api/calls",
        "/api/ice-servers",
        "/livez",
        "/readyz",
        "/metrics",
    ] {
        assert!(doc["paths"].get(path).is_some(), "OpenAPI lacks {path}");
    }
}

#[tokio::test]
async fn tokens_are_checked_and_refusals_counted() {
    let server = TestServer::start(&[]).await;
    let token = server.token("u1", "Ann", "patient").await;
    let (status, me) = get(&server, "/api/me", Some(&token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me, json!({"id": "u1", "name": "Ann", "role": "patient"}));

    let now = jsonwebtoken::get_current_timestamp();
    let sign = |secret: &[u8], claims: Value| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret),
        )
        .unwrap()
    };
    let wrong_secret = sign(
        b"not-the-secret",
        json!({"sub": "u1", "name": "A", "role": "patient", "iat": now, "exp": now + 60}),
    );
    let expired = sign(
        support::SECRET.as_bytes(),
        json!({"sub": "u1", "name": "A", "role": "patient", "iat": now - 7200, "exp": now - 3600}),
    );
    let odd_role = sign(
        support::SECRET.as_bytes(),
        json!({"sub": "u1", "name": "A", "role": "janitor", "iat": now, "exp": now + 60}),
    );
    // {"alg":"none"} with valid-looking claims and no signature.
    let alg_none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ1MSIsIm5hbWUiOiJYIiwicm9sZSI6ImFkbWluIiwiZXhwIjo0MTAyNDQ0ODAwLCJpYXQiOjF9.";
    for bad in [
        None,
        Some("garbage"),
        Some(wrong_secret.as_str()),
        Some(expired.as_str()),
        Some(odd_role.as_str()),
        Some(alg_none),
    ] {
        let (status, body) = get(&server, "/api/me", bad).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "token {bad:?}");
        assert_eq!(error_code(&body), "unauthorized");
    }
    let metrics = Client::new()
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for reason in [
        "missing",
        "malformed",
        "bad_signature",
        "expired",
        "unknown_role",
        "algorithm",
    ] {
        assert!(
            metrics.contains(&format!(
                "callrelay_auth_failures_total{{reason=\"{reason}\"}} 1"
            )),
            "auth failure {reason} not counted:\n{metrics}"
        );
    }
    assert!(
        !metrics.contains(support::SECRET),
        "the secret leaked into /metrics"
    );

    let (status, body) = post(
        &server,
        "/api/dev/token",
        None,
        json!({"sub": "x", "name": "X", "role": "root"}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&body), "invalid_payload");
    for bad in [
        json!({"sub": "", "name": "X", "role": "patient"}),
        json!({"sub": "x", "name": " ", "role": "patient"}),
        json!({"sub": "x", "name": "X", "role": "patient", "admin": true}),
    ] {
        let (status, body) = post(&server, "/api/dev/token", None, bad.clone()).await;
        assert_eq!(
            (status, error_code(&body)),
            (StatusCode::BAD_REQUEST, "invalid_payload"),
            "{bad}"
        );
    }
    // A name is up to 200 characters, however many bytes they take.
    let long = "é".repeat(200);
    let (status, body) = post(
        &server,
        "/api/dev/token",
        None,
        json!({"sub": "u2", "name": long, "role": "patient"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let token = body["token"].as_str().expect("a token");
    assert_eq!(
        get(&server, "/api/me", Some(token)).await.1["name"],
        json!(long)
    );
}

#[tokio::test]
async fn appointments_follow_roles_and_states() {
    let server = TestServer::start(&[]).await;
    let doctor = server.token("doc1", "Dr One", "doctor").await;
    let other_doctor = server.token("doc2", "Dr Two", "doctor").await;
    let patient = server.token("pat1", "Pat One", "patient").await;
    let outsider = server.token("pat2", "Pat Two", "patient").await;
    let staff = server.token("staff1", "Desk", "staff").await;
    let admin = server.token("admin1", "Root", "admin").await;

    let (status, body) = post(
        &server,
        "/api/appointments",
        Some(&patient),
        appointment_body("pat1", "doc1"),
    )
    .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::FORBIDDEN, "forbidden")
    );
    let (status, _) = post(
        &server,
        "/api/appointments",
        Some(&doctor),
        appointment_body("pat1", "doc2"),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "a doctor books only for themself"
    );

    let (status, appt) = post(
        &server,
        "/api/appointments",
        Some(&doctor),
        appointment_body("pat1", "doc1"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(appt["status"], "pending");
    assert_eq!(appt["doctorName"], "Dr One");
    assert_eq!(
        appt["patientName"], "Pat One",
        "names come from users seen on tokens"
    );
    assert_eq!(appt["scheduledAt"], "2026-12-01T09:30:00.000Z");
    assert!(
        appt.get("joinUrl").is_none(),
        "no joinUrl before confirmation"
    );
    let id = appt["id"].as_str().unwrap().to_owned();

    let (status, staff_appt) = post(
        &server,
        "/api/appointments",
        Some(&staff),
        json!({
        "patientId": "pat2", "doctorId": "doc2", "scheduledAt": "2026-12-02T10:00:00+01:00",
        "patientName": "Second Patient", "doctorName": "Second Doctor"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(staff_appt["patientName"], "Second Patient");
    assert_eq!(staff_appt["scheduledAt"], "2026-12-02T09:00:00.000Z");

    let ids = |body: &Value| -> Vec<String> {
        body["appointments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        ids(&get(&server, "/api/appointments", Some(&patient)).await.1),
        vec![id.clone()]
    );
    assert_eq!(
        ids(&get(&server, "/api/appointments", Some(&doctor)).await.1),
        vec![id.clone()]
    );
    assert_eq!(
        ids(&get(&server, "/api/appointments", Some(&admin)).await.1).len(),
        2
    );

    let path = format!("/api/appointments/{id}");
    assert_eq!(get(&server, &path, Some(&patient)).await.0, StatusCode::OK);
    assert_eq!(get(&server, &path, Some(&staff)).await.0, StatusCode::OK);
    assert_eq!(
        get(&server, &path, Some(&outsider)).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        get(&server, &path, Some(&other_doctor)).await.0,
        StatusCode::FORBIDDEN
    );
    let (status, body) = get(&server, "/api/appointments/no-such-id", Some(&admin)).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::NOT_FOUND, "not_found")
    );

    let confirm = format!("/api/appointments/{id}/confirm");
    assert_eq!(
        post(&server, &confirm, Some(&patient), json!({})).await.0,
        StatusCode::FORBIDDEN
    );
    let (status, confirmed) = post(&server, &confirm, Some(&doctor), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(confirmed["status"], "confirmed");
    assert_eq!(confirmed["joinUrl"], format!("/consult/{id}"));
    assert_eq!(
        get(&server, &path, Some(&patient)).await.1["joinUrl"],
        format!("/consult/{id}")
    );

    let messages = format!("/api/appointments/{id}/messages");
    assert_eq!(
        get(&server, &messages, Some(&patient)).await.1,
        json!({"messages": []})
    );
    assert_eq!(
        get(&server, &messages, Some(&staff)).await.0,
        StatusCode::FORBIDDEN,
        "staff do not read transcripts"
    );
    assert_eq!(
        get(&server, &messages, Some(&outsider)).await.0,
        StatusCode::FORBIDDEN
    );

    let cancel = format!("/api/appointments/{id}/cancel");
    assert_eq!(
        post(&server, &cancel, Some(&outsider), json!({})).await.0,
        StatusCode::FORBIDDEN
    );
    let (status, cancelled) = post(&server, &cancel, Some(&patient), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(cancelled["status"], "cancelled");
    assert!(cancelled.get("joinUrl").is_none());
    let (status, body) = post(&server, &confirm, Some(&doctor), json!({})).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::CONFLICT, "conflict")
    );
}

#[tokio::test]
async fn bad_bodies_get_clear_errors_and_change_nothing() {
    let server = TestServer::start(&[("CALLRELAY_LIMITS__MAX_HTTP_BODY_BYTES", "4096")]).await;
    let doctor = server.token("doc1", "Dr One", "doctor").await;
    let client = Client::new();
    let send_raw = |body: &'static str| {
        client
            .post(server.url("/api/appointments"))
            .bearer_auth(&doctor)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    for raw in ["{bad json", "[]", "{\"patientId\": 5}", "{}"] {
        let res = send_raw(raw).await.unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{raw}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(error_code(&body), "invalid_payload", "{raw}");
    }
    for body in [
        json!({"patientId": "p1", "doctorId": "doc1", "scheduledAt": "tomorrow"}),
        // 9999-12-31T23:00 at -05:00 is in the year 10000 in UTC, which RFC 3339 cannot write.
        json!({"patientId": "p1", "doctorId": "doc1", "scheduledAt": "9999-12-31T23:00:00-05:00"}),
        json!({"patientId": "p 1", "doctorId": "doc1", "scheduledAt": "2026-12-01T09:30:00Z"}),
        json!({"patientId": "p1", "doctorId": "doc1", "scheduledAt": "2026-12-01T09:30:00Z", "patientName": ""}),
        // Only the described properties: a misspelt optional one is not silently dropped.
        json!({"patientId": "p1", "doctorId": "doc1", "scheduledAt": "2026-12-01T09:30:00Z", "patient_name": "Pat"}),
    ] {
        let (status, reply) = post(&server, "/api/appointments", Some(&doctor), body.clone()).await;
        assert_eq!(
            (status, error_code(&reply)),
            (StatusCode::BAD_REQUEST, "invalid_payload"),
            "{body}"
        );
    }
    // Well-formed, but no one is their own doctor.
    let (status, reply) = post(
        &server,
        "/api/appointments",
        Some(&doctor),
        appointment_body("doc1", "doc1"),
    )
    .await;
    assert_eq!(
        (status, error_code(&reply)),
        (StatusCode::CONFLICT, "conflict")
    );
    let huge = json!({"patientId": "p1", "doctorId": "doc1", "scheduledAt": "2026-12-01T09:30:00Z", "patientName": "x".repeat(10_000)});
    let (status, reply) = post(&server, "/api/appointments", Some(&doctor), huge).await;
    assert_eq!(
        (status, error_code(&reply)),
        (StatusCode::PAYLOAD_TOO_LARGE, "too_large")
    );

    let (_, list) = get(&server, "/api/appointments", Some(&doctor)).await;
    assert_eq!(
        list,
        json!({"appointments": []}),
        "refused requests created nothing"
    );
    let (status, _) = get(&server, "/api/nothing-here", Some(&doctor)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn wrong_methods_answer_405_in_the_json_error_shape() {
    let server = TestServer::start(&[]).await;
    let doctor = server.token("doc1", "Dr One", "doctor").await;
    let client = Client::new();
    for (method, path, allow) in [
        ("DELETE", "/api/appointments", "GET,POST"),
        ("GET", "/api/dev/token", "POST"),
        ("PUT", "/api/me", "GET,HEAD"),
        ("POST", "/api/calls", "GET,HEAD"),
        ("GET", "/api/appointments/a1/confirm", "POST"),
        ("PATCH", "/api/appointments/a1", "GET,HEAD"),
        ("POST", "/api/openapi.json", "GET,HEAD"),
        ("POST", "/livez", "GET,HEAD"),
        ("DELETE", "/readyz", "GET,HEAD"),
        ("PUT", "/metrics", "GET,HEAD"),
    ] {
        let res = client
            .request(method.parse().unwrap(), server.url(path))
            .bearer_auth(&doctor)
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(
            res.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}"
        );
        let allowed: Vec<String> = res
            .headers()
            .get("allow")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .split(',')
            .map(|m| m.trim().to_owned())
            .collect();
        for m in allow.split(',') {
            assert!(
                allowed.iter().any(|a| a == m),
                "{method} {path}: Allow {allowed:?} lacks {m}"
            );
        }
        assert!(
            res.headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|t| t.starts_with("application/json")),
            "{method} {path}"
        );
        let body: Value = res.json().await.expect("a JSON body");
        assert_eq!(
            error_code(&body),
            "method_not_allowed",
            "{method} {path}: {body}"
        );
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    let (_, list) = get(&server, "/api/appointments", Some(&doctor)).await;
    assert_eq!(
        list,
        json!({"appointments": []}),
        "wrong methods changed nothing"
    );
    // An unknown path is still 404, whatever the method.
    let res = client
        .delete(server.url("/api/nothing-here"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn dev_tokens_can_be_disabled_and_the_cli_signs_with_the_server_secret() {
    let server = TestServer::start(&[("CALLRELAY_AUTH__DEV_TOKENS", "false")]).await;
    let (status, body) = post(
        &server,
        "/api/dev/token",
        None,
        json!({"sub": "a", "name": "A", "role": "admin"}),
    )
    .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::NOT_FOUND, "not_found")
    );

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_callrelay"))
        .args([
            "token",
            "--sub",
            "cli-user",
            "--name",
            "Cli User",
            "--role",
            "staff",
            "--ttl-secs",
            "120",
        ])
        .env("CALLRELAY_AUTH__JWT_SECRET", support::SECRET)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "only the token on stdout");
    let (status, me) = get(&server, "/api/me", Some(stdout.trim())).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        me,
        json!({"id": "cli-user", "name": "Cli User", "role": "staff"})
    );

    // No secret configured and none kept in the data directory: no token, and none made.
    let empty = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_callrelay"))
        .args(["token", "--sub", "x", "--name", "X", "--role", "staff"])
        .env("CALLRELAY_AUTH__JWT_SECRET", "")
        .env("CALLRELAY_SERVER__DATA_DIR", empty.path())
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "no token without a secret the server has"
    );
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("jwt_secret does not exist") && stderr.contains("server.data_dir"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_dir(empty.path()).unwrap().count(), 0);
}

/// `callrelay token` with the given secret and data directory: its exit status, stdout, stderr.
fn cli_token(secret: &str, data_dir: &std::path::Path, sub: &str) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_callrelay"))
        .args(["token", "--sub", sub, "--name", "Cli", "--role", "doctor"])
        .env("CALLRELAY_AUTH__JWT_SECRET", secret)
        .env("CALLRELAY_SERVER__DATA_DIR", data_dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The server on its own, started on `data_dir` with no secret configured, expected to refuse:
/// its output (the log goes to stdout).
fn refused_start(data_dir: &std::path::Path) -> String {
    let db = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_callrelay"));
    for (key, _) in std::env::vars() {
        if key.starts_with("CALLRELAY_") {
            cmd.env_remove(key);
        }
    }
    let out = cmd
        .env("CALLRELAY_SERVER__BIND", "127.0.0.1:0")
        .env("CALLRELAY_MEDIA__UDP_PORT", "0")
        .env(
            "CALLRELAY_DATABASE__URL",
            format!("sqlite://{}/db.sqlite?mode=rwc", db.path().display()),
        )
        .env("CALLRELAY_AUTH__JWT_SECRET", "")
        .env("CALLRELAY_SERVER__DATA_DIR", data_dir)
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    assert!(!out.status.success(), "start-up refused");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test]
async fn without_a_configured_secret_tokens_survive_a_restart() {
    use std::os::unix::fs::PermissionsExt;
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;

    // A configured secret makes no file.
    let configured = TestServer::start(&[]).await;
    let me = configured.token("c", "C", "patient").await;
    assert_eq!(
        get(&configured, "/api/me", Some(&me)).await.0,
        StatusCode::OK
    );
    assert!(!configured.data_dir.join("jwt_secret").exists());
    drop(configured);

    let mut server = TestServer::start(&[("CALLRELAY_AUTH__JWT_SECRET", "")]).await;
    let file = server.data_dir.join("jwt_secret");
    assert_eq!(
        mode(&file),
        0o600,
        "the secret is readable by its owner only"
    );
    assert_eq!(
        mode(&server.data_dir),
        0o700,
        "a new data directory is private"
    );
    let secret = std::fs::read_to_string(&file).unwrap();

    let doctor = server.token("doc-r", "Dr Restart", "doctor").await;
    let (status, me) = get(&server, "/api/me", Some(&doctor)).await;
    assert_eq!((status, me["id"].as_str()), (StatusCode::OK, Some("doc-r")));
    // `callrelay token` signs with the same file.
    let (ok, printed, stderr) = cli_token("", &server.data_dir, "cli-before");
    assert!(ok, "{stderr}");
    let cli = printed.trim().to_owned();

    server.restart().await;
    let (status, me) = get(&server, "/api/me", Some(&doctor)).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "still signed in after a restart: {me}"
    );
    assert_eq!(
        me,
        json!({"id": "doc-r", "name": "Dr Restart", "role": "doctor"})
    );
    let (status, me) = get(&server, "/api/me", Some(&cli)).await;
    assert_eq!(
        (status, me["id"].as_str()),
        (StatusCode::OK, Some("cli-before"))
    );
    let (ok, printed, stderr) = cli_token("", &server.data_dir, "cli-after");
    assert!(ok, "{stderr}");
    assert_eq!(printed.lines().count(), 1, "only the token on stdout");
    let (status, me) = get(&server, "/api/me", Some(printed.trim())).await;
    assert_eq!(
        (status, me["id"].as_str()),
        (StatusCode::OK, Some("cli-after"))
    );
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        secret,
        "read, not made again"
    );
    assert_eq!(mode(&file), 0o600);
    // A configured secret wins over the file: its tokens are not the file's.
    let (ok, other, _) = cli_token("another-secret", &server.data_dir, "x");
    assert!(ok);
    assert_eq!(
        get(&server, "/api/me", Some(other.trim())).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert!(server.stop());

    // A file others may read stops start-up (and the CLI), naming it; it is not replaced.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let output = refused_start(&server.data_dir);
    assert!(
        output.contains(&file.display().to_string()) && output.contains("mode 0644"),
        "{output}"
    );
    assert!(output.contains("chmod 600"), "{output}");
    assert!(!output.contains(secret.trim()), "the secret is never shown");
    let (ok, printed, stderr) = cli_token("", &server.data_dir, "x");
    assert!(!ok && printed.is_empty(), "{stderr}");
    assert!(stderr.contains("mode 0644"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), secret);

    // So does a damaged one.
    std::fs::write(&file, "half a secr").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let output = refused_start(&server.data_dir);
    assert!(
        output.contains(&file.display().to_string()) && output.contains("refusing to replace it"),
        "{output}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "half a secr");
}

#[tokio::test]
async fn bad_configuration_stops_start_up_naming_key_and_source() {
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_callrelay"));
        cmd.args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    let out = run(&[], &[("CALLRELAY_MEDIA__UDP_PORT", "abc")]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("media.udp_port") && stderr.contains("CALLRELAY_MEDIA__UDP_PORT"),
        "{stderr}"
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[server]\nbnd = \"127.0.0.1:1\"\n").unwrap();
    let out = run(&["--config", file.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("server.bnd") && stderr.contains("bad.toml"),
        "{stderr}"
    );
}

#[tokio::test]
async fn sigterm_drains_and_exits_cleanly() {
    let mut server = TestServer::start(&[]).await;
    assert!(server.stop(), "callrelay exits 0 after SIGTERM");
}

#[tokio::test]
async fn ice_servers_mint_turn_credentials_per_user() {
    let server = TestServer::start(&[
        (
            "CALLRELAY_MEDIA__ICE_URLS",
            "stun:stun.example.org:3478,turn:turn.example.org:3478?transport=udp,turns:turn.example.org:443?transport=tcp",
        ),
        ("CALLRELAY_MEDIA__ICE_SECRET", "http-test-turn-secret"),
        ("CALLRELAY_MEDIA__ICE_TTL_SECS", "3600"),
        // Ignored while a secret is set.
        ("CALLRELAY_MEDIA__ICE_USERNAME", "static-user"),
        ("CALLRELAY_MEDIA__ICE_CREDENTIAL", "static-password"),
    ])
    .await;
    let (status, body) = get(&server, "/api/ice-servers", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(error_code(&body), "unauthorized");

    let ann = server.token("ann", "Ann", "patient").await;
    let bob = server.token("bob", "Bob", "doctor").await;
    let res = Client::new()
        .get(server.url("/api/ice-servers"))
        .bearer_auth(&ann)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let body: Value = res.json().await.unwrap();
    let servers = body["iceServers"].as_array().expect("iceServers");
    assert_eq!(servers.len(), 2, "{body}");
    // STUN without credentials; TURN and TURNS with the caller's own.
    assert_eq!(servers[0], json!({"urls": ["stun:stun.example.org:3478"]}));
    let turn = &servers[1];
    assert_eq!(
        turn["urls"],
        json!([
            "turn:turn.example.org:3478?transport=udp",
            "turns:turn.example.org:443?transport=tcp"
        ])
    );
    let username = turn["username"].as_str().unwrap();
    let (expiry, user) = username.split_once(':').unwrap();
    assert_eq!(user, "ann");
    let expiry: u64 = expiry.parse().unwrap();
    let now = jsonwebtoken::get_current_timestamp();
    assert!(expiry.abs_diff(now + 3600) < 30, "{expiry} vs {now}");
    let credential = turn["credential"].as_str().unwrap();
    assert_eq!(
        credential,
        callrelay_signaling::ice::turn_rest_credential("http-test-turn-secret", username)
    );
    assert_eq!(credential.len(), 28, "base64 of a 20-byte HMAC-SHA1");
    assert!(!body.to_string().contains("static-"), "{body}");

    let (status, theirs) = get(&server, "/api/ice-servers", Some(&bob)).await;
    assert_eq!(status, StatusCode::OK);
    let their_turn = &theirs["iceServers"][1];
    assert!(their_turn["username"].as_str().unwrap().ends_with(":bob"));
    assert_ne!(their_turn["credential"], turn["credential"]);
}

#[tokio::test]
async fn ice_servers_without_a_secret_are_the_static_settings() {
    let server = TestServer::start(&[
        ("CALLRELAY_MEDIA__ICE_URLS", "turn:turn.example.org:3478"),
        ("CALLRELAY_MEDIA__ICE_USERNAME", "static-user"),
        ("CALLRELAY_MEDIA__ICE_CREDENTIAL", "static-password"),
    ])
    .await;
    let token = server.token("ann", "Ann", "patient").await;
    let (status, body) = get(&server, "/api/ice-servers", Some(&token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"iceServers": [{
            "urls": ["turn:turn.example.org:3478"],
            "username": "static-user",
            "credential": "static-password",
        }]})
    );

    let bare = TestServer::start(&[]).await;
    let token = bare.token("ann", "Ann", "patient").await;
    assert_eq!(
        get(&bare, "/api/ice-servers", Some(&token)).await,
        (StatusCode::OK, json!({"iceServers": []}))
    );
}
