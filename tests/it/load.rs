//! Bounded load test: writes at full speed into a Redis master with two replicas behind
//! replguard for about 30 s (`REPLGUARD_LOAD_SECS`), one replica restarted midway. It ends with
//! equal data everywhere and prints the write rate and the lag replguard saw.

use crate::common::*;
use std::time::{Duration, Instant};

#[test]
fn sustained_writes_with_a_replica_restart() {
    let secs: u64 = std::env::var("REPLGUARD_LOAD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30)
        .clamp(5, 300);
    let kind = Kind::Redis;
    let m = Server::start(
        kind,
        &["--repl-diskless-sync", "no", "--repl-backlog-size", "256mb"],
    );
    assert_eq!(m.client().text(&["DEBUG", "POPULATE", "50000"]), "OK");
    let proxy = Proxy::start(kind, m.port, "");
    let mut a = replica_of(kind, proxy.port, &[]);
    let b = replica_of(kind, proxy.port, &[]);
    wait_link_up(&a, Duration::from_secs(60));
    wait_link_up(&b, Duration::from_secs(60));

    let started = Instant::now();
    let writers: Vec<Writer> = (0..2)
        .map(|i| Writer::start(m.port, &format!("load{i}"), 100, 50_000_000))
        .collect();
    let mut max_lag_bytes = 0u64;
    let mut max_lag_secs = 0f64;
    let mut restarted = false;
    while started.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_millis(500));
        for s in proxy.sessions() {
            max_lag_bytes = max_lag_bytes.max(s["lag_bytes"].as_u64().unwrap_or(0));
            max_lag_secs = max_lag_secs.max(s["lag_seconds"].as_f64().unwrap_or(0.0));
        }
        if !restarted && started.elapsed() >= Duration::from_secs(secs / 2) {
            restarted = true;
            a.stop(true);
            std::thread::sleep(Duration::from_secs(1));
            a.start_again();
        }
    }
    let written: u64 = writers.into_iter().map(Writer::finish).sum();
    let elapsed = started.elapsed().as_secs_f64();
    let offset = wait_converged(&m, &a, Duration::from_secs(120));
    wait_converged(&m, &b, Duration::from_secs(120));

    // Once quiet, replguard's books agree with the servers. The master's offset is read in
    // the same poll: its PING every repl-ping-replica-period moves it after convergence.
    let final_sessions = wait_for(
        Duration::from_secs(30),
        "both replicas to ACK the master's offset",
        || {
            let mo: u64 = m
                .try_info("replication")?
                .get("master_repl_offset")?
                .parse()
                .ok()?;
            let ss = proxy.sessions();
            (ss.len() == 2 && ss.iter().all(|s| s["ack_offset"].as_u64() == Some(mo))).then_some(ss)
        },
    );
    let final_lag: u64 = final_sessions
        .iter()
        .map(|s| s["lag_bytes"].as_u64().unwrap())
        .max()
        .unwrap();
    assert_eq!(final_lag, 0);
    let mut mc = m.client();
    let partial = info_u64(&mut mc, "stats", "sync_partial_ok");
    assert!(
        partial >= 1,
        "the restarted replica resumed with a partial resync"
    );

    println!(
        "load: {written} writes in {elapsed:.1} s = {:.0} writes/s through a master with 2 replicas behind replguard; \
         stream {offset} bytes; max lag seen {max_lag_bytes} bytes / {max_lag_secs:.2} s; final lag {final_lag} bytes; \
         restarted replica resumed (sync_partial_ok={partial}); data equal on all three",
        written as f64 / elapsed
    );
}
