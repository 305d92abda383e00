//! SIGHUP on the real binary, with real Redis 7.0 masters and replicas: each field that changes
//! without a restart is in force after the reload (links added and removed included) and named
//! in the reload's log line; each that needs a restart is named in a WARN and keeps its old
//! value; a file with problems changes nothing.

use crate::common::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

/// The lines that end a reload, one per SIGHUP.
const RELOAD_ENDS: [&str; 3] = [
    "configuration reloaded",
    "configuration re-read: nothing changed",
    "configuration not reloaded",
];

/// One link of a test configuration: its name, listen port, master port and further fields
/// (`, field: value` entries of a flow map).
#[derive(Clone)]
struct L {
    name: &'static str,
    port: u16,
    master: u16,
    extra: String,
}

fn l(name: &'static str, port: u16, master: u16, extra: &str) -> L {
    L {
        name,
        port,
        master,
        extra: extra.to_string(),
    }
}

/// A configuration file with these links, `state_dir` beside it.
fn yaml(dir: &Path, admin: u16, links: &[L]) -> String {
    let mut y = format!(
        "state_dir: {}/state\nadmin: {{ listen: 127.0.0.1:{admin}, token_env: REPLGUARD_TEST_ADMIN_TOKEN }}\nlinks:\n",
        dir.display()
    );
    for k in links {
        y.push_str(&format!(
            "  - {{ name: {}, listen: 127.0.0.1:{}, master: 127.0.0.1:{}, flavor: redis, guard: enforce{} }}\n",
            k.name, k.port, k.master, k.extra
        ));
    }
    y
}

/// `replguard run` on a configuration file the test rewrites and reloads.
struct Rg {
    dir: tempfile::TempDir,
    path: PathBuf,
    admin: u16,
    proc: Replguard,
}

impl Rg {
    fn start(links: &[L]) -> Rg {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rg.yaml");
        let admin = free_port();
        std::fs::write(&path, yaml(dir.path(), admin, links)).unwrap();
        let proc = Replguard::run(&path, &dir.path().join("rg.log"), |c| {
            c.env("REPLGUARD_TEST_ADMIN_TOKEN", ADMIN_TOKEN);
        });
        let rg = Rg {
            dir,
            path,
            admin,
            proc,
        };
        wait_for(LONG, "replguard up", || rg.try_status());
        rg
    }

    /// Writes `text` as the file, sends SIGHUP and waits for the reload's last line, which it
    /// returns.
    fn hup_with(&self, text: &str) -> String {
        let ends = |log: &str| -> Vec<String> {
            log.lines()
                .filter(|l| RELOAD_ENDS.iter().any(|e| l.contains(e)))
                .map(str::to_string)
                .collect()
        };
        let before = ends(&self.proc.log()).len();
        std::fs::write(&self.path, text).unwrap();
        self.proc.signal("-HUP");
        wait_for(LONG, "the reload to end", || {
            ends(&self.proc.log()).get(before).cloned()
        })
    }

    /// Rewrites the file with these links and reloads it; the reload's last line.
    fn reload(&self, links: &[L]) -> String {
        self.hup_with(&yaml(self.dir.path(), self.admin, links))
    }

    fn try_status(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&try_http(self.admin, "GET", "/status")?).ok()
    }

    fn status(&self) -> serde_json::Value {
        wait_for(LONG, "/status", || self.try_status())
    }

    /// The link named `name` in /status.
    fn link(&self, name: &str) -> Option<serde_json::Value> {
        self.status()["links"]
            .as_array()?
            .iter()
            .find(|k| k["name"] == name)
            .cloned()
    }

    fn link_names(&self) -> Vec<String> {
        self.status()["links"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["name"].as_str().unwrap().to_string())
            .collect()
    }

    /// The last verdict of link `name` for the replica listening on `port`.
    fn verdict(&self, name: &str, port: u16) -> Option<serde_json::Value> {
        let link = self.try_status()?["links"]
            .as_array()?
            .iter()
            .find(|k| k["name"] == name)?
            .clone();
        link["ledger"]["last_verdicts"]
            .as_object()?
            .iter()
            .find(|(k, _)| k.ends_with(&format!(":{port}")))
            .map(|(_, v)| v.clone())
    }

    fn log(&self) -> String {
        self.proc.log()
    }
}

/// The error a connection to `port` is answered with at once, if any.
/// What a connection that shows itself a replica (`REPLCONF listening-port`) is answered, when
/// it is an error.
fn refusal(port: u16) -> Option<String> {
    let mut c = Client::connect_within(port, Duration::from_secs(5)).ok()?;
    match c.try_cmd(&["REPLCONF", "listening-port", "6399"]).ok()? {
        Reply::Error(e) => Some(e.to_string()),
        _ => None,
    }
}

/// A replica synced straight from `master`, then pointed at the link on `link_port`: the
/// link's ledger has never seen it. Returns it once the master has answered its PSYNC through
/// the link.
fn moved_replica(master: &Server, link_port: u16) -> Server {
    let r = replica_of(Kind::Redis, master.port, &[]);
    wait_converged(master, &r, LONG);
    let p = link_port.to_string();
    assert_eq!(r.client().text(&["REPLICAOF", "127.0.0.1", &p]), "OK");
    r
}

#[test]
fn max_sessions_is_resized_without_closing_sessions() {
    let m = Server::start(Kind::Redis, &[]);
    assert_eq!(m.client().text(&["SET", "k", "1"]), "OK");
    let [port] = free_ports();
    let rg = Rg::start(&[l("main", port, m.port, ", max_sessions: 1")]);
    let r1 = replica_of(Kind::Redis, port, &[]);
    wait_converged(&m, &r1, LONG);
    let r2 = replica_of(Kind::Redis, port, &[]);
    wait_for(LONG, "the second replica refused", || {
        (rg.link("main")?["sessions_refused"].as_u64()? >= 1).then_some(())
    });
    assert_eq!(
        r2.client().info("replication")["master_link_status"],
        "down"
    );

    let line = rg.reload(&[l("main", port, m.port, ", max_sessions: 2")]);
    assert!(
        line.contains("changed=\"links.main.max_sessions\""),
        "{line}"
    );
    wait_converged(&m, &r2, LONG);
    let st = rg.link("main").unwrap();
    assert_eq!(st["max_sessions"], 2, "{st}");
    assert_eq!(st["config"]["max_sessions"], 2, "{st}");

    // Lowered below the sessions open: they stay, a new connection is refused.
    rg.reload(&[l("main", port, m.port, ", max_sessions: 1")]);
    let msg = wait_for(LONG, "a refusal", || refusal(port));
    assert!(
        msg.contains("at its limit of 1 replica sessions (max_sessions)"),
        "{msg}"
    );
    // The two replicas' sessions stay; the refused connection goes.
    wait_for(LONG, "the refused connection to end", || {
        (rg.link("main")?["sessions_active"] == 2).then_some(())
    });
    assert_eq!(m.client().text(&["SET", "k", "2"]), "OK");
    wait_converged(&m, &r1, LONG);
    wait_converged(&m, &r2, LONG);
}

#[test]
fn timeouts_apply_to_new_sessions_and_show_in_status() {
    // A master that accepts and never answers: a handshake step waits out its timeout.
    let mute = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mute_port = mute.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in mute.incoming().flatten() {
            held.push(s);
        }
    });
    let [port] = free_ports();
    let slow = ", timeouts: { handshake_step_ms: 600000 }";
    let rg = Rg::start(&[l("main", port, mute_port, slow)]);
    // Its reads give up after 2 s: long enough to see it outlive a 300 ms step.
    let mut old = Client::connect_within(port, Duration::from_secs(2)).unwrap();
    old.send(&["PING"]);
    wait_for(LONG, "the first session", || {
        (rg.link("main")?["sessions_active"] == 1).then_some(())
    });

    let fast = ", timeouts: { handshake_step_ms: 300, connect_ms: 700 }, lineage_poll_ms: 250";
    let text = yaml(rg.dir.path(), rg.admin, &[l("main", port, mute_port, fast)])
        .replace("links:\n", "shutdown_grace_ms: 1234\nlinks:\n");
    let line = rg.hup_with(&text);
    assert!(
        line.contains(
            "changed=\"shutdown_grace_ms, links.main.timeouts.connect_ms, links.main.timeouts.handshake_step_ms, links.main.lineage_poll_ms\""
        ),
        "{line}"
    );
    let cfg = rg.link("main").unwrap()["config"].clone();
    assert_eq!(cfg["timeouts"]["handshake_step_ms"], 300, "{cfg}");
    assert_eq!(cfg["timeouts"]["connect_ms"], 700, "{cfg}");
    assert_eq!(cfg["timeouts"]["sync_idle_ms"], 60000, "{cfg}");
    assert_eq!(cfg["lineage_poll_ms"], 250, "{cfg}");

    // A new session waits 300 ms for the master's answer, then ends.
    let mut new = Client::connect_within(port, Duration::from_secs(30)).unwrap();
    new.send(&["PING"]);
    let err = new.try_read().unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof, "{err}");
    wait_for(LONG, "the timeout in the log", || {
        rg.log()
            .lines()
            .any(|l| l.contains("session ended") && l.contains("master sent nothing for"))
            .then_some(())
    });
    // The session opened before the reload keeps the timeout it started with.
    assert_eq!(rg.link("main").unwrap()["sessions_active"], 1);
    let still = old.try_read().unwrap_err();
    assert!(
        matches!(
            still.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "the old session is still waiting: {still}"
    );
}

#[test]
fn unknown_replica_full_to_pass_changes_the_next_verdict() {
    let m = Server::start(Kind::Redis, &[]);
    assert_eq!(m.client().text(&["DEBUG", "POPULATE", "100"]), "OK");
    let [port] = free_ports();
    let rg = Rg::start(&[l("main", port, m.port, "")]);
    let r1 = moved_replica(&m, port);
    let v = wait_for(LONG, "the first verdict", || rg.verdict("main", r1.port));
    assert_eq!(v["reason_code"], "unknown_replica", "{v}");
    assert_eq!(v["action"], "forced_full", "{v}");

    let line = rg.reload(&[l("main", port, m.port, ", unknown_replica: pass")]);
    assert!(
        line.contains("changed=\"links.main.unknown_replica\""),
        "{line}"
    );
    let r2 = moved_replica(&m, port);
    let v = wait_for(LONG, "the second verdict", || rg.verdict("main", r2.port));
    assert_eq!(v["verdict"], "pass", "{v}");
    assert_eq!(v["answer"], "+CONTINUE", "{v}");
    let st = rg.link("main").unwrap();
    assert_eq!(st["config"]["unknown_replica"], "pass", "{st}");
    assert_eq!(st["ledger"]["unknown_replica"], "pass", "{st}");
}

#[test]
fn guard_enforce_to_observe_forwards_what_it_forced() {
    let m = Server::start(Kind::Redis, &[]);
    assert_eq!(m.client().text(&["DEBUG", "POPULATE", "100"]), "OK");
    let [port] = free_ports();
    let rg = Rg::start(&[l("main", port, m.port, "")]);
    let r1 = moved_replica(&m, port);
    let v = wait_for(LONG, "the first verdict", || rg.verdict("main", r1.port));
    assert_eq!(v["action"], "forced_full", "{v}");

    let text = yaml(rg.dir.path(), rg.admin, &[l("main", port, m.port, "")])
        .replace("guard: enforce", "guard: observe");
    let line = rg.hup_with(&text);
    assert!(line.contains("changed=\"links.main.guard\""), "{line}");
    let r2 = moved_replica(&m, port);
    let v = wait_for(LONG, "the second verdict", || rg.verdict("main", r2.port));
    assert_eq!(v["verdict"], "force_full", "{v}");
    assert_eq!(v["action"], "forwarded", "{v}");
    assert_eq!(v["answer"], "+CONTINUE", "{v}");
    let st = rg.link("main").unwrap();
    assert_eq!(st["guard"], "observe", "{st}");
    assert_eq!(st["config"]["guard"], "observe", "{st}");
}

#[test]
fn allow_empty_master_set_back_to_false_holds_again() {
    // No persistence: restarted, the master is empty with a new replication id.
    let mut m = Server::start(
        Kind::Redis,
        &[
            "--repl-diskless-sync",
            "yes",
            "--repl-diskless-sync-delay",
            "0",
        ],
    );
    assert_eq!(m.client().text(&["DEBUG", "POPULATE", "100"]), "OK");
    let [port] = free_ports();
    let rg = Rg::start(&[l("main", port, m.port, ", allow_empty_master: true")]);
    let r = replica_of(Kind::Redis, port, &[]);
    wait_converged(&m, &r, LONG);

    let line = rg.reload(&[l("main", port, m.port, "")]);
    assert!(
        line.contains("changed=\"links.main.allow_empty_master\""),
        "{line}"
    );
    let st = rg.link("main").unwrap();
    assert_eq!(st["config"]["allow_empty_master"], false, "{st}");
    assert_eq!(st["ledger"]["allow_empty_master"], false, "{st}");

    m.stop(false);
    m.start_again();
    let v = wait_for(LONG, "the hold", || {
        rg.verdict("main", r.port)
            .filter(|v| v["verdict"] == "hold")
    });
    assert_eq!(v["reason_code"], "empty_master", "{v}");
    assert_eq!(
        r.client().int(&["DBSIZE"]),
        100,
        "the replica kept its data"
    );

    // And back to true: the held replica syncs from the empty master.
    let line = rg.reload(&[l("main", port, m.port, ", allow_empty_master: true")]);
    assert!(
        line.contains("changed=\"links.main.allow_empty_master\""),
        "{line}"
    );
    wait_converged(&m, &r, LONG);
    assert_eq!(r.client().int(&["DBSIZE"]), 0);
}

#[test]
fn a_link_added_to_the_file_starts_and_relays() {
    let m1 = Server::start(Kind::Redis, &[]);
    let m2 = Server::start(Kind::Redis, &[]);
    assert_eq!(m2.client().text(&["SET", "on-m2", "1"]), "OK");
    let [pa, pb] = free_ports();
    let a = l("a", pa, m1.port, "");
    let rg = Rg::start(std::slice::from_ref(&a));
    assert!(refusal(pb).is_none() && Client::connect(pb).is_err());

    let line = rg.reload(&[a, l("b", pb, m2.port, ", max_sessions: 3")]);
    assert!(line.contains("changed=\"links.b (added)\""), "{line}");
    // The added link's port is one of replguard's own: never a re-point target.
    let post = format!(
        "POST /links/a/master?addr=127.0.0.1:{pb} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\r\n"
    );
    let (head, body) = http_exchange(rg.admin, post.as_bytes()).unwrap();
    assert!(
        head.starts_with("HTTP/1.1 400") && body.contains("listener of link b"),
        "{head}\n{body}"
    );
    assert_eq!(rg.link_names(), ["a", "b"]);
    let r = replica_of(Kind::Redis, pb, &[]);
    wait_converged(&m2, &r, LONG);
    assert_eq!(r.client().text(&["GET", "on-m2"]), "1");
    let b = rg.link("b").unwrap();
    assert_eq!(b["config"]["max_sessions"], 3, "{b}");
    assert_eq!(b["sessions_active"], 1, "{b}");
    let metrics = http(rg.admin, "GET", "/metrics");
    assert!(
        metrics.contains("replguard_sessions_active{link=\"b\"} 1"),
        "{metrics}"
    );
}

#[test]
fn a_link_removed_from_the_file_stops_and_saves_its_ledger() {
    let m1 = Server::start(Kind::Redis, &[]);
    // No pings: the master's offset stays where the last write left it.
    let m2 = Server::start(Kind::Redis, &["--repl-ping-replica-period", "3600"]);
    let [pa, pb] = free_ports();
    let a = l("a", pa, m1.port, "");
    let rg = Rg::start(&[a.clone(), l("b", pb, m2.port, "")]);
    let r = replica_of(Kind::Redis, pb, &[]);
    wait_converged(&m2, &r, LONG);
    assert_eq!(m2.client().text(&["SET", "k", "1"]), "OK");
    wait_converged(&m2, &r, LONG);

    let line = rg.reload(std::slice::from_ref(&a));
    assert!(line.contains("changed=\"links.b (removed)\""), "{line}");
    assert_eq!(rg.link_names(), ["a"]);
    let metrics = http(rg.admin, "GET", "/metrics");
    assert!(!metrics.contains("link=\"b\""), "{metrics}");
    assert!(metrics.contains("link=\"a\""), "{metrics}");
    // Its port is closed, its session ended: the replica lost its link.
    assert!(Client::connect(pb).is_err(), "the port of b still accepts");
    wait_for(LONG, "the replica's link down", || {
        (r.try_info("replication")?.get("master_link_status")? == "down").then_some(())
    });
    assert!(
        rg.log().contains("session{link=b") && rg.log().contains("link removed"),
        "{}",
        rg.log()
    );
    // Its ledger was saved as a clean stop leaves it: the record closed at its offset.
    let ledger: serde_json::Value =
        serde_json::from_slice(&std::fs::read(rg.dir.path().join("state/b.ledger.json")).unwrap())
            .unwrap();
    let rec = ledger["replicas"]
        .as_object()
        .unwrap()
        .iter()
        .find(|(k, _)| k.ends_with(&format!(":{}", r.port)))
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("{ledger}"));
    assert_eq!(rec["open"], false, "{rec}");
    let offset = info_u64(&mut m2.client(), "replication", "master_repl_offset");
    assert_eq!(rec["offset"], offset, "{rec}");
    // Link a goes on.
    let ra = replica_of(Kind::Redis, pa, &[]);
    wait_converged(&m1, &ra, LONG);
}

#[test]
fn fields_that_need_a_restart_are_named_and_keep_their_value() {
    let m = Server::start(Kind::Redis, &[]);
    let [port, other, admin2] = free_ports();
    let rg = Rg::start(&[l("main", port, m.port, "")]);
    let text = yaml(rg.dir.path(), rg.admin, &[l("main", other, m.port, "")])
        .replace("flavor: redis", "flavor: valkey")
        .replace(
            &format!("listen: 127.0.0.1:{},", rg.admin),
            &format!("listen: 127.0.0.1:{admin2},"),
        )
        .replace("/state\n", "/state2\n");
    let line = rg.hup_with(&text);
    assert!(line.contains("nothing changed"), "{line}");
    let log = rg.log();
    for field in [
        "state_dir",
        "admin.listen",
        "links.main.listen",
        "links.main.flavor",
    ] {
        let warn = log
            .lines()
            .find(|l| l.contains(&format!("reload: {field} changes only with a restart")))
            .unwrap_or_else(|| panic!("no WARN for {field}:\n{log}"));
        assert!(warn.contains("WARN"), "{warn}");
        assert!(line.contains(field), "{field} not in {line}");
    }
    let st = rg.link("main").unwrap();
    let listen = format!("127.0.0.1:{port}");
    assert_eq!(st["listen"], listen.as_str(), "{st}");
    assert_eq!(st["config"]["listen"], listen.as_str(), "{st}");
    assert_eq!(st["config"]["flavor"], "redis", "{st}");
    assert!(Client::connect(other).is_err(), "the new port is not bound");
    assert!(try_http(admin2, "GET", "/status").is_none());
    let r = replica_of(Kind::Redis, port, &[]);
    wait_converged(&m, &r, LONG);
}

#[test]
fn a_file_with_problems_changes_nothing_and_names_them() {
    let m = Server::start(Kind::Redis, &[]);
    let [port] = free_ports();
    let rg = Rg::start(&[l("main", port, m.port, "")]);
    let before = rg.link("main").unwrap()["config"].clone();
    // A change that would apply, next to problems that keep the whole file out.
    let text = yaml(
        rg.dir.path(),
        rg.admin,
        &[l(
            "main",
            port,
            m.port,
            ", max_sessions: 0, unknown_replica: pass, auth: { password_file: missing.pw }, max_sesions: 3",
        )],
    );
    let line = rg.hup_with(&text);
    assert!(line.contains("nothing changed"), "{line}");
    let log = rg.log();
    for path in [
        "links[0].max_sessions",
        "links[0].auth",
        "links[0].max_sesions",
    ] {
        assert!(
            log.lines().any(|l| l.contains("ERROR")
                && l.contains("configuration problem")
                && l.contains(&format!("path={path}"))),
            "{path} not logged:\n{log}"
        );
    }
    assert_eq!(rg.link("main").unwrap()["config"], before);
    let r = replica_of(Kind::Redis, port, &[]);
    wait_converged(&m, &r, LONG);
}

#[test]
fn a_reload_with_nothing_new_says_so() {
    let m = Server::start(Kind::Redis, &[]);
    let [port] = free_ports();
    let links = [l("main", port, m.port, "")];
    let rg = Rg::start(&links);
    let line = rg.reload(&links);
    assert!(
        line.contains("configuration re-read: nothing changed"),
        "{line}"
    );
    assert!(!line.contains("not_applied"), "{line}");
}

#[test]
fn a_rotated_password_is_read_again() {
    // The link's password serves replguard's own reads of the master (INFO): with the old one
    // they fail and the ledger learns nothing of the master's lineage.
    let m = Server::start(Kind::Redis, &["--requirepass", "two"]);
    let mut mc = m.client();
    assert_eq!(mc.text(&["AUTH", "two"]), "OK");
    assert_eq!(mc.text(&["SET", "k", "1"]), "OK");
    let master_id = mc.info("replication")["master_replid"].clone();
    let [port] = free_ports();
    let links = [l(
        "main",
        port,
        m.port,
        ", lineage_poll_ms: 100, auth: { password_file: pw }",
    )];
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pw"), "one\n").unwrap();
    // The password file sits beside the configuration file.
    let rg = {
        let path = dir.path().join("rg.yaml");
        let admin = free_port();
        std::fs::write(&path, yaml(dir.path(), admin, &links)).unwrap();
        let proc = Replguard::run(&path, &dir.path().join("rg.log"), |c| {
            c.env("REPLGUARD_TEST_ADMIN_TOKEN", ADMIN_TOKEN);
        });
        let rg = Rg {
            dir,
            path,
            admin,
            proc,
        };
        wait_for(LONG, "replguard up", || rg.try_status());
        rg
    };
    let knows_master = |rg: &Rg| {
        rg.link("main")
            .is_some_and(|l| l["ledger"]["lineage"].to_string().contains(&master_id))
    };
    assert!(!knows_master(&rg), "INFO read with a wrong password");
    std::fs::write(rg.dir.path().join("pw"), "two\n").unwrap();
    let line = rg.reload(&links);
    assert!(
        line.contains("changed=\"links.main.auth (password)\""),
        "{line}"
    );
    wait_for(LONG, "the master's INFO read with the new password", || {
        knows_master(&rg).then_some(())
    });
    // A replica authenticates with its own masterauth, never with the link's password.
    let r = replica_of(Kind::Redis, port, &["--masterauth", "two"]);
    wait_for(LONG, "the replica synced", || {
        let info = r.try_info("replication")?;
        (info.get("master_link_status")? == "up").then_some(())
    });
    assert_eq!(r.client().text(&["GET", "k"]), "1");
}
