//! The real Apache Kvrocks server in tests: processes on free loopback ports with temporary
//! directories, cluster topologies, a steady writer of unique keys, and key-by-key comparison
//! (Kvrocks 2.7 has no DEBUG DIGEST).
//!
//! The server binary is `$KVROCKS_BIN`; without it the real-Kvrocks tests say so and return
//! (`scripts/test.sh` sets it from `../shared/kvrocks/install.sh` when that exists).

use super::{free_port, wait_for, Client, Reply};
use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// The real server, or `None` (and a line saying the test is skipped) when `KVROCKS_BIN` is not
/// set.
pub fn kvrocks_bin(test: &str) -> Option<PathBuf> {
    match std::env::var_os("KVROCKS_BIN").filter(|v| !v.is_empty()) {
        Some(p) => {
            let p = PathBuf::from(p);
            assert!(p.is_file(), "KVROCKS_BIN={} is not a file", p.display());
            Some(p)
        }
        None => {
            eprintln!("{test}: skipped, KVROCKS_BIN is not set");
            None
        }
    }
}

/// How a test node is configured.
#[derive(Debug, Clone, Copy)]
pub struct NodeCfg {
    pub cluster: bool,
    pub rsid: bool,
}

/// One Kvrocks process; killed on drop.
pub struct Kvrocks {
    pub port: u16,
    pub dir: tempfile::TempDir,
    bin: PathBuf,
    child: Option<Child>,
}

impl Kvrocks {
    pub fn start(bin: &Path, cfg: NodeCfg, extra: &[&str]) -> Kvrocks {
        let dir = tempfile::Builder::new()
            .prefix("replguard-kvrocks-")
            .tempdir()
            .unwrap();
        let mut k = Kvrocks {
            port: 0,
            dir,
            bin: bin.to_path_buf(),
            child: None,
        };
        // A port picked free may be taken before the server binds it (by an outgoing
        // connection's local port): then the server exits, and another port is tried.
        for attempt in 1..=3 {
            k.port = free_port();
            let mut conf = format!(
                "bind 127.0.0.1\nport {}\ndir {}\ndaemonize no\nlog-dir {}\nworkers 2\n\
                 cluster-enabled {}\nuse-rsid-psync {}\n",
                k.port,
                k.dir.path().join("db").display(),
                k.dir.path().display(),
                yes(cfg.cluster),
                yes(cfg.rsid)
            );
            for line in extra {
                conf.push_str(line);
                conf.push('\n');
            }
            std::fs::write(k.dir.path().join("kvrocks.conf"), conf).unwrap();
            match k.spawn() {
                Ok(()) => return k,
                Err(e) if attempt < 3 => eprintln!("kvrocks on port {}: {e}; another port", k.port),
                Err(e) => panic!("kvrocks on port {}: {e}", k.port),
            }
        }
        unreachable!()
    }

    /// Starts the process and waits until it answers (`INFO server` names its pid); `Err` (with
    /// its log's last lines) when it exits first.
    fn spawn(&mut self) -> Result<(), String> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("stdout.log"))
            .unwrap();
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(self.dir.path().join("kvrocks.conf"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("kvrocks starts");
        self.child = Some(child);
        let port = self.port;
        let exited = wait_for(Duration::from_secs(20), "kvrocks to answer", || {
            let child = self.child.as_mut()?;
            if let Some(status) = child.try_wait().ok().flatten() {
                return Some(Some(status));
            }
            // The answer counts only from this process, not from another on the same port.
            let pid = child.id().to_string();
            let info = Client::connect_within(port, Duration::from_secs(5))
                .ok()?
                .try_info("server")?;
            (info.get("process_id") == Some(&pid)).then_some(None)
        });
        let Some(status) = exited else {
            return Ok(());
        };
        self.child = None;
        let log = self.log();
        let tail: Vec<&str> = log.lines().rev().take(10).collect();
        Err(format!(
            "exited ({status}) before answering; its log, newest first:\n{}",
            tail.join("\n")
        ))
    }

    pub fn client(&self) -> Client {
        Client::connect(self.port).expect("connect to kvrocks")
    }

    /// The running process's id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("kvrocks is running").id()
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `kill -9`: whatever it received and did not apply is gone.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the process again on the same port and directory.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "kill it first");
        if let Err(e) = self.spawn() {
            panic!("kvrocks on port {}: {e}", self.port);
        }
    }

    /// `INFO <section>` as a map.
    pub fn info(&self, section: &str) -> HashMap<String, String> {
        self.client().info(section)
    }

    /// A counter from `INFO stats` (`sync_full`, `sync_partial_ok`, ...).
    pub fn stat(&self, name: &str) -> u64 {
        self.info("stats")
            .get(name)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("INFO stats has no {name}"))
    }

    pub fn log(&self) -> String {
        let mut s = String::new();
        for e in std::fs::read_dir(self.dir.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with("kvrocks") && name.contains("INFO") || name == "stdout.log" {
                s.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
        s
    }
}

impl Drop for Kvrocks {
    fn drop(&mut self) {
        self.kill9();
        if std::env::var_os("REPLGUARD_KEEP_KVROCKS").is_some() {
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
            eprintln!("kept {}", dir.keep().display());
        }
    }
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// Makes `master` (all slots) and `replica` (when given) one shard; the master's entry in the
/// topology is `master_entry`, the address replicas dial (a replguard link, or the master).
pub fn cluster(
    master: &Kvrocks,
    replica: Option<&Kvrocks>,
    master_entry: SocketAddr,
    version: u64,
) {
    let mid = "m".repeat(40);
    let rid = "r".repeat(40);
    let mut topology = format!(
        "{mid} {} {} master - 0-16383",
        master_entry.ip(),
        master_entry.port()
    );
    let mut nodes = vec![(master, &mid)];
    if let Some(r) = replica {
        topology.push_str(&format!("\n{rid} 127.0.0.1 {} slave {mid}", r.port));
        nodes.push((r, &rid));
    }
    for (node, id) in nodes {
        let mut c = node.client();
        assert_eq!(c.text(&["CLUSTERX", "SETNODEID", id]), "OK");
        assert_eq!(
            c.text(&["CLUSTERX", "SETNODES", &topology, &version.to_string()]),
            "OK"
        );
    }
}

/// `SLAVEOF host port` (standalone).
pub fn slaveof(replica: &Kvrocks, master: SocketAddr) {
    let mut c = replica.client();
    assert_eq!(
        c.text(&[
            "SLAVEOF",
            &master.ip().to_string(),
            &master.port().to_string()
        ]),
        "OK"
    );
}

#[derive(Default)]
struct Gate {
    paused: bool,
    idle: bool,
}

/// Writes unique keys `w<N>` = `N` to a master at a steady rate, 20 pipelined at a time, until
/// stopped; pausable. Each key is one WAL batch, written once, so a lost batch shows as a
/// missing key.
pub struct KeyWriter {
    gate: Arc<(Mutex<Gate>, Condvar)>,
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
    handle: Option<JoinHandle<()>>,
}

impl KeyWriter {
    pub fn start(port: u16) -> KeyWriter {
        Self::start_at(port, 0)
    }

    /// A writer whose first key is `w<first>` (a writer on a new master continues the keys of
    /// the one before).
    pub fn start_at(port: u16, first: u64) -> KeyWriter {
        let gate = Arc::new((Mutex::new(Gate::default()), Condvar::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicU64::new(first));
        let (g, s, w) = (gate.clone(), stop.clone(), written.clone());
        let handle = std::thread::spawn(move || {
            let mut c = Client::connect(port).unwrap();
            let mut n = first;
            while !s.load(Ordering::Relaxed) {
                {
                    let (m, cv) = &*g;
                    let mut st = m.lock().unwrap();
                    while st.paused && !s.load(Ordering::Relaxed) {
                        st.idle = true;
                        cv.notify_all();
                        st = cv.wait_timeout(st, Duration::from_millis(50)).unwrap().0;
                    }
                    // Stopped while paused: not one write more.
                    if s.load(Ordering::Relaxed) {
                        break;
                    }
                    st.idle = false;
                }
                let mut wire = Vec::new();
                for i in n..n + 20 {
                    let (k, v) = (format!("w{i}"), i.to_string());
                    wire.extend(replguard::wire::resp::encode_command(&["SET", &k, &v]));
                }
                c.sock.write_all(&wire).unwrap();
                for _ in 0..20 {
                    let r = c.read();
                    assert!(matches!(r, Reply::SimpleString(_)), "SET answered {r:?}");
                }
                n += 20;
                w.store(n, Ordering::Relaxed);
                // A steady rate a replica keeps up with (about 4,000 keys a second at most).
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        KeyWriter {
            gate,
            stop,
            written,
            handle: Some(handle),
        }
    }

    /// Waits until the writer stands still; returns one past the last key it wrote (how many
    /// keys were written, for a writer that started at `w0`).
    pub fn pause(&self) -> u64 {
        let (m, cv) = &*self.gate;
        let mut st = m.lock().unwrap();
        st.paused = true;
        let start = std::time::Instant::now();
        while !st.idle {
            let finished = self.handle.as_ref().is_none_or(JoinHandle::is_finished);
            assert!(
                !finished && start.elapsed() < Duration::from_secs(60),
                "the writer did not pause (it stopped, or a write hung)"
            );
            st = cv.wait_timeout(st, Duration::from_millis(50)).unwrap().0;
        }
        self.written.load(Ordering::Relaxed)
    }

    pub fn resume(&self) {
        let (m, cv) = &*self.gate;
        m.lock().unwrap().paused = false;
        cv.notify_all();
    }

    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }
}

impl Drop for KeyWriter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.gate.1.notify_all();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Sets `key` on the master and waits until the replica has it: everything written before it
/// that will ever reach the replica has then reached it.
pub fn settle(master: &Kvrocks, replica: &Kvrocks, key: &str, limit: Duration) {
    assert_eq!(master.client().text(&["SET", key, "1"]), "OK");
    let start = std::time::Instant::now();
    loop {
        let got = Client::connect(replica.port).ok().and_then(|mut c| {
            c.send(&["GET", key]);
            c.try_read().ok()
        });
        if matches!(got, Some(Reply::BulkString(_))) {
            return;
        }
        if start.elapsed() > limit {
            let log = replica.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            panic!(
                "the replica did not receive {key} in {limit:?}\nreplica INFO replication: {:?}\nmaster INFO replication: {:?}\nreplica log (last lines, newest first):\n{}",
                Client::connect(replica.port).ok().map(|mut c| c.info("replication")),
                master.info("replication"),
                tail.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The keys `w0..w<n>` the replica does not hold with the value the writer gave them (GETs
/// pipelined: a cluster node refuses a multi-key MGET across slots).
pub fn wrong_keys(replica: &Kvrocks, n: u64) -> Vec<String> {
    let mut c = replica.client();
    let mut wrong = Vec::new();
    let mut i = 0;
    while i < n {
        let end = (i + 500).min(n);
        let mut wire = Vec::new();
        for k in i..end {
            wire.extend(replguard::wire::resp::encode_command(&[
                "GET",
                &format!("w{k}"),
            ]));
        }
        c.sock.write_all(&wire).unwrap();
        for k in i..end {
            let v = c.read();
            let ok = matches!(&v, Reply::BulkString(b) if b == k.to_string().as_bytes());
            if !ok {
                wrong.push(format!("w{k}={v:?}"));
            }
        }
        i = end;
    }
    wrong
}
