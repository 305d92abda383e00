//! A Sentinel deployment for the tests: three data nodes (A master, B and C replicas), three
//! real Sentinels (quorum 2) and, through replguard, one in-process replguard with one link per
//! node in one group; directly, no replguard at all.
//!
//! Through replguard every node announces its own link (`replica-announce-ip/port`), the
//! replicas dial the master's link, and the Sentinels monitor the master's link: every address
//! a Sentinel or a replica learns is a link's. Directly, the nodes announce themselves and the
//! Sentinels monitor A.

use super::*;
use serde_json::Value;

/// The master set's name in Sentinel, and the links' group in replguard.
pub const MASTER_NAME: &str = "sentinel-g";
/// Sentinel's `down-after-milliseconds`: long enough that a node starved of CPU for a moment on
/// a loaded test machine is not taken for dead (a second failover the test did not make).
pub const DOWN_AFTER_MS: u64 = 3000;
/// Sentinel's `failover-timeout`.
pub const FAILOVER_TIMEOUT_MS: u64 = 3000;
/// How often a Sentinel reads a replica's `INFO` while nothing fails (sentinel.c's
/// `SENTINEL_INFO_PERIOD`): a replica pointing at another address than the master's is seen,
/// and re-pointed once `failover-timeout` has passed, only at such a read.
pub const SENTINEL_INFO_PERIOD_MS: u64 = 10_000;
/// C's `replica-priority`: worse than A's and B's (100), so Sentinel promotes B when A dies and
/// A when B dies, never C.
pub const C_PRIORITY: &str = "200";

/// The node names, in order.
pub const NAMES: [&str; 3] = ["A", "B", "C"];

/// One data node: its server, and the address the others know it by (its link's port through
/// replguard, its own port directly).
pub struct Node {
    pub name: &'static str,
    pub server: Server,
    pub known_port: u16,
}

impl Node {
    /// `INFO replication` for polling; `None` also while the node is down.
    pub fn try_repl(&self) -> Option<HashMap<String, String>> {
        self.server.child.as_ref()?;
        self.server.try_info("replication")
    }

    /// `(sync_full, sync_partial_ok, sync_partial_err)` from `INFO stats`; zeros while the node
    /// is down (a killed node's counters are gone with it).
    pub fn syncs(&self) -> [u64; 3] {
        if self.server.child.is_none() {
            return [0; 3];
        }
        let info = wait_for(Duration::from_secs(10), "INFO stats", || {
            self.server.try_info("stats")
        });
        ["sync_full", "sync_partial_ok", "sync_partial_err"]
            .map(|k| info.get(k).and_then(|v| v.parse().ok()).unwrap_or(0))
    }

    /// kill -9; the process is reaped, its port and directory kept for [`Server::start_again`].
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.server.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The port the node replicates from (`master_port`), when it is a replica.
    pub fn try_master_port(&self) -> Option<u16> {
        let r = self.try_repl()?;
        (r.get("role")? == "slave")
            .then(|| r.get("master_port")?.parse().ok())
            .flatten()
    }
}

/// A server on a port chosen beforehand (the links and the announcements name it first).
fn server_on(kind: Kind, port: u16, args: &[String]) -> Server {
    let dir = tempfile::Builder::new()
        .prefix("replguard-test-")
        .tempdir()
        .unwrap();
    let mut s = Server {
        kind,
        port,
        dir,
        child: None,
        extra: args.to_vec(),
    };
    s.spawn();
    s
}

/// An in-process replguard with several links, started from YAML.
pub struct LinkSet {
    pub admin_port: u16,
    pub state_dir: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
    running: Option<Running>,
}

impl LinkSet {
    /// One link per `(name, listen port, master port)`, each in `group` when given.
    pub fn start(kind: Kind, links: &[(&str, u16, u16)], group: Option<&str>) -> LinkSet {
        init_logging();
        let state_dir = tempfile::tempdir().unwrap();
        let admin_port = free_port();
        let token_file = state_dir.path().join("admin.token");
        std::fs::write(&token_file, format!("{ADMIN_TOKEN}\n")).unwrap();
        let mut yaml = format!(
            "state_dir: {}\nadmin:\n  listen: 127.0.0.1:{admin_port}\n  token_file: {}\nlinks:\n",
            state_dir.path().display(),
            token_file.display(),
        );
        for (name, listen, master) in links {
            yaml.push_str(&format!(
                "  - name: {name}\n    listen: 127.0.0.1:{listen}\n    master: 127.0.0.1:{master}\n    flavor: {}\n    guard: enforce\n    lineage_poll_ms: 200\n",
                kind.flavor()
            ));
            if let Some(g) = group {
                yaml.push_str(&format!("    group: {g}\n"));
            }
        }
        let cfg = Config::from_yaml(&yaml, "sentinel.yaml").expect("test config is valid");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let running = wait_for(Duration::from_secs(10), "replguard to bind", || {
            rt.block_on(server::start(cfg.clone())).ok()
        });
        LinkSet {
            admin_port,
            state_dir,
            rt,
            running: Some(running),
        }
    }

    /// `/status` for polling.
    pub fn try_status(&self) -> Option<Value> {
        serde_json::from_str(&try_http(self.admin_port, "GET", "/status")?).ok()
    }

    /// One link's object in `/status`, for polling.
    pub fn try_link(&self, name: &str) -> Option<Value> {
        self.try_status()?["links"]
            .as_array()?
            .iter()
            .find(|l| l["name"] == name)
            .cloned()
    }

    /// One link's object in `/status`.
    pub fn link(&self, name: &str) -> Value {
        wait_for(Duration::from_secs(10), "/status", || self.try_link(name))
    }

    /// The link's last verdict for the replica announced on `port`.
    pub fn last_verdict(&self, link: &str, port: u16) -> Option<Value> {
        let l = self.link(link);
        l["ledger"]["last_verdicts"]
            .as_object()?
            .iter()
            .find(|(k, _)| k.ends_with(&format!(":{port}")))
            .map(|(_, v)| v.clone())
    }

    /// The sum over every link of a `/status` counter (`full_syncs`, `partial_syncs`).
    pub fn total(&self, counter: &str) -> u64 {
        let st = wait_for(Duration::from_secs(10), "/status", || self.try_status());
        st["links"]
            .as_array()
            .map(|ls| ls.iter().filter_map(|l| l[counter].as_u64()).sum())
            .unwrap_or(0)
    }
}

impl Drop for LinkSet {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            self.rt.block_on(r.shutdown());
        }
    }
}

/// A real Sentinel (`<server> <config> --sentinel`) with its own writable config file; killed
/// when dropped.
pub struct Sentinel {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Child,
}

impl Sentinel {
    /// A Sentinel on `port` monitoring the master at `master_port` (quorum 2).
    pub fn start(kind: Kind, port: u16, master_port: u16) -> Sentinel {
        Self::start_with(kind, port, master_port, DOWN_AFTER_MS, FAILOVER_TIMEOUT_MS)
    }

    /// [`Sentinel::start`] with another `down-after-milliseconds` and `failover-timeout`.
    pub fn start_with(
        kind: Kind,
        port: u16,
        master_port: u16,
        down_after_ms: u64,
        failover_timeout_ms: u64,
    ) -> Sentinel {
        let dir = tempfile::Builder::new()
            .prefix("replguard-sentinel-")
            .tempdir()
            .unwrap();
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {dir}\nlogfile {dir}/sentinel.log\n\
                 sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n\
                 sentinel down-after-milliseconds {MASTER_NAME} {down_after_ms}\n\
                 sentinel failover-timeout {MASTER_NAME} {failover_timeout_ms}\n\
                 sentinel parallel-syncs {MASTER_NAME} 1\n",
                dir = dir.path().display(),
            ),
        )
        .unwrap();
        let child = Command::new(kind.binary())
            .arg(&conf)
            .arg("--sentinel")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sentinel starts");
        let s = Sentinel { port, dir, child };
        wait_for(
            Duration::from_secs(20),
            "the Sentinel to answer PING",
            || {
                let mut c = Client::connect_within(port, Duration::from_secs(2)).ok()?;
                matches!(c.try_cmd(&["PING"]).ok()?, OwnedFrame::SimpleString(_)).then_some(())
            },
        );
        s
    }

    fn try_cmd(&self, args: &[&str]) -> Option<Reply> {
        Client::connect_within(self.port, Duration::from_secs(2))
            .ok()?
            .try_cmd(args)
            .ok()
    }

    /// The master's port as this Sentinel answers `SENTINEL GET-MASTER-ADDR-BY-NAME`.
    pub fn try_master_port(&self) -> Option<u16> {
        let r = strings(self.try_cmd(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME])?)?;
        r.get(1)?.parse().ok()
    }

    /// `SENTINEL MASTER <name>` as a map.
    pub fn try_master(&self) -> Option<HashMap<String, String>> {
        pairs(self.try_cmd(&["SENTINEL", "MASTER", MASTER_NAME])?)
    }

    /// `SENTINEL REPLICAS <name>`, each as a map.
    pub fn try_replicas(&self) -> Option<Vec<HashMap<String, String>>> {
        match self.try_cmd(&["SENTINEL", "REPLICAS", MASTER_NAME])? {
            OwnedFrame::Array(items) => items.into_iter().map(pairs).collect(),
            _ => None,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sentinel.log")).unwrap_or_default()
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An array reply of strings.
fn strings(r: Reply) -> Option<Vec<String>> {
    match r {
        OwnedFrame::Array(items) => items
            .into_iter()
            .map(|f| match f {
                OwnedFrame::BulkString(b) | OwnedFrame::SimpleString(b) => {
                    Some(String::from_utf8_lossy(&b).into_owned())
                }
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

/// A flat array of field, value, field, value... as a map.
fn pairs(r: Reply) -> Option<HashMap<String, String>> {
    let v = strings(r)?;
    Some(
        v.chunks(2)
            .filter(|p| p.len() == 2)
            .map(|p| (p[0].clone(), p[1].clone()))
            .collect(),
    )
}

/// The whole deployment. The Sentinels are dropped first, so none acts on a node being torn
/// down.
pub struct Deployment {
    pub sentinels: Vec<Sentinel>,
    /// When the Sentinels were started.
    pub sentinels_started: Instant,
    pub links: Option<LinkSet>,
    pub nodes: Vec<Node>,
    pub kind: Kind,
}

impl Deployment {
    /// A master with `keys` keys and two replicas of it, through one replguard link per node
    /// (`links` names the links' group, or no group), or directly (`via_replguard` false);
    /// the Sentinels are started once both replicas are in sync.
    pub fn start(kind: Kind, via_replguard: bool, group: Option<&str>, keys: u64) -> Deployment {
        let ports: [u16; 9] = free_ports();
        let (node_ports, rest) = ports.split_at(3);
        let (link_ports, sentinel_ports) = rest.split_at(3);
        let known: Vec<u16> = if via_replguard {
            link_ports.to_vec()
        } else {
            node_ports.to_vec()
        };
        let links = via_replguard.then(|| {
            let spec: Vec<(&str, u16, u16)> = ["la", "lb", "lc"]
                .iter()
                .zip(link_ports.iter().zip(node_ports))
                .map(|(n, (l, p))| (*n, *l, *p))
                .collect();
            LinkSet::start(kind, &spec, group)
        });
        let mut nodes = Vec::new();
        for (i, name) in NAMES.iter().enumerate() {
            let mut args: Vec<String> = [
                "--repl-diskless-sync",
                "yes",
                "--repl-diskless-sync-delay",
                "0",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            if via_replguard {
                args.extend([
                    "--replica-announce-ip".into(),
                    "127.0.0.1".into(),
                    "--replica-announce-port".into(),
                    known[i].to_string(),
                ]);
            }
            if i > 0 {
                args.extend([
                    "--replicaof".into(),
                    "127.0.0.1".into(),
                    known[0].to_string(),
                ]);
            }
            if i == 2 {
                args.extend(["--replica-priority".into(), C_PRIORITY.into()]);
            }
            let server = server_on(kind, node_ports[i], &args);
            if i == 0 && keys > 0 {
                assert_eq!(
                    server
                        .client()
                        .text(&["DEBUG", "POPULATE", &keys.to_string()]),
                    "OK"
                );
            }
            nodes.push(Node {
                name,
                server,
                known_port: known[i],
            });
        }
        for r in &nodes[1..] {
            wait_converged(&nodes[0].server, &r.server, Duration::from_secs(30));
        }
        let sentinels_started = Instant::now();
        let sentinels = sentinel_ports
            .iter()
            .map(|p| Sentinel::start(kind, *p, known[0]))
            .collect();
        Deployment {
            sentinels,
            sentinels_started,
            links,
            nodes,
            kind,
        }
    }

    /// The node the others know by `port`.
    pub fn by_known_port(&self, port: u16) -> usize {
        self.nodes
            .iter()
            .position(|n| n.known_port == port)
            .unwrap_or_else(|| panic!("no node is known by port {port}"))
    }

    /// The master port every Sentinel answers, once they all answer the same.
    pub fn try_agreed_master(&self) -> Option<u16> {
        let first = self.sentinels[0].try_master_port()?;
        self.sentinels[1..]
            .iter()
            .all(|s| s.try_master_port() == Some(first))
            .then_some(first)
    }

    /// Every node's `[sync_full, sync_partial_ok, sync_partial_err]`.
    pub fn syncs(&self) -> Vec<[u64; 3]> {
        self.nodes.iter().map(Node::syncs).collect()
    }
}

/// How many full and partial syncs the nodes served between two [`Deployment::syncs`] readings.
/// A node restarted in between counts from zero.
pub fn served(before: &[[u64; 3]], after: &[[u64; 3]]) -> [u64; 3] {
    let mut out = [0; 3];
    for (b, a) in before.iter().zip(after) {
        for k in 0..3 {
            out[k] += if a[k] >= b[k] { a[k] - b[k] } else { a[k] };
        }
    }
    out
}

/// What a [`SentinelWriter`] saw acknowledged.
#[derive(Debug, Default, Clone)]
pub struct Acks {
    /// Acknowledged SETs by the port they were written to.
    pub by_port: HashMap<u16, u64>,
    /// The last acknowledged SET: (port, key, value).
    pub last: Option<(u16, String, String)>,
}

/// A bounded writer that writes wherever the Sentinels say the master is: SETs in small
/// pipelined batches to the address `SENTINEL GET-MASTER-ADDR-BY-NAME` answers, asking again
/// after any error (a refused or closed connection, `-READONLY`).
pub struct SentinelWriter {
    stop: Arc<AtomicBool>,
    acks: Arc<Mutex<Acks>>,
    handle: Option<JoinHandle<()>>,
}

impl SentinelWriter {
    /// Writes keys `prefix:N` until stopped, `max` SETs written or `limit` passed.
    pub fn start(sentinel_ports: Vec<u16>, prefix: &str, max: u64, limit: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(Mutex::new(Acks::default()));
        let (s, a, prefix) = (stop.clone(), acks.clone(), prefix.to_string());
        let handle = std::thread::spawn(move || {
            let start = Instant::now();
            let mut n = 0u64;
            let mut conn: Option<(u16, Client)> = None;
            let mut ask = 0usize;
            while !s.load(Ordering::Relaxed) && n < max && start.elapsed() < limit {
                let Some((port, c)) = conn.as_mut() else {
                    ask += 1;
                    let sp = sentinel_ports[ask % sentinel_ports.len()];
                    let port = Client::connect_within(sp, Duration::from_secs(1))
                        .ok()
                        .and_then(|mut c| {
                            c.try_cmd(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME])
                                .ok()
                        })
                        .and_then(strings)
                        .and_then(|v| v.get(1)?.parse::<u16>().ok());
                    conn = port.and_then(|p| {
                        Some((p, Client::connect_within(p, Duration::from_secs(2)).ok()?))
                    });
                    if conn.is_none() {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    continue;
                };
                let batch: Vec<(String, String)> = (0..10)
                    .map(|i| {
                        (
                            format!("{prefix}:{}", (n + i) % 20_000),
                            format!("v{}", n + i),
                        )
                    })
                    .collect();
                n += 10;
                let mut wire = Vec::new();
                for (k, v) in &batch {
                    wire.extend(replguard::wire::resp::encode_command(&["SET", k, v]));
                }
                let mut failed = c.sock.write_all(&wire).is_err();
                for (k, v) in &batch {
                    if failed {
                        break;
                    }
                    match c.try_read() {
                        Ok(OwnedFrame::SimpleString(ok)) if ok == b"OK" => {
                            let mut a = a.lock().unwrap();
                            *a.by_port.entry(*port).or_default() += 1;
                            a.last = Some((*port, k.clone(), v.clone()));
                        }
                        _ => failed = true,
                    }
                }
                if failed {
                    conn = None;
                } else {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        });
        SentinelWriter {
            stop,
            acks,
            handle: Some(handle),
        }
    }

    /// What was acknowledged so far.
    pub fn acks(&self) -> Acks {
        self.acks.lock().unwrap().clone()
    }

    /// Stops the writer and returns what was acknowledged.
    pub fn finish(mut self) -> Acks {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.join().expect("writer thread");
        }
        self.acks()
    }
}

impl Drop for SentinelWriter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
