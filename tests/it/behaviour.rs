//! How replguard behaves around the edges: ordinary clients pass through, the session limit,
//! malformed bytes from either side (nesting bombs, oversized frames, offsets out of range),
//! slow replicas, upstream credentials, Valkey dual-channel replication, upstream loss, and the
//! admin listener (its routes, its bounds, and /metrics read by a reference Prometheus parser
//! while a replica announces a hostile address).

use crate::common::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(60);

fn raw_connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// Reads until the peer closes (a reset counts as a close); returns what came. Panics when the
/// socket's read timeout passes first: the peer never closed.
fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
                ) =>
            {
                return out
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!(
                    "the connection was still open when the read timeout passed, after {:?}",
                    String::from_utf8_lossy(&out)
                )
            }
            Err(e) => panic!("{e} after {:?}", String::from_utf8_lossy(&out)),
        }
    }
}

#[test]
fn ordinary_clients_pass_through_unchanged() {
    let m = Server::start(Kind::Redis, &[]);
    let proxy = Proxy::start(Kind::Redis, m.port, "");
    let mut c = Client::connect(proxy.port).unwrap();
    assert_eq!(c.text(&["PING"]), "PONG");
    let big = "x".repeat(1 << 20);
    assert_eq!(c.text(&["SET", "big", big.as_str()]), "OK");
    assert_eq!(c.text(&["GET", "big"]), big);
    assert_eq!(c.int(&["RPUSH", "l", "a", "b"]), 2);
    match c.cmd(&["LRANGE", "l", "0", "-1"]) {
        Reply::Array(items) => assert_eq!(items.len(), 2),
        other => panic!("{other:?}"),
    }
    // Inline commands pass too.
    let mut raw = raw_connect(proxy.port);
    raw.write_all(b"GET big\r\n").unwrap();
    let mut head = [0u8; 10];
    raw.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"$1048576\r\n");
    let st = proxy.status();
    assert!(
        st["links"][0]["sessions"][0]["state"] == "passthrough",
        "{st}"
    );
    let metrics = proxy.http_get("/metrics");
    assert!(
        metrics.contains("replguard_passthrough_sessions_total{link=\"main\"} 2"),
        "{metrics}"
    );
}

#[test]
fn sessions_beyond_the_limit_are_refused_with_a_reason() {
    let m = Server::start(Kind::Redis, &[]);
    let proxy = Proxy::start(
        Kind::Redis,
        m.port,
        "    max_sessions: 1\n    max_clients: 1\n",
    );
    let mut first = Client::connect(proxy.port).unwrap();
    assert_eq!(first.text(&["REPLCONF", "listening-port", "7001"]), "OK");
    // The replica moved to the replicas' budget: its client's place is free for a client...
    let mut plain = wait_for(LONG, "a client's place", || {
        let mut c = Client::connect(proxy.port).ok()?;
        c.send(&["PING"]);
        matches!(c.try_read(), Ok(Reply::SimpleString(_))).then_some(c)
    });
    // ...which holds the only one.
    let mut third = raw_connect(proxy.port);
    assert_eq!(
        String::from_utf8(read_to_close(&mut third)).unwrap(),
        "-ERR replguard: the link is at its limit of 1 connections that are not replicas (max_clients)\r\n"
    );
    assert_eq!(plain.text(&["PING"]), "PONG");
    drop(plain);
    // A second replica is refused at its first replication command.
    let mut second = wait_for(LONG, "a client's place again", || {
        let mut c = raw_connect(proxy.port);
        c.write_all(b"PING\r\n").ok()?;
        let mut got = [0u8; 7];
        c.read_exact(&mut got).ok()?;
        (&got == b"+PONG\r\n").then_some(c)
    });
    second
        .write_all(&replguard::wire::resp::encode_command(&[
            "REPLCONF",
            "listening-port",
            "7002",
        ]))
        .unwrap();
    assert_eq!(
        String::from_utf8(read_to_close(&mut second)).unwrap(),
        "-ERR replguard: the link is at its limit of 1 replica sessions (max_sessions)\r\n"
    );
    drop(first);
    // The replica's place comes back when the first session ends.
    wait_for(LONG, "a free replica place", || {
        let mut c = Client::connect(proxy.port).ok()?;
        c.send(&["REPLCONF", "listening-port", "7003"]);
        matches!(c.try_read(), Ok(Reply::SimpleString(_))).then_some(())
    });
    // A refusal is counted as its session ends, just after the peer reads the answer.
    wait_for(LONG, "the refusal at max_sessions counted", || {
        (proxy.status()["links"][0]["sessions_refused"].as_u64()? >= 1).then_some(())
    });
    let metrics = proxy.http_get("/metrics");
    for reason in ["max_clients", "max_sessions"] {
        let line =
            format!("replguard_connections_refused_total{{link=\"main\",reason=\"{reason}\"}} ");
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with(&line) && !l.ends_with(" 0")),
            "{reason}: {metrics}"
        );
    }
}

/// A master double that answers the handshake and then sends `after_reply` as its sync.
/// replguard's own INFO reads get an error (the guard then works from the handshake alone).
fn fake_master(after_reply: &'static [u8]) -> (u16, std::thread::JoinHandle<()>) {
    fake_master_replying(
        b"+FULLRESYNC 0123456789012345678901234567890123456789 0\r\n",
        after_reply,
    )
}

/// [`fake_master`] answering PSYNC with `psync_reply`.
fn fake_master_replying(
    psync_reply: &'static [u8],
    after_reply: &'static [u8],
) -> (u16, std::thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let h = std::thread::spawn(move || loop {
        let (mut s, _) = l.accept().unwrap();
        let mut buf = [0u8; 4096];
        let mut seen = Vec::new();
        let n = s.read(&mut buf).unwrap_or(0);
        seen.extend_from_slice(&buf[..n]);
        if seen.windows(4).any(|w| w == b"INFO") {
            let _ = s.write_all(b"-ERR not a real master\r\n");
            continue;
        }
        let has_psync = |seen: &[u8]| seen.windows(5).any(|w| w.eq_ignore_ascii_case(b"PSYNC"));
        // Answer each command with +OK until PSYNC arrives.
        let mut chunk = seen.clone();
        loop {
            let cmds = chunk.iter().filter(|&&b| b == b'*').count();
            if !has_psync(&seen) {
                for _ in 0..cmds {
                    s.write_all(b"+OK\r\n").unwrap();
                }
            } else {
                break;
            }
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                return;
            }
            chunk = buf[..n].to_vec();
            seen.extend_from_slice(&chunk);
        }
        s.write_all(psync_reply).unwrap();
        s.write_all(after_reply).unwrap();
        let _ = s.read(&mut buf);
        return;
    });
    (port, h)
}

fn replica_handshake(port: u16) -> TcpStream {
    let mut r = raw_connect(port);
    r.write_all(&replguard::wire::resp::encode_command(&[
        "REPLCONF",
        "listening-port",
        "7777",
    ]))
    .unwrap();
    let mut ok = [0u8; 5];
    r.read_exact(&mut ok).unwrap();
    assert_eq!(&ok, b"+OK\r\n");
    r.write_all(b"PSYNC ? -1\r\n").unwrap();
    r
}

#[test]
fn malformed_stream_from_master_ends_only_that_session() {
    let (port, h) = fake_master(b"$5\r\nREDIS*1\r\n$4\r\nPING\r\nGARBAGE\r\n");
    let proxy = Proxy::start(Kind::Redis, port, "    announce_replica_ip: false\n");
    let mut r = replica_handshake(proxy.port);
    let got = read_to_close(&mut r);
    // The replica got the reply, never the corrupt bytes, and then its connection was closed.
    assert!(got.starts_with(b"+FULLRESYNC "), "{got:?}");
    assert!(!got.windows(7).any(|w| w == b"GARBAGE"), "{got:?}");
    h.join().unwrap();
    let metrics = proxy.http_get("/metrics");
    assert!(
        metrics.contains("replguard_session_errors_total{link=\"main\"} 1"),
        "{metrics}"
    );
    // The process is still serving.
    assert_eq!(proxy.status()["links"][0]["sessions_total"], 1);
}

#[test]
fn malformed_bytes_from_a_replica_end_its_session() {
    let m = Server::start(Kind::Redis, &[]);
    let proxy = Proxy::start(Kind::Redis, m.port, "");
    let mut r = raw_connect(proxy.port);
    r.write_all(b"*1\r\n$x\r\n").unwrap();
    assert_eq!(
        String::from_utf8_lossy(&read_to_close(&mut r)),
        "-ERR Protocol error: malformed RESP: unexpected byte 0x78 in a length\r\n"
    );
    let mut c = Client::connect(proxy.port).unwrap();
    assert_eq!(c.text(&["PING"]), "PONG");
}

#[test]
fn master_loss_closes_the_replica_side() {
    let (port, h) = fake_master(b"$5\r\nREDIS");
    let proxy = Proxy::start(Kind::Redis, port, "    announce_replica_ip: false\n");
    let mut r = replica_handshake(proxy.port);
    // The double closes after its payload once the test's replica sends anything.
    r.write_all(b"\n").unwrap();
    let got = read_to_close(&mut r);
    assert!(got.ends_with(b"$5\r\nREDIS"), "{got:?}");
    h.join().unwrap();
    drop(proxy);
}

/// A replica authenticates with its own `masterauth`; the link's `auth` serves replguard's own
/// reads of the master and is never lent to a connection from the link port.
#[test]
fn replicas_authenticate_with_their_own_masterauth() {
    let m = Server::start(Kind::Redis, &["--requirepass", "s3cret"]);
    m.client();
    let pwfile = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(pwfile.path(), "s3cret\n").unwrap();
    let proxy = Proxy::start(
        Kind::Redis,
        m.port,
        &format!(
            "    auth:\n      password_file: {}\n",
            pwfile.path().display()
        ),
    );
    let r = replica_of(Kind::Redis, proxy.port, &["--masterauth", "s3cret"]);
    wait_link_up(&r, LONG);
    let mut mc = m.client();
    assert_eq!(mc.text(&["AUTH", "s3cret"]), "OK");
    assert_eq!(mc.text(&["SET", "k", "v"]), "OK");
    wait_for(LONG, "k on the replica", || {
        let v = r.try_client()?.try_cmd(&["GET", "k"]).ok()?;
        (v == Reply::BulkString(b"v".to_vec())).then_some(())
    });
    // An ordinary client does not ride on the link's credentials.
    let mut c = Client::connect(proxy.port).unwrap();
    match c.cmd(&["GET", "k"]) {
        Reply::Error(e) => assert!(e.starts_with("NOAUTH"), "{e}"),
        other => panic!("unauthenticated client got {other:?}"),
    }
}

#[test]
fn valkey_dual_channel_replicas_sync_over_one_connection() {
    let dual = ["--dual-channel-replication-enabled", "yes"];
    let mut args = vec![
        "--repl-diskless-sync",
        "yes",
        "--repl-diskless-sync-delay",
        "0",
    ];
    args.extend(dual);
    let m = Server::start(Kind::Valkey, &args);
    assert_eq!(m.client().text(&["DEBUG", "POPULATE", "20000"]), "OK");
    // Directly, this pair uses dual-channel replication: the configuration really asks for it.
    let direct = replica_of(Kind::Valkey, m.port, &dual);
    wait_converged(&m, &direct, LONG);
    assert!(direct.log().contains("Dual channel replication"));

    let proxy = Proxy::start(Kind::Valkey, m.port, "");
    let r = replica_of(Kind::Valkey, proxy.port, &dual);
    wait_converged(&m, &r, LONG);
    assert!(!r.log().contains("Dual channel replication"), "{}", r.log());
    let s = proxy.session_of(r.port).expect("one streaming session");
    assert_eq!(s["sync"], "full");
    assert_eq!(s["rdb_diskless"], true);
    assert_eq!(proxy.status()["links"][0]["sessions_total"], 1);
}

/// `*1\r\n` 20,000 times: an array nested 20,000 deep, 80 KB.
fn nesting_bomb() -> Vec<u8> {
    b"*1\r\n".repeat(20_000)
}

/// The replguard binary with one Redis link per `(name, master port)`, its log in a file;
/// killed when dropped. A separate process, so a crash shows as its exit.
struct Binary {
    child: Child,
    admin: u16,
    /// Each link's listening port, in order.
    ports: Vec<u16>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Binary {
    fn start(links: &[(&str, u16)]) -> Binary {
        let dir = tempfile::tempdir().unwrap();
        let [admin] = free_ports();
        let ports: Vec<u16> = links.iter().map(|_| free_port()).collect();
        let mut yaml = format!(
            "state_dir: {}/state\nadmin: {{ listen: 127.0.0.1:{admin} }}\nlinks:\n",
            dir.path().display()
        );
        for ((name, master), port) in links.iter().zip(&ports) {
            yaml += &format!(
                "  - {{ name: {name}, listen: 127.0.0.1:{port}, master: 127.0.0.1:{master}, flavor: redis, guard: enforce }}\n"
            );
        }
        let cfg = dir.path().join("rg.yaml");
        std::fs::write(&cfg, yaml).unwrap();
        let log = dir.path().join("replguard.log");
        let child = Command::new(env!("CARGO_BIN_EXE_replguard"))
            .args(["run", "--config"])
            .arg(&cfg)
            .env("REPLGUARD_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut b = Binary {
            child,
            admin,
            ports,
            log,
            _dir: dir,
        };
        wait_for(LONG, "replguard to listen", || {
            assert!(b.alive(), "replguard exited:\n{}", b.log());
            TcpStream::connect(("127.0.0.1", admin)).ok()
        });
        b
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log lines that contain `needle`, once there are `n` of them.
    fn log_lines(&self, needle: &str, n: usize) -> Vec<String> {
        wait_for(LONG, needle, || {
            let lines: Vec<String> = self
                .log()
                .lines()
                .filter(|l| l.contains(needle))
                .map(str::to_string)
                .collect();
            (lines.len() >= n).then_some(lines)
        })
    }

    fn metrics(&self) -> String {
        http(self.admin, "GET", "/metrics")
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_nesting_bomb_from_a_replica_ends_only_its_session() {
    let m = Server::start(Kind::Redis, &[]);
    let mut bin = Binary::start(&[("main", m.port)]);
    let mut s = raw_connect(bin.ports[0]);
    // replguard may close before it has all of it.
    let _ = s.write_all(&nesting_bomb());
    let got = String::from_utf8_lossy(&read_to_close(&mut s)).into_owned();
    // An error or a close, nothing else.
    assert!(
        got.is_empty() || got == "-ERR Protocol error: an array nested in a command (the limit is depth 1: a flat array of bulk strings)\r\n",
        "{got:?}"
    );
    assert!(bin.alive(), "replguard died:\n{}", bin.log());
    let lines = bin.log_lines("not valid here", 1);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0].contains("replica sent bytes that are not valid here: an array nested in a command (the limit is depth 1"),
        "{}",
        lines[0]
    );
    assert!(
        bin.metrics()
            .contains("replguard_session_errors_total{link=\"main\"} 1"),
        "{}",
        bin.metrics()
    );
    // A real replica syncs through the same link afterwards.
    assert_eq!(m.client().text(&["SET", "after", "bomb"]), "OK");
    let r = replica_of(Kind::Redis, bin.ports[0], &[]);
    wait_converged(&m, &r, LONG);
    assert_eq!(
        r.client().cmd(&["GET", "after"]),
        Reply::BulkString(b"bomb".to_vec())
    );
    assert!(bin.alive(), "replguard died:\n{}", bin.log());
}

/// A master double that answers whatever it is sent, on every connection (replguard's INFO
/// reads included), with a nesting bomb.
fn bombing_master() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                if matches!(s.read(&mut buf), Ok(n) if n > 0) {
                    let _ = s.write_all(&nesting_bomb());
                }
                while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
    port
}

#[test]
fn a_nesting_bomb_from_a_master_ends_only_its_session() {
    let m = Server::start(Kind::Redis, &[]);
    let bomb = bombing_master();
    let mut bin = Binary::start(&[("bombed", bomb), ("main", m.port)]);
    for _ in 0..2 {
        let mut r = raw_connect(bin.ports[0]);
        r.write_all(&replguard::wire::resp::encode_command(&[
            "REPLCONF",
            "listening-port",
            "7777",
        ]))
        .unwrap();
        let got = read_to_close(&mut r);
        assert_eq!(
            String::from_utf8_lossy(&got),
            "",
            "the bomb reached the replica"
        );
        assert!(bin.alive(), "replguard died:\n{}", bin.log());
    }
    let lines = bin.log_lines("not valid here", 2);
    assert_eq!(lines.len(), 2, "{lines:#?}");
    for l in &lines {
        assert!(
            l.contains("master sent bytes that are not valid here: a reply nested deeper than the limit of 8 arrays"),
            "{l}"
        );
    }
    assert!(
        bin.metrics()
            .contains("replguard_session_errors_total{link=\"bombed\"} 2"),
        "{}",
        bin.metrics()
    );
    // The other link is unaffected.
    assert_eq!(m.client().text(&["SET", "k", "v"]), "OK");
    let r = replica_of(Kind::Redis, bin.ports[1], &[]);
    wait_converged(&m, &r, LONG);
    assert!(bin.alive(), "replguard died:\n{}", bin.log());
}

#[test]
fn a_fullresync_offset_out_of_range_ends_the_session_unwrapped() {
    let (port, h) = fake_master_replying(
        b"+FULLRESYNC 0123456789012345678901234567890123456789 18446744073709551615\r\n",
        b"$5\r\nREDIS*1\r\n$4\r\nPING\r\n",
    );
    let proxy = Proxy::start(Kind::Redis, port, "    announce_replica_ip: false\n");
    let mut r = replica_handshake(proxy.port);
    // Either the session ends, or (were the offset taken) it streams with its books.
    let sessions = wait_for(LONG, "the session to end or stream", || {
        let s = proxy.try_sessions()?;
        (s.is_empty() || s.iter().any(|s| s["state"] == "streaming")).then_some(s)
    });
    for s in &sessions {
        let (start, expected) = (&s["start_offset"], &s["expected_offset"]);
        assert!(
            start.as_u64().is_none_or(|st| st <= i64::MAX as u64)
                && expected.as_u64() >= start.as_u64(),
            "offsets wrapped: start {start}, expected {expected}"
        );
    }
    assert!(sessions.is_empty(), "{sessions:#?}");
    let got = read_to_close(&mut r);
    assert!(
        !got.windows(11).any(|w| w == b"+FULLRESYNC"),
        "the reply reached the replica: {:?}",
        String::from_utf8_lossy(&got)
    );
    let st = proxy.status();
    assert!(
        !st.to_string().contains("18446744073709551615"),
        "the offset reached the books: {st}"
    );
    let metrics = proxy.http_get("/metrics");
    assert!(
        metrics.contains("replguard_session_errors_total{link=\"main\"} 1"),
        "{metrics}"
    );
    drop(r);
    h.join().unwrap();
}

#[test]
fn an_oversized_handshake_command_is_refused() {
    let m = Server::start(Kind::Redis, &[]);
    let proxy = Proxy::start(Kind::Redis, m.port, "");
    let refused = "-ERR Protocol error: frame longer than the limit of 65536 bytes\r\n".to_string();
    // The header alone declares more than the limit: refused without waiting for the rest.
    let mut r = raw_connect(proxy.port);
    r.write_all(b"*3\r\n$8\r\nREPLCONF\r\n$14\r\nlistening-port\r\n$70000\r\n")
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&read_to_close(&mut r)), refused);
    drop(r);
    // The whole frame sent at once.
    let mut r = raw_connect(proxy.port);
    let id = "x".repeat(70_000);
    let _ = r.write_all(&replguard::wire::resp::encode_command(&[
        "PSYNC",
        id.as_str(),
        "-1",
    ]));
    assert_eq!(String::from_utf8_lossy(&read_to_close(&mut r)), refused);
    // None of it reached the master.
    let stats = m.client().info("stats");
    assert_eq!(stats["sync_full"], "0", "{stats:?}");
    wait_for(LONG, "both sessions counted as errors", || {
        proxy
            .try_http_get("/metrics")?
            .contains("replguard_session_errors_total{link=\"main\"} 2")
            .then_some(())
    });
    // An ordinary client's first command is not a handshake command: it may be large.
    let mut c = Client::connect(proxy.port).unwrap();
    let big = "v".repeat(200_000);
    assert_eq!(c.text(&["SET", "big", big.as_str()]), "OK");
    assert_eq!(c.text(&["GET", "big"]), big);
}

#[test]
fn a_replica_sending_its_handshake_one_byte_at_a_time_is_served() {
    let m = Server::start(Kind::Redis, &["--repl-diskless-sync-delay", "0"]);
    assert_eq!(m.client().text(&["SET", "k", "v"]), "OK");
    let proxy = Proxy::start(Kind::Redis, m.port, "");
    let mut r = raw_connect(proxy.port);
    r.set_nodelay(true).unwrap();
    let slowly = |r: &mut TcpStream, bytes: &[u8], answer: &str| {
        for b in bytes {
            r.write_all(&[*b]).unwrap();
            std::thread::sleep(Duration::from_millis(2));
        }
        let mut got = vec![0u8; answer.len()];
        r.read_exact(&mut got).unwrap();
        assert_eq!(String::from_utf8_lossy(&got), answer);
    };
    let cmd = replguard::wire::resp::encode_command::<&str>;
    slowly(&mut r, &cmd(&["PING"]), "+PONG\r\n");
    slowly(
        &mut r,
        &cmd(&["REPLCONF", "listening-port", "7777"]),
        "+OK\r\n",
    );
    slowly(&mut r, b"REPLCONF capa eof capa psync2\r\n", "+OK\r\n");
    slowly(&mut r, &cmd(&["PSYNC", "?", "-1"]), "+FULLRESYNC ");
    // The payload follows, as to any replica.
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(5).any(|w| w == b"REDIS") {
        let n = r.read(&mut buf).unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let s = wait_for(LONG, "the session's books", || {
        proxy
            .try_sessions()?
            .into_iter()
            .find(|s| s["sync"] == "full")
    });
    assert_eq!(s["replica"], "127.0.0.1:7777", "{s}");
    let master_id = m.client().info("replication")["master_replid"].clone();
    assert_eq!(s["replid"], master_id.as_str(), "{s}");
}

// The admin listener.

/// One raw request to the admin listener, the answer read until the listener closes the
/// connection: (status code, head, body).
fn admin_raw(port: u16, request: &[u8]) -> std::io::Result<(u16, String, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(request)?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let out = String::from_utf8(out).expect("UTF-8 answer");
    let (head, body) = out.split_once("\r\n\r\n").expect("an HTTP answer");
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status code");
    Ok((code, head.to_string(), body.to_string()))
}

/// One request; a POST carries the admin token.
fn admin(port: u16, method: &str, path: &str) -> (u16, String, String) {
    let auth = if method == "POST" {
        format!("Authorization: Bearer {ADMIN_TOKEN}\r\n")
    } else {
        String::new()
    };
    admin_raw(
        port,
        format!("{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}\r\n").as_bytes(),
    )
    .unwrap()
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[test]
fn admin_routes_answer_as_documented() {
    let m = Server::start(Kind::Redis, &[]);
    let proxy = Proxy::start(Kind::Redis, m.port, "");
    let port = proxy.admin_port;

    let (code, head, body) = admin(port, "GET", "/status");
    assert_eq!(code, 200, "{head}");
    assert_eq!(header(&head, "content-type"), Some("application/json"));
    assert_eq!(header(&head, "connection"), Some("close"));
    let st: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(st["links"][0]["name"], "main");

    let (code, head, body) = admin(port, "GET", "/metrics?x=1");
    assert_eq!(code, 200, "{head}");
    assert_eq!(
        header(&head, "content-type"),
        Some("text/plain; version=0.0.4")
    );
    assert!(
        body.contains("# TYPE replguard_sessions_total counter\n"),
        "{body}"
    );
    assert!(body.contains("replguard_sessions_active{link=\"main\"} 0\n"));

    // HEAD is answered as GET is, without the body.
    let (code, head, body) = admin(port, "HEAD", "/status");
    assert_eq!((code, body.as_str()), (200, ""), "{head}");
    assert_eq!(header(&head, "content-type"), Some("application/json"));

    let plain = Some("text/plain");
    let cases: &[(&str, &str, u16, &str)] = &[
        ("GET", "/nope", 404, "try /status or /metrics\n"),
        (
            "GET",
            "/links/main/master",
            404,
            "try /status or /metrics\n",
        ),
        ("PUT", "/status", 405, "GET or POST only\n"),
        ("OPTIONS", "/metrics", 405, "GET or POST only\n"),
        ("DELETE", "/nope", 405, "GET or POST only\n"),
        (
            "POST",
            "/status",
            404,
            "POST /links/<name>/master?addr=HOST:PORT or /links/<name>/allow-empty-master\n",
        ),
        (
            "POST",
            "/links/nope/master",
            404,
            "no link named \"nope\"\n",
        ),
        (
            "POST",
            "/links/main/bogus",
            404,
            "unknown action \"bogus\"\n",
        ),
        (
            "POST",
            "/links/main/allow-empty-master",
            200,
            "link main: replicas may now sync from the master (empty lineage None)\n",
        ),
        (
            "POST",
            "//links/main/allow-empty-master/",
            200,
            "link main: replicas may now sync from the master (empty lineage None)\n",
        ),
    ];
    for (method, path, want_code, want_body) in cases {
        let (code, head, body) = admin(port, method, path);
        assert_eq!(
            (code, body.as_str()),
            (*want_code, *want_body),
            "{method} {path}"
        );
        assert_eq!(header(&head, "content-type"), plain, "{method} {path}");
    }

    let (code, _, body) = admin(port, "POST", "/links/main/master?addr=nowhere");
    assert_eq!(code, 400);
    assert!(body.starts_with("addr: "), "{body}");
    let (code, _, body) = admin(port, "POST", "/links/main/master");
    assert_eq!(code, 400, "{body}");
    let other = Server::start(Kind::Redis, &[]);
    let (code, _, body) = admin(
        port,
        "POST",
        &format!("/links/main/master?x=1&addr=127.0.0.1:{}", other.port),
    );
    assert_eq!(
        (code, body),
        (
            200,
            format!("link main now dials 127.0.0.1:{}\n", other.port)
        )
    );
    assert_eq!(
        proxy.status()["links"][0]["master"],
        format!("127.0.0.1:{}", other.port)
    );

    // A request head well beyond 8 KiB is refused, never served.
    let big = format!(
        "GET /status HTTP/1.1\r\nHost: x\r\nX-Fill: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    match admin_raw(port, big.as_bytes()) {
        Ok((code, head, _)) => assert_eq!(code, 431, "{head}"),
        // The listener may close before reading the whole head: the peer sees a reset.
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    // A declared body beyond the limit is refused before the action runs.
    let (code, _, _) = admin_raw(
        port,
        b"POST /links/main/allow-empty-master HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n",
    )
    .unwrap();
    assert_eq!(code, 413);
}

#[test]
fn admin_connections_are_bounded_and_closed_at_shutdown() {
    let m = Server::start(Kind::Redis, &[]);
    let mut proxy = Proxy::start(Kind::Redis, m.port, "");
    let port = proxy.admin_port;
    // 64 connections that send nothing hold every slot: one more waits for a free slot.
    let idle: Vec<TcpStream> = (0..64).map(|_| raw_connect(port)).collect();
    let mut waiting = raw_connect(port);
    waiting
        .write_all(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    waiting
        .set_read_timeout(Some(Duration::from_millis(1000)))
        .unwrap();
    let mut byte = [0u8; 1];
    let e = waiting
        .read(&mut byte)
        .expect_err("no answer while every slot is taken");
    assert!(
        matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "{e}"
    );
    drop(idle);
    waiting
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let answer = String::from_utf8(read_to_close(&mut waiting)).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");

    // Shutdown closes an idle admin connection at once instead of waiting for its request.
    let mut idle = raw_connect(port);
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    proxy.stop();
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "shutdown took {:?}",
        t.elapsed()
    );
    assert_eq!(read_to_close(&mut idle), b"");
}

/// What a client announces as its address, refused: it would close a label value, start a
/// series of its own on the next line and comment out the rest, with a backslash and a brace
/// besides.
const HOSTILE_IP: &str = "1.2.3.4\"} 1\nevil_series 1\n# \\ }";
/// An address a replica may announce: it names the replica in labels.
const ANNOUNCED_IP: &str = "1.2.3.4";

/// Parses Prometheus text with the reference parser (Python `prometheus_client`); returns
/// every sample as `{"name", "labels", "value"}`.
fn parse_prometheus_text(text: &str) -> Vec<serde_json::Value> {
    const SCRIPT: &str = "
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out.append({'name': s.name, 'labels': s.labels, 'value': s.value})
print(json.dumps(out))
";
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named 'prometheus_client'"),
        "the reference parser is missing: pip install prometheus-client (scripts/install-test-deps.sh)"
    );
    assert!(
        out.status.success(),
        "the reference parser rejects /metrics: {stderr}\n{text}"
    );
    serde_json::from_slice(&out.stdout).expect("parser output is JSON")
}

#[test]
fn metrics_parse_while_a_replica_announces_a_hostile_address() {
    let m = Server::start(
        Kind::Redis,
        &[
            "--repl-diskless-sync",
            "yes",
            "--repl-diskless-sync-delay",
            "0",
        ],
    );
    let proxy = Proxy::start(Kind::Redis, m.port, "");
    // The hostile address is refused: a replica's identity is an IP address or a host name.
    let mut hostile = raw_connect(proxy.port);
    hostile
        .write_all(&replguard::wire::resp::encode_command(&[
            "REPLCONF",
            "ip-address",
            HOSTILE_IP,
        ]))
        .unwrap();
    let got = String::from_utf8(read_to_close(&mut hostile)).unwrap();
    assert!(
        got.starts_with("-ERR replguard: REPLCONF ip-address ")
            && got.ends_with(" is not an IP address or a host name\r\n"),
        "{got:?}"
    );
    assert_eq!(got.matches("\r\n").count(), 1, "{got:?}");
    drop(hostile);
    wait_for(LONG, "the refused session to end", || {
        proxy.try_sessions()?.is_empty().then_some(())
    });
    let mut r = raw_connect(proxy.port);
    for cmd in [
        ["REPLCONF", "listening-port", "7000"],
        ["REPLCONF", "ip-address", ANNOUNCED_IP],
    ] {
        r.write_all(&replguard::wire::resp::encode_command(&cmd))
            .unwrap();
        let mut ok = [0u8; 5];
        r.read_exact(&mut ok).unwrap();
        assert_eq!(&ok, b"+OK\r\n");
    }
    r.write_all(&replguard::wire::resp::encode_command(&[
        "PSYNC", "?", "-1",
    ]))
    .unwrap();
    let replica = format!("{ANNOUNCED_IP}:7000");
    let session = wait_for(LONG, "the hostile replica's session to stream", || {
        proxy
            .sessions()
            .into_iter()
            .find(|s| s["replica"] == replica.as_str() && s["state"] == "streaming")
    });

    let text = proxy.http_get("/metrics");
    let samples = parse_prometheus_text(&text);
    let strays: Vec<_> = samples
        .iter()
        .filter(|s| !s["name"].as_str().unwrap().starts_with("replguard_"))
        .collect();
    assert!(
        strays.is_empty(),
        "series not exported by replguard: {strays:?}\n{text}"
    );
    for family in [
        "replguard_replica_expected_offset",
        "replguard_replica_rdb_bytes",
    ] {
        let found = samples
            .iter()
            .find(|s| s["name"] == family)
            .unwrap_or_else(|| panic!("no {family} sample:\n{text}"));
        assert_eq!(found["labels"]["link"], "main");
        assert_eq!(found["labels"]["session"], session["id"].to_string());
        assert_eq!(
            found["labels"]["replica"],
            replica.as_str(),
            "the announced address names the replica"
        );
    }
    assert!(
        samples
            .iter()
            .any(|s| s["name"] == "replguard_sessions_active" && s["value"] == 1.0),
        "{text}"
    );
    drop(r);
}

/// A master double for the timeout tests, one thread per connection: replguard's own `INFO`
/// reads are refused, a replica's handshake commands (RESP or inline) are answered `+OK`, and
/// `PSYNC`/`SYNC` hands the connection to `on_psync`; the double then keeps it open until
/// replguard closes it.
fn scripted_master(on_psync: fn(&mut TcpStream)) -> u16 {
    use redis_protocol::resp2::{decode::decode, types::OwnedFrame};
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    // The next command's name (uppercased); a bare newline has none.
                    let name = loop {
                        if buf.first() == Some(&b'*') {
                            match decode(&buf) {
                                Ok(Some((OwnedFrame::Array(args), n))) => {
                                    buf.drain(..n);
                                    break match args.first() {
                                        Some(OwnedFrame::BulkString(b)) => {
                                            String::from_utf8_lossy(b).to_uppercase()
                                        }
                                        _ => String::new(),
                                    };
                                }
                                Ok(None) => {}
                                _ => return,
                            }
                        } else if let Some(i) = buf.iter().position(|b| *b == b'\n') {
                            let line: Vec<u8> = buf.drain(..=i).collect();
                            let line = String::from_utf8_lossy(&line).to_uppercase();
                            break line.split_whitespace().next().unwrap_or("").to_string();
                        }
                        match s.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let answer: &[u8] = match name.as_str() {
                        "" => continue,
                        "INFO" => b"-ERR not a real master\r\n",
                        "PSYNC" | "SYNC" => {
                            on_psync(&mut s);
                            while matches!(s.read(&mut chunk), Ok(n) if n > 0) {}
                            return;
                        }
                        _ => b"+OK\r\n",
                    };
                    if s.write_all(answer).is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// Reads exactly `want.len()` bytes and checks they are `want`.
fn expect_bytes(s: &mut TcpStream, want: &[u8]) {
    let mut got = vec![0u8; want.len()];
    s.read_exact(&mut got)
        .unwrap_or_else(|e| panic!("{e} reading {want:?}"));
    assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(want));
}

const FULLRESYNC: &[u8] = b"+FULLRESYNC 0123456789012345678901234567890123456789 0\r\n";

#[test]
fn a_master_silent_for_handshake_step_ms_ends_the_session_and_keepalives_restart_it() {
    let limits = "    announce_replica_ip: false\n    timeouts: { handshake_step_ms: 500 }\n";
    // Newlines every 200 ms for 1.2 s before the reply: longer than a step in all, but never
    // silent for one.
    let patient = scripted_master(|s| {
        for _ in 0..6 {
            s.write_all(b"\n").unwrap();
            std::thread::sleep(Duration::from_millis(200));
        }
        s.write_all(FULLRESYNC).unwrap();
        s.write_all(b"$5\r\nREDIS").unwrap();
    });
    let proxy = Proxy::start(Kind::Redis, patient, limits);
    let mut r = replica_handshake(proxy.port);
    expect_bytes(&mut r, b"\n\n\n\n\n\n");
    expect_bytes(&mut r, FULLRESYNC);
    expect_bytes(&mut r, b"$5\r\nREDIS");
    wait_for(LONG, "the session to stream", || {
        let s = proxy.try_sessions()?;
        (s.len() == 1 && s[0]["state"] == "streaming").then_some(())
    });
    drop(r);

    // A master that never answers PSYNC: the session ends one step after it was sent.
    let silent = scripted_master(|_| {});
    let proxy = Proxy::start(Kind::Redis, silent, limits);
    let mut r = replica_handshake(proxy.port);
    let sent = Instant::now();
    let peer = format!("peer=127.0.0.1:{}}}", r.local_addr().unwrap().port());
    r.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(read_to_close(&mut r), b"", "nothing reaches the replica");
    let waited = sent.elapsed();
    assert!(
        waited >= Duration::from_millis(450) && waited < Duration::from_secs(4),
        "closed after {waited:?}"
    );
    let line = wait_logged(
        LONG,
        &[
            &peer,
            "session ended",
            "reason=master sent nothing for 500ms while replguard waited for the PSYNC reply",
        ],
    );
    assert!(line.contains(" WARN "), "{line}");
    assert_eq!(
        proxy.metric("replguard_session_errors_total", "link=\"main\""),
        1.0
    );
}

#[test]
fn a_master_silent_for_sync_idle_ms_during_a_full_sync_ends_the_session() {
    // +FULLRESYNC, newlines every 200 ms for 1 s (a master preparing its RDB), then nothing.
    let stalling = scripted_master(|s| {
        s.write_all(FULLRESYNC).unwrap();
        for _ in 0..5 {
            std::thread::sleep(Duration::from_millis(200));
            s.write_all(b"\n").unwrap();
        }
    });
    let proxy = Proxy::start(
        Kind::Redis,
        stalling,
        "    announce_replica_ip: false\n    timeouts: { sync_idle_ms: 500 }\n",
    );
    let mut r = replica_handshake(proxy.port);
    r.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let peer = format!("peer=127.0.0.1:{}}}", r.local_addr().unwrap().port());
    expect_bytes(&mut r, FULLRESYNC);
    // Each newline restarts the wait: all of them arrive.
    expect_bytes(&mut r, b"\n\n\n\n\n");
    let last = Instant::now();
    assert_eq!(read_to_close(&mut r), b"");
    let waited = last.elapsed();
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(4),
        "closed {waited:?} after the master's last byte"
    );
    let line = wait_logged(
        LONG,
        &[
            &peer,
            "session ended",
            "reason=master sent nothing for 500ms while replguard waited for the RDB payload",
        ],
    );
    assert!(line.contains("state=\"rdb\""), "{line}");
}

#[test]
fn a_master_that_does_not_answer_the_dial_ends_the_session_after_connect_ms() {
    // A listener with a backlog of 0 whose queue is full: the kernel drops further SYNs, so a
    // dial to it hangs (loopback, and nothing needs to accept).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let _enter = rt.enter();
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let deaf = sock.listen(0).unwrap();
    let addr = deaf.local_addr().unwrap();
    let mut queued = Vec::new();
    while let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
        queued.push(s);
        assert!(queued.len() < 8, "the listener's queue never filled");
    }

    let proxy = Proxy::start(
        Kind::Redis,
        addr.port(),
        "    timeouts: { connect_ms: 300 }\n",
    );
    let mut r = raw_connect(proxy.port);
    r.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let peer = format!("peer=127.0.0.1:{}}}", r.local_addr().unwrap().port());
    let dialed = Instant::now();
    assert_eq!(read_to_close(&mut r), b"");
    let waited = dialed.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "closed after {waited:?}"
    );
    wait_logged(
        LONG,
        &[
            &peer,
            "session ended",
            &format!("reason=cannot connect to master {addr}: no answer within 300 ms"),
        ],
    );

    // A refused dial ends the session at once, whatever connect_ms.
    let nobody = free_port();
    let proxy = Proxy::start(Kind::Redis, nobody, "    timeouts: { connect_ms: 60000 }\n");
    let mut r = raw_connect(proxy.port);
    r.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let peer = format!("peer=127.0.0.1:{}}}", r.local_addr().unwrap().port());
    let dialed = Instant::now();
    assert_eq!(read_to_close(&mut r), b"");
    assert!(dialed.elapsed() < Duration::from_secs(3));
    wait_logged(
        LONG,
        &[
            &peer,
            &format!("reason=cannot connect to master 127.0.0.1:{nobody}: Connection refused"),
        ],
    );
    drop(queued);
}

#[test]
fn losing_the_replica_closes_the_master_side() {
    // No pings from the master: only replguard closing the connection can tell it.
    let m = Server::start(Kind::Redis, &["--repl-ping-replica-period", "3600"]);
    let proxy = Proxy::start(Kind::Redis, m.port, "");
    let r = replica_of(Kind::Redis, proxy.port, &[]);
    wait_converged(&m, &r, LONG);
    assert_eq!(m.client().info("replication")["connected_slaves"], "1");
    drop(r); // SIGKILL: its socket closes, nothing else is said
    wait_for(
        Duration::from_secs(5),
        "the master to lose its replica",
        || (m.try_info("replication")?.get("connected_slaves")? == "0").then_some(()),
    );
    wait_for(Duration::from_secs(5), "the session to end", || {
        proxy.try_sessions()?.is_empty().then_some(())
    });
}

/// What the admin listener answers to what it does not serve, as it answers today.
#[test]
fn the_admin_listener_refuses_what_it_does_not_serve() {
    let master = free_port();
    let proxy = Proxy::start(Kind::Redis, master, "");
    let ask = |req: &[u8]| http_exchange(proxy.admin_port, req).unwrap();
    let check = |req: &str, status: &str, body: &str| {
        let (head, got) = ask(format!(
            "{req} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\r\n"
        )
        .as_bytes());
        assert!(
            head.starts_with(&format!("HTTP/1.1 {status}\r\n")),
            "{req}: {head}"
        );
        assert!(
            head.to_ascii_lowercase()
                .contains(&format!("content-length: {}\r\n", body.len())),
            "{req}: {head}"
        );
        assert_eq!(got, body, "{req}");
    };
    check("GET /nope", "404 Not Found", "try /status or /metrics\n");
    check(
        "GET /status/x",
        "404 Not Found",
        "try /status or /metrics\n",
    );
    // A POST is routed to the operator actions, so POST /status is "not found" there, not 405.
    check(
        "POST /status",
        "404 Not Found",
        "POST /links/<name>/master?addr=HOST:PORT or /links/<name>/allow-empty-master\n",
    );
    check(
        "PUT /status",
        "405 Method Not Allowed",
        "GET or POST only\n",
    );
    check(
        "DELETE /metrics",
        "405 Method Not Allowed",
        "GET or POST only\n",
    );
    check(
        "POST /links/nope/allow-empty-master",
        "404 Not Found",
        "no link named \"nope\"\n",
    );
    check(
        "POST /links/main/reboot",
        "404 Not Found",
        "unknown action \"reboot\"\n",
    );
    let (head, body) = ask(format!(
        "POST /links/main/master?addr=db:0 HTTP/1.1\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\r\n"
    )
    .as_bytes());
    assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head}");
    assert!(body.starts_with("addr: "), "{body}");
    assert_eq!(
        proxy.status()["links"][0]["master"],
        format!("127.0.0.1:{master}"),
        "a refused re-point changes nothing"
    );

    // Malformed: a head that never ends within the 8 KiB limit, and one cut short by a close
    // (closed without an answer, or answered 400; never served).
    let (head, _) = ask(&[b'x'; 8 * 1024 + 1]);
    assert!(
        head.starts_with("HTTP/1.1 431 ") || head.starts_with("HTTP/1.1 400 "),
        "{head}"
    );
    let mut s = TcpStream::connect(("127.0.0.1", proxy.admin_port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /status HTTP/1.1\r\n").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(
        out.is_empty() || out.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{out}"
    );

    // And it still serves.
    assert_eq!(proxy.status()["links"][0]["name"], "main");
}
