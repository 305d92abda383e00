//! Real Redis 7.0 and Valkey 8.1 replicating through replguard: full syncs (disk and diskless)
//! under writes, partial resyncs after a replica restart and after a replguard restart, WAIT,
//! the replica's real address on the master, and /status agreeing with both servers.

use crate::common::*;
use std::time::Duration;

const KEYS: &str = "100000";
const LONG: Duration = Duration::from_secs(90);

/// Masters ping rarely so offsets only move when the test writes.
const QUIET: [&str; 2] = ["--repl-ping-replica-period", "3600"];

fn master(kind: Kind, diskless: bool) -> Server {
    let mut args = QUIET.to_vec();
    if diskless {
        args.extend([
            "--repl-diskless-sync",
            "yes",
            "--repl-diskless-sync-delay",
            "0",
        ]);
    } else {
        args.extend(["--repl-diskless-sync", "no"]);
    }
    let m = Server::start(kind, &args);
    assert_eq!(m.client().text(&["DEBUG", "POPULATE", KEYS]), "OK");
    m
}

/// Checks /status against the master's and the replica's own offsets once writes stopped.
fn status_agrees(proxy: &Proxy, master: &Server, replica: &Server) {
    let want = wait_converged(master, replica, LONG);
    let s = wait_for(
        LONG,
        "/status to show the replica's ACK of the last offset",
        || {
            let s = proxy.session_of(replica.port)?;
            (s["ack_offset"].as_u64()? == want).then_some(s)
        },
    );
    assert_eq!(s["expected_offset"].as_u64(), Some(want), "{s}");
    assert_eq!(s["lag_bytes"].as_u64(), Some(0), "{s}");
    let ri = replica.client().info("replication");
    assert_eq!(ri["slave_repl_offset"].parse::<u64>().unwrap(), want);
    assert_eq!(
        s["replid"].as_str().unwrap(),
        master.client().info("replication")["master_replid"]
    );
}

/// The master's offsets read while replguard's session for the replica listening on
/// `replica_port` was relaying the payload (state `rdb` just before and just after each read),
/// until the session streams.
fn offsets_during_the_payload(proxy: &Proxy, m: &Server, replica_port: u16) -> Vec<u64> {
    let state = || -> Option<String> {
        let s = proxy.try_sessions()?.into_iter().find(|s| {
            s["replica"]
                .as_str()
                .is_some_and(|r| r.ends_with(&format!(":{replica_port}")))
        })?;
        s["state"].as_str().map(str::to_string)
    };
    let mut offsets = Vec::new();
    wait_for(LONG, "the session to stream", || {
        let before = state()?;
        let offset: u64 = m
            .try_info("replication")?
            .get("master_repl_offset")?
            .parse()
            .ok()?;
        let after = state()?;
        if before == "rdb" && after == "rdb" {
            offsets.push(offset);
        }
        (after == "streaming").then_some(())
    });
    offsets
}

/// Scenarios a, b, e and f: a full sync of 100k keys while writes run, then WAIT, the replica's
/// address on the master, and /status.
fn full_sync_under_writes(kind: Kind, diskless: bool) {
    let m = master(kind, diskless);
    // The RDB takes about a second to produce (a 1 us pause before one key in ten), so the
    // writes surely overlap the sync.
    assert_eq!(
        m.client()
            .text(&["CONFIG", "SET", "rdb-key-save-delay", "-10"]),
        "OK"
    );
    let proxy = Proxy::start(kind, m.port, "");
    let writer = Writer::start(m.port, "w", 50, u64::MAX);
    wait_for(LONG, "the writer's first batch", || {
        (writer.count.load(std::sync::atomic::Ordering::Relaxed) > 0).then_some(())
    });
    // The replica dials replguard from 127.0.0.2, so the master can only name it right if
    // replguard passes its address on.
    let r = replica_of(kind, proxy.port, &["--bind-source-addr", "127.0.0.2"]);
    let during = offsets_during_the_payload(&proxy, &m, r.port);
    wait_link_up(&r, LONG);
    std::thread::sleep(Duration::from_millis(300));
    let written = writer.finish();
    assert!(written > 0);
    // The master's offset moved while replguard relayed the payload: the replica needed the
    // stream written during its sync.
    assert!(
        during.len() >= 2 && during.last() > during.first(),
        "no write during the sync: the master's offsets while the payload ran were {during:?}"
    );
    status_agrees(&proxy, &m, &r);

    let s = proxy.session_of(r.port).unwrap();
    assert_eq!(s["sync"], "full", "{s}");
    assert_eq!(s["rdb_diskless"].as_bool(), Some(diskless), "{s}");
    assert!(s["rdb_bytes"].as_u64().unwrap() > 1_000_000, "{s}");
    assert_eq!(s["replica"], format!("127.0.0.2:{}", r.port));

    // e: WAIT counts the replica, and the master knows it by its real address and port.
    let mut mc = m.client();
    assert_eq!(mc.text(&["SET", "after-sync", "1"]), "OK");
    assert_eq!(mc.int(&["WAIT", "1", "5000"]), 1);
    let info = mc.info("replication");
    assert_eq!(info["connected_slaves"], "1");
    let slave0 = &info["slave0"];
    assert!(
        slave0.contains("ip=127.0.0.2,") && slave0.contains(&format!("port={},", r.port)),
        "master names the replica {slave0}"
    );
    // f: after the last write, the books still agree.
    status_agrees(&proxy, &m, &r);
}

/// Scenario c: a replica restarted from its RDB resumes with a partial resync through replguard.
fn replica_restart_resumes(kind: Kind) {
    let m = master(kind, false);
    let proxy = Proxy::start(kind, m.port, "");
    let mut r = replica_of(kind, proxy.port, &[]);
    wait_converged(&m, &r, LONG);
    let mut mc = m.client();
    let full = info_u64(&mut mc, "stats", "sync_full");
    let partial = info_u64(&mut mc, "stats", "sync_partial_ok");

    r.stop(true);
    assert_eq!(mc.text(&["SET", "key:1", "updated-while-down"]), "OK");
    assert_eq!(mc.text(&["SET", "created-while-down", "x"]), "OK");
    r.start_again();
    status_agrees(&proxy, &m, &r);
    assert_eq!(r.client().text(&["GET", "key:1"]), "updated-while-down");
    assert_eq!(
        info_u64(&mut mc, "stats", "sync_full"),
        full,
        "no full sync"
    );
    assert_eq!(info_u64(&mut mc, "stats", "sync_partial_ok"), partial + 1);
    assert_eq!(proxy.session_of(r.port).unwrap()["sync"], "partial");
}

/// Scenario d: replguard restarted under connected replicas; they come back and resume.
fn proxy_restart_resumes(kind: Kind) {
    let m = master(kind, false);
    let mut proxy = Proxy::start(kind, m.port, "");
    let r = replica_of(kind, proxy.port, &[]);
    wait_converged(&m, &r, LONG);
    let mut mc = m.client();
    let full = info_u64(&mut mc, "stats", "sync_full");
    let partial = info_u64(&mut mc, "stats", "sync_partial_ok");

    proxy.stop();
    wait_for(LONG, "the replica to notice replguard went away", || {
        let i = r.try_info("replication")?;
        (i.get("master_link_status")? == "down").then_some(())
    });
    for i in 0..100 {
        let k = format!("during-restart:{i}");
        assert_eq!(mc.text(&["SET", k.as_str(), "v"]), "OK");
    }
    proxy.resume();
    status_agrees(&proxy, &m, &r);
    assert_eq!(
        info_u64(&mut mc, "stats", "sync_full"),
        full,
        "no full sync"
    );
    assert_eq!(info_u64(&mut mc, "stats", "sync_partial_ok"), partial + 1);
}

macro_rules! per_server {
    ($($name:ident => $body:expr;)*) => {
        mod redis {
            use super::*;
            $( #[test] fn $name() { let kind = Kind::Redis; ($body)(kind) } )*
        }
        mod valkey {
            use super::*;
            $( #[test] fn $name() { let kind = Kind::Valkey; ($body)(kind) } )*
        }
    };
}

per_server! {
    full_sync_disk_under_writes => |k| full_sync_under_writes(k, false);
    full_sync_diskless_under_writes => |k| full_sync_under_writes(k, true);
    replica_restart_resumes_partially => replica_restart_resumes;
    replguard_restart_replicas_resume => proxy_restart_resumes;
}

/// `lag_seconds` is the age of the oldest byte the replica has not acknowledged: it grows while
/// a stopped replica cannot ACK (counted from the first of two writes, not the last), and is 0
/// once the replica has acknowledged everything.
#[test]
fn lag_seconds_is_the_age_of_the_oldest_unacknowledged_byte() {
    let kind = Kind::Redis;
    let m = master(kind, false);
    let proxy = Proxy::start(kind, m.port, "");
    let r = replica_of(kind, proxy.port, &[]);
    wait_converged(&m, &r, LONG);
    // A write the replica acknowledges: the stream flows (after a diskless sync a master
    // could still be waiting for an ACK to start it).
    assert_eq!(m.client().text(&["SET", "flowing", "1"]), "OK");
    let off = wait_converged(&m, &r, LONG);
    let acked = |want: u64| {
        wait_for(LONG, "the replica's ACK of everything", || {
            let s = proxy.session_of(r.port)?;
            (s["ack_offset"].as_u64()? == want).then_some(s)
        })
    };
    let s = acked(off);
    assert_eq!(s["lag_bytes"].as_u64(), Some(0), "{s}");
    assert_eq!(s["lag_seconds"].as_f64(), Some(0.0), "{s}");

    r.signal("-STOP");
    let mut mc = m.client();
    let first_write = std::time::Instant::now();
    assert_eq!(mc.text(&["SET", "first", "1"]), "OK");
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(mc.text(&["SET", "second", "2"]), "OK");
    std::thread::sleep(Duration::from_millis(500));
    let asked = first_write.elapsed().as_secs_f64();
    let s = proxy.session_of(r.port);
    let bound = first_write.elapsed().as_secs_f64();
    r.signal("-CONT");
    let s = s.expect("the stopped replica's session");
    assert!(s["lag_bytes"].as_u64().unwrap() > 0, "{s}");
    let lag = s["lag_seconds"].as_f64().expect("lag_seconds");
    // Since the first write at most, and not since the second (0.5 s ago).
    assert!(
        lag >= asked - 0.25 && lag <= bound + 0.05,
        "lag_seconds {lag}: the first unacknowledged write was {asked:.2}..{bound:.2} s ago"
    );

    let end = info_u64(&mut mc, "replication", "master_repl_offset");
    let s = acked(end);
    assert_eq!(s["lag_bytes"].as_u64(), Some(0), "{s}");
    assert_eq!(s["lag_seconds"].as_f64(), Some(0.0), "{s}");
}

/// With `announce_replica_ip: false` replguard adds no `REPLCONF ip-address`: the master sees the
/// connection's address, replguard's, while replguard's own books keep the replica's.
#[test]
fn without_announce_replica_ip_the_master_sees_replguards_address() {
    let kind = Kind::Redis;
    let m = Server::start(kind, &QUIET);
    let proxy = Proxy::start(kind, m.port, "    announce_replica_ip: false\n");
    let r = replica_of(kind, proxy.port, &["--bind-source-addr", "127.0.0.2"]);
    wait_converged(&m, &r, LONG);
    let info = m.client().info("replication");
    assert_eq!(info["connected_slaves"], "1");
    let slave0 = &info["slave0"];
    assert!(
        slave0.starts_with("ip=127.0.0.1,") && slave0.contains(&format!("port={},", r.port)),
        "master names the replica {slave0}"
    );
    let s = proxy.session_of(r.port).expect("a streaming session");
    assert_eq!(s["replica"], format!("127.0.0.2:{}", r.port), "{s}");
}

/// A client that sends inline `SYNC` through replguard gets the RDB payload and then the
/// command stream, and replguard keeps books on it as a full sync.
#[test]
fn inline_sync_gets_the_payload_and_then_the_stream() {
    use std::io::{Read, Write};
    let kind = Kind::Redis;
    let m = Server::start(kind, &["--repl-diskless-sync", "no"]);
    assert_eq!(m.client().text(&["SET", "before", "sync"]), "OK");
    let proxy = Proxy::start(kind, m.port, "");
    let mut s = std::net::TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"SYNC\r\n").unwrap();

    let mut got = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    let mut more = |got: &mut Vec<u8>| {
        let n = s.read(&mut buf).expect("more from replguard");
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(got));
        got.extend_from_slice(&buf[..n]);
    };
    // Keepalive newlines while the master saves, then `$<len>\r\n` and the payload.
    let (len, body_at) = loop {
        let start = got.iter().position(|b| *b != b'\n');
        if let Some(i) = start {
            if let Some(e) = got[i..].windows(2).position(|w| w == b"\r\n") {
                let head = String::from_utf8_lossy(&got[i..i + e]).into_owned();
                let len: usize = head
                    .strip_prefix('$')
                    .and_then(|l| l.parse().ok())
                    .unwrap_or_else(|| panic!("SYNC answered {head:?}"));
                break (len, i + e + 2);
            }
        }
        more(&mut got);
    };
    while got.len() < body_at + len {
        more(&mut got);
    }
    assert!(got[body_at..].starts_with(b"REDIS"), "not an RDB payload");

    // The stream follows.
    assert_eq!(m.client().text(&["SET", "after", "sync"]), "OK");
    while !got[body_at + len..]
        .windows(b"$5\r\nafter\r\n".len())
        .any(|w| w == b"$5\r\nafter\r\n")
    {
        more(&mut got);
    }
    let st = proxy.status();
    let session = &st["links"][0]["sessions"][0];
    assert_eq!(session["state"], "streaming", "{st}");
    assert_eq!(session["sync"], "full", "{st}");
    assert_eq!(session["psync_replid"], "?", "{st}");
    assert_eq!(session["psync_offset"], -1, "{st}");
    assert_eq!(session["rdb_bytes"].as_u64(), Some(len as u64), "{st}");
    assert_eq!(session["rdb_diskless"], false, "{st}");
    assert_eq!(st["links"][0]["full_syncs"], 1, "{st}");
    assert_eq!(m.client().info("stats")["sync_full"], "1");
}
