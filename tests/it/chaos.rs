//! The chaos run: a seeded, bounded fault injector against real servers under a steady writer.
//!
//! Three Redis 7.0 nodes, a master and two replicas, each behind its own link of one
//! `replguard run` process (the binary, so it can be killed), the links in one group; every node
//! announces its link, the replicas dial the master's link, and three Sentinels (quorum 2)
//! monitor the master's link. Every node saves every second and a replica restarts from its RDB
//! as a replica, so it resumes from the id and offset it saved. A writer runs a script that
//! increments a counter and stores its value under one of 1000 keys, and keeps the highest value
//! the master acknowledged.
//!
//! Faults are drawn uniformly by a seeded generator: replguard killed (SIGKILL) or stopped
//! (SIGTERM) and restarted on the same configuration and state_dir; a replica killed or shut
//! down cleanly and restarted; the master cutting its replica links; a clean master restart
//! from its RDB; a Sentinel failover (`SENTINEL FAILOVER`, writes paused first so that no
//! acknowledged write is lost by the asynchronous replication itself), after which the writer
//! follows the promoted node. After each fault, with writes paused, every replica must reach the
//! master's offset through the master's link within [`SETTLE_LIMIT`] and hold the master's data
//! (DEBUG DIGEST), and no acknowledged write may be missing on any node. A replica whose data
//! differs is a divergence: counted, reported with the fault before it, resynced from scratch,
//! and the run goes on; the test fails at the end if there was any.
//!
//! Ignored by `cargo test`: `scripts/chaos.sh` runs it. `REPLGUARD_CHAOS_FAULTS` (default 20)
//! and `REPLGUARD_CHAOS_SEED` (default from the clock; printed, so the same faults can be drawn
//! again; which replica Sentinel promotes is Sentinel's choice).

use crate::common::sentinel::{Sentinel, MASTER_NAME};
use crate::common::*;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long the servers get to agree after a fault; longer is a failure of the run.
const SETTLE_LIMIT: Duration = Duration::from_secs(30);
/// How long Sentinel gets to carry a failover out (its own pace, not replguard's).
const FAILOVER_LIMIT: Duration = Duration::from_secs(60);
/// The writer's keys: `chaos:k:<value mod KEYS>`.
const KEYS: u64 = 1000;
const COUNTER: &str = "chaos:ctr";
/// One acknowledged write: the counter's next value, stored under its key.
const WRITE: &str = "local v = redis.call('INCR', KEYS[1]) \
                     redis.call('SET', ARGV[1] .. (v % 1000), v) return v";
/// Settles in a row that may time out before the run stops: the servers are in an unknown state.
const MAX_SETTLE_FAILURES: u32 = 3;
/// The nodes' names, in the order of their links.
const NAMES: [&str; 3] = ["A", "B", "C"];
/// The links' group.
const GROUP: &str = "chaos";
/// Sentinel's `down-after-milliseconds`: longer than any fault keeps a node or replguard down,
/// so Sentinel fails over only when the run asks it to.
const SENTINEL_DOWN_AFTER_MS: u64 = 60_000;
/// Sentinel's `failover-timeout`.
const SENTINEL_FAILOVER_TIMEOUT_MS: u64 = 20_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    ReplguardKill,
    ReplguardTerm,
    /// A node, by index.
    ReplicaKill(usize),
    ReplicaRestart(usize),
    MasterCutsReplicas(usize),
    MasterRestart(usize),
    /// The master when it was asked.
    SentinelFailover(usize),
}

impl Fault {
    const KINDS: [&'static str; 7] = [
        "replguard kill -9",
        "replguard SIGTERM",
        "replica kill -9",
        "replica clean restart",
        "master cuts replica links",
        "master clean restart",
        "Sentinel failover",
    ];

    /// A fault drawn uniformly over the kinds (and the replica, for a replica's), the master
    /// being node `master`.
    fn draw(rng: &mut StdRng, master: usize) -> Fault {
        let replica = (master + 1 + rng.random_range(0..NAMES.len() - 1)) % NAMES.len();
        match rng.random_range(0..Self::KINDS.len()) {
            0 => Fault::ReplguardKill,
            1 => Fault::ReplguardTerm,
            2 => Fault::ReplicaKill(replica),
            3 => Fault::ReplicaRestart(replica),
            4 => Fault::MasterCutsReplicas(master),
            5 => Fault::MasterRestart(master),
            _ => Fault::SentinelFailover(master),
        }
    }

    fn kind(self) -> &'static str {
        Self::KINDS[match self {
            Fault::ReplguardKill => 0,
            Fault::ReplguardTerm => 1,
            Fault::ReplicaKill(_) => 2,
            Fault::ReplicaRestart(_) => 3,
            Fault::MasterCutsReplicas(_) => 4,
            Fault::MasterRestart(_) => 5,
            Fault::SentinelFailover(_) => 6,
        }]
    }

    /// Whether the fault restarted node `i` (whose counts start again from zero).
    fn restarts_node(self, i: usize) -> bool {
        matches!(self, Fault::ReplicaKill(n) | Fault::ReplicaRestart(n) | Fault::MasterRestart(n) if n == i)
    }

    fn restarts_replguard(self) -> bool {
        matches!(self, Fault::ReplguardKill | Fault::ReplguardTerm)
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::ReplicaKill(i)
            | Fault::ReplicaRestart(i)
            | Fault::MasterCutsReplicas(i)
            | Fault::MasterRestart(i) => write!(f, "{} ({})", self.kind(), NAMES[*i]),
            Fault::SentinelFailover(i) => write!(f, "{} (from {})", self.kind(), NAMES[*i]),
            _ => f.write_str(self.kind()),
        }
    }
}

/// What the writer thread and the run agree on.
#[derive(Default)]
struct WriterControl {
    /// The run wants writes.
    go: bool,
    /// The writer saw `go` false with no write in doubt, and writes no more until `go`.
    idle: bool,
    stop: bool,
}

/// A writer of acknowledged writes to the port the run names (the master, which a failover
/// changes), paused and resumed by the run; reconnects after a restart. A write sent whose
/// answer was lost is in doubt until a later write is acknowledged (its value counts the one in
/// doubt), so the writer pauses only after an acknowledged write.
struct SteadyWriter {
    control: Arc<(Mutex<WriterControl>, Condvar)>,
    /// Where the writes go.
    target: Arc<AtomicU16>,
    /// The highest counter value the master acknowledged: a lower answer after it (a master
    /// that lost writes counts again from an older value) leaves it as it is.
    acked: Arc<AtomicU64>,
    /// Writes that failed (connection lost, refused while the master loads).
    failed: Arc<AtomicU64>,
    handle: Option<JoinHandle<()>>,
}

impl SteadyWriter {
    fn start(port: u16) -> SteadyWriter {
        let control = Arc::new((Mutex::new(WriterControl::default()), Condvar::new()));
        let target = Arc::new(AtomicU16::new(port));
        let acked = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let (ctl, to, ack, fail) = (
            control.clone(),
            target.clone(),
            acked.clone(),
            failed.clone(),
        );
        let handle = std::thread::spawn(move || {
            let mut conn: Option<(u16, Client)> = None;
            let mut in_doubt = false;
            loop {
                {
                    let (lock, cv) = &*ctl;
                    let mut c = lock.lock().unwrap();
                    if c.stop {
                        return;
                    }
                    if !c.go && !in_doubt {
                        c.idle = true;
                        cv.notify_all();
                        while !c.go && !c.stop {
                            c = cv.wait(c).unwrap();
                        }
                        continue;
                    }
                    c.idle = false;
                }
                let port = to.load(Ordering::SeqCst);
                if conn.as_ref().is_some_and(|(p, _)| *p != port) {
                    conn = None;
                }
                let client = match &mut conn {
                    Some((_, c)) => c,
                    None => match Client::connect_within(port, Duration::from_secs(5)) {
                        Ok(c) => &mut conn.insert((port, c)).1,
                        Err(_) => {
                            std::thread::sleep(Duration::from_millis(20));
                            continue;
                        }
                    },
                };
                match client.try_cmd(&["EVAL", WRITE, "1", COUNTER, "chaos:k:"]) {
                    Ok(Reply::Integer(v)) => {
                        ack.fetch_max(u64::try_from(v).unwrap(), Ordering::SeqCst);
                        in_doubt = false;
                    }
                    // Refused (the master is loading its RDB): not applied.
                    Ok(Reply::Error(_)) => {
                        fail.fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Ok(other) => panic!("the write script answered {other:?}"),
                    Err(_) => {
                        conn = None;
                        in_doubt = true;
                        fail.fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            }
        });
        SteadyWriter {
            control,
            target,
            acked,
            failed,
            handle: Some(handle),
        }
    }

    fn resume(&self) {
        let (lock, cv) = &*self.control;
        lock.lock().unwrap().go = true;
        cv.notify_all();
    }

    /// Stops writing; returns once no write is under way or in doubt. The master must be up.
    /// Pausing a paused writer waits only for a write still in doubt.
    fn pause(&mut self) {
        let (lock, cv) = &*self.control;
        let mut c = lock.lock().unwrap();
        if c.go {
            // Whatever the writer said before is stale: it must see `go` false again.
            c.go = false;
            c.idle = false;
        }
        let deadline = Instant::now() + SETTLE_LIMIT;
        while !c.idle {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.handle.as_ref().is_some_and(|h| h.is_finished()) {
                drop(c);
                self.join();
                panic!("the writer did not pause within {SETTLE_LIMIT:?}");
            }
            c = cv
                .wait_timeout(c, left.min(Duration::from_millis(200)))
                .unwrap()
                .0;
        }
    }

    /// Sends the next writes to `port`.
    fn retarget(&self, port: u16) {
        self.target.store(port, Ordering::SeqCst);
    }

    fn acked(&self) -> u64 {
        self.acked.load(Ordering::SeqCst)
    }

    /// After a loss was reported: the master's counter is the reference again.
    fn rebase(&self, counter: u64) {
        self.acked.store(counter, Ordering::SeqCst);
    }

    /// Ends the thread; a panic in it is raised here.
    fn join(&mut self) {
        {
            let (lock, cv) = &*self.control;
            lock.lock().unwrap_or_else(|p| p.into_inner()).stop = true;
            cv.notify_all();
        }
        if let Some(h) = self.handle.take() {
            if let Err(e) = h.join() {
                std::panic::resume_unwind(e);
            }
        }
    }
}

impl Drop for SteadyWriter {
    fn drop(&mut self) {
        let (lock, cv) = &*self.control;
        lock.lock().unwrap_or_else(|p| p.into_inner()).stop = true;
        cv.notify_all();
    }
}

/// The last `n` lines of `text`, indented for a report.
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| format!("    {l}\n"))
        .collect()
}

/// Sync counts from the servers themselves: each node's `INFO stats` and replguard's
/// `/metrics`, by name.
type Counts = BTreeMap<String, u64>;

/// `INFO stats` of a node: the syncs it served.
const NODE_STATS: [&str; 3] = ["sync_full", "sync_partial_ok", "sync_partial_err"];

/// The topology under test, and its processes' lives.
struct Topology {
    /// A, B, C.
    nodes: Vec<Server>,
    /// Each node's link port, in the same order.
    links: [u16; 3],
    admin: u16,
    config: PathBuf,
    /// The node that is master.
    master: usize,
    dir: tempfile::TempDir,
    replguard: Option<Replguard>,
    /// replguard processes started so far (each logs to its own file).
    starts: u32,
    sentinels: Vec<Sentinel>,
}

impl Topology {
    fn start() -> Topology {
        let [la, lb, lc, admin, s1, s2, s3] = free_ports();
        let links = [la, lb, lc];
        let dir = tempfile::Builder::new()
            .prefix("replguard-chaos-")
            .tempdir()
            .unwrap();
        let mut nodes = Vec::new();
        for (i, link) in links.iter().enumerate() {
            let args = node_args(*link, (i != 0).then_some(la));
            nodes.push(Server::start(
                Kind::Redis,
                &args.iter().map(String::as_str).collect::<Vec<_>>(),
            ));
            if i == 0 {
                assert_eq!(
                    nodes[0].client().text(&["DEBUG", "POPULATE", "10000"]),
                    "OK"
                );
            }
        }
        let config = dir.path().join("replguard.yaml");
        let mut yaml = format!(
            "state_dir: {}/state\nadmin: {{ listen: 127.0.0.1:{admin} }}\nlinks:\n",
            dir.path().display()
        );
        for i in 0..NAMES.len() {
            yaml += &format!(
                "  - {{ name: {}, listen: 127.0.0.1:{}, master: 127.0.0.1:{}, flavor: redis, guard: enforce, group: {GROUP} }}\n",
                link_name(i),
                links[i],
                nodes[i].port
            );
        }
        std::fs::write(&config, yaml).unwrap();
        let mut t = Topology {
            nodes,
            links,
            admin,
            config,
            master: 0,
            dir,
            replguard: None,
            starts: 0,
            sentinels: Vec::new(),
        };
        t.start_replguard();
        t.wait_offsets(Duration::from_secs(60))
            .unwrap_or_else(|d| panic!("the replicas never synced:\n{d}"));
        t.sentinels = [s1, s2, s3]
            .iter()
            .map(|p| {
                Sentinel::start_with(
                    Kind::Redis,
                    *p,
                    la,
                    SENTINEL_DOWN_AFTER_MS,
                    SENTINEL_FAILOVER_TIMEOUT_MS,
                )
            })
            .collect();
        t
    }

    fn log_path(&self, n: u32) -> PathBuf {
        self.dir.path().join(format!("replguard-{n}.log"))
    }

    /// Starts replguard on the same configuration and state_dir; returns once `/status` answers.
    fn start_replguard(&mut self) {
        self.starts += 1;
        let rg = Replguard::run(&self.config, &self.log_path(self.starts), |_| {});
        let admin = self.admin;
        wait_for(
            Duration::from_secs(20),
            "replguard's admin listener",
            || try_http(admin, "GET", "/status"),
        );
        self.replguard = Some(rg);
    }

    fn replguard(&mut self) -> &mut Replguard {
        self.replguard.as_mut().expect("replguard runs")
    }

    fn replicas(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.nodes.len()).filter(move |i| *i != self.master)
    }

    /// Starts node `i` again with the arguments of its role now: a replica of the master's link,
    /// or the master.
    fn start_node(&mut self, i: usize) {
        let of = (i != self.master).then_some(self.links[self.master]);
        self.nodes[i].set_args(&node_args(self.links[i], of));
        self.nodes[i].start_again();
    }

    /// Injects `fault`; a process it stops stays down for `down`. Returns a note for the report.
    fn inject(&mut self, fault: Fault, down: Duration) -> Result<String, String> {
        match fault {
            Fault::ReplguardKill => {
                self.replguard().kill9();
                std::thread::sleep(down);
                self.start_replguard();
            }
            Fault::ReplguardTerm => {
                let rg = self.replguard();
                rg.signal("-TERM");
                let status = rg.wait_exit(Duration::from_secs(10));
                assert!(status.success(), "replguard exited {status:?} on SIGTERM");
                std::thread::sleep(down);
                self.start_replguard();
            }
            Fault::ReplicaKill(i) => {
                self.nodes[i].kill9();
                std::thread::sleep(down);
                self.start_node(i);
            }
            Fault::ReplicaRestart(i) | Fault::MasterRestart(i) => {
                self.nodes[i].stop(true);
                std::thread::sleep(down);
                self.start_node(i);
            }
            Fault::MasterCutsReplicas(i) => {
                let n = self.nodes[i]
                    .client()
                    .int(&["CLIENT", "KILL", "TYPE", "replica"]);
                return Ok(format!("{n} links cut"));
            }
            Fault::SentinelFailover(_) => return self.sentinel_failover(),
        }
        Ok(format!("down {} ms", down.as_millis()))
    }

    /// `SENTINEL FAILOVER` once every Sentinel has read both replicas as replicas of the master
    /// since they last changed; waits until every Sentinel names another node's link as the
    /// master and the old master replicates from it. Writes must be paused and the replicas
    /// caught up.
    fn sentinel_failover(&mut self) -> Result<String, String> {
        let old = self.master;
        let old_link = self.links[old].to_string();
        // A Sentinel reads a replica's INFO every 10 s. One whose last reading of a node is
        // from before that node became a replica (an old master it converted, a node restarted)
        // still counts it a master for 8 s and more, and converts the promoted node straight
        // back before the leader's new epoch reaches it: the failover is aborted after
        // failover-timeout. So every Sentinel must have read both replicas as what they are.
        let fresh = |s: &Sentinel| {
            let rs = s.try_replicas()?;
            let fit = rs.len() == 2
                && rs.iter().all(|r| {
                    let is = |k: &str, v: &str| r.get(k).map(String::as_str) == Some(v);
                    is("flags", "slave")
                        && is("role-reported", "slave")
                        && is("master-link-status", "ok")
                        && r.get("master-port") == Some(&old_link)
                });
            fit.then_some(())
        };
        let sentinels = &self.sentinels;
        if wait_for_or(FAILOVER_LIMIT, || sentinels.iter().try_for_each(fresh)).is_none() {
            return Err(format!(
                "the Sentinels did not read both replicas as replicas of the master within {FAILOVER_LIMIT:?}: {:?}",
                sentinels.iter().map(Sentinel::try_replicas).collect::<Vec<_>>()
            ));
        }
        let sentinel = &sentinels[0];
        let asked_at = Instant::now();
        let asked = Client::connect_within(sentinel.port, Duration::from_secs(2))
            .ok()
            .and_then(|mut c| c.try_cmd(&["SENTINEL", "FAILOVER", MASTER_NAME]).ok());
        match asked {
            Some(Reply::SimpleString(ok)) if ok == b"OK" => {}
            other => return Err(format!("SENTINEL FAILOVER answered {other:?}")),
        }
        let links = self.links;
        let sentinels = &self.sentinels;
        let nodes = &self.nodes;
        let promoted = wait_for_or(FAILOVER_LIMIT, || {
            let port = sentinels[0].try_master_port()?;
            if !sentinels.iter().all(|s| s.try_master_port() == Some(port)) {
                return None;
            }
            let p = links.iter().position(|l| *l == port)?;
            (p != old).then_some(())?;
            let ok = (0..nodes.len()).filter(|i| *i != p).all(|i| {
                nodes[i].try_info("replication").is_some_and(|r| {
                    r.get("role").map(String::as_str) == Some("slave")
                        && r.get("master_port") == Some(&port.to_string())
                })
            });
            ok.then_some(p)
        });
        let Some(p) = promoted else {
            let mut why = format!(
                "the failover did not complete within {FAILOVER_LIMIT:?}; Sentinels answer {:?}\n",
                self.sentinels
                    .iter()
                    .map(Sentinel::try_master_port)
                    .collect::<Vec<_>>()
            );
            why += &last_lines(&self.sentinels[0].log(), 15);
            return Err(why);
        };
        self.master = p;
        Ok(format!(
            "{} promoted, the old master its replica {} ms after SENTINEL FAILOVER",
            NAMES[p],
            asked_at.elapsed().as_millis()
        ))
    }

    /// After a failover, the full syncs the promoted node's link forced on the other nodes
    /// (verdicts given at `since` or later), each set against what the promoted node accepts by
    /// itself: a resume on its own id, or on its former one up to the switch
    /// (`master_replid2`, `second_repl_offset`). Returns (forced, of which the promoted node
    /// would have refused the request itself, the others described).
    fn failover_full_syncs(&self, since: u64) -> (u64, u64, Vec<String>) {
        let p = self.master;
        let info = wait_for(Duration::from_secs(10), "the promoted node's INFO", || {
            self.nodes[p].try_info("replication")
        });
        let st: serde_json::Value =
            wait_for(Duration::from_secs(10), "replguard's /status", || {
                serde_json::from_str(&try_http(self.admin, "GET", "/status")?).ok()
            });
        let link = st["links"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|l| l["name"].as_str() == Some(&link_name(p)))
            .cloned()
            .unwrap_or_default();
        let second: i64 = info["second_repl_offset"].parse().unwrap();
        let (mut forced, mut refused, mut accepted) = (0, 0, Vec::new());
        for i in self.replicas() {
            let Some((_, v)) = link["ledger"]["last_verdicts"]
                .as_object()
                .into_iter()
                .flatten()
                .find(|(k, _)| k.ends_with(&format!(":{}", self.links[i])))
            else {
                continue;
            };
            if v["verdict"] != "force_full" || v["at_unix"].as_u64().unwrap_or(0) < since {
                continue;
            }
            forced += 1;
            let id = v["requested_replid"].as_str().unwrap_or("");
            let offset = v["requested_offset"].as_i64().unwrap_or(-1);
            if id == info["master_replid"] || (id == info["master_replid2"] && offset <= second) {
                accepted.push(format!(
                    "{} asked {id} {offset}, which {} accepts by itself (its switch: {} at {second}); replguard: {}",
                    NAMES[i], NAMES[p], info["master_replid2"], v["reason"]
                ));
            } else {
                refused += 1;
            }
        }
        (forced, refused, accepted)
    }

    /// Each node's sync counts and replguard's, by name.
    fn counts(&self) -> Counts {
        let mut counts = Counts::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let stats = wait_for(Duration::from_secs(10), "a node's INFO stats", || {
                node.try_info("stats")
            });
            for name in NODE_STATS {
                counts.insert(format!("{} {name}", NAMES[i]), stats[name].parse().unwrap());
            }
        }
        let admin = self.admin;
        let metrics = wait_for(Duration::from_secs(10), "replguard's /metrics", || {
            try_http(admin, "GET", "/metrics")
        });
        for line in metrics.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let value: f64 = value.parse().unwrap();
            let name = match series.split_once('{') {
                Some(("replguard_full_syncs_total", _)) => "replguard full syncs".to_string(),
                Some(("replguard_partial_syncs_total", _)) => "replguard partial syncs".to_string(),
                Some(("replguard_holds_total", _)) => "replguard holds".to_string(),
                Some(("replguard_verdicts_total", labels)) => {
                    let label = |k: &str| {
                        labels
                            .split_once(&format!("{k}=\""))
                            .and_then(|(_, rest)| rest.split_once('"'))
                            .map_or("?", |(v, _)| v)
                            .to_string()
                    };
                    format!(
                        "verdict {}/{}/{}",
                        label("verdict"),
                        label("reason"),
                        label("action")
                    )
                }
                _ => continue,
            };
            *counts.entry(name).or_default() += value as u64;
        }
        counts
    }

    /// Waits until every replica's link to the master's link is up at the master's offset;
    /// the offset, or what each side showed when the limit passed.
    fn wait_offsets(&self, limit: Duration) -> Result<u64, String> {
        let master = &self.nodes[self.master];
        let link = self.links[self.master].to_string();
        let reached = wait_for_or(limit, || {
            let mo: u64 = master
                .try_info("replication")?
                .get("master_repl_offset")?
                .parse()
                .ok()?;
            for i in self.replicas() {
                let ri = self.nodes[i].try_info("replication")?;
                let ro: u64 = ri.get("slave_repl_offset")?.parse().ok()?;
                let up = ri.get("master_link_status")? == "up";
                if !up || ri.get("master_port")? != &link || ro != mo {
                    return None;
                }
            }
            Some(mo)
        });
        reached.ok_or_else(|| self.diagnostics())
    }

    /// What each server and replguard show, for a report.
    fn diagnostics(&self) -> String {
        let mut out = String::new();
        let pick = |info: Option<HashMap<String, String>>, keys: &[&str]| {
            info.map_or("unreachable".to_string(), |i| {
                keys.iter()
                    .map(|k| format!("{k}={}", i.get(*k).map_or("-", String::as_str)))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
        };
        for (i, node) in self.nodes.iter().enumerate() {
            let role = if i == self.master {
                "master"
            } else {
                "replica"
            };
            out += &format!(
                "  {} ({role}, port {}, link {}): {}\n",
                NAMES[i],
                node.port,
                self.links[i],
                pick(
                    node.try_info("replication"),
                    &[
                        "role",
                        "master_port",
                        "master_link_status",
                        "master_replid",
                        "master_replid2",
                        "master_repl_offset",
                        "slave_repl_offset",
                        "second_repl_offset",
                        "master_sync_in_progress",
                    ]
                )
            );
            out += &last_lines(&node.log(), 8);
        }
        if let Some(st) = try_http(self.admin, "GET", "/status")
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        {
            for link in st["links"].as_array().into_iter().flatten() {
                out += &format!(
                    "  replguard link {}: sessions {}; last verdicts {}; stale_master {}\n",
                    link["name"],
                    link["sessions"],
                    link["ledger"]["last_verdicts"],
                    link["ledger"]["stale_master"]
                );
            }
        } else {
            out += "  replguard: /status unreachable\n";
        }
        let log = std::fs::read_to_string(self.log_path(self.starts)).unwrap_or_default();
        out += &last_lines(&log, 12);
        out
    }

    /// With writes paused and every replica at the master's offset: the acknowledged writes on
    /// the master and on each replica, and each replica's data equal to the master's.
    fn check(&self, acked: u64) -> Findings {
        let mut lost = Vec::new();
        let mut mc = self.nodes[self.master].client();
        let counter = |c: &mut Client| -> u64 {
            match c.cmd(&["GET", COUNTER]) {
                Reply::BulkString(b) => String::from_utf8_lossy(&b).parse().unwrap(),
                Reply::Null => 0,
                other => panic!("GET {COUNTER} answered {other:?}"),
            }
        };
        let on_master = counter(&mut mc);
        if on_master != acked {
            lost.push(format!(
                "the master's counter is {on_master}, the last acknowledged write {acked}"
            ));
        }
        let keys: Vec<String> = (0..KEYS).map(|i| format!("chaos:k:{i}")).collect();
        let mut mget = vec!["MGET"];
        mget.extend(keys.iter().map(String::as_str));
        let Reply::Array(values) = mc.cmd(&mget) else {
            panic!("MGET did not answer an array")
        };
        let mut missing = 0;
        for (i, v) in values.iter().enumerate() {
            let want = last_written(acked, i as u64);
            let got = match v {
                Reply::BulkString(b) => String::from_utf8_lossy(b).parse::<u64>().ok(),
                _ => None,
            };
            if got != want {
                missing += 1;
                if missing <= 3 {
                    lost.push(format!(
                        "master chaos:k:{i} is {got:?}, the last acknowledged write there {want:?}"
                    ));
                }
            }
        }
        if missing > 3 {
            lost.push(format!(
                "{missing} keys differ from the acknowledged writes"
            ));
        }
        let digest = mc.digest();
        let mut divergent = Vec::new();
        for i in self.replicas() {
            let mut rc = self.nodes[i].client();
            let on_replica = counter(&mut rc);
            if on_master == acked && on_replica != acked {
                lost.push(format!(
                    "replica {}'s counter is {on_replica}, the last acknowledged write {acked}",
                    NAMES[i]
                ));
            }
            let d = rc.digest();
            if d != digest {
                let keys = |c: &mut Client| match c.cmd(&["DBSIZE"]) {
                    Reply::Integer(n) => n,
                    _ => -1,
                };
                divergent.push((
                    i,
                    format!(
                        "replica {} digest {d} ({} keys, counter {on_replica}), master {} digest {digest} ({} keys, counter {on_master})",
                        NAMES[i],
                        keys(&mut rc),
                        NAMES[self.master],
                        keys(&mut mc)
                    ),
                ));
            }
        }
        Findings {
            lost,
            master_counter: on_master,
            divergent,
        }
    }

    /// After the master lost acknowledged writes: its keys are made those the writer would have
    /// left at the counter it has, so the next checks start from there.
    fn restore_keys(&self, counter: u64) {
        let mut c = self.nodes[self.master].client();
        for i in 0..KEYS {
            let key = format!("chaos:k:{i}");
            match last_written(counter, i) {
                Some(v) => assert_eq!(c.text(&["SET", &key, &v.to_string()]), "OK"),
                None => {
                    c.int(&["DEL", &key]);
                }
            }
        }
    }

    /// Resyncs replica `i` from scratch: a new id of its own, which replguard has never seen.
    fn resync(&self, i: usize) {
        let mut c = self.nodes[i].client();
        assert_eq!(c.text(&["REPLICAOF", "NO", "ONE"]), "OK");
        let port = self.links[self.master].to_string();
        assert_eq!(c.text(&["REPLICAOF", "127.0.0.1", &port]), "OK");
    }
}

/// A node that announces its link `link`, saves every second and keeps a backlog for the
/// run's longest outage; a replica of the link on `replica_of` when given (on the command line,
/// so that it restores its id and offset from its RDB at start).
fn node_args(link: u16, replica_of: Option<u16>) -> Vec<String> {
    let mut args: Vec<String> = [
        "--replica-announce-ip",
        "127.0.0.1",
        "--replica-announce-port",
        &link.to_string(),
        "--save",
        "1 1",
        "--repl-backlog-size",
        "64mb",
        "--repl-diskless-sync-delay",
        "0",
    ]
    .map(String::from)
    .to_vec();
    if let Some(m) = replica_of {
        args.extend(["--replicaof".into(), "127.0.0.1".into(), m.to_string()]);
    }
    args
}

/// The name of node `i`'s link: `la`, `lb`, `lc`.
fn link_name(i: usize) -> String {
    format!("l{}", NAMES[i].to_lowercase())
}

/// Seconds since the epoch, as `/status` gives a verdict's time.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Polls `f` every 20 ms until it returns `Some`, for at most `limit`.
fn wait_for_or<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What a check found.
struct Findings {
    /// Acknowledged writes missing on the master, or on a replica.
    lost: Vec<String>,
    /// The master's counter.
    master_counter: u64,
    /// Replicas (by node) whose data differs from the master's, with what differs.
    divergent: Vec<(usize, String)>,
}

/// The value the writer last stored under key `i` once `acked` writes were acknowledged: the
/// largest v <= acked with v mod KEYS == i (the counter starts at 1).
fn last_written(acked: u64, i: u64) -> Option<u64> {
    let back = (acked % KEYS + KEYS - i) % KEYS;
    acked.checked_sub(back).filter(|v| *v >= 1)
}

/// `name` from the environment, parsed.
fn env_or<T: std::str::FromStr>(name: &str, default: impl FnOnce() -> T) -> T {
    match std::env::var(name) {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={s:?} is not a number")),
        Err(_) => default(),
    }
}

/// One fault's outcome.
struct Outcome {
    n: u32,
    fault: Fault,
    note: String,
    settle: Duration,
    deltas: Counts,
}

/// Per-name increase from `before` to `after`, the nodes' counts summed as `served ...`; a
/// process restarted in between started its counts again from zero, so its counts after are
/// all new.
fn deltas(before: &Counts, after: &Counts, fault: Fault) -> Counts {
    let mut out = Counts::new();
    for (k, a) in after {
        let node = NAMES.iter().position(|n| k.starts_with(&format!("{n} ")));
        let restarted = match node {
            Some(i) => fault.restarts_node(i),
            None => fault.restarts_replguard(),
        };
        let b = if restarted {
            0
        } else {
            before.get(k).copied().unwrap_or(0)
        };
        let name = match node {
            Some(i) => format!("served {}", &k[NAMES[i].len() + 1..]),
            None => k.clone(),
        };
        *out.entry(name).or_default() += a.saturating_sub(b);
    }
    out.retain(|_, d| *d > 0);
    out
}

fn summary(counts: &Counts) -> String {
    if counts.is_empty() {
        return "no syncs".into();
    }
    counts
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[test]
#[ignore = "long: run by scripts/chaos.sh"]
fn chaos_run() {
    let faults: u32 = env_or("REPLGUARD_CHAOS_FAULTS", || 20);
    let seed: u64 = env_or("REPLGUARD_CHAOS_SEED", || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    });
    println!(
        "chaos: seed {seed}, {faults} faults (again: REPLGUARD_CHAOS_SEED={seed} REPLGUARD_CHAOS_FAULTS={faults} scripts/chaos.sh)"
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let started = Instant::now();

    let mut t = Topology::start();
    let mut writer = SteadyWriter::start(t.nodes[t.master].port);

    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut divergences: Vec<String> = Vec::new();
    let mut lost_writes: Vec<String> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    let mut failures_in_a_row = 0;
    // Full syncs forced at Sentinel failovers, and of them those the promoted node would have
    // refused by itself; the others, described.
    let (mut failover_forced, mut failover_refused) = (0, 0);
    let mut failover_needless: Vec<String> = Vec::new();
    for n in 1..=faults {
        // Every draw is made whatever happens, so a seed gives the same faults.
        let write_for = Duration::from_millis(rng.random_range(100..800));
        let fault = Fault::draw(&mut rng, t.master);
        let down = Duration::from_millis(rng.random_range(0..1500));

        writer.resume();
        std::thread::sleep(write_for);
        let before = t.counts();
        if let Fault::SentinelFailover(_) = fault {
            // Asynchronous replication loses what the promoted replica had not received: that
            // is Sentinel's contract, not a fault of replguard's, so none is left to lose.
            writer.pause();
            t.wait_offsets(SETTLE_LIMIT)
                .unwrap_or_else(|d| panic!("the replicas did not catch up before #{n}:\n{d}"));
        }
        let since = unix_now();
        let injected = t.inject(fault, down);
        writer.retarget(t.nodes[t.master].port);
        writer.pause();
        let note = match injected {
            Ok(note) => note,
            Err(why) => {
                let what = format!("#{n} {fault}: {why}");
                println!("chaos: FAULT FAILED {what}");
                failures.push(what);
                "not carried out".into()
            }
        };
        let settling = Instant::now();
        let offset = match t.wait_offsets(SETTLE_LIMIT) {
            Ok(o) => o,
            Err(d) => {
                let what = format!(
                    "#{n} {fault}: the replicas did not reach the master's offset within {SETTLE_LIMIT:?}"
                );
                println!("chaos: SETTLE FAILED {what}\n{d}");
                failures.push(what);
                failures_in_a_row += 1;
                if failures_in_a_row == MAX_SETTLE_FAILURES {
                    println!("chaos: {MAX_SETTLE_FAILURES} settles in a row failed; the run stops");
                    break;
                }
                continue;
            }
        };
        failures_in_a_row = 0;
        let acked = writer.acked();
        let Findings {
            lost,
            master_counter,
            divergent,
        } = t.check(acked);
        let settle = settling.elapsed();
        if !lost.is_empty() {
            let what = lost.join("; ");
            println!("chaos: LOST WRITES after #{n} {fault}: {what}");
            lost_writes.push(format!("#{n} {fault}: {what}"));
        }
        if master_counter != acked {
            t.restore_keys(master_counter);
            writer.rebase(master_counter);
        }
        for (i, what) in &divergent {
            println!(
                "chaos: DIVERGENCE after #{n} {fault} at offset {offset}: {what}\n{}",
                t.diagnostics()
            );
            divergences.push(format!("#{n} {fault}: {what}"));
            t.resync(*i);
        }
        if !divergent.is_empty() || master_counter != acked {
            t.wait_offsets(SETTLE_LIMIT)
                .unwrap_or_else(|d| panic!("a resynced replica did not catch up:\n{d}"));
        }
        let after = t.counts();
        let d = deltas(&before, &after, fault);
        let mut note = note;
        if let Fault::SentinelFailover(_) = fault {
            let (forced, refused, needless) = t.failover_full_syncs(since);
            note += &format!(
                "; {forced} full syncs forced, {refused} of them asked past the switch (the promoted node refuses those itself)"
            );
            for what in needless {
                println!("chaos: FULL SYNC THE SERVER WOULD NOT NEED after #{n} {fault}: {what}");
                failover_needless.push(format!("#{n} {fault}: {what}"));
            }
            failover_forced += forced;
            failover_refused += refused;
        }
        println!(
            "chaos: #{n}/{faults} {fault}, {note}: settled in {} ms at offset {offset}, {acked} writes; {}",
            settle.as_millis(),
            summary(&d)
        );
        outcomes.push(Outcome {
            n,
            fault,
            note,
            settle,
            deltas: d,
        });
    }
    writer.pause();
    let acked = writer.acked();
    let failed_writes = writer.failed.load(Ordering::Relaxed);
    writer.join();

    println!("chaos: ---- seed {seed} ----");
    println!(
        "chaos: {} faults in {:.1} s; {acked} writes acknowledged ({failed_writes} attempts failed while a fault lasted)",
        outcomes.len(),
        started.elapsed().as_secs_f64()
    );
    for kind in Fault::KINDS {
        let of_kind: Vec<&Outcome> = outcomes.iter().filter(|o| o.fault.kind() == kind).collect();
        let mut total = Counts::new();
        for o in &of_kind {
            for (k, v) in &o.deltas {
                *total.entry(k.clone()).or_default() += v;
            }
        }
        println!(
            "chaos: {kind}: {} faults; {}",
            of_kind.len(),
            summary(&total)
        );
    }
    let mut total = Counts::new();
    for o in &outcomes {
        for (k, v) in &o.deltas {
            *total.entry(k.clone()).or_default() += v;
        }
    }
    println!("chaos: all faults: {}", summary(&total));
    println!(
        "chaos: Sentinel failovers: {failover_forced} full syncs forced by the promoted node's link, {failover_refused} of them on a request the promoted node refuses itself (past the switch), {} it would have accepted",
        failover_needless.len()
    );
    for what in &failover_needless {
        println!("chaos:   {what}");
    }
    if let Some(slowest) = outcomes.iter().max_by_key(|o| o.settle) {
        println!(
            "chaos: slowest settle {} ms, after #{} {}, {}",
            slowest.settle.as_millis(),
            slowest.n,
            slowest.fault,
            slowest.note
        );
    }
    println!(
        "chaos: divergences {}, faults followed by lost writes {}, failed faults or settles {}",
        divergences.len(),
        lost_writes.len(),
        failures.len()
    );
    let problems: Vec<&String> = divergences
        .iter()
        .chain(&lost_writes)
        .chain(&failures)
        .collect();
    assert!(
        problems.is_empty(),
        "seed {seed}: {} problems:\n{}",
        problems.len(),
        problems
            .iter()
            .map(|p| p.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn last_written_follows_the_counter_round_the_keys() {
    assert_eq!(last_written(0, 0), None);
    assert_eq!(last_written(0, 5), None);
    assert_eq!(last_written(5, 5), Some(5));
    assert_eq!(last_written(5, 6), None);
    assert_eq!(last_written(5, 0), None);
    assert_eq!(last_written(1000, 0), Some(1000));
    assert_eq!(last_written(1003, 2), Some(1002));
    assert_eq!(last_written(1003, 4), Some(4));
    assert_eq!(last_written(2999, 999), Some(2999));
    assert_eq!(last_written(3000, 999), Some(2999));
}
