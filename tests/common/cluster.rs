//! A real Redis Cluster for the tests: six nodes (three masters, three replicas) on free loopback
//! ports, built with `CLUSTER MEET` / `ADDSLOTSRANGE` / `REPLICATE`. Either every node announces a
//! replguard link as its address (cluster and replica address alike; the cluster bus stays the
//! node's own port) and one in-process replguard holds the six links in one group, or every node
//! announces its own port. A writer routes keys to the three shards by hash tag and follows MOVED.

use super::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// How clients and replicas reach a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// Through its replguard link: the node announces the link's port.
    Links,
    /// Directly: the node announces its own port.
    Direct,
}

impl Via {
    pub fn name(self) -> &'static str {
        match self {
            Via::Links => "replguard",
            Via::Direct => "direct",
        }
    }
}

/// The group the six links belong to.
pub const GROUP: &str = "cluster-g";

/// `cluster-node-timeout`: how long a master may be unreachable before it is failed over.
pub const NODE_TIMEOUT_MS: u64 = 2000;

/// The slot range of each shard, as `ADDSLOTSRANGE` gives them to nodes 0, 1 and 2.
pub const SHARD_SLOTS: [(u16, u16); 3] = [(0, 5460), (5461, 10922), (10923, 16383)];

/// Keys per shard the writer cycles over.
const KEYS_PER_SHARD: u64 = 2000;

/// Waits of the cluster's own doing (gossip, a failover, a sync of a small dataset).
pub const SETTLE: Duration = Duration::from_secs(30);

/// One node. Shard `s` is nodes `s` (its first master) and `s + 3` (its first replica).
pub struct Node {
    pub server: Server,
    /// The port the node announces as its own (`cluster-announce-port`,
    /// `replica-announce-port`): its link's, or its own.
    pub addr: u16,
    /// The node's cluster bus port (`cluster-port`, announced as it is).
    pub bus: u16,
    /// The node id (`CLUSTER MYID`).
    pub id: String,
}

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone)]
pub struct NodeLine {
    pub id: String,
    pub port: u16,
    pub bus: u16,
    pub flags: String,
    pub master_id: String,
    pub slots: Vec<String>,
}

/// Parses `CLUSTER NODES`.
pub fn parse_nodes(text: &str) -> Vec<NodeLine> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // 127.0.0.1:7000@17000[,hostname]
            let addr = f[1].split(',').next().unwrap();
            let (hostport, bus) = addr.split_once('@').unwrap();
            let port = hostport.rsplit_once(':').unwrap().1;
            NodeLine {
                id: f[0].to_string(),
                port: port.parse().unwrap(),
                bus: bus.parse().unwrap(),
                flags: f[2].to_string(),
                master_id: f[3].to_string(),
                slots: f[8..].iter().map(|s| s.to_string()).collect(),
            }
        })
        .collect()
}

/// Replication counters of one node's `INFO stats`: the syncs it served.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Syncs {
    pub full: u64,
    pub partial_ok: u64,
    pub partial_err: u64,
}

impl Syncs {
    fn of(info: &HashMap<String, String>) -> Option<Syncs> {
        let n = |k: &str| info.get(k)?.parse().ok();
        Some(Syncs {
            full: n("sync_full")?,
            partial_ok: n("sync_partial_ok")?,
            partial_err: n("sync_partial_err")?,
        })
    }

    fn sum(all: &[Syncs]) -> Syncs {
        all.iter().fold(Syncs::default(), |a, s| Syncs {
            full: a.full + s.full,
            partial_ok: a.partial_ok + s.partial_ok,
            partial_err: a.partial_err + s.partial_err,
        })
    }
}

pub struct Cluster {
    pub via: Via,
    /// The replguard holding the six links (`Via::Links` only). Dropped before the nodes, so its
    /// sessions end with a shutdown and not with nodes going away under them.
    pub guard: Option<Guard>,
    pub nodes: Vec<Node>,
    /// A hash tag per shard: `{tag}` keys hash into that shard's slots.
    pub tags: [String; 3],
}

impl Cluster {
    /// Six nodes, three masters with a replica each, every replica streaming.
    pub fn start(via: Via) -> Cluster {
        let ports: [u16; 18] = free_ports();
        let (own, links, buses) = (&ports[0..6], &ports[6..12], &ports[12..18]);
        let mut nodes = Vec::new();
        for i in 0..6 {
            let addr = match via {
                Via::Links => links[i],
                Via::Direct => own[i],
            };
            let mut args: Vec<String> = [
                "--cluster-enabled",
                "yes",
                "--cluster-node-timeout",
                &NODE_TIMEOUT_MS.to_string(),
                "--cluster-port",
                &buses[i].to_string(),
                "--cluster-announce-ip",
                "127.0.0.1",
                "--cluster-announce-bus-port",
                &buses[i].to_string(),
                "--replica-announce-ip",
                "127.0.0.1",
                // Syncs start at once instead of waiting 5 s for more replicas.
                "--repl-diskless-sync-delay",
                "0",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            if via == Via::Links {
                for opt in ["--cluster-announce-port", "--replica-announce-port"] {
                    args.extend([opt.to_string(), addr.to_string()]);
                }
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let server = Server::start_at(Kind::Redis, own[i], &args);
            let id = server.client().text(&["CLUSTER", "MYID"]);
            nodes.push(Node {
                server,
                addr,
                bus: buses[i],
                id,
            });
        }
        let guard = (via == Via::Links).then(|| {
            let pairs: Vec<(u16, u16)> = (0..6).map(|i| (links[i], own[i])).collect();
            Guard::start(&pairs, Some(GROUP))
        });

        let mut c0 = nodes[0].server.client();
        for n in &nodes[1..] {
            let (addr, bus) = (n.addr.to_string(), n.bus.to_string());
            assert_eq!(
                c0.text(&["CLUSTER", "MEET", "127.0.0.1", &addr, &bus]),
                "OK"
            );
        }
        for (s, (lo, hi)) in SHARD_SLOTS.iter().enumerate() {
            let (lo, hi) = (lo.to_string(), hi.to_string());
            let mut c = nodes[s].server.client();
            assert_eq!(c.text(&["CLUSTER", "ADDSLOTSRANGE", &lo, &hi]), "OK");
        }
        let mut c = Cluster {
            via,
            nodes,
            guard,
            tags: Default::default(),
        };
        wait_for(
            SETTLE,
            "every node to know the six at their addresses",
            || (0..6).all(|i| c.knows_all(i)).then_some(()),
        );
        for s in 0..3 {
            let id = c.nodes[s].id.clone();
            let mut r = c.nodes[s + 3].server.client();
            assert_eq!(r.text(&["CLUSTER", "REPLICATE", &id]), "OK");
        }
        wait_for(
            SETTLE,
            "the cluster to be ok, each master knowing its replica",
            || {
                let ok = (0..6).all(|i| {
                    c.cluster_info(i)
                        .is_some_and(|ci| ci.get("cluster_state").map(String::as_str) == Some("ok"))
                });
                let known = (0..3).all(|s| {
                    c.nodes_seen_by(s).is_some_and(|lines| {
                        lines
                            .iter()
                            .any(|l| l.id == c.nodes[s + 3].id && l.master_id == c.nodes[s].id)
                    })
                });
                (ok && known).then_some(())
            },
        );
        c.wait_settled();
        c.tags = c.find_tags();
        c
    }

    /// The ports the nodes announce: what clients and replicas dial.
    pub fn addrs(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.addr).collect()
    }

    /// `CLUSTER NODES` as node `i` sees it; `None` when it cannot be read.
    pub fn nodes_seen_by(&self, i: usize) -> Option<Vec<NodeLine>> {
        let mut c = self.nodes[i].server.try_client()?;
        match c.try_cmd(&["CLUSTER", "NODES"]).ok()? {
            Reply::BulkString(b) => Some(parse_nodes(&String::from_utf8_lossy(&b))),
            _ => None,
        }
    }

    /// `CLUSTER INFO` of node `i`; `None` when it cannot be read.
    pub fn cluster_info(&self, i: usize) -> Option<HashMap<String, String>> {
        let mut c = self.nodes[i].server.try_client()?;
        match c.try_cmd(&["CLUSTER", "INFO"]).ok()? {
            Reply::BulkString(b) => Some(parse_info(&String::from_utf8_lossy(&b))),
            _ => None,
        }
    }

    /// Whether node `i` knows all six nodes, past the handshake, at their announced addresses.
    fn knows_all(&self, i: usize) -> bool {
        self.nodes_seen_by(i).is_some_and(|lines| {
            lines.len() == 6
                && self.nodes.iter().all(|n| {
                    lines.iter().any(|l| {
                        l.id == n.id
                            && l.port == n.addr
                            && l.bus == n.bus
                            && !l.flags.contains("handshake")
                            && !l.flags.contains("noaddr")
                    })
                })
        })
    }

    /// A hash tag for each shard (found with `CLUSTER KEYSLOT`).
    fn find_tags(&self) -> [String; 3] {
        let mut c = self.nodes[0].server.client();
        let mut tags: [Option<String>; 3] = Default::default();
        for t in 0..1000 {
            let tag = format!("t{t}");
            let slot = c.int(&["CLUSTER", "KEYSLOT", &format!("{{{tag}}}")]) as u16;
            let s = SHARD_SLOTS
                .iter()
                .position(|(lo, hi)| (*lo..=*hi).contains(&slot))
                .unwrap();
            tags[s].get_or_insert(tag);
            if tags.iter().all(Option::is_some) {
                return tags.map(Option::unwrap);
            }
        }
        panic!("no hash tag for every shard in 1000 tries");
    }

    /// `{tag}:k`, a key of shard `s`.
    pub fn key(&self, s: usize, k: u64) -> String {
        format!("{{{}}}:{k}", self.tags[s])
    }

    /// Shard `s`'s (master, replica) node indexes, from their own `INFO replication`: one is a
    /// master, the other a replica of the master's announced address with its link up. `None`
    /// until then.
    pub fn roles(&self, s: usize) -> Option<(usize, usize)> {
        let role = |i: usize| self.nodes[i].server.try_info("replication");
        let (a, b) = (role(s)?, role(s + 3)?);
        let pick = |m: usize, mi: &HashMap<String, String>, ri: &HashMap<String, String>| {
            let r = if m == s { s + 3 } else { s };
            (mi.get("role")? == "master"
                && ri.get("role")? == "slave"
                && ri.get("master_port")? == &self.nodes[m].addr.to_string()
                && ri.get("master_host")? == "127.0.0.1"
                && ri.get("master_link_status")? == "up")
                .then_some((m, r))
        };
        pick(s, &a, &b).or_else(|| pick(s + 3, &b, &a))
    }

    /// Waits until every shard has its master and a streaming replica that holds the same data
    /// at the same offset (the caller has paused its writes).
    pub fn wait_settled(&self) {
        for s in 0..3 {
            let (m, r) = wait_for(SETTLE, "the shard to have a master and a replica", || {
                self.roles(s)
            });
            wait_converged(&self.nodes[m].server, &self.nodes[r].server, SETTLE);
        }
    }

    /// Every node's served-sync counters; `None` for a node that cannot be read.
    pub fn syncs(&self) -> Vec<Option<Syncs>> {
        self.nodes
            .iter()
            .map(|n| Syncs::of(&n.server.try_info("stats")?))
            .collect()
    }

    /// Kills node `i` with SIGKILL and reaps it.
    pub fn kill9(&mut self, i: usize) {
        let s = &mut self.nodes[i].server;
        s.signal("-KILL");
        // The process is gone: `stop` finds nobody to SHUTDOWN and reaps it.
        s.stop(false);
    }

    /// Starts node `i` again on its ports, directory and configuration (`nodes.conf`).
    pub fn restart(&mut self, i: usize) {
        self.nodes[i].server.start_again();
    }

    /// The keys of shard `s` whose value on its master is older than the last write the writer
    /// saw acknowledged (or missing): acknowledged writes the failover lost.
    pub fn lost_writes(&self, s: usize, books: &WriterBooks) -> u64 {
        let (m, _) = self.roles(s).expect("the shard has a master");
        let mut c = self.nodes[m].server.client();
        let keys: Vec<(u64, u64)> = books.last[s].iter().map(|(k, n)| (*k, *n)).collect();
        let mut lost = 0;
        for chunk in keys.chunks(500) {
            let names: Vec<String> = chunk.iter().map(|(k, _)| self.key(s, *k)).collect();
            let mut args = vec!["MGET"];
            args.extend(names.iter().map(String::as_str));
            let Reply::Array(vals) = c.cmd(&args) else {
                panic!("MGET answered no array");
            };
            for ((_, want), v) in chunk.iter().zip(vals) {
                let have = match v {
                    Reply::BulkString(b) => String::from_utf8_lossy(&b)
                        .strip_prefix('v')
                        .and_then(|n| n.parse::<u64>().ok()),
                    _ => None,
                };
                if have.is_none_or(|h| h < *want) {
                    lost += 1;
                }
            }
        }
        lost
    }

    /// A snapshot of the sync counters, on the nodes and on replguard, to measure a failover.
    pub fn counters(&self) -> Counters {
        Counters {
            nodes: self
                .syncs()
                .into_iter()
                .map(|s| s.expect("every node answers INFO stats"))
                .collect(),
            guard: self.guard.as_ref().map(|g| g.counters()),
        }
    }
}

/// Sync counters at one moment.
#[derive(Debug, Clone)]
pub struct Counters {
    pub nodes: Vec<Syncs>,
    pub guard: Option<GuardCounters>,
}

impl Counters {
    /// What happened since `before`. `restarted` nodes count from zero again.
    pub fn since(&self, before: &Counters, restarted: &[usize]) -> (Vec<Syncs>, GuardCounters) {
        let nodes = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, now)| {
                let was = if restarted.contains(&i) {
                    Syncs::default()
                } else {
                    before.nodes[i]
                };
                Syncs {
                    full: now.full - was.full,
                    partial_ok: now.partial_ok - was.partial_ok,
                    partial_err: now.partial_err - was.partial_err,
                }
            })
            .collect();
        let guard = match (&self.guard, &before.guard) {
            (Some(now), Some(was)) => now.since(was),
            _ => GuardCounters::default(),
        };
        (nodes, guard)
    }
}

/// replguard's sync counters over all links, and its verdicts by `verdict/reason`.
#[derive(Debug, Clone, Default)]
pub struct GuardCounters {
    pub full: u64,
    pub partial: u64,
    pub verdicts: BTreeMap<String, u64>,
}

impl GuardCounters {
    fn since(&self, was: &GuardCounters) -> GuardCounters {
        GuardCounters {
            full: self.full - was.full,
            partial: self.partial - was.partial,
            verdicts: self
                .verdicts
                .iter()
                .map(|(k, v)| (k.clone(), v - was.verdicts.get(k).copied().unwrap_or(0)))
                .filter(|(_, v)| *v > 0)
                .collect(),
        }
    }
}

/// One failover's figures, printed as one line for the comparison table.
pub struct Figures {
    pub via: Via,
    pub failover: &'static str,
    /// Syncs served by the nodes during the failover, summed.
    pub nodes: Syncs,
    pub guard: GuardCounters,
    /// Acknowledged writes of the failed-over shard missing afterwards.
    pub lost: u64,
    pub acked: u64,
    /// From the failover's start to the new master taking writes, and to the old master
    /// streaming as its replica.
    pub promoted_ms: u128,
    pub rejoined_ms: u128,
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verdicts: Vec<String> = self
            .guard
            .verdicts
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        write!(
            f,
            "cluster figures: via={} failover={} node_sync_full={} node_sync_partial_ok={} node_sync_partial_err={} replguard_full={} replguard_partial={} verdicts=[{}] acked_writes={} lost_acked_writes={} promoted_ms={} rejoined_ms={}",
            self.via.name(),
            self.failover,
            self.nodes.full,
            self.nodes.partial_ok,
            self.nodes.partial_err,
            self.guard.full,
            self.guard.partial,
            verdicts.join(","),
            self.acked,
            self.lost,
            self.promoted_ms,
            self.rejoined_ms,
        )
    }
}

impl Figures {
    pub fn new(
        via: Via,
        failover: &'static str,
        delta: (Vec<Syncs>, GuardCounters),
        acked: u64,
        lost: u64,
        promoted_ms: u128,
        rejoined_ms: u128,
    ) -> Figures {
        Figures {
            via,
            failover,
            nodes: Syncs::sum(&delta.0),
            guard: delta.1,
            lost,
            acked,
            promoted_ms,
            rejoined_ms,
        }
    }
}

/// An in-process replguard with one link per node: link `n<i>` listens on the node's announced
/// port and dials the node.
pub struct Guard {
    pub admin_port: u16,
    pub state_dir: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
    running: Option<Running>,
}

impl Guard {
    /// `links` are (listen port, node port) pairs, in node order.
    pub fn start(links: &[(u16, u16)], group: Option<&str>) -> Guard {
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
        for (i, (listen, node)) in links.iter().enumerate() {
            yaml.push_str(&format!(
                "  - name: n{i}\n    listen: 127.0.0.1:{listen}\n    master: 127.0.0.1:{node}\n    flavor: redis\n    guard: enforce\n    lineage_poll_ms: 200\n"
            ));
            if let Some(g) = group {
                yaml.push_str(&format!("    group: {g}\n"));
            }
        }
        let cfg = Config::from_yaml(&yaml, "cluster.yaml").expect("the cluster config is valid");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let running = wait_for(Duration::from_secs(10), "replguard to bind", || {
            rt.block_on(server::start(cfg.clone())).ok()
        });
        Guard {
            admin_port,
            state_dir,
            rt,
            running: Some(running),
        }
    }

    pub fn status(&self) -> Value {
        serde_json::from_str(&http(self.admin_port, "GET", "/status")).expect("status is JSON")
    }

    pub fn try_status(&self) -> Option<Value> {
        serde_json::from_str(&try_http(self.admin_port, "GET", "/status")?).ok()
    }

    /// The streaming session on link `link` of the replica announcing `replica_port`.
    pub fn session(&self, link: usize, replica_port: u16) -> Option<Value> {
        let st = self.try_status()?;
        st["links"][link]["sessions"]
            .as_array()?
            .iter()
            .find(|s| {
                s["replica"] == format!("127.0.0.1:{replica_port}") && s["state"] == "streaming"
            })
            .cloned()
    }

    /// Link `link`'s last verdict on the replica announcing `replica_port`.
    pub fn last_verdict(&self, link: usize, replica_port: u16) -> Option<Value> {
        let st = self.try_status()?;
        st["links"][link]["ledger"]["last_verdicts"]
            .get(format!("127.0.0.1:{replica_port}"))
            .cloned()
    }

    /// Full and partial syncs over all links, and the verdicts counted in /metrics.
    pub fn counters(&self) -> GuardCounters {
        let st = self.status();
        let links = st["links"].as_array().expect("links");
        let sum = |f: &str| links.iter().map(|l| l[f].as_u64().unwrap()).sum();
        let mut verdicts = BTreeMap::new();
        for l in http(self.admin_port, "GET", "/metrics").lines() {
            let Some(labels) = l.strip_prefix("replguard_verdicts_total{") else {
                continue;
            };
            let label = |name: &str| {
                labels
                    .split(&format!("{name}=\""))
                    .nth(1)
                    .and_then(|r| r.split('"').next())
                    .unwrap_or("-")
                    .to_string()
            };
            let n: f64 = l.rsplit(' ').next().unwrap().parse().unwrap();
            *verdicts
                .entry(format!("{}/{}", label("verdict"), label("reason")))
                .or_insert(0) += n as u64;
        }
        GuardCounters {
            full: sum("full_syncs"),
            partial: sum("partial_syncs"),
            verdicts,
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            self.rt.block_on(r.shutdown());
        }
    }
}

/// What the writer saw acknowledged.
#[derive(Debug, Default)]
pub struct WriterBooks {
    /// Per shard: key number -> the sequence number of the last write acknowledged on it.
    pub last: [BTreeMap<u64, u64>; 3],
    /// Per shard: writes acknowledged.
    pub acked: [u64; 3],
    /// The ports MOVED answers sent the writer to.
    pub moved_to: BTreeSet<u16>,
    pub moved: u64,
    /// Error answers other than MOVED (CLUSTERDOWN, TRYAGAIN, ...), and lost connections.
    pub errors: u64,
    pub io_errors: u64,
}

/// A bounded steady writer over the three shards: every few milliseconds a small pipelined
/// batch of SETs per shard, to the address the shard's last MOVED named. A connection that
/// fails moves the shard on to the next announced address, which answers MOVED in turn.
pub struct ClusterWriter {
    stop: Arc<AtomicBool>,
    pub books: Arc<Mutex<WriterBooks>>,
    handle: Option<JoinHandle<()>>,
}

const WRITER_BATCH: u64 = 10;

/// How long the writer waits after a connection to a node failed (a killed node's address),
/// as a client's retry would.
const IO_ERROR_PAUSE: Duration = Duration::from_millis(25);

impl ClusterWriter {
    pub fn start(c: &Cluster, max: u64) -> ClusterWriter {
        let stop = Arc::new(AtomicBool::new(false));
        let books = Arc::new(Mutex::new(WriterBooks::default()));
        let addrs = c.addrs();
        let tags = c.tags.clone();
        let (st, bk) = (stop.clone(), books.clone());
        let handle = std::thread::spawn(move || {
            // Every shard starts at node 0's address and learns the way from MOVED.
            let mut route = [0usize; 3];
            let mut conns: [Option<Client>; 3] = Default::default();
            let mut seq = [0u64; 3];
            let mut total = 0u64;
            while !st.load(Ordering::Relaxed) && total < max {
                for s in 0..3 {
                    if conns[s].is_none() {
                        match Client::connect_within(addrs[route[s]], Duration::from_secs(5)) {
                            Ok(c) => conns[s] = Some(c),
                            Err(_) => {
                                bk.lock().unwrap().io_errors += 1;
                                route[s] = (route[s] + 1) % addrs.len();
                                std::thread::sleep(IO_ERROR_PAUSE);
                                continue;
                            }
                        }
                    }
                    let cl = conns[s].as_mut().unwrap();
                    let first = seq[s];
                    let mut wire = Vec::new();
                    for n in first..first + WRITER_BATCH {
                        let k = format!("{{{}}}:{}", tags[s], n % KEYS_PER_SHARD);
                        let v = format!("v{n}");
                        wire.extend(replguard::wire::resp::encode_command(&["SET", &k, &v]));
                    }
                    seq[s] += WRITER_BATCH;
                    total += WRITER_BATCH;
                    let replies: std::io::Result<Vec<Reply>> = cl
                        .sock
                        .write_all(&wire)
                        .and_then(|_| (0..WRITER_BATCH).map(|_| cl.try_read()).collect());
                    let mut b = bk.lock().unwrap();
                    let Ok(replies) = replies else {
                        b.io_errors += 1;
                        drop(b);
                        conns[s] = None;
                        route[s] = (route[s] + 1) % addrs.len();
                        std::thread::sleep(IO_ERROR_PAUSE);
                        continue;
                    };
                    for (n, r) in (first..).zip(replies) {
                        match r {
                            Reply::SimpleString(_) => {
                                b.last[s].insert(n % KEYS_PER_SHARD, n);
                                b.acked[s] += 1;
                            }
                            Reply::Error(e) if e.starts_with("MOVED ") => {
                                let port: u16 = e
                                    .rsplit(':')
                                    .next()
                                    .and_then(|p| p.parse().ok())
                                    .expect("MOVED names host:port");
                                b.moved += 1;
                                b.moved_to.insert(port);
                                if let Some(i) = addrs.iter().position(|a| *a == port) {
                                    route[s] = i;
                                }
                                conns[s] = None;
                            }
                            _ => b.errors += 1,
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        ClusterWriter {
            stop,
            books,
            handle: Some(handle),
        }
    }

    /// Writes acknowledged on shard `s` so far.
    pub fn acked(&self, s: usize) -> u64 {
        self.books.lock().unwrap().acked[s]
    }

    /// Waits until shard `s` has `more` acknowledged writes than `from`.
    pub fn wait_acked(&self, s: usize, from: u64, more: u64) {
        wait_for(SETTLE, "the writer's writes to land on the shard", || {
            (self.acked(s) >= from + more).then_some(())
        });
    }

    /// Stops the writer and returns its books.
    pub fn finish(mut self) -> WriterBooks {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.join().expect("writer thread");
        }
        std::mem::take(&mut *self.books.lock().unwrap())
    }
}

impl Drop for ClusterWriter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
