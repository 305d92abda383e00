//! The `replguard` binary: `check` reports every problem with its path; `run` relays a real
//! replica and shuts down cleanly on SIGTERM, logging each session's books.

mod common;

use common::*;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn replguard() -> Command {
    Command::new(env!("CARGO_BIN_EXE_replguard"))
}

/// `replguard check --config <path>`: (exit code, stdout, stderr).
fn check(path: impl AsRef<std::ffi::OsStr>) -> (Option<i32>, String, String) {
    let out = replguard()
        .args(["check", "--config"])
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_accepts_the_example_config() {
    let (code, out, err) = check("config/replguard.yaml");
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, "config/replguard.yaml: valid (2 links)\n");
}

#[test]
fn check_lists_every_problem_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.yaml");
    std::fs::write(
        &f,
        "state_dir: ./s\nadmin: { listen: 127.0.0.1:9121 }\nlinks:\n  - { name: a, listen: 127.0.0.1:9121, master: 'db:6379', flavor: redis, guard: enforce, max_sessions: 0 }\n",
    )
    .unwrap();
    let (code, _, err) = check(&f);
    assert_eq!(code, Some(1));
    for want in [
        "3 problems",
        "links[0].listen: 127.0.0.1:9121 is already used by admin.listen",
        "links[0].master: \"db:6379\" is not an IP address with a port",
        "links[0].max_sessions: must be at least 1",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }

    std::fs::write(
        &f,
        "state_dir: ./s\nadmin: { listen: 127.0.0.1:9121 }\nlinks: []\nextra: 1\n",
    )
    .unwrap();
    let (code, _, err) = check(&f);
    assert_eq!(code, Some(1));
    assert!(err.contains("unknown field `extra`"), "{err}");

    let (code, _, err) = check("/nonexistent/replguard.yaml");
    assert_eq!(code, Some(1));
    assert!(err.contains("cannot read"), "{err}");
}

#[test]
fn run_relays_and_stops_gracefully_on_sigterm() {
    let m = Server::start(Kind::Redis, &["--repl-diskless-sync", "no"]);
    assert_eq!(m.client().text(&["DEBUG", "POPULATE", "1000"]), "OK");
    let dir = tempfile::tempdir().unwrap();
    let bin = BinConfig::new(dir.path(), m.port, Kind::Redis);
    let (port, cfg) = (bin.port, &bin.path);
    let mut child = replguard()
        .args(["run", "--config"])
        .arg(cfg)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let r = replica_of(Kind::Redis, port, &[]);
    wait_converged(&m, &r, Duration::from_secs(60));
    assert!(dir.path().join("state").is_dir());

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "replguard did not stop"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(log.contains("SIGTERM received"), "{log}");
    assert!(log.contains("session ended"), "{log}");
    assert!(log.contains("reason=replguard is shutting down"), "{log}");
    assert!(log.contains("stopped"), "{log}");
    // The replica noticed and is trying to reconnect on its own.
    wait_for(
        Duration::from_secs(30),
        "the replica's link to go down",
        || (r.client().info("replication")["master_link_status"] == "down").then_some(()),
    );
}

#[test]
fn sighup_repoints_a_link_and_keeps_running_on_a_bad_file() {
    let m1 = Server::start(Kind::Redis, &[]);
    let m2 = Server::start(Kind::Redis, &[]);
    let dir = tempfile::tempdir().unwrap();
    let bin = BinConfig::new(dir.path(), m1.port, Kind::Redis);
    let (port, admin, cfg) = (bin.port, bin.admin, &bin.path);
    let log = dir.path().join("rg.log");
    let mut child = replguard()
        .args(["run", "--config"])
        .arg(cfg)
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .unwrap();
    let master_of = || -> Option<String> {
        let body = std::panic::catch_unwind(|| http(admin, "GET", "/status")).ok()?;
        let st: serde_json::Value = serde_json::from_str(&body).ok()?;
        st["links"][0]["master"].as_str().map(str::to_string)
    };
    let hup = || {
        assert!(Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .unwrap()
            .success())
    };
    let want1 = format!("127.0.0.1:{}", m1.port);
    wait_for(Duration::from_secs(20), "replguard up", || {
        (master_of()? == want1).then_some(())
    });

    std::fs::write(cfg, "links: [").unwrap();
    hup();
    wait_for(
        Duration::from_secs(20),
        "the reload error in the log",
        || {
            std::fs::read_to_string(&log)
                .ok()?
                .contains("configuration not reloaded")
                .then_some(())
        },
    );
    assert_eq!(
        master_of().as_deref(),
        Some(want1.as_str()),
        "still running on the old master"
    );

    bin.write(m2.port, Kind::Redis);
    hup();
    let want2 = format!("127.0.0.1:{}", m2.port);
    wait_for(Duration::from_secs(20), "the link re-pointed", || {
        (master_of()? == want2).then_some(())
    });
    let mut c = Client::connect(port).unwrap();
    assert_eq!(c.text(&["SET", "via-link", "1"]), "OK");
    assert_eq!(m2.client().text(&["GET", "via-link"]), "1");
    child.kill().unwrap();
    child.wait().unwrap();
}
