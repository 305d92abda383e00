//! The link port as an attacker on the network meets it, through the replguard binary: no
//! credentials lent to a connection, deadlines for clients that say nothing or trickle, budgets
//! that idle clients cannot take from replicas, a cap per source address, `allow_from`, and
//! replica identities that must be IP addresses.

use crate::common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);
const PASSWORD: &str = "s3cret-for-security-tests";

/// The replguard binary with one Redis link to `master`; `link_extra` is YAML appended to the
/// link (indented 4), `auth` gives the link the master's password (for its own INFO reads).
struct Rig {
    rg: Replguard,
    port: u16,
    admin: u16,
    dir: tempfile::TempDir,
}

impl Rig {
    fn start(master: u16, auth: bool, link_extra: &str) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let [port, admin] = free_ports();
        let auth = if auth {
            let pw = dir.path().join("master.pw");
            std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
            format!("    auth:\n      password_file: {}\n", pw.display())
        } else {
            String::new()
        };
        let cfg = dir.path().join("rg.yaml");
        std::fs::write(
            &cfg,
            format!(
                "state_dir: {}/state\nadmin:\n  listen: 127.0.0.1:{admin}\nlinks:\n  - name: main\n    listen: 127.0.0.1:{port}\n    master: 127.0.0.1:{master}\n    flavor: redis\n    guard: enforce\n    lineage_poll_ms: 200\n{auth}{link_extra}",
                dir.path().display()
            ),
        )
        .unwrap();
        let rg = Replguard::run(&cfg, &dir.path().join("rg.log"), |_| {});
        wait_for(LONG, "replguard's admin listener", || {
            try_http(admin, "GET", "/status")
        });
        Rig {
            rg,
            port,
            admin,
            dir,
        }
    }

    fn status(&self) -> serde_json::Value {
        serde_json::from_str(&http(self.admin, "GET", "/status")).unwrap()
    }

    /// The value of `replguard_connections_refused_total` for `reason`.
    fn refused(&self, reason: &str) -> u64 {
        let metrics = http(self.admin, "GET", "/metrics");
        let prefix =
            format!("replguard_connections_refused_total{{link=\"main\",reason=\"{reason}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {prefix} in {metrics}"))
            .parse()
            .unwrap()
    }

    /// Waits for `n` refusals for `reason` (a refusal is counted as its session ends, just after
    /// the peer reads the answer), then checks there are no more.
    fn wait_refused(&self, reason: &str, n: u64) {
        let got = wait_for(LONG, &format!("{n} refusals for {reason}"), || {
            let got = self.refused(reason);
            (got >= n).then_some(got)
        });
        assert_eq!(got, n, "{reason}");
    }

    fn ledger_file(&self) -> PathBuf {
        self.dir.path().join("state").join("main.ledger.json")
    }
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(LONG)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

fn cmd(args: &[&str]) -> Vec<u8> {
    replguard::wire::resp::encode_command(args)
}

/// Reads until the peer closes (a reset counts as a close); what came. Panics if it stays open
/// past the read timeout.
fn read_to_close(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
                ) =>
            {
                break
            }
            Err(e) => panic!("{e} after {:?}", String::from_utf8_lossy(&out)),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads one line (with its CRLF).
fn read_line(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    while !out.ends_with(b"\r\n") {
        match s.read(&mut b) {
            Ok(1) => out.push(b[0]),
            other => panic!("{other:?} after {:?}", String::from_utf8_lossy(&out)),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn master_with_password() -> Server {
    let m = Server::start(Kind::Redis, &["--requirepass", PASSWORD]);
    let mut c = m.client();
    assert_eq!(c.text(&["AUTH", PASSWORD]), "OK");
    assert_eq!(c.text(&["SET", "the-secret-key", "the-secret-value"]), "OK");
    m
}

/// What a master holding data must never send to a client that did not authenticate.
fn assert_no_data(got: &str) {
    for leak in ["+FULLRESYNC", "REDIS", "the-secret", PASSWORD, "+CONTINUE"] {
        assert!(!got.contains(leak), "{leak:?} in {got:?}");
    }
}

#[test]
fn an_unauthenticated_psync_gets_noauth_and_no_data() {
    let m = master_with_password();
    let rig = Rig::start(
        m.port,
        true,
        "    timeouts: { first_command_ms: 2000, handshake_ms: 2000 }\n",
    );
    wait_for(LONG, "the link's own INFO read of the master", || {
        rig.status()["links"][0]["ledger"]["lineage"]
            .as_array()
            .is_some_and(|l| !l.is_empty())
            .then_some(())
    });
    for psync in [cmd(&["PSYNC", "?", "-1"]), cmd(&["SYNC"])] {
        let mut c = connect(rig.port);
        c.write_all(&psync).unwrap();
        let first = read_line(&mut c);
        assert!(first.starts_with("-NOAUTH"), "{first:?}");
        let rest = read_to_close(&mut c);
        assert_no_data(&rest);
    }
    // With a listening port first, as a replica without masterauth would.
    let mut c = connect(rig.port);
    c.write_all(&cmd(&["REPLCONF", "listening-port", "6399"]))
        .unwrap();
    assert!(read_line(&mut c).starts_with("-NOAUTH"));
    c.write_all(&cmd(&["PSYNC", "?", "-1"])).unwrap();
    let answer = read_line(&mut c);
    assert!(answer.starts_with("-NOAUTH"), "{answer:?}");
    assert_no_data(&read_to_close(&mut c));
    let mut mc = m.client();
    assert_eq!(mc.text(&["AUTH", PASSWORD]), "OK");
    assert_eq!(info_u64(&mut mc, "stats", "sync_full"), 0);
    assert_eq!(info_u64(&mut mc, "replication", "connected_slaves"), 0);
}

#[test]
fn an_unauthenticated_psync_is_not_judged_without_an_announced_address() {
    // With announce_replica_ip off nothing else tells replguard the master would refuse this
    // connection: it asks, and the master's -NOAUTH is what the client gets, with no verdict
    // (whose refusal or hold would be replguard's own answer) and no books.
    let m = master_with_password();
    let rig = Rig::start(m.port, true, "    announce_replica_ip: false\n");
    let id = wait_for(LONG, "the link's own INFO read of the master", || {
        let st = rig.status();
        st["links"][0]["ledger"]["lineage"][0]["replid"]
            .as_str()
            .map(str::to_string)
    });
    for psync in [
        cmd(&["PSYNC", &id, "1000000"]),
        cmd(&["PSYNC", &"f".repeat(40), "5"]),
        cmd(&["SYNC"]),
    ] {
        let mut c = connect(rig.port);
        c.write_all(&psync).unwrap();
        let first = read_line(&mut c);
        assert!(first.starts_with("-NOAUTH"), "{first:?}");
        assert_no_data(&read_to_close(&mut c));
    }
    let st = rig.status();
    let ledger = &st["links"][0]["ledger"];
    assert!(
        ledger["last_verdicts"]
            .as_object()
            .is_none_or(|v| v.is_empty()),
        "{ledger}"
    );
    assert!(
        ledger["replicas"].as_object().is_none_or(|v| v.is_empty()),
        "{ledger}"
    );
}

#[test]
fn replconf_then_config_get_requirepass_gets_noauth() {
    let m = master_with_password();
    let rig = Rig::start(m.port, true, "");
    let mut c = Client::connect(rig.port).unwrap();
    for args in [
        &["REPLCONF", "listening-port", "1"][..],
        &["CONFIG", "GET", "requirepass"],
        &["SET", "written-by-a-stranger", "1"],
        &["GET", "the-secret-key"],
    ] {
        match c.cmd(args) {
            Reply::Error(e) => assert!(e.starts_with("NOAUTH"), "{args:?}: {e}"),
            other => panic!("{args:?} answered {other:?}"),
        }
    }
    let mut mc = m.client();
    assert_eq!(mc.text(&["AUTH", PASSWORD]), "OK");
    assert_eq!(mc.int(&["EXISTS", "written-by-a-stranger"]), 0);
}

#[test]
fn a_replica_with_masterauth_syncs_and_resumes_partially() {
    let m = master_with_password();
    let rig = Rig::start(m.port, true, "");
    let mut r = replica_of(Kind::Redis, rig.port, &["--masterauth", PASSWORD]);
    wait_link_up(&r, LONG);
    wait_for(LONG, "the key on the replica", || {
        let v = r.try_client()?.try_cmd(&["GET", "the-secret-key"]).ok()?;
        (v == Reply::BulkString(b"the-secret-value".to_vec())).then_some(())
    });
    let mut mc = m.client();
    assert_eq!(mc.text(&["AUTH", PASSWORD]), "OK");
    let full = info_u64(&mut mc, "stats", "sync_full");
    let partial = info_u64(&mut mc, "stats", "sync_partial_ok");

    r.stop(true);
    assert_eq!(mc.text(&["SET", "while-down", "x"]), "OK");
    r.start_again();
    wait_for(LONG, "the write made while the replica was down", || {
        let v = r.try_client()?.try_cmd(&["GET", "while-down"]).ok()?;
        (v == Reply::BulkString(b"x".to_vec())).then_some(())
    });
    assert_eq!(
        info_u64(&mut mc, "stats", "sync_full"),
        full,
        "no full sync"
    );
    assert_eq!(info_u64(&mut mc, "stats", "sync_partial_ok"), partial + 1);
    // The replica's record names the address its session came from.
    let key = format!("127.0.0.1:{}", r.port);
    let rec = wait_for(LONG, "the replica's record", || {
        let st = rig.status();
        let rec = st["links"][0]["ledger"]["replicas"][&key].clone();
        rec["peer"].is_string().then_some(rec)
    });
    assert!(
        rec["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{rec}"
    );
}

#[test]
fn idle_and_trickling_clients_are_cut_and_do_not_starve_a_replica() {
    let m = Server::start(Kind::Redis, &["--repl-diskless-sync-delay", "0"]);
    assert_eq!(m.client().text(&["SET", "k", "v"]), "OK");
    let rig = Rig::start(
        m.port,
        false,
        "    max_sessions: 2\n    max_clients: 8\n    max_connections_per_ip: 16\n    timeouts: { first_command_ms: 1500, handshake_ms: 3000 }\n",
    );
    // As many ordinary clients as there are replica places, held open the whole time (they
    // pass through, with no deadline), as many idle connections, and two that trickle: one its
    // first command, one a command after a quick first.
    let mut held: Vec<Client> = (0..2)
        .map(|_| {
            let mut c = Client::connect(rig.port).unwrap();
            assert_eq!(c.text(&["GET", "k"]), "v");
            c
        })
        .collect();
    let mut idle: Vec<TcpStream> = (0..2).map(|_| connect(rig.port)).collect();
    let mut trickle_first = connect(rig.port);
    let mut trickle_later = connect(rig.port);
    trickle_later.write_all(&cmd(&["PING"])).unwrap();
    assert_eq!(read_line(&mut trickle_later), "+PONG\r\n");
    let trickler = |mut s: TcpStream| {
        std::thread::spawn(move || {
            for b in cmd(&["ECHO", "one byte at a time"]) {
                if s.write_all(&[b]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        })
    };
    let t1 = trickler(trickle_first.try_clone().unwrap());
    let t2 = trickler(trickle_later.try_clone().unwrap());

    let r = replica_of(Kind::Redis, rig.port, &[]);
    wait_link_up(&r, LONG);
    wait_converged(&m, &r, LONG);

    let first_cmd =
        "-ERR replguard: no complete command within 1500 ms of connecting (timeouts.first_command_ms)\r\n";
    for s in idle.iter_mut().chain([&mut trickle_first]) {
        assert_eq!(read_to_close(s), first_cmd);
    }
    assert_eq!(
        read_to_close(&mut trickle_later),
        "-ERR replguard: handshake not complete within 3000 ms of connecting (timeouts.handshake_ms)\r\n"
    );
    t1.join().unwrap();
    t2.join().unwrap();
    rig.wait_refused("first_command_timeout", 3);
    rig.wait_refused("handshake_timeout", 1);
    // One line for the source, not one per connection.
    let lines = rig
        .rg
        .log()
        .lines()
        .filter(|l| {
            l.contains("reason_code=\"first_command_timeout\"")
                || l.contains("reason_code=first_command_timeout")
        })
        .count();
    assert!((1..3).contains(&lines), "{lines} lines: {}", rig.rg.log());
    // The replica streams on, and the clients were not disturbed.
    assert_eq!(m.client().text(&["SET", "after", "1"]), "OK");
    wait_converged(&m, &r, LONG);
    for c in &mut held {
        assert_eq!(c.text(&["GET", "after"]), "1");
    }
}

#[test]
fn a_source_beyond_its_cap_is_refused_with_the_limit_named() {
    let m = Server::start(Kind::Redis, &[]);
    let rig = Rig::start(m.port, false, "    max_connections_per_ip: 2\n");
    let mut a = Client::connect(rig.port).unwrap();
    let mut b = Client::connect(rig.port).unwrap();
    assert_eq!(a.text(&["PING"]), "PONG");
    assert_eq!(b.text(&["PING"]), "PONG");
    let mut c = connect(rig.port);
    assert_eq!(
        read_to_close(&mut c),
        "-ERR replguard: 127.0.0.1 already holds 2 connections to this link (max_connections_per_ip)\r\n"
    );
    rig.wait_refused("max_connections_per_ip", 1);
    drop(a);
    wait_for(LONG, "the source's place back", || {
        let mut c = Client::connect(rig.port).ok()?;
        c.send(&["PING"]);
        matches!(c.try_read(), Ok(Reply::SimpleString(_))).then_some(())
    });
    assert_eq!(b.text(&["PING"]), "PONG");
}

#[test]
fn a_source_outside_allow_from_is_refused() {
    let m = Server::start(Kind::Redis, &[]);
    let rig = Rig::start(
        m.port,
        false,
        "    allow_from: [10.0.0.0/8, 192.168.0.0/16]\n",
    );
    let mut c = connect(rig.port);
    assert_eq!(
        read_to_close(&mut c),
        "-ERR replguard: connections from 127.0.0.1 are not allowed on this link (allow_from)\r\n"
    );
    rig.wait_refused("allow_from", 1);
    let log = rig.rg.log();
    assert!(log.contains("allow_from"), "{log}");

    let open = Rig::start(m.port, false, "    allow_from: [127.0.0.0/8]\n");
    let mut c = Client::connect(open.port).unwrap();
    assert_eq!(c.text(&["PING"]), "PONG");
}

#[test]
fn an_announced_address_that_is_neither_an_ip_address_nor_a_host_name_is_refused() {
    let m = Server::start(Kind::Redis, &[]);
    let rig = Rig::start(m.port, false, "");
    let mut c = connect(rig.port);
    c.write_all(&cmd(&["REPLCONF", "listening-port", "6390"]))
        .unwrap();
    assert_eq!(read_line(&mut c), "+OK\r\n");
    c.write_all(&cmd(&["REPLCONF", "ip-address", "replica example;"]))
        .unwrap();
    assert_eq!(
        read_to_close(&mut c),
        "-ERR replguard: REPLCONF ip-address \"replica example;\" is not an IP address or a host name\r\n"
    );
    rig.wait_refused("ip_address", 1);
    // An IP address or a host name is taken.
    let mut c = Client::connect(rig.port).unwrap();
    assert_eq!(c.text(&["REPLCONF", "ip-address", "10.1.2.3"]), "OK");
    let mut c = Client::connect(rig.port).unwrap();
    assert_eq!(
        c.text(&["REPLCONF", "ip-address", "replica-0.db.svc"]),
        "OK"
    );
    assert!(
        !rig.ledger_file().exists() || {
            let text = std::fs::read_to_string(rig.ledger_file()).unwrap();
            !text.contains("replica example")
        }
    );
}

/// The real Kvrocks 2.7.0: a replica with `masterauth` syncs from a master with `requirepass`
/// through a link that lends nothing, resumes without a full sync across a replguard restart,
/// and an unauthenticated `PSYNC` or `_fetch_meta` gets the master's `-NOAUTH`.
#[test]
fn a_real_kvrocks_replica_with_masterauth_syncs_and_resumes() {
    use crate::common::kvrocks_real::{cluster, kvrocks_bin, Kvrocks, NodeCfg};
    let Some(bin) = kvrocks_bin("a_real_kvrocks_replica_with_masterauth_syncs_and_resumes") else {
        return;
    };
    let node = NodeCfg {
        cluster: true,
        rsid: false,
    };
    let master = Kvrocks::start(&bin, node, &[]);
    let replica = Kvrocks::start(&bin, node, &[&format!("masterauth {PASSWORD}")]);
    let pw_dir = tempfile::tempdir().unwrap();
    let pw = pw_dir.path().join("kv.pw");
    std::fs::write(&pw, PASSWORD).unwrap();
    let mut p = Proxy::start_kvrocks(
        master.port,
        "enforce",
        &format!("    auth:\n      password_file: {}\n", pw.display()),
    );
    cluster(&master, None, p.link_addr(), 1);
    let mut mc = master.client();
    assert_eq!(mc.text(&["SET", "k0", "v0"]), "OK");
    assert_eq!(mc.text(&["CONFIG", "SET", "requirepass", PASSWORD]), "OK");
    assert_eq!(mc.text(&["AUTH", PASSWORD]), "OK");
    let stat = |c: &mut Client, name: &str| -> u64 { c.info("stats")[name].parse().unwrap() };

    // Nothing for a client that did not authenticate, whatever it asks: not even an answer of
    // replguard's own (a resume beyond what an unknown replica was delivered would be refused
    // by the guard), and no record in the ledger.
    for ask in [
        cmd(&["PSYNC", "0"]),
        cmd(&["PSYNC", "X4N29DXBT7N4ZKU9", "500"]),
        cmd(&["_fetch_meta"]),
    ] {
        let mut c = connect(p.port);
        c.write_all(&ask).unwrap();
        let got = read_line(&mut c);
        assert!(got.starts_with("-NOAUTH"), "{got:?}");
    }
    assert_eq!(stat(&mut mc, "sync_full"), 0);
    let books = p.status()["links"][0]["ledger"]["kvrocks"]["replicas"].clone();
    assert!(
        books.as_object().is_none_or(|m| m.is_empty()),
        "unauthenticated clients left records: {books}"
    );

    // The topology with the replica, set on the master as an authenticated client.
    let (mid, rid) = ("m".repeat(40), "r".repeat(40));
    let link = p.link_addr();
    let topology = format!(
        "{mid} {} {} master - 0-16383\n{rid} 127.0.0.1 {} slave {mid}",
        link.ip(),
        link.port(),
        replica.port
    );
    let mut rc = replica.client();
    assert_eq!(rc.text(&["CLUSTERX", "SETNODEID", &rid]), "OK");
    for c in [&mut mc, &mut rc] {
        assert_eq!(c.text(&["CLUSTERX", "SETNODES", &topology, "2"]), "OK");
    }
    let on_replica = |key: &str| {
        wait_for(LONG, &format!("{key} on the replica"), || {
            let mut c = Client::connect(replica.port).ok()?;
            c.send(&["GET", key]);
            matches!(c.try_read().ok()?, Reply::BulkString(_)).then_some(())
        })
    };
    assert_eq!(mc.text(&["SET", "k1", "v1"]), "OK");
    on_replica("k0");
    on_replica("k1");
    let full = stat(&mut mc, "sync_full");
    let partial = p.metric("replguard_partial_syncs_total", "");
    assert!(partial >= 1.0, "the replica streams through the link");

    p.stop();
    assert_eq!(mc.text(&["SET", "k2", "while-replguard-was-down"]), "OK");
    p.resume();
    on_replica("k2");
    assert_eq!(stat(&mut mc, "sync_full"), full, "no second full sync");
    // Counters start again with the restarted replguard.
    assert!(
        p.metric("replguard_partial_syncs_total", "") >= 1.0,
        "the resume went through the guard"
    );
}
