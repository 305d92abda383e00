//! The chaos run: a seeded, bounded fault injector against real servers under a steady writer.
//!
//! A Redis 7.0 master with two replicas, both behind one `replguard run` process (the binary,
//! so it can be killed). The replicas save every second and restart from their RDB as replicas,
//! so a restarted replica resumes from the id and offset it saved. A writer runs a script that
//! increments a counter and stores its value under one of 1000 keys, and keeps the last value
//! the master acknowledged. Faults are drawn uniformly by a seeded generator: replguard killed
//! (SIGKILL) or stopped (SIGTERM) and restarted on the same configuration and state_dir, a
//! replica killed or shut down cleanly and restarted, the master cutting its replica links, a
//! clean master restart from its RDB. After each fault, with writes paused, every replica must
//! reach the master's offset within [`SETTLE_LIMIT`] and hold the master's data (DEBUG DIGEST),
//! and no acknowledged write may be missing on any node. A replica whose data differs is a
//! divergence: counted, reported with the fault before it, resynced from scratch, and the run
//! goes on; the test fails at the end if there was any.
//!
//! Ignored by `cargo test`: `scripts/chaos.sh` runs it. `REPLGUARD_CHAOS_FAULTS` (default 20)
//! and `REPLGUARD_CHAOS_SEED` (default from the clock; printed, so the same faults can be drawn
//! again).

use crate::common::*;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long the servers get to agree after a fault; longer is a failure of the run.
const SETTLE_LIMIT: Duration = Duration::from_secs(30);
/// The writer's keys: `chaos:k:<value mod KEYS>`.
const KEYS: u64 = 1000;
const COUNTER: &str = "chaos:ctr";
/// One acknowledged write: the counter's next value, stored under its key.
const WRITE: &str = "local v = redis.call('INCR', KEYS[1]) \
                     redis.call('SET', ARGV[1] .. (v % 1000), v) return v";
/// Settles in a row that may time out before the run stops: the servers are in an unknown state.
const MAX_SETTLE_FAILURES: u32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    ReplguardKill,
    ReplguardTerm,
    ReplicaKill(usize),
    ReplicaRestart(usize),
    MasterCutsReplicas,
    MasterRestart,
}

impl Fault {
    const KINDS: [&'static str; 6] = [
        "replguard kill -9",
        "replguard SIGTERM",
        "replica kill -9",
        "replica clean restart",
        "master cuts replica links",
        "master clean restart",
    ];

    /// A fault drawn uniformly over the kinds (and the replica, for a replica's).
    fn draw(rng: &mut StdRng, replicas: usize) -> Fault {
        let replica = rng.random_range(0..replicas);
        match rng.random_range(0..Self::KINDS.len()) {
            0 => Fault::ReplguardKill,
            1 => Fault::ReplguardTerm,
            2 => Fault::ReplicaKill(replica),
            3 => Fault::ReplicaRestart(replica),
            4 => Fault::MasterCutsReplicas,
            _ => Fault::MasterRestart,
        }
    }

    fn kind(self) -> &'static str {
        Self::KINDS[match self {
            Fault::ReplguardKill => 0,
            Fault::ReplguardTerm => 1,
            Fault::ReplicaKill(_) => 2,
            Fault::ReplicaRestart(_) => 3,
            Fault::MasterCutsReplicas => 4,
            Fault::MasterRestart => 5,
        }]
    }

    fn restarts_master(self) -> bool {
        self == Fault::MasterRestart
    }

    fn restarts_replguard(self) -> bool {
        matches!(self, Fault::ReplguardKill | Fault::ReplguardTerm)
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::ReplicaKill(i) | Fault::ReplicaRestart(i) => {
                write!(f, "{} (replica {})", self.kind(), i + 1)
            }
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

/// A writer of acknowledged writes, paused and resumed by the run; reconnects after a master
/// restart. A write sent whose answer was lost is in doubt until a later write is acknowledged
/// (its value counts the one in doubt), so the writer pauses only after an acknowledged write.
struct SteadyWriter {
    control: Arc<(Mutex<WriterControl>, Condvar)>,
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
        let acked = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let (ctl, ack, fail) = (control.clone(), acked.clone(), failed.clone());
        let handle = std::thread::spawn(move || {
            let mut conn: Option<Client> = None;
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
                let client = match &mut conn {
                    Some(c) => c,
                    None => match Client::connect_within(port, Duration::from_secs(5)) {
                        Ok(c) => conn.insert(c),
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

/// Sync counts from the servers themselves: the master's `INFO stats` and replguard's
/// `/metrics`, by name.
type Counts = BTreeMap<String, u64>;

/// `INFO stats` of the master: the syncs it served.
const MASTER_STATS: [&str; 3] = ["sync_full", "sync_partial_ok", "sync_partial_err"];

/// The topology under test, and its processes' lives.
struct Topology {
    master: Server,
    replicas: Vec<Server>,
    bin: BinConfig,
    dir: tempfile::TempDir,
    replguard: Option<Replguard>,
    /// replguard processes started so far (each logs to its own file).
    starts: u32,
}

impl Topology {
    fn start() -> Topology {
        let master = Server::start(
            Kind::Redis,
            &[
                "--repl-backlog-size",
                "64mb",
                "--repl-diskless-sync-delay",
                "0",
            ],
        );
        assert_eq!(master.client().text(&["DEBUG", "POPULATE", "10000"]), "OK");
        let dir = tempfile::Builder::new()
            .prefix("replguard-chaos-")
            .tempdir()
            .unwrap();
        let bin = BinConfig::new(dir.path(), master.port, Kind::Redis);
        let mut t = Topology {
            master,
            replicas: Vec::new(),
            bin,
            dir,
            replguard: None,
            starts: 0,
        };
        t.start_replguard();
        for _ in 0..2 {
            let r = replica_of(Kind::Redis, t.bin.port, &["--save", "1 1"]);
            t.replicas.push(r);
        }
        t
    }

    fn log_path(&self, n: u32) -> PathBuf {
        self.dir.path().join(format!("replguard-{n}.log"))
    }

    /// Starts replguard on the same configuration and state_dir; returns once `/status` answers.
    fn start_replguard(&mut self) {
        self.starts += 1;
        let rg = Replguard::run(&self.bin.path, &self.log_path(self.starts), |_| {});
        let admin = self.bin.admin;
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

    /// Injects `fault`; a process it stops stays down for `down`. Returns a note for the report.
    fn inject(&mut self, fault: Fault, down: Duration) -> String {
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
                self.replicas[i].kill9();
                std::thread::sleep(down);
                self.replicas[i].start_again();
            }
            Fault::ReplicaRestart(i) => {
                self.replicas[i].stop(true);
                std::thread::sleep(down);
                self.replicas[i].start_again();
            }
            Fault::MasterCutsReplicas => {
                let n = self
                    .master
                    .client()
                    .int(&["CLIENT", "KILL", "TYPE", "replica"]);
                return format!("{n} links cut");
            }
            Fault::MasterRestart => {
                self.master.stop(true);
                std::thread::sleep(down);
                self.master.start_again();
            }
        }
        format!("down {} ms", down.as_millis())
    }

    /// The master's sync counts and replguard's, by name.
    fn counts(&self) -> Counts {
        let mut counts = Counts::new();
        let stats = wait_for(Duration::from_secs(10), "the master's INFO stats", || {
            self.master.try_info("stats")
        });
        for name in MASTER_STATS {
            counts.insert(format!("master {name}"), stats[name].parse().unwrap());
        }
        let admin = self.bin.admin;
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

    /// Waits until every replica's link is up at the master's offset; the offset, or what
    /// each side showed when the limit passed.
    fn wait_offsets(&self, limit: Duration) -> Result<u64, String> {
        let deadline = Instant::now() + limit;
        loop {
            let reached = (|| {
                let mo: u64 = self
                    .master
                    .try_info("replication")?
                    .get("master_repl_offset")?
                    .parse()
                    .ok()?;
                for r in &self.replicas {
                    let ri = r.try_info("replication")?;
                    let ro: u64 = ri.get("slave_repl_offset")?.parse().ok()?;
                    if ri.get("master_link_status")? != "up" || ro != mo {
                        return None;
                    }
                }
                Some(mo)
            })();
            if let Some(mo) = reached {
                return Ok(mo);
            }
            if Instant::now() > deadline {
                return Err(self.diagnostics());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What each server and replguard show, for a report.
    fn diagnostics(&self) -> String {
        let mut out = String::new();
        let pick = |info: Option<std::collections::HashMap<String, String>>, keys: &[&str]| {
            info.map_or("unreachable".to_string(), |i| {
                keys.iter()
                    .map(|k| format!("{k}={}", i.get(*k).map_or("-", String::as_str)))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
        };
        out += &format!(
            "  master :{}: {}\n",
            self.master.port,
            pick(
                self.master.try_info("replication"),
                &[
                    "master_replid",
                    "master_replid2",
                    "master_repl_offset",
                    "second_repl_offset",
                    "connected_slaves",
                    "slave0",
                    "slave1",
                ]
            )
        );
        for (i, r) in self.replicas.iter().enumerate() {
            out += &format!(
                "  replica {} :{}: {}\n",
                i + 1,
                r.port,
                pick(
                    r.try_info("replication"),
                    &[
                        "master_link_status",
                        "master_replid",
                        "slave_repl_offset",
                        "master_sync_in_progress",
                    ]
                )
            );
            let log = r.log();
            for l in log
                .lines()
                .rev()
                .take(8)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
            {
                out += &format!("    {l}\n");
            }
        }
        if let Some(st) = try_http(self.bin.admin, "GET", "/status")
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        {
            let link = &st["links"][0];
            out += &format!("  replguard sessions: {}\n", link["sessions"]);
            out += &format!(
                "  replguard last verdicts: {}\n",
                link["ledger"]["last_verdicts"]
            );
        } else {
            out += "  replguard: /status unreachable\n";
        }
        let log = std::fs::read_to_string(self.log_path(self.starts)).unwrap_or_default();
        for l in log
            .lines()
            .rev()
            .take(12)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            out += &format!("    {l}\n");
        }
        out
    }

    /// With writes paused and every replica at the master's offset: the acknowledged writes on
    /// the master and on each replica, and each replica's data equal to the master's.
    fn check(&self, acked: u64) -> Findings {
        let mut lost = Vec::new();
        let mut mc = self.master.client();
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
        for (i, r) in self.replicas.iter().enumerate() {
            let mut rc = r.client();
            let on_replica = counter(&mut rc);
            if on_master == acked && on_replica != acked {
                lost.push(format!(
                    "replica {}'s counter is {on_replica}, the last acknowledged write {acked}",
                    i + 1
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
                        "replica {} digest {d} ({} keys, counter {on_replica}), master {digest} ({} keys, counter {on_master})",
                        i + 1,
                        keys(&mut rc),
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
        let mut c = self.master.client();
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
        let mut c = self.replicas[i].client();
        assert_eq!(c.text(&["REPLICAOF", "NO", "ONE"]), "OK");
        let port = self.bin.port.to_string();
        assert_eq!(c.text(&["REPLICAOF", "127.0.0.1", &port]), "OK");
    }
}

/// What a check found.
struct Findings {
    /// Acknowledged writes missing on the master, or on a replica.
    lost: Vec<String>,
    /// The master's counter.
    master_counter: u64,
    /// Replicas whose data differs from the master's, with what differs.
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
    settle: Duration,
    deltas: Counts,
}

/// Per-name increase from `before` to `after`; a process restarted in between started its
/// counts again from zero, so its counts after are all new.
fn deltas(before: &Counts, after: &Counts, fault: Fault) -> Counts {
    after
        .iter()
        .map(|(k, a)| {
            let restarted = if k.starts_with("master ") {
                fault.restarts_master()
            } else {
                fault.restarts_replguard()
            };
            let b = if restarted {
                0
            } else {
                before.get(k).copied().unwrap_or(0)
            };
            (k.clone(), a.saturating_sub(b))
        })
        .filter(|(_, d)| *d > 0)
        .collect()
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
    t.wait_offsets(Duration::from_secs(60))
        .unwrap_or_else(|d| panic!("the replicas never synced:\n{d}"));
    let mut writer = SteadyWriter::start(t.master.port);

    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut divergences: Vec<String> = Vec::new();
    let mut lost_writes: Vec<String> = Vec::new();
    let mut settle_failures: Vec<String> = Vec::new();
    let mut failures_in_a_row = 0;
    for n in 1..=faults {
        // Every draw is made whatever happens, so a seed gives the same faults.
        let write_for = Duration::from_millis(rng.random_range(100..800));
        let fault = Fault::draw(&mut rng, t.replicas.len());
        let down = Duration::from_millis(rng.random_range(0..1500));

        writer.resume();
        std::thread::sleep(write_for);
        let before = t.counts();
        let note = t.inject(fault, down);
        writer.pause();
        let settling = Instant::now();
        let offset = match t.wait_offsets(SETTLE_LIMIT) {
            Ok(o) => o,
            Err(d) => {
                let what = format!(
                    "#{n} {fault}: the replicas did not reach the master's offset within {SETTLE_LIMIT:?}"
                );
                println!("chaos: SETTLE FAILED {what}\n{d}");
                settle_failures.push(what);
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
        println!(
            "chaos: #{n}/{faults} {fault}, {note}: settled in {} ms at offset {offset}, {acked} writes; {}",
            settle.as_millis(),
            summary(&d)
        );
        outcomes.push(Outcome {
            n,
            fault,
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
    if let Some(slowest) = outcomes.iter().max_by_key(|o| o.settle) {
        println!(
            "chaos: slowest settle {} ms, after #{} {}",
            slowest.settle.as_millis(),
            slowest.n,
            slowest.fault
        );
    }
    println!(
        "chaos: divergences {}, faults followed by lost writes {}, failed settles {}",
        divergences.len(),
        lost_writes.len(),
        settle_failures.len()
    );
    let problems: Vec<&String> = divergences
        .iter()
        .chain(&lost_writes)
        .chain(&settle_failures)
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
