//! End to end on real Redis servers, all in one run so the ratios share the machine's state:
//!
//! - write-to-replica-visible latency: one master, three replicas — direct, through a plain TCP
//!   relay (TCP_NODELAY, no parsing: the floor for any hop), and through replguard. Writes go in
//!   batches that alternate over the paths; during a batch the other two replicas are
//!   SIGSTOPped so the paths do not compete for the CPU. Each replica publishes a keyspace
//!   notification when it applies a write, timestamped on arrival by a thread per replica.
//!   p50/p99 per path, and replguard's added latency;
//! - full-sync time: a fresh replica syncs a populated master, direct and through replguard
//!   alternately, several rounds each;
//! - Kvrocks stream throughput: a scripted Kvrocks master streams a prepared run of WAL-batch
//!   bulks after `+OK`, read to the end directly and through a `flavor: kvrocks` link (which
//!   scans every batch and keeps the sequence books), alternately.
//!
//! `cargo bench --bench e2e` (REPLGUARD_E2E_WRITES, REPLGUARD_E2E_SYNC_ROUNDS, REPLGUARD_E2E_KEYS,
//! REPLGUARD_E2E_KVROCKS_MB to change the sizes). Loopback only; bounded in count and time.

#[path = "../tests/common/mod.rs"]
mod common;

use common::kvrocks_double::{encode_batch, Op};
use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::sync::Arc;
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
            let cmd = replguard::wire::resp::encode_command(&["SET", "lat", v.as_str()]);
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

fn full_sync_once(target: u16, replica_args: &[&str]) -> f64 {
    let r = Server::start(Kind::Redis, replica_args);
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

/// A scripted Kvrocks master: answers `_db_name`, `replconf`, then `PSYNC` with `+OK` and the
/// prepared stream, and closes.
fn kvrocks_streamer(stream: Arc<Vec<u8>>) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(c) = c else { return };
            let stream = stream.clone();
            std::thread::spawn(move || {
                let mut w = c.try_clone().unwrap();
                let mut r = BufReader::new(c);
                let mut line = String::new();
                loop {
                    line.clear();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let reply: &[u8] = match line.trim_end() {
                        "_db_name" => b"bench.db\r\n",
                        "replconf" => b"+OK\r\n",
                        "PSYNC" => {
                            let _ = w.write_all(b"+OK\r\n");
                            let _ = w.write_all(&stream);
                            return;
                        }
                        _ => continue,
                    };
                    w.write_all(reply).unwrap();
                }
            });
        }
    });
    port
}

/// Pulls the whole Kvrocks stream through `port`; seconds from PSYNC to the last byte.
fn kvrocks_pull(port: u16, expect: usize) -> f64 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_nodelay(true).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    s.write_all(b"*1\r\n$8\r\n_db_name\r\n").unwrap();
    r.read_line(&mut line).unwrap();
    s.write_all(b"*3\r\n$8\r\nreplconf\r\n$14\r\nlistening-port\r\n$4\r\n6666\r\n")
        .unwrap();
    r.read_line(&mut line).unwrap();
    let t = Instant::now();
    s.write_all(b"*2\r\n$5\r\nPSYNC\r\n$1\r\n1\r\n").unwrap();
    let mut got = 0usize;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = r.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got += n;
    }
    assert_eq!(got, expect + 5, "the whole stream after +OK");
    t.elapsed().as_secs_f64()
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
    let certs = common::tls::Certs::new();
    let tls_port = free_port().to_string();
    let mut master_args = vec![
        "--repl-diskless-sync",
        "yes",
        "--repl-diskless-sync-delay",
        "0",
        "--tls-port",
        tls_port.as_str(),
        "--tls-auth-clients",
        "no",
    ];
    let server_tls = certs.redis_args("server");
    master_args.extend(server_tls.iter().map(String::as_str));
    let m = Server::start(Kind::Redis, &master_args);
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
        direct.push(full_sync_once(m.port, &[]));
        via.push(full_sync_once(proxy.port, &[]));
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

    // The same full sync over TLS: direct to the master's tls-port, through a link with TLS on
    // both sides, and through the plain link again, alternating.
    let tls_link = format!(
        "    tls: {{ cert_file: {}, key_file: {} }}\n    master_tls: {{ ca_file: {} }}\n",
        certs.path("server.crt").display(),
        certs.path("server.key").display(),
        certs.path("ca.crt").display(),
    );
    let tls_proxy = Proxy::start(Kind::Redis, tls_port.parse().unwrap(), &tls_link);
    let mut replica_tls = vec!["--tls-replication", "yes"];
    let client_tls = certs.redis_args("client");
    replica_tls.extend(client_tls.iter().map(String::as_str));
    let (mut direct_tls, mut via_tls, mut via_plain) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        direct_tls.push(full_sync_once(tls_port.parse().unwrap(), &replica_tls));
        via_tls.push(full_sync_once(tls_proxy.port, &replica_tls));
        via_plain.push(full_sync_once(proxy.port, &[]));
    }
    let (dt, vt, vp) = (med(&mut direct_tls), med(&mut via_tls), med(&mut via_plain));
    println!(
        "full sync over TLS, median of {rounds} alternating rounds: direct TLS {dt:.3} s, replguard TLS both sides {vt:.3} s (x{:.3} of direct TLS), replguard plain {vp:.3} s (TLS/plain through replguard x{:.3})",
        vt / dt,
        vt / vp
    );
    drop(tls_proxy);

    // Kvrocks stream throughput.
    let mb = env_or("REPLGUARD_E2E_KVROCKS_MB", 256) as usize;
    let mut stream = Vec::with_capacity(mb << 20);
    let mut seq = 1u64;
    while stream.len() < mb << 20 {
        let b = encode_batch(
            seq,
            &Op::Set(format!("key:{seq:012}"), "v".repeat(100)),
            true,
            Some("C3EORR3YM0FAK7BG"),
        );
        stream.extend_from_slice(format!("${}\r\n", b.len()).as_bytes());
        stream.extend_from_slice(&b);
        stream.extend_from_slice(b"\r\n");
        seq += 1;
    }
    let len = stream.len();
    let kv_master = kvrocks_streamer(Arc::new(stream));
    let kv_proxy = Proxy::start_kvrocks(kv_master, "enforce", "");
    let kv_relay = plain_relay(&rt, kv_master);
    let (mut direct, mut plain, mut via) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        direct.push(kvrocks_pull(kv_master, len));
        plain.push(kvrocks_pull(kv_relay, len));
        via.push(kvrocks_pull(kv_proxy.port, len));
    }
    let (d, r, p) = (med(&mut direct), med(&mut plain), med(&mut via));
    let mbs = |t: f64| len as f64 / t / 1e6;
    println!(
        "kvrocks stream of {} MB ({} batches of 100-byte values), median of {rounds} alternating rounds: direct {:.0} MB/s, plain relay {:.0} MB/s, replguard {:.0} MB/s; replguard vs plain relay: time x{:.3}",
        len / 1_000_000,
        seq - 1,
        mbs(d),
        mbs(r),
        mbs(p),
        p / r
    );
}
