//! A Kvrocks cluster in tests: nodes in cluster mode whose topology is pushed the way a
//! controller pushes it (`CLUSTERX SETNODEID`, then `CLUSTERX SETNODES "<topology>" <version>`
//! to every node), each node fronted by its own `flavor: kvrocks` link of ONE in-process
//! replguard, and key-by-key dumps of a node's data.
//!
//! The address a node has in the topology is either its link's (replicas dial their master's
//! link) or its own (the same cluster without replguard).

use super::kvrocks_real::{KeyWriter, Kvrocks, NodeCfg};
use super::{free_ports, init_logging, try_http, wait_for, Client, Reply, ADMIN_TOKEN};
use replguard::config::Config;
use replguard::server::{self, Running};
use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// One replguard with one Kvrocks link per node, `n0`, `n1`, ... in node order.
pub struct Links {
    pub admin_port: u16,
    pub state_dir: tempfile::TempDir,
    /// Each link's listen address, in node order.
    pub addrs: Vec<SocketAddr>,
    /// The links are in a group (only then do they read their nodes).
    pub grouped: bool,
    rt: tokio::runtime::Runtime,
    running: Option<Running>,
}

impl Links {
    /// A link in front of each of `masters` (node ports), `group: <group>` on every link when
    /// given; `link_extra` is YAML added to every link (indented 4).
    pub fn start(masters: &[u16], group: Option<&str>, link_extra: &str) -> Links {
        init_logging();
        let state_dir = tempfile::tempdir().unwrap();
        // Ports held together so none is handed out twice.
        let ports: [u16; 8] = free_ports();
        assert!(masters.len() < ports.len());
        let admin_port = ports[0];
        let token_file = state_dir.path().join("admin.token");
        std::fs::write(&token_file, format!("{ADMIN_TOKEN}\n")).unwrap();
        let mut yaml = format!(
            "state_dir: {}\nadmin:\n  listen: 127.0.0.1:{admin_port}\n  token_file: {}\nlinks:\n",
            state_dir.path().display(),
            token_file.display(),
        );
        let mut addrs = Vec::new();
        for (i, m) in masters.iter().enumerate() {
            let port = ports[i + 1];
            yaml.push_str(&format!(
                "  - name: n{i}\n    listen: 127.0.0.1:{port}\n    master: 127.0.0.1:{m}\n    flavor: kvrocks\n    guard: enforce\n"
            ));
            if let Some(g) = group {
                yaml.push_str(&format!("    group: {g}\n"));
            }
            yaml.push_str(link_extra);
            addrs.push(SocketAddr::from(([127, 0, 0, 1], port)));
        }
        let cfg = Config::from_yaml(&yaml, "test.yaml").expect("test config is valid");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let running = wait_for(Duration::from_secs(10), "replguard to bind", || {
            rt.block_on(server::start(cfg.clone())).ok()
        });
        assert_eq!(running.link_addrs, addrs);
        Links {
            admin_port,
            state_dir,
            addrs,
            grouped: group.is_some(),
            rt,
            running: Some(running),
        }
    }

    pub fn status(&self) -> serde_json::Value {
        let body = wait_for(Duration::from_secs(10), "GET /status", || {
            try_http(self.admin_port, "GET", "/status")
        });
        serde_json::from_str(&body).expect("status is JSON")
    }

    /// Every non-zero `replguard_verdicts_total` sample: (link, verdict, reason, action, count).
    pub fn verdicts(&self) -> Vec<(String, String, String, String, u64)> {
        let text = wait_for(Duration::from_secs(10), "GET /metrics", || {
            try_http(self.admin_port, "GET", "/metrics")
        });
        let label = |l: &str, name: &str| -> String {
            let at = l.find(&format!("{name}=\"")).map(|i| i + name.len() + 2);
            at.and_then(|i| l[i..].split('"').next())
                .unwrap_or_default()
                .to_string()
        };
        text.lines()
            .filter(|l| l.starts_with("replguard_verdicts_total{"))
            .filter_map(|l| {
                let n: f64 = l.rsplit(' ').next()?.parse().ok()?;
                (n > 0.0).then(|| {
                    (
                        label(l, "link"),
                        label(l, "verdict"),
                        label(l, "reason"),
                        label(l, "action"),
                        n as u64,
                    )
                })
            })
            .collect()
    }

    /// The forced full syncs, as `link:reason` (one entry per count).
    pub fn forced_full(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (link, verdict, reason, _, n) in self.verdicts() {
            if verdict == "force_full" {
                out.extend((0..n).map(|_| format!("{link}:{reason}")));
            }
        }
        out
    }
}

impl Drop for Links {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            self.rt.block_on(r.shutdown());
        }
    }
}

/// A node's 40-character id in the topology.
pub fn node_id(i: usize) -> String {
    format!("{:040x}", 0xC1u64 << 8 | i as u64)
}

/// Nodes in cluster mode, optionally behind one replguard link each, and the topology version
/// pushed last.
pub struct Cluster {
    pub nodes: Vec<Kvrocks>,
    pub links: Option<Links>,
    pub version: u64,
    pub master: usize,
}

impl Cluster {
    /// `n` nodes in cluster mode with `use-rsid-psync` = `rsid`. `guard`: `None`, no replguard;
    /// `Some(group)`, ONE replguard with a link in front of each node, `group: <g>` on every
    /// link when `group` is `Some(g)`.
    pub fn start(bin: &Path, n: usize, rsid: bool, guard: Option<Option<&str>>) -> Cluster {
        let cfg = NodeCfg {
            cluster: true,
            rsid,
        };
        let nodes: Vec<Kvrocks> = (0..n).map(|_| Kvrocks::start(bin, cfg, &[])).collect();
        let links = guard.map(|g| {
            let ports: Vec<u16> = nodes.iter().map(|k| k.port).collect();
            Links::start(&ports, g, "")
        });
        Cluster {
            nodes,
            links,
            version: 0,
            master: 0,
        }
    }

    /// The address node `i` has in the topology: its link's, or its own without replguard.
    pub fn entry(&self, i: usize) -> SocketAddr {
        self.links
            .as_ref()
            .map_or(self.nodes[i].addr(), |l| l.addrs[i])
    }

    /// The topology text where `master` holds every slot and `members` other than it are its
    /// replicas.
    pub fn topology(&self, master: usize, members: &[usize]) -> String {
        let mut lines = Vec::new();
        let m = self.entry(master);
        lines.push(format!(
            "{} {} {} master - 0-16383",
            node_id(master),
            m.ip(),
            m.port()
        ));
        for &i in members.iter().filter(|&&i| i != master) {
            let a = self.entry(i);
            lines.push(format!(
                "{} {} {} slave {}",
                node_id(i),
                a.ip(),
                a.port(),
                node_id(master)
            ));
        }
        lines.join("\n")
    }

    /// Pushes the next topology version (`master` and its replicas `members`) to the nodes in
    /// `order`, as a controller does: `CLUSTERX SETNODEID` then `CLUSTERX SETNODES`.
    pub fn push(&mut self, master: usize, members: &[usize], order: &[usize]) {
        self.push_version(self.version + 1, master, members, order);
    }

    /// Pushes topology `version` to the nodes in `order` (the nodes a push left out take it
    /// later, as from a controller's next round).
    pub fn push_version(
        &mut self,
        version: u64,
        master: usize,
        members: &[usize],
        order: &[usize],
    ) {
        let topology = self.topology(master, members);
        for &i in order {
            let mut c = self.nodes[i].client();
            assert_eq!(c.text(&["CLUSTERX", "SETNODEID", &node_id(i)]), "OK");
            assert_eq!(
                c.text(&["CLUSTERX", "SETNODES", &topology, &version.to_string()]),
                "OK",
                "node {i} took topology version {version}"
            );
        }
        self.version = version;
        self.master = master;
    }

    /// The node's latest sequence (`master_repl_offset` in `INFO replication`), or `None`
    /// when it could not be read.
    pub fn seq(&self, i: usize) -> Option<u64> {
        let mut c = Client::connect_within(self.nodes[i].port, Duration::from_secs(5)).ok()?;
        c.try_info("replication")?
            .get("master_repl_offset")?
            .parse()
            .ok()
    }

    /// Waits until every node of `replicas` reports its link to the master up and holds the
    /// master's latest sequence.
    pub fn wait_caught_up(&self, replicas: &[usize], limit: Duration) -> u64 {
        let m = self.master;
        wait_for(limit, "the replicas to reach the master's sequence", || {
            let target = self.seq(m)?;
            for &r in replicas.iter().filter(|&&r| r != m) {
                let mut c =
                    Client::connect_within(self.nodes[r].port, Duration::from_secs(5)).ok()?;
                let info = c.try_info("replication")?;
                let up = info.get("master_link_status").map(String::as_str) == Some("up");
                let seq: u64 = info.get("master_repl_offset")?.parse().ok()?;
                if !up || seq != target {
                    return None;
                }
            }
            Some(target)
        })
    }

    /// Waits until node `i`'s link has read it (its keeper reads every `lineage_poll_ms`) as
    /// a replica holding sequence `seq` while another link fed it: the point up to which the
    /// group vouches for its history once it is promoted. A no-op without grouped links.
    pub fn wait_read_holding(&self, i: usize, seq: u64, limit: Duration) {
        let Some(links) = self.links.as_ref().filter(|l| l.grouped) else {
            return;
        };
        let link = format!("n{i}");
        wait_for(
            limit,
            "the node's link to read it holding the sequence",
            || {
                let st = links.status();
                let node = &st["links"][i]["ledger"]["kvrocks"]["nodes"][&link];
                (node["master"] == false && node["fed"]["held"] == seq).then_some(())
            },
        );
    }

    /// Waits until the links of `replicas` have each read their node as a replica while
    /// another link fed it (the keeper reads every `lineage_poll_ms`): a node that was a
    /// replica for less than that is never vouched for once promoted. A no-op without grouped
    /// links.
    pub fn wait_read_fed(&self, replicas: &[usize], limit: Duration) {
        let Some(links) = self.links.as_ref().filter(|l| l.grouped) else {
            return;
        };
        wait_for(
            limit,
            "the links to read their nodes as fed replicas",
            || {
                let st = links.status();
                replicas
                    .iter()
                    .filter(|&&i| i != self.master)
                    .all(|&i| {
                        let node = &st["links"][i]["ledger"]["kvrocks"]["nodes"][&format!("n{i}")];
                        node["master"] == false && node["fed"].is_object()
                    })
                    .then_some(())
            },
        );
    }

    /// A counter from a node's `INFO stats`.
    pub fn stat(&self, i: usize, name: &str) -> u64 {
        self.nodes[i].stat(name)
    }

    /// The `PSYNC` requests node `i` logged as a master since its start: "next sequence: N
    /// replication id: X, and local sequence: L", one entry per request.
    pub fn psyncs_served(&self, i: usize) -> Vec<String> {
        // `kvrocks.INFO` links to the current run's INFO log.
        std::fs::read_to_string(self.nodes[i].dir.path().join("kvrocks.INFO"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let at = l.find("asks for synchronization with ")?;
                let port = l
                    .split("listening port: ")
                    .nth(1)
                    .and_then(|s| s.split(',').next())
                    .unwrap_or("?");
                Some(format!("from :{port} {}", &l[at + 30..]))
            })
            .collect()
    }

    /// A writer on the current master, continuing the keys at `first`.
    pub fn writer(&self, first: u64) -> KeyWriter {
        KeyWriter::start_at(self.nodes[self.master].port, first)
    }
}

/// Every key of a node with its value (all keys are strings here), by `SCAN` and pipelined
/// `GET`s.
pub fn dump(node: &Kvrocks) -> BTreeMap<String, String> {
    let mut c = node.client();
    let mut keys = Vec::new();
    let mut cursor = "0".to_string();
    for _ in 0..100_000 {
        let Reply::Array(parts) = c.cmd(&["SCAN", &cursor, "COUNT", "1000"]) else {
            panic!("SCAN answered something else");
        };
        let [Reply::BulkString(next), Reply::Array(batch)] = &parts[..] else {
            panic!("SCAN answered {parts:?}");
        };
        for k in batch {
            if let Reply::BulkString(k) = k {
                keys.push(String::from_utf8(k.clone()).unwrap());
            }
        }
        cursor = String::from_utf8(next.clone()).unwrap();
        if cursor == "0" {
            break;
        }
    }
    let mut out = BTreeMap::new();
    for chunk in keys.chunks(500) {
        let mut wire = Vec::new();
        for k in chunk {
            wire.extend(replguard::wire::resp::encode_command(&["GET", k]));
        }
        c.sock.write_all(&wire).unwrap();
        for k in chunk {
            match c.read() {
                Reply::BulkString(v) => {
                    out.insert(k.clone(), String::from_utf8(v).unwrap());
                }
                other => panic!("GET {k} answered {other:?}"),
            }
        }
    }
    out
}

/// The keys on which two dumps differ, `key: a | b` (at most `limit` of them).
pub fn differences(
    a: &BTreeMap<String, String>,
    b: &BTreeMap<String, String>,
    limit: usize,
) -> Vec<String> {
    let mut out = Vec::new();
    for k in a.keys().chain(b.keys().filter(|k| !a.contains_key(*k))) {
        let (x, y) = (a.get(k), b.get(k));
        if x != y {
            out.push(format!("{k}: {x:?} | {y:?}"));
            if out.len() >= limit {
                break;
            }
        }
    }
    out
}
