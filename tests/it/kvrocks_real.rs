//! Scenarios against the real Apache Kvrocks 2.7.0 server (`KVROCKS_BIN`), directly and through
//! replguard: replicas killed with `kill -9` under a steady writer and restarted, for each
//! combination of `use-rsid-psync` that matters, in cluster mode (apache/kvrocks#2214).

use crate::common::kvrocks_real::{
    cluster, kvrocks_bin, settle, slaveof, wrong_keys, KeyWriter, Kvrocks, NodeCfg,
};
use crate::common::Proxy;
use std::path::Path;
use std::time::Duration;

/// What one run of kill-and-restart cycles saw.
#[derive(Debug)]
struct Cycles {
    /// Full syncs the master served per restart.
    full_syncs: Vec<u64>,
    /// Per restart, the keys the replica then held wrongly.
    wrong: Vec<Vec<String>>,
    keys: u64,
}

const CYCLES: u64 = 10;

/// A cluster-mode master and replica (master `use-rsid-psync` = `master_rsid`, the replica's =
/// `replica_rsid`), directly or through a replguard link in `guard` mode. A writer runs the
/// whole time; the replica is killed with `kill -9` and restarted `CYCLES` times. After each
/// restart the writer pauses, a marker key shows the replica has everything the master will
/// ever send it, and every key is compared.
fn crash_cycles(
    bin: &Path,
    master_rsid: bool,
    replica_rsid: bool,
    guard: Option<&str>,
) -> (Cycles, Option<Proxy>) {
    let bin = bin.to_path_buf();
    let master = Kvrocks::start(
        &bin,
        NodeCfg {
            cluster: true,
            rsid: master_rsid,
        },
        &[],
    );
    let mut replica = Kvrocks::start(
        &bin,
        NodeCfg {
            cluster: true,
            rsid: replica_rsid,
        },
        &[],
    );
    // A master with data: a 2.7.0 master cannot reuse a checkpoint it made while empty
    // (sequence 0 is below its WAL), and refuses full syncs until its cron drops it.
    let proxy = guard.map(|g| Proxy::start_kvrocks(master.port, g, ""));
    let entry = proxy.as_ref().map_or(master.addr(), Proxy::link_addr);
    cluster(&master, None, entry, 1);
    let mut c = master.client();
    for i in 0..100 {
        assert_eq!(c.text(&["SET", &format!("pre{i}"), "x"]), "OK");
    }
    cluster(&master, Some(&replica), entry, 2);
    let writer = KeyWriter::start(master.port);
    let limit = Duration::from_secs(60);
    writer.pause();
    // The first marker only once the replica streams: in the seed setup its first PSYNC skips
    // the master's first batch, which must not be the marker.
    crate::common::wait_for(limit, "the replica to attach", || {
        (master.info("replication")["connected_slaves"] == "1").then_some(())
    });
    settle(&master, &replica, "marker0", limit);
    writer.resume();
    let mut out = Cycles {
        full_syncs: Vec::new(),
        wrong: Vec::new(),
        keys: 0,
    };
    for c in 1..=CYCLES {
        let before = master.stat("sync_full");
        // Kill while batches stream, at a different moment each cycle.
        std::thread::sleep(Duration::from_millis(150 + (c * 97) % 250));
        let at_kill = writer.written();
        replica.kill9();
        std::thread::sleep(Duration::from_millis(100 + (c * 61) % 200));
        replica.start_again();
        std::thread::sleep(Duration::from_millis(200));
        let n = writer.pause();
        assert!(n > at_kill, "the writer wrote while the replica was down");
        settle(&master, &replica, &format!("marker{c}"), limit);
        out.wrong.push(wrong_keys(&replica, n));
        out.full_syncs.push(master.stat("sync_full") - before);
        out.keys = n;
        writer.resume();
    }
    drop(writer);
    eprintln!(
        "kvrocks kill -9 cycles: master rsid {master_rsid}, replica rsid {replica_rsid}, {}: \
         full syncs per restart {:?}, wrong keys per restart {:?}, {} keys",
        guard.map_or("direct".to_string(), |g| format!("replguard {g}")),
        out.full_syncs,
        out.wrong.iter().map(Vec::len).collect::<Vec<_>>(),
        out.keys
    );
    (out, proxy)
}

#[test]
fn real_kvrocks_seed_setup_killed_replica_loses_an_update_directly() {
    let Some(bin) = kvrocks_bin("real_kvrocks_seed_setup_killed_replica_loses_an_update_directly")
    else {
        return;
    };
    let (c, _) = crash_cycles(&bin, false, true, None);
    // Every restart makes a start-up write at the sequence after the last one the replica
    // applied, and the master streams on past its own batch there: one key is lost per restart.
    for (i, w) in c.wrong.iter().enumerate() {
        assert!(!w.is_empty(), "restart {}: no update lost directly", i + 1);
    }
    assert!(c.full_syncs.iter().all(|&f| f == 0), "{:?}", c.full_syncs);
}

#[test]
fn real_kvrocks_seed_setup_killed_replica_keeps_every_key_through_replguard() {
    let Some(bin) =
        kvrocks_bin("real_kvrocks_seed_setup_killed_replica_keeps_every_key_through_replguard")
    else {
        return;
    };
    let (c, p) = crash_cycles(&bin, false, true, Some("enforce"));
    let p = p.unwrap();
    for (i, w) in c.wrong.iter().enumerate() {
        assert!(w.is_empty(), "restart {}: wrong keys {:?}", i + 1, w);
    }
    // Every restart wrote locally, so every restart costs one full sync.
    assert!(c.full_syncs.iter().all(|&f| f == 1), "{:?}", c.full_syncs);
    let (local, beyond) = (
        p.verdicts("force_full", "local_write"),
        p.verdicts("force_full", "beyond_delivered"),
    );
    eprintln!("forced full: local_write {local}, beyond_delivered {beyond}");
    assert_eq!(
        local + beyond,
        CYCLES as f64,
        "one forced full sync per restart"
    );
    assert_eq!(p.metric("replguard_unsafe_resumes_accepted_total", ""), 0.0);
}

#[test]
fn real_kvrocks_seed_setup_observe_mode_lets_the_loss_happen_and_counts_it() {
    let Some(bin) =
        kvrocks_bin("real_kvrocks_seed_setup_observe_mode_lets_the_loss_happen_and_counts_it")
    else {
        return;
    };
    let (c, p) = crash_cycles(&bin, false, true, Some("observe"));
    let p = p.unwrap();
    for (i, w) in c.wrong.iter().enumerate() {
        assert!(
            !w.is_empty(),
            "restart {}: no update lost in observe mode",
            i + 1
        );
    }
    assert!(c.full_syncs.iter().all(|&f| f == 0), "{:?}", c.full_syncs);
    let judged =
        p.verdicts("force_full", "local_write") + p.verdicts("force_full", "beyond_delivered");
    assert_eq!(judged, CYCLES as f64, "every unsafe resume judged");
    // The first attach too: its start-up write makes it skip the master's first batch.
    assert_eq!(p.verdicts("force_full", "unknown_id"), 1.0);
    assert_eq!(
        p.metric("replguard_unsafe_resumes_accepted_total", ""),
        CYCLES as f64 + 1.0
    );
}

#[test]
fn real_kvrocks_rsid_on_both_sides_killed_replica_full_syncs_as_directly() {
    let Some(bin) =
        kvrocks_bin("real_kvrocks_rsid_on_both_sides_killed_replica_full_syncs_as_directly")
    else {
        return;
    };
    let (direct, _) = crash_cycles(&bin, true, true, None);
    let (guarded, _) = crash_cycles(&bin, true, true, Some("enforce"));
    for c in [&direct, &guarded] {
        for (i, w) in c.wrong.iter().enumerate() {
            assert!(w.is_empty(), "restart {}: wrong keys {:?}", i + 1, w);
        }
        // The start-up write takes a new id, which the master refuses.
        assert!(c.full_syncs.iter().all(|&f| f == 1), "{:?}", c.full_syncs);
    }
}

#[test]
fn real_kvrocks_rsid_off_both_sides_killed_replica_resumes_without_full_sync() {
    let Some(bin) =
        kvrocks_bin("real_kvrocks_rsid_off_both_sides_killed_replica_resumes_without_full_sync")
    else {
        return;
    };
    let (direct, _) = crash_cycles(&bin, false, false, None);
    let (guarded, p) = crash_cycles(&bin, false, false, Some("enforce"));
    for c in [&direct, &guarded] {
        for (i, w) in c.wrong.iter().enumerate() {
            assert!(w.is_empty(), "restart {}: wrong keys {:?}", i + 1, w);
        }
        // No write of its own at start-up: nothing to refuse, and no full sync.
        assert!(c.full_syncs.iter().all(|&f| f == 0), "{:?}", c.full_syncs);
    }
    let p = p.unwrap();
    assert_eq!(
        p.metric("replguard_verdicts_total", "verdict=\"force_full\""),
        0.0
    );
}

/// The value of `key` on `node`, or `None`.
fn get(node: &Kvrocks, key: &str) -> Option<String> {
    match node.client().cmd(&["GET", key]) {
        crate::common::Reply::BulkString(b) => Some(String::from_utf8(b).unwrap()),
        _ => None,
    }
}

/// Standalone, default configuration (no rsid): a replica detached with `SLAVEOF NO ONE`
/// writes at the same sequence as the master, then re-attaches (apache/kvrocks#462).
fn kvrocks_462(bin: &Path, guard: Option<&str>) -> (Kvrocks, Kvrocks, Option<Proxy>) {
    let node = NodeCfg {
        cluster: false,
        rsid: false,
    };
    let master = Kvrocks::start(bin, node, &[]);
    let replica = Kvrocks::start(bin, node, &[]);
    let proxy = guard.map(|g| Proxy::start_kvrocks(master.port, g, ""));
    let via = proxy.as_ref().map_or(master.addr(), Proxy::link_addr);
    assert_eq!(master.client().text(&["SET", "k0", "v0"]), "OK");
    slaveof(&replica, via);
    settle(&master, &replica, "m1", Duration::from_secs(30));
    assert_eq!(replica.client().text(&["SLAVEOF", "NO", "ONE"]), "OK");
    assert_eq!(replica.client().text(&["SET", "test", "222"]), "OK");
    assert_eq!(master.client().text(&["SET", "test", "111"]), "OK");
    slaveof(&replica, via);
    settle(&master, &replica, "m2", Duration::from_secs(30));
    (master, replica, proxy)
}

#[test]
fn real_kvrocks_462_a_detached_replica_write_is_not_resumed_over() {
    let Some(bin) = kvrocks_bin("real_kvrocks_462_a_detached_replica_write_is_not_resumed_over")
    else {
        return;
    };
    let (_m, r, _) = kvrocks_462(&bin, None);
    assert_eq!(
        get(&r, "test").as_deref(),
        Some("222"),
        "directly the replica keeps its own value and streams on"
    );
    let (m, r, p) = kvrocks_462(&bin, Some("enforce"));
    let p = p.unwrap();
    assert_eq!(get(&r, "test").as_deref(), Some("111"));
    assert_eq!(get(&r, "k0").as_deref(), Some("v0"));
    assert_eq!(p.verdicts("force_full", "beyond_delivered"), 1.0);
    // Its first attach asked for sequence 1 (it held nothing): the forced one is the only one.
    assert_eq!(m.stat("sync_full"), 1);
}

#[test]
fn real_kvrocks_rsid_off_both_sides_resumes_plainly_across_a_replguard_restart() {
    let Some(bin) =
        kvrocks_bin("real_kvrocks_rsid_off_both_sides_resumes_plainly_across_a_replguard_restart")
    else {
        return;
    };
    let node = NodeCfg {
        cluster: true,
        rsid: false,
    };
    let master = Kvrocks::start(&bin, node, &[]);
    let replica = Kvrocks::start(&bin, node, &[]);
    let mut p = Proxy::start_kvrocks(master.port, "enforce", "");
    cluster(&master, None, p.link_addr(), 1);
    assert_eq!(master.client().text(&["SET", "k0", "v0"]), "OK");
    cluster(&master, Some(&replica), p.link_addr(), 2);
    settle(&master, &replica, "m1", Duration::from_secs(30));
    let full = master.stat("sync_full");
    let writer = KeyWriter::start(master.port);
    std::thread::sleep(Duration::from_millis(300));
    p.stop();
    std::thread::sleep(Duration::from_millis(300));
    p.resume();
    std::thread::sleep(Duration::from_millis(300));
    let n = writer.pause();
    settle(&master, &replica, "m2", Duration::from_secs(30));
    assert_eq!(wrong_keys(&replica, n), Vec::<String>::new());
    assert_eq!(master.stat("sync_full"), full, "no full sync");
    assert_eq!(
        p.metric("replguard_verdicts_total", "verdict=\"force_full\""),
        0.0
    );
    let s = p.status();
    let next = s["links"][0]["sessions"]
        .as_array()
        .and_then(|v| v.iter().find_map(|s| s["kvrocks"]["next_seq"].as_u64()))
        .unwrap_or_else(|| panic!("the replica's live books: {s:#}"));
    assert!(next > n, "books up to sequence {next} after {n} keys");
}

#[test]
fn real_kvrocks_seed_setup_restart_right_after_a_full_sync() {
    let Some(bin) = kvrocks_bin("real_kvrocks_seed_setup_restart_right_after_a_full_sync") else {
        return;
    };
    let master = Kvrocks::start(
        &bin,
        NodeCfg {
            cluster: true,
            rsid: false,
        },
        &[],
    );
    let mut replica = Kvrocks::start(
        &bin,
        NodeCfg {
            cluster: true,
            rsid: true,
        },
        &[],
    );
    let p = Proxy::start_kvrocks(master.port, "enforce", "");
    cluster(&master, None, p.link_addr(), 1);
    for i in 0..50 {
        assert_eq!(master.client().text(&["SET", &format!("a{i}"), "1"]), "OK");
    }
    cluster(&master, Some(&replica), p.link_addr(), 2);
    settle(&master, &replica, "m1", Duration::from_secs(30));
    // Restarted as soon as its full sync is in: its start-up write takes the sequence after
    // the checkpoint.
    replica.kill9();
    assert_eq!(master.client().text(&["SET", "during", "1"]), "OK");
    replica.start_again();
    settle(&master, &replica, "m2", Duration::from_secs(30));
    assert_eq!(get(&replica, "during").as_deref(), Some("1"));
    for i in 0..50 {
        assert_eq!(get(&replica, &format!("a{i}")).as_deref(), Some("1"));
    }
    assert_eq!(master.stat("sync_full"), 2, "one full sync per attach");
    assert_eq!(p.metric("replguard_unsafe_resumes_accepted_total", ""), 0.0);
}

/// A link's own read of its node: `AUTH` with the link's password, then `INFO replication` and
/// `INFO server` in one write, on a real Kvrocks with `requirepass`.
#[test]
fn real_kvrocks_read_node_authenticates_and_reads_role_sequence_and_process() {
    let Some(bin) =
        kvrocks_bin("real_kvrocks_read_node_authenticates_and_reads_role_sequence_and_process")
    else {
        return;
    };
    let node = Kvrocks::start(
        &bin,
        NodeCfg {
            cluster: false,
            rsid: false,
        },
        &[],
    );
    // Set at run time: the start-up wait reads INFO without a password.
    let mut c = node.client();
    assert_eq!(c.text(&["CONFIG", "SET", "requirepass", "s3cret"]), "OK");
    assert_eq!(c.text(&["AUTH", "s3cret"]), "OK");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let read = |password: Option<&str>| {
        let creds = password.map(|p| replguard::config::Credentials {
            user: None,
            password: p.to_string(),
        });
        rt.block_on(async {
            let s = tokio::net::TcpStream::connect(node.addr()).await.unwrap();
            let read = replguard::kvrocks::watch::read_node(
                replguard::conn::Stream::Tcp(s),
                creds.as_ref(),
            );
            tokio::time::timeout(Duration::from_secs(10), read)
                .await
                .expect("the node answers within 10 s")
        })
    };

    let before = read(Some("s3cret")).unwrap();
    assert!(before.master, "{before:?}");
    assert_eq!(before.process_id, u64::from(node.pid()));
    assert_eq!(c.text(&["SET", "k", "v"]), "OK");
    let after = read(Some("s3cret")).unwrap();
    assert_eq!(after.latest, before.latest + 1, "{before:?} then {after:?}");
    assert_eq!(after.process_id, before.process_id);
    assert!(after.uptime_secs >= before.uptime_secs);

    let err = read(Some("wrong")).unwrap_err().to_string();
    assert!(err.contains("invalid password"), "{err}");
    let err = read(None).unwrap_err().to_string();
    assert!(err.contains("NOAUTH"), "{err}");
}
