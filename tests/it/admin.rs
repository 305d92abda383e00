//! The admin listener of the `replguard` binary as an attacker on the network meets it: reading
//! is open, acting needs the configured token, a link is never pointed at replguard itself, and
//! a client that trickles its request is cut.

use crate::common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

const TOKEN: &str = "a-long-admin-token-for-the-tests";

/// A one-link configuration in `dir` with its admin `token` line (or none); (path, link port,
/// admin port).
fn config(dir: &Path, master: u16, admin_extra: &str) -> (std::path::PathBuf, u16, u16) {
    let [port, admin] = free_ports();
    let path = dir.join("rg.yaml");
    std::fs::write(
        &path,
        format!(
            "state_dir: state\nadmin:\n  listen: 127.0.0.1:{admin}\n{admin_extra}links:\n  - {{ name: main, listen: 127.0.0.1:{port}, master: 127.0.0.1:{master}, flavor: redis, guard: enforce }}\n"
        ),
    )
    .unwrap();
    (path, port, admin)
}

/// One request with `headers` (each line ending in CRLF): (status code, body).
fn ask(port: u16, method: &str, path: &str, headers: &str) -> (u16, String) {
    let request = format!("{method} {path} HTTP/1.1\r\nHost: x\r\n{headers}\r\n");
    let (head, body) = http_exchange(port, request.as_bytes()).expect("an HTTP answer");
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status code");
    (code, body)
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}\r\n")
}

/// `/status` once the listener answers.
fn status(admin: u16) -> serde_json::Value {
    wait_for(Duration::from_secs(20), "the admin listener", || {
        serde_json::from_str(&try_http(admin, "GET", "/status")?).ok()
    })
}

fn master_of(admin: u16) -> String {
    status(admin)["links"][0]["master"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The `replguard_admin_refusals_total` sample for `reason`.
fn refusals(admin: u16, reason: &str) -> f64 {
    let metrics = http(admin, "GET", "/metrics");
    let prefix = format!("replguard_admin_refusals_total{{reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix)?.parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in\n{metrics}"))
}

#[test]
fn admin_actions_need_the_configured_token() {
    let m1 = Server::start(Kind::Redis, &[]);
    let m2 = Server::start(Kind::Redis, &[]);
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let (path, port, admin) = config(dir.path(), m1.port, "  token_file: admin.token\n");
    let rg = Replguard::run(&path, &dir.path().join("rg.log"), |_| {});
    let old = format!("127.0.0.1:{}", m1.port);
    assert_eq!(master_of(admin), old);
    let repoint = format!("/links/main/master?addr=127.0.0.1:{}", m2.port);

    // Reading needs no token.
    assert_eq!(ask(admin, "GET", "/status", "").0, 200);
    assert_eq!(ask(admin, "GET", "/metrics", "").0, 200);

    // No token, another token, another scheme: 401, and nothing changes.
    for (headers, reason) in [
        (String::new(), "token_missing"),
        (bearer("a-long-admin-token-for-the-test"), "token_wrong"),
        (bearer(&format!("{TOKEN}x")), "token_wrong"),
        (format!("Authorization: Basic {TOKEN}\r\n"), "token_missing"),
    ] {
        let before = refusals(admin, reason);
        let (code, body) = ask(admin, "POST", &repoint, &headers);
        assert_eq!(code, 401, "{headers:?}: {body}");
        assert!(body.contains("admin token"), "{body}");
        assert_eq!(refusals(admin, reason), before + 1.0, "{headers:?}");
        assert_eq!(master_of(admin), old, "{headers:?}");
        let (code, _) = ask(admin, "POST", "/links/main/allow-empty-master", &headers);
        assert_eq!(code, 401);
    }
    rg.wait_log("reason_code=\"token_wrong\"");
    assert!(!rg.log().contains(TOKEN), "the token is never logged");

    // Pointing the link at replguard itself is refused, wildcards and the admin port included.
    for (target, what) in [
        (format!("127.0.0.1:{port}"), "listener of link main"),
        (format!("0.0.0.0:{port}"), "listener of link main"),
        (
            format!("[::ffff:127.0.0.1]:{port}"),
            "listener of link main",
        ),
        (format!("127.0.0.1:{admin}"), "admin listener"),
    ] {
        let (code, body) = ask(
            admin,
            "POST",
            &format!("/links/main/master?addr={target}"),
            &bearer(TOKEN),
        );
        assert_eq!(code, 400, "{target}: {body}");
        assert!(
            body.contains(&format!("is replguard's own {what}")),
            "{target}: {body}"
        );
        assert_eq!(master_of(admin), old, "{target}");
    }
    assert_eq!(refusals(admin, "own_address"), 4.0);

    // The right token acts.
    let (code, body) = ask(admin, "POST", &repoint, &bearer(TOKEN));
    assert_eq!(
        (code, body),
        (200, format!("link main now dials 127.0.0.1:{}\n", m2.port))
    );
    assert_eq!(master_of(admin), format!("127.0.0.1:{}", m2.port));
    let (code, _) = ask(
        admin,
        "POST",
        "/links/main/allow-empty-master",
        &format!("authorization: bearer   {TOKEN}\r\n"),
    );
    assert_eq!(code, 200);
}

#[test]
fn without_a_token_the_admin_actions_are_refused_and_say_how_to_enable_them() {
    let m1 = Server::start(Kind::Redis, &[]);
    let m2 = Server::start(Kind::Redis, &[]);
    let dir = tempfile::tempdir().unwrap();
    let (path, _, admin) = config(dir.path(), m1.port, "");
    let rg = Replguard::run(&path, &dir.path().join("rg.log"), |_| {});
    let old = format!("127.0.0.1:{}", m1.port);
    assert_eq!(master_of(admin), old);
    for headers in [String::new(), bearer(TOKEN)] {
        let (code, body) = ask(
            admin,
            "POST",
            &format!("/links/main/master?addr=127.0.0.1:{}", m2.port),
            &headers,
        );
        assert_eq!(code, 403, "{body}");
        assert!(
            body.contains("no admin token is configured")
                && body.contains("admin.token_file")
                && body.contains("admin.token_env"),
            "{body}"
        );
        assert_eq!(master_of(admin), old, "a refused re-point changes nothing");
        assert_eq!(
            ask(admin, "POST", "/links/main/allow-empty-master", &headers).0,
            403
        );
    }
    assert_eq!(refusals(admin, "token_not_configured"), 4.0);
    rg.wait_log("reason_code=\"token_not_configured\"");
    assert!(rg.log().contains("refused: no admin token configured"));
    assert_eq!(ask(admin, "GET", "/metrics", "").0, 200);
}

#[test]
fn an_admin_client_that_trickles_its_request_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _, admin) = config(dir.path(), free_port(), "");
    let rg = Replguard::run(&path, &dir.path().join("rg.log"), |_| {});
    status(admin);
    let request = b"GET /status HTTP/1.1\r\nHost: x\r\nX-Slow: 0123456789\r\n\r\n";
    let mut s = TcpStream::connect(("127.0.0.1", admin)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
    let mut sent = 0;
    let mut answer = Vec::new();
    let cut = loop {
        if sent == request.len() {
            break false;
        }
        if s.write_all(&request[sent..sent + 1]).is_err() {
            break true;
        }
        sent += 1;
        std::thread::sleep(Duration::from_secs(1));
        let mut buf = [0u8; 512];
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break true,
        }
    };
    assert!(
        cut,
        "the whole head went through, one byte a second; answer: {:?}",
        String::from_utf8_lossy(&answer)
    );
    assert!(
        !String::from_utf8_lossy(&answer).contains("\"links\""),
        "never served"
    );
    rg.wait_log("reason_code=\"head_timeout\"");
    assert_eq!(refusals(admin, "head_timeout"), 1.0);
    // Others are served all along.
    assert_eq!(ask(admin, "GET", "/status", "").0, 200);
}
