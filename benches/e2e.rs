//! End to end on real Redis servers, all in one run so the ratios share the machine's state:
//!
//! - write-to-replica-visible latency: one master, three replicas — direct, through a plain TCP
//!   relay (TCP_NODELAY, no parsing: the floor for any hop), and through replguard. Writes go in
//!   batches that alternate over the paths; during a batch the other two replicas are
//!   SIGSTOPped so the paths do not compete for the CPU. Each replica publishes a keyspace
//!   notification when it applies a write, timestamped on arrival by a thread per replica.
//!   p50/p99 per path, and replguard's added latency;
//! - full-sync time: a fresh replica syncs a populated master, direct and through replguard
//!   alternately, several rounds each.
//!
//! `cargo bench --bench e2e` (REPLGUARD_E2E_WRITES, REPLGUARD_E2E_SYNC_ROUNDS, REPLGUARD_E2E_KEYS
//! to change the sizes). Loopback only; bounded in count and time.

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use std::io::Write;
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A plain TCP relay on a tokio runtime: accept, dial, copy both ways with TCP_NODELAY.
fn plain_relay(rt: &tokio::runtime::Runtime, to: u16) -> u16 {
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    rt.spawn(async move {
        while let Ok((mut a, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut b) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await else {
                    return;
                };
                let _ = a.set_nodelay(true);
                let _ = b.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
            });
        }
    });
    port
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Subscribes to keyspace events of `key` on a replica; sends (write number, arrival) to `tx`.
fn listen(port: u16, key: &'static str, tx: mpsc::Sender<(usize, Instant)>) {
    let mut c = Client::connect(port).unwrap();
    assert_eq!(
        c.text(&["CONFIG", "SET", "notify-keyspace-events", "K$"]),
        "OK"
    );
    let channel = format!("__keyspace@0__:{key}");
    c.send(&["SUBSCRIBE", channel.as_str()]);
    c.read();
    std::thread::spawn(move || {
        let mut n = 0;
        while let Ok(_msg) = c.try_read() {
            if tx.send((n, Instant::now())).is_err() {
                return;
            }
            n += 1;
        }
    });
}

struct Paths {
    names: Vec<&'static str>,
    rx: Vec<mpsc::Receiver<(usize, Instant)>>,
    pids: Vec<u32>,
    /// Next notification number expected from each path.
    next: Vec<usize>,
    /// Writes made so far.
    total: usize,
}

/// Writes per batch; batches rotate over the paths.
const BATCH: usize = 50;

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

/// Measures `writes` writes in batches that rotate over the paths. During a batch only the
/// measured path's replica runs (the others are SIGSTOPped), so the paths never compete for
/// the CPU; each resumed replica first catches up on what it missed, unmeasured.
fn latency(master: &Server, writes: usize, paths: &mut Paths) -> Vec<Vec<f64>> {
    let mut w = TcpStream::connect(("127.0.0.1", master.port)).unwrap();
    w.set_nodelay(true).unwrap();
    let mut out = vec![Vec::with_capacity(writes); paths.names.len()];
    for batch in 0..writes.div_ceil(BATCH) {
        let p = batch % paths.names.len();
        for (q, pid) in paths.pids.iter().enumerate() {
            signal(*pid, if q == p { "-CONT" } else { "-STOP" });
        }
        while paths.next[p] < paths.total {
            paths.rx[p]
                .recv_timeout(Duration::from_secs(10))
                .expect("replica catches up");
            paths.next[p] += 1;
        }
        for _ in 0..BATCH {
            let v = paths.total.to_string();
            let cmd = replguard::resp::encode_command(&["SET", "lat", v.as_str()]);
            let sent = Instant::now();
            w.write_all(&cmd).unwrap();
            let (n, at) = paths.rx[p]
                .recv_timeout(Duration::from_secs(10))
                .expect("replica saw the write");
            assert_eq!(n, paths.total, "notifications arrive in order");
            out[p].push(at.duration_since(sent).as_secs_f64() * 1e6);
            paths.next[p] += 1;
            paths.total += 1;
            // Drain the +OK so the socket never backs up; then a short pause between writes.
            let mut ok = [0u8; 5];
            std::io::Read::read_exact(&mut w, &mut ok).unwrap();
            std::thread::sleep(Duration::from_micros(500));
        }
    }
    for pid in &paths.pids {
        signal(*pid, "-CONT");
    }
    out
}

fn full_sync_once(target: u16) -> f64 {
    let r = Server::start(Kind::Redis, &[]);
    let mut rc = r.client();
    let port = target.to_string();
    let start = Instant::now();
    assert_eq!(rc.text(&["REPLICAOF", "127.0.0.1", port.as_str()]), "OK");
    wait_for(Duration::from_secs(120), "the full sync to finish", || {
        let i = rc.info("replication");
        (i["master_link_status"] == "up").then_some(())
    });
    let secs = start.elapsed().as_secs_f64();
    assert!(
        rc.info("keyspace").contains_key("db0"),
        "the replica has the data"
    );
    secs
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` would pass nothing: run only for bench.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    if std::env::var_os("REPLGUARD_LOG").is_none() {
        // Session logs would drown the figures.
        std::env::set_var("REPLGUARD_LOG", "warn");
    }
    let writes = env_or("REPLGUARD_E2E_WRITES", 3000) as usize;
    let rounds = env_or("REPLGUARD_E2E_SYNC_ROUNDS", 4);
    let keys = env_or("REPLGUARD_E2E_KEYS", 1_000_000);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
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
    let relay = plain_relay(&rt, m.port);

    // Latency: three replicas fed the same writes.
    let targets = [
        ("direct", m.port),
        ("plain relay", relay),
        ("replguard", proxy.port),
    ];
    let replicas: Vec<Server> = targets
        .iter()
        .map(|(_, p)| replica_of(Kind::Redis, *p, &[]))
        .collect();
    for r in &replicas {
        wait_link_up(r, Duration::from_secs(60));
    }
    let mut rx = Vec::new();
    for r in &replicas {
        let (tx, r_rx) = mpsc::channel();
        listen(r.port, "lat", tx);
        rx.push(r_rx);
    }
    let mut paths = Paths {
        names: targets.iter().map(|t| t.0).collect(),
        rx,
        pids: replicas.iter().map(Server::pid).collect(),
        next: vec![0; targets.len()],
        total: 0,
    };
    // Warm-up, then the measured run.
    latency(&m, 3 * BATCH, &mut paths);
    let mut lat = latency(&m, writes, &mut paths);
    drop(replicas);
    println!("write-to-replica-visible latency, {writes} writes in batches of {BATCH} alternating over the paths (us):");
    println!("  {:<12} {:>8} {:>8} {:>8}", "path", "p50", "p90", "p99");
    let mut p50 = Vec::new();
    let mut p99 = Vec::new();
    for (name, l) in paths.names.iter().zip(lat.iter_mut()) {
        l.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let (a, b, c) = (percentile(l, 0.5), percentile(l, 0.9), percentile(l, 0.99));
        println!("  {name:<12} {a:>8.1} {b:>8.1} {c:>8.1}");
        p50.push(a);
        p99.push(c);
    }
    println!(
        "  replguard vs direct: p50 x{:.2} (+{:.1} us), p99 x{:.2} (+{:.1} us); plain relay vs direct: p50 +{:.1} us",
        p50[2] / p50[0],
        p50[2] - p50[0],
        p99[2] / p99[0],
        p99[2] - p99[0],
        p50[1] - p50[0]
    );

    // Full sync of a populated master, alternating direct and through replguard.
    let k = keys.to_string();
    assert_eq!(
        m.client()
            .text(&["DEBUG", "POPULATE", k.as_str(), "key", "64"]),
        "OK"
    );
    let mut direct = Vec::new();
    let mut via = Vec::new();
    for _ in 0..rounds {
        direct.push(full_sync_once(m.port));
        via.push(full_sync_once(proxy.port));
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let (d, p) = (med(&mut direct), med(&mut via));
    let rdb = proxy
        .http_get("/metrics")
        .lines()
        .find(|l| l.starts_with("replguard_rdb_bytes_total"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    println!(
        "full sync of {keys} keys (64-byte values), median of {rounds} alternating rounds: direct {d:.3} s, replguard {p:.3} s, ratio x{:.3}; {:.0} MB of RDB relayed",
        p / d,
        rdb / 1e6
    );
}
