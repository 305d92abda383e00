//! Real Sentinels (three, quorum 2) failing over Redis 7.0 and Valkey 8.1 nodes, with every
//! node behind its own replguard link, the links in one group, each node announcing its link and
//! the Sentinels monitoring the master's link; and the same failovers directly, for the figures.
//!
//! The scenario, on each server kind:
//! 1. Two failover-timeouts (and one of Sentinel's INFO periods past the first) with nothing
//!    happening: no replica is re-pointed around replguard, every Sentinel sees the master at
//!    its link.
//! 2. A is killed under writes; Sentinel promotes B (C has the worse `replica-priority`); C
//!    resumes through B's link, partially where the server would; writes follow Sentinel to B.
//! 3. A restarts (empty: it never saved) and Sentinel makes it a replica of B, through B's link.
//! 4. B is killed under writes; Sentinel promotes A; C resumes through A's link, partially
//!    where the server would.
//!
//! Data is compared (DEBUG DIGEST) after each step; each failover prints the full and partial
//! syncs the nodes served.

use crate::common::sentinel::*;
use crate::common::*;
use std::time::{Duration, Instant};

/// Keys on A before the replicas start.
const KEYS: u64 = 20_000;
/// The links' group.
const GROUP: Option<&str> = Some(MASTER_NAME);
/// Bound of every wait for a failover step.
const WAIT: Duration = Duration::from_secs(30);
/// How long an old master that restarted may take to be made a replica. Sentinel reads a
/// replica's INFO every 10 s, and converts an instance it knows as a replica but that reports
/// itself master only once that report, the instance's being up and the new master's own report
/// are each 8 s old (4 publish periods): up to about 26 s before the conversion, then a sync.
const REJOIN_WAIT: Duration = Duration::from_secs(60);
/// Writes acknowledged by a master before it is killed, and by the promoted one after.
const ACKS: u64 = 300;
/// Bound of each writer's life.
const WRITER_LIMIT: Duration = Duration::from_secs(45);

const A: usize = 0;
const B: usize = 1;
const C: usize = 2;

#[test]
fn redis_sentinel_through_links() {
    scenario(Kind::Redis, true);
}

#[test]
fn valkey_sentinel_through_links() {
    scenario(Kind::Valkey, true);
}

#[test]
fn redis_sentinel_direct() {
    scenario(Kind::Redis, false);
}

#[test]
fn valkey_sentinel_direct() {
    scenario(Kind::Valkey, false);
}

#[test]
fn the_example_config_is_valid() {
    example_config_is_valid("config/sentinel.yaml", 3);
}

/// Whether every Sentinel sees the master at `master`, knows a replica at each of `replicas`
/// (not down), and knows the two other Sentinels.
fn sentinels_see(d: &Deployment, master: u16, replicas: &[u16]) -> bool {
    d.sentinels.iter().all(|s| {
        let seen = || -> Option<bool> {
            let m = s.try_master()?;
            let reps = s.try_replicas()?;
            let healthy: Vec<u16> = reps
                .iter()
                .filter(|r| {
                    r.get("flags")
                        .is_some_and(|f| !f.contains("down") && !f.contains("disconnected"))
                })
                .filter_map(|r| r.get("port")?.parse().ok())
                .collect();
            Some(
                m.get("port")?.parse::<u16>().ok()? == master
                    && m.get("num-other-sentinels")? == "2"
                    && replicas.iter().all(|p| healthy.contains(p)),
            )
        };
        seen().unwrap_or(false)
    })
}

/// Waits until node `r` replicates from the address `master` with its link up.
fn wait_follows(d: &Deployment, r: usize, master: u16, limit: Duration) {
    let node = &d.nodes[r];
    wait_for(
        limit,
        &format!(
            "{} to replicate from port {master} with its link up",
            node.name
        ),
        || {
            let info = node.try_repl()?;
            (info.get("master_port")?.parse::<u16>().ok()? == master
                && info.get("master_link_status")? == "up")
                .then_some(())
        },
    );
}

/// The figures of one step: syncs served by the nodes, and replguard's counters.
struct Step {
    what: String,
    served: [u64; 3],
    replguard: Option<(u64, u64)>,
}

impl Step {
    fn line(&self) -> String {
        let [full, partial, err] = self.served;
        let rg = self
            .replguard
            .map(|(f, p)| format!(" (replguard: full {f}, partial {p})"))
            .unwrap_or_default();
        format!(
            "{}: full {full}, partial {partial}, partial refused {err}{rg}",
            self.what
        )
    }
}

/// replguard's full and partial sync counters over every link.
fn replguard_totals(d: &Deployment) -> Option<(u64, u64)> {
    d.links
        .as_ref()
        .map(|l| (l.total("full_syncs"), l.total("partial_syncs")))
}

fn step_figures(
    d: &Deployment,
    what: String,
    before: &[[u64; 3]],
    rg_before: Option<(u64, u64)>,
) -> Step {
    let served = served(before, &d.syncs());
    let replguard = replguard_totals(d)
        .zip(rg_before)
        .map(|((f, p), (f0, p0))| (f - f0, p - p0));
    Step {
        what,
        served,
        replguard,
    }
}

/// Kills the master `dead` under writes that follow Sentinel; waits for Sentinel to promote
/// `promoted` and for `follower` to replicate from it; checks the writes reached it and the
/// data is equal. Returns the step's figures.
fn failover(d: &mut Deployment, dead: usize, promoted: usize, follower: usize, tag: &str) -> Step {
    let before = d.syncs();
    let rg_before = replguard_totals(d);
    let old = d.nodes[dead].known_port;
    let new = d.nodes[promoted].known_port;
    let sentinel_ports = d.sentinels.iter().map(|s| s.port).collect();
    let w = SentinelWriter::start(sentinel_ports, tag, u64::MAX, WRITER_LIMIT);
    wait_for(WAIT, "writes acknowledged by the master", || {
        (w.acks().by_port.get(&old).copied().unwrap_or(0) >= ACKS).then_some(())
    });
    let started = Instant::now();
    d.nodes[dead].kill9();
    let agreed = wait_for(WAIT, "the Sentinels to agree on a new master", || {
        d.try_agreed_master().filter(|p| *p != old)
    });
    assert_eq!(
        d.by_known_port(agreed),
        promoted,
        "Sentinel promoted another node than the one with the best replica-priority"
    );
    wait_follows(d, follower, new, WAIT);
    wait_for(WAIT, "writes acknowledged by the promoted master", || {
        (w.acks().by_port.get(&new).copied().unwrap_or(0) >= ACKS).then_some(())
    });
    let acks = w.finish();
    let settle = started.elapsed();
    let (port, key, value) = acks.last.clone().expect("writes acknowledged");
    assert_eq!(port, new, "the last write went to Sentinel's new master");
    let p = &d.nodes[promoted].server;
    assert_eq!(
        p.client().text(&["GET", &key]),
        value,
        "the promoted node holds the last acknowledged write"
    );
    wait_converged(p, &d.nodes[follower].server, WAIT);
    let what = format!(
        "{} killed, {} promoted, {} follows (settled in {:.1}s, {} writes to the old master, {} to the new)",
        d.nodes[dead].name,
        d.nodes[promoted].name,
        d.nodes[follower].name,
        settle.as_secs_f64(),
        acks.by_port.get(&old).copied().unwrap_or(0),
        acks.by_port.get(&new).copied().unwrap_or(0),
    );
    step_figures(d, what, &before, rg_before)
}

/// Through replguard: the follower's resume through the promoted node's link was partial
/// exactly when the server itself could resume it (its requested offset within the promoted
/// node's old history), and the promoted node served no full sync.
fn assert_resumed_through_link(
    d: &Deployment,
    before: [u64; 3],
    promoted: usize,
    follower: usize,
    link: &str,
) {
    let links = d.links.as_ref().expect("through replguard");
    let p = &d.nodes[promoted];
    let after = p.syncs();
    let verdict = links
        .last_verdict(link, d.nodes[follower].known_port)
        .unwrap_or_else(|| panic!("{link} has a verdict for {}", d.nodes[follower].name));
    let info = p.server.client().info("replication");
    let second: i64 = info["second_repl_offset"].parse().unwrap();
    let requested = verdict["requested_offset"].as_i64().unwrap();
    let server_would =
        verdict["requested_replid"] == info["master_replid2"].as_str() && requested <= second;
    println!(
        "{} resumes through {link}: requested {} {requested}, {}'s second_repl_offset {second}, the server would resume: {server_would}; verdict {verdict}",
        d.nodes[follower].name, verdict["requested_replid"], p.name
    );
    if server_would {
        assert_eq!(
            verdict["answer"], "+CONTINUE",
            "replguard's last verdict on {link} for {}: {verdict}",
            d.nodes[follower].name
        );
        assert_eq!(
            after[1],
            before[1] + 1,
            "{} served one partial resync ({before:?} -> {after:?})",
            p.name
        );
        assert_eq!(
            after[0], before[0],
            "{} served no full sync ({before:?} -> {after:?})",
            p.name
        );
    } else {
        assert_eq!(verdict["answer"], "+FULLRESYNC", "{verdict}");
    }
}

fn scenario(kind: Kind, via_replguard: bool) {
    let t0 = Instant::now();
    let mode = if via_replguard {
        "through replguard"
    } else {
        "direct"
    };
    let mut d = Deployment::start(kind, via_replguard, GROUP, KEYS);
    let known: Vec<u16> = d.nodes.iter().map(|n| n.known_port).collect();

    // 1. Settled, then a quiet window in which nothing may move.
    wait_for(
        WAIT,
        "every Sentinel to see A, both replicas and the two other Sentinels",
        || sentinels_see(&d, known[A], &known[B..]).then_some(()),
    );
    // Two failover-timeouts from now, and long enough for every Sentinel to have read each
    // replica's INFO after its first failover-timeout (when a replica pointing elsewhere than
    // the master's address would be re-pointed), with a few seconds to spare.
    let quiet_until = (Instant::now() + Duration::from_millis(2 * FAILOVER_TIMEOUT_MS)).max(
        d.sentinels_started
            + Duration::from_millis(FAILOVER_TIMEOUT_MS + SENTINEL_INFO_PERIOD_MS + 3000),
    );
    let mut samples = 0;
    while Instant::now() < quiet_until {
        for r in [B, C] {
            if let Some(p) = d.nodes[r].try_master_port() {
                samples += 1;
                assert_eq!(
                    p, known[A],
                    "{} was re-pointed away from A's address",
                    d.nodes[r].name
                );
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(samples > 10, "too few readings of the replicas: {samples}");
    for (i, s) in d.sentinels.iter().enumerate() {
        assert_eq!(s.try_master_port(), Some(known[A]), "Sentinel {i}'s master");
        let log = s.log();
        for event in ["+fix-slave-config", "+convert-to-slave", "+switch-master"] {
            assert!(!log.contains(event), "Sentinel {i} logged {event}:\n{log}");
        }
        let ports: Vec<u16> = s
            .try_replicas()
            .expect("SENTINEL REPLICAS")
            .iter()
            .filter_map(|r| r.get("port")?.parse().ok())
            .collect();
        assert!(
            ports.iter().all(|p| known[B..].contains(p)),
            "Sentinel {i} knows replicas at {ports:?}, not only at {:?}",
            &known[B..]
        );
    }

    if let Some(l) = &d.links {
        for name in ["la", "lb", "lc"] {
            assert_eq!(l.link(name)["group"].as_str(), GROUP, "{name}'s group");
        }
    }

    // 2. A dies under writes; B is promoted; C follows B.
    let b_before = d.nodes[B].syncs();
    let first = failover(&mut d, A, B, C, "first");
    if via_replguard {
        assert_resumed_through_link(&d, b_before, B, C, "lb");
    }

    // 3. A comes back and Sentinel makes it a replica of B.
    let before = d.syncs();
    let rg_before = replguard_totals(&d);
    let started = Instant::now();
    d.nodes[A].server.start_again();
    wait_follows(&d, A, known[B], REJOIN_WAIT);
    wait_converged(&d.nodes[B].server, &d.nodes[A].server, WAIT);
    let rejoin_what = format!(
        "A restarts and rejoins B (settled in {:.1}s)",
        started.elapsed().as_secs_f64()
    );
    let rejoin = step_figures(&d, rejoin_what, &before, rg_before);
    if let Some(l) = &d.links {
        println!(
            "A rejoining through lb: verdict {}",
            l.last_verdict("lb", known[A])
                .map(|v| v.to_string())
                .unwrap_or_else(|| "none".into())
        );
    }

    // 4. B dies under writes; A is promoted; C follows A.
    wait_for(
        WAIT,
        "every Sentinel to see B with A and C as replicas",
        || sentinels_see(&d, known[B], &[known[A], known[C]]).then_some(()),
    );
    let a_before = d.nodes[A].syncs();
    let second = failover(&mut d, B, A, C, "second");
    if via_replguard {
        assert_resumed_through_link(&d, a_before, A, C, "la");
    }

    // 5. The figures.
    println!(
        "figures: {} sentinel {mode}: [{}] [{}] [{}] ({:.1}s in all)",
        kind.flavor(),
        first.line(),
        rejoin.line(),
        second.line(),
        t0.elapsed().as_secs_f64()
    );
}
