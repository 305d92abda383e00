//! The `replguard` binary: `check` reports every problem with its path; `run` relays a real
//! replica and shuts down cleanly on SIGTERM, logging each session's books.

use crate::common::*;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn replguard() -> Command {
    Command::new(env!("CARGO_BIN_EXE_replguard"))
}

/// `GET path` on the admin listener on `port`: the body of a 200 answer, None otherwise.
fn try_get(port: u16, path: &str) -> Option<String> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

/// Waits until the admin listener on `port` answers `/status`; returns it.
fn status_json(port: u16) -> serde_json::Value {
    wait_for(Duration::from_secs(20), "the admin listener", || {
        serde_json::from_str(&try_get(port, "/status")?).ok()
    })
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
        "state_dir: ./s\nadmin: { listen: 127.0.0.1:9121 }\nlinks:\n  - { name: a, listen: 127.0.0.1:9121, master: 'db:0', flavor: redis, guard: enforce, max_sessions: 0 }\n",
    )
    .unwrap();
    let (code, _, err) = check(&f);
    assert_eq!(code, Some(1));
    for want in [
        "3 problems",
        "links[0].listen: 127.0.0.1:9121 is already used by admin.listen",
        "links[0].master: \"db:0\" is not a master address: port 0 cannot be dialled",
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

/// The problems `check` printed: the lines under the "N problems" header.
fn listed(err: &str) -> Vec<&str> {
    err.lines().skip(1).map(str::trim).collect()
}

#[test]
fn check_lists_unknown_missing_and_semantic_problems_in_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("typos.yaml");
    std::fs::write(
        &f,
        "state_dir: ./s
admin: { listen: 127.0.0.1:9121 }
links:
  - name: main
    listen: 127.0.0.1:7000
    master: 127.0.0.1:6379
    flavour: redis
    guard: enforce
    max_session: 10
  - { name: b, listen: 127.0.0.1:9121, master: 127.0.0.1:6379, flavor: redis, guard: enforce }
",
    )
    .unwrap();
    let (code, out, err) = check(&f);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        err.starts_with(&format!("{}: 4 problems\n", f.display())),
        "{err}"
    );
    assert_eq!(
        listed(&err),
        [
            "links[0].flavor: missing (required)",
            "links[0].flavour: unknown field `flavour` (did you mean `flavor`?)",
            "links[0].max_session: unknown field `max_session` (did you mean `max_sessions`?)",
            "links[1].listen: 127.0.0.1:9121 is already used by admin.listen",
        ]
    );

    let f = dir.path().join("missing.yaml");
    std::fs::write(
        &f,
        "admin: { listen: 127.0.0.1:9121 }\nlinks:\n  - { name: main, listen: 127.0.0.1:7000 }\n",
    )
    .unwrap();
    let (code, out, err) = check(&f);
    assert_eq!(code, Some(1), "{out}{err}");
    assert_eq!(
        listed(&err),
        [
            "state_dir: missing (required)",
            "links[0].master: missing (required)",
            "links[0].flavor: missing (required)",
            "links[0].guard: missing (required)",
        ]
    );

    std::fs::write(&f, "state_dir: s\nlinks: [\n").unwrap();
    let (code, _, err) = check(&f);
    assert_eq!(code, Some(1));
    assert_eq!(listed(&err).len(), 1, "{err}");
    assert!(
        err.contains("(yaml): ") && err.contains("at line 3 column 1"),
        "{err}"
    );
}

#[test]
fn check_lists_every_overlap_self_dial_and_cycle_in_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("loops.yaml");
    std::fs::write(
        &f,
        "state_dir: ./s
admin: { listen: '0.0.0.0:9121' }
links:
  - { name: a, listen: '0.0.0.0:7001', master: '127.0.0.1:7001', flavor: redis, guard: enforce }
  - { name: b, listen: '127.0.0.1:7002', master: '127.0.0.1:7003', flavor: redis, guard: enforce }
  - { name: c, listen: '[::]:7003', master: '127.0.0.1:7002', flavor: redis, guard: enforce }
  - { name: d, listen: '127.0.0.1:7003', master: '127.0.0.1:9121', flavor: redis, guard: enforce }
  - { name: e, listen: '127.0.0.1:7002', master: '10.0.0.9:6379', flavor: redis, guard: enforce }
",
    )
    .unwrap();
    let (code, out, err) = check(&f);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        err.starts_with(&format!("{}: 6 problems\n", f.display())),
        "{err}"
    );
    assert_eq!(
        listed(&err),
        [
            "links[0].master: is the link's own listen address; replguard would dial itself",
            "links[1].master: 127.0.0.1:7003 is links[2].listen ([::]:7003, link c): the links form a cycle b -> c -> b; replicas would be passed round it and never reach a master",
            "links[2].master: 127.0.0.1:7002 is links[1].listen (127.0.0.1:7002, link b): the links form a cycle c -> b -> c; replicas would be passed round it and never reach a master",
            "links[3].listen: 127.0.0.1:7003 overlaps links[2].listen ([::]:7003): a wildcard address takes its port on every local address of its family, so only one of them can be bound",
            "links[3].master: 127.0.0.1:9121 is admin.listen (0.0.0.0:9121): replguard would dial its own admin listener",
            "links[4].listen: 127.0.0.1:7002 is already used by links[1].listen",
        ]
    );
}

#[test]
fn a_non_loopback_admin_without_a_token_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let admin = free_port();
    let f = dir.path().join("open.yaml");
    let yaml = |token: &str| {
        format!(
            "state_dir: state\nadmin:\n  listen: 0.0.0.0:{admin}\n{token}links:\n  - {{ name: main, listen: 127.0.0.1:{}, master: 127.0.0.1:{}, flavor: redis, guard: enforce }}\n",
            free_port(),
            free_port()
        )
    };
    std::fs::write(&f, yaml("")).unwrap();
    let warning = format!(
        "admin.listen: 0.0.0.0:{admin} is reachable from other hosts and no admin token is set"
    );
    let (code, out, err) = check(&f);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(out, format!("{}: valid (1 link)\n", f.display()));
    assert!(err.starts_with(&format!("warning: {warning}")), "{err}");

    let rg = Replguard::run(&f, &dir.path().join("rg.log"), |_| {});
    rg.wait_log("admin ready");
    let log = rg.log();
    let line = log
        .lines()
        .find(|l| l.contains("reachable from other hosts"))
        .unwrap_or_else(|| panic!("no warning in:\n{log}"));
    assert!(
        line.contains("WARN") && line.contains("admin.listen"),
        "{line}"
    );
    drop(rg);

    // With a token (in a file only its owner reads), nothing to say.
    let token = dir.path().join("admin.token");
    std::fs::write(&token, "0123456789abcdef0123\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&f, yaml("  token_file: admin.token\n")).unwrap();
    let (code, out, err) = check(&f);
    assert_eq!((code, err.as_str()), (Some(0), ""), "{out}");
    // A token file every user can read is worth a word.
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, _, err) = check(&f);
    assert_eq!(code, Some(0));
    assert!(
        err.contains("warning: admin.token_file: ") && err.contains("chmod 600"),
        "{err}"
    );
}

#[test]
fn run_relays_and_stops_gracefully_on_sigterm() {
    let m = Server::start(Kind::Redis, &["--repl-diskless-sync", "no"]);
    assert_eq!(m.client().text(&["DEBUG", "POPULATE", "1000"]), "OK");
    let dir = tempfile::tempdir().unwrap();
    let bin = BinConfig::new(dir.path(), m.port, Kind::Redis);
    let mut rg = Replguard::run(&bin.path, &dir.path().join("rg.log"), |_| {});
    let r = replica_of(Kind::Redis, bin.port, &[]);
    wait_converged(&m, &r, Duration::from_secs(60));
    assert!(dir.path().join("state").is_dir());

    rg.signal("-TERM");
    let status = rg.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
    let log = rg.log();
    assert!(log.contains("SIGTERM received"), "{log}");
    assert!(log.contains("session ended"), "{log}");
    assert!(log.contains("reason=replguard is shutting down"), "{log}");
    assert!(log.contains("stopped"), "{log}");
    // The replica noticed and is trying to reconnect on its own.
    wait_for(
        Duration::from_secs(30),
        "the replica's link to go down",
        || (r.try_info("replication")?.get("master_link_status")? == "down").then_some(()),
    );
}

#[test]
fn sighup_repoints_a_link_and_keeps_running_on_a_bad_file() {
    let m1 = Server::start(Kind::Redis, &[]);
    let m2 = Server::start(Kind::Redis, &[]);
    let dir = tempfile::tempdir().unwrap();
    let bin = BinConfig::new(dir.path(), m1.port, Kind::Redis);
    let (port, admin, cfg) = (bin.port, bin.admin, &bin.path);
    let rg = Replguard::run(cfg, &dir.path().join("rg.log"), |_| {});
    let master_of = || -> Option<String> {
        let st: serde_json::Value = serde_json::from_str(&try_get(admin, "/status")?).ok()?;
        st["links"][0]["master"].as_str().map(str::to_string)
    };
    let want1 = format!("127.0.0.1:{}", m1.port);
    wait_for(Duration::from_secs(20), "replguard up", || {
        (master_of()? == want1).then_some(())
    });

    std::fs::write(cfg, "links: [").unwrap();
    rg.signal("-HUP");
    rg.wait_log("configuration not reloaded");
    assert_eq!(
        master_of().as_deref(),
        Some(want1.as_str()),
        "still running on the old master"
    );

    bin.write(m2.port, Kind::Redis);
    rg.signal("-HUP");
    let want2 = format!("127.0.0.1:{}", m2.port);
    wait_for(Duration::from_secs(20), "the link re-pointed", || {
        (master_of()? == want2).then_some(())
    });
    let mut c = Client::connect(port).unwrap();
    assert_eq!(c.text(&["SET", "via-link", "1"]), "OK");
    assert_eq!(m2.client().text(&["GET", "via-link"]), "1");
}

#[test]
fn relative_paths_are_taken_from_the_config_files_folder() {
    let etc = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::write(etc.path().join("main.pw"), "s3cret\n").unwrap();
    let cfg = etc.path().join("rg.yaml");
    let admin = free_port();
    std::fs::write(
        &cfg,
        format!(
            "state_dir: state\nadmin: {{ listen: 127.0.0.1:{admin} }}\nlinks:\n  - {{ name: main, listen: 127.0.0.1:{}, master: 127.0.0.1:{}, flavor: redis, guard: enforce, auth: {{ password_file: ./main.pw }} }}\n",
            free_port(),
            free_port()
        ),
    )
    .unwrap();

    // `check` from another working directory finds the password file beside the config.
    let out = replguard()
        .args(["check", "--config"])
        .arg(&cfg)
        .current_dir(elsewhere.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let _rg = Replguard::run(&cfg, &elsewhere.path().join("rg.log"), |c| {
        c.current_dir(elsewhere.path());
    });
    let st = status_json(admin);
    let ledger = st["links"][0]["ledger"]["ledger_file"].as_str().unwrap();
    assert_eq!(
        Path::new(ledger),
        etc.path().join("state").join("main.ledger.json")
    );
    assert!(etc.path().join("state").is_dir());
    assert!(!elsewhere.path().join("state").exists());
}

/// A one-link configuration in `dir` whose link listens on `listen` and whose master nobody
/// listens on; returns (path, admin port).
fn idle_config(dir: &Path, listen: u16) -> (PathBuf, u16) {
    let admin = free_port();
    let path = dir.join("rg.yaml");
    std::fs::write(
        &path,
        format!(
            "state_dir: state\nadmin: {{ listen: 127.0.0.1:{admin} }}\nlinks:\n  - {{ name: main, listen: 127.0.0.1:{listen}, master: 127.0.0.1:{}, flavor: redis, guard: enforce }}\n",
            free_port()
        ),
    )
    .unwrap();
    (path, admin)
}

#[test]
fn a_bad_log_filter_is_reported_and_logging_falls_back_to_info() {
    for (value, why) in [
        (
            "verbose",
            "REPLGUARD_LOG=\"verbose\" is not a filter: `verbose` is neither a level",
        ),
        ("", "REPLGUARD_LOG=\"\" is empty"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (cfg, admin) = idle_config(dir.path(), free_port());
        let rg = Replguard::run(&cfg, &dir.path().join("rg.log"), |c| {
            c.env("REPLGUARD_LOG", value);
        });
        // INFO lines: the fallback level.
        rg.wait_log("admin ready");
        let log = rg.log();
        let warning = log
            .lines()
            .find(|l| l.contains(why))
            .unwrap_or_else(|| panic!("no warning about {value:?}:\n{log}"));
        assert!(warning.contains("WARN"), "{warning}");
        assert!(warning.ends_with("logging at info instead"), "{warning}");
        assert!(status_json(admin)["links"][0]["name"] == "main");
    }
}

#[test]
fn a_bind_failure_is_printed_even_with_logging_off() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let (cfg, _) = idle_config(dir.path(), port);
    let mut rg = Replguard::run(&cfg, &dir.path().join("rg.log"), |c| {
        c.env("REPLGUARD_LOG", "off");
    });
    let status = rg.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(1));
    let log = rg.log();
    assert!(
        log.contains(&format!(
            "link main: cannot listen on 127.0.0.1:{port}: Address already in use"
        )),
        "{log}"
    );
}

/// `replguard status <args>`: (exit code, stdout, stderr).
fn status_cmd(args: &[&str]) -> (Option<i32>, String, String) {
    let out = replguard().arg("status").args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The session lines of `status` output: the rows under the `LINK  REPLICA ...` header.
fn session_rows(out: &str) -> Vec<Vec<&str>> {
    out.lines()
        .skip_while(|l| !l.starts_with("LINK  REPLICA"))
        .skip(1)
        .take_while(|l| !l.is_empty())
        .map(|l| l.split_whitespace().collect())
        .collect()
}

#[test]
fn status_prints_one_line_per_session_and_exits_0() {
    let m = Server::start(Kind::Redis, &[]);
    let dir = tempfile::tempdir().unwrap();
    let bin = BinConfig::new(dir.path(), m.port, Kind::Redis);
    let _rg = Replguard::run(&bin.path, &dir.path().join("rg.log"), |_| {});
    let r = replica_of(Kind::Redis, bin.port, &[]);
    wait_converged(&m, &r, Duration::from_secs(60));
    // A master may hold the stream after a diskless payload past the replica's first ACK; the
    // stream flows once a write went through and was acknowledged.
    assert_eq!(m.client().text(&["SET", "warm", "1"]), "OK");
    wait_for(Duration::from_secs(20), "an acknowledged write", || {
        let st: serde_json::Value = serde_json::from_str(&try_get(bin.admin, "/status")?).ok()?;
        let s = &st["links"][0]["sessions"][0];
        let (ack, expected) = (s["ack_offset"].as_u64()?, s["expected_offset"].as_u64()?);
        (ack == expected && expected > s["start_offset"].as_u64()?).then_some(())
    });
    let replid = m.client().info("replication")["master_replid"].clone();

    let cfg = bin.path.to_str().unwrap();
    let admin = format!("127.0.0.1:{}", bin.admin);
    for args in [["--config", cfg], ["--admin", admin.as_str()]] {
        let (code, out, err) = status_cmd(&args);
        assert_eq!(code, Some(0), "{args:?}\n{out}{err}");
        assert!(
            out.contains(&format!(
                "link main: 127.0.0.1:{} -> 127.0.0.1:{} (redis, guard enforce), 1 session",
                bin.port, m.port
            )),
            "{out}"
        );
        let rows = session_rows(&out);
        assert_eq!(rows.len(), 1, "{out}");
        let row = &rows[0];
        assert_eq!(row.len(), 9, "{out}");
        assert_eq!(
            row[..5],
            [
                "main",
                &format!("127.0.0.1:{}", r.port),
                "streaming",
                "full",
                &replid[..8]
            ],
            "{out}"
        );
        for number in &row[5..8] {
            assert!(number.parse::<u64>().is_ok(), "{out}");
        }
        assert!(row[8].parse::<f64>().unwrap() <= 10.0, "{out}");
    }

    // A stopped replica leaves what it was sent unacknowledged: it lags, and status says so.
    let signal = |sig: &str| {
        let ok = Command::new("kill")
            .args([sig, &r.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    };
    signal("-STOP");
    assert_eq!(m.client().text(&["SET", "k", "v"]), "OK");
    let (out, err) = wait_for(Duration::from_secs(20), "status to exit 2", || {
        let (code, out, err) = status_cmd(&["--config", cfg, "--max-lag-seconds", "1"]);
        (code == Some(2)).then_some((out, err))
    });
    signal("-CONT");
    assert_eq!(err, "");
    let attention = format!(
        "attention: link main: replica 127.0.0.1:{} has not acknowledged bytes sent",
        r.port
    );
    assert!(out.lines().any(|l| l.starts_with(&attention)), "{out}");
}

#[test]
fn status_exits_1_when_replguard_cannot_be_reached() {
    let port = free_port();
    let (code, out, err) = status_cmd(&["--admin", &format!("127.0.0.1:{port}")]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert_eq!(out, "");
    assert!(
        err.starts_with(&format!(
            "replguard status: cannot reach replguard's admin listener at 127.0.0.1:{port}: Connection refused"
        )),
        "{err}"
    );

    // The address comes from the file just as well; a file without one is a problem of its own.
    let dir = tempfile::tempdir().unwrap();
    let (cfg, admin) = idle_config(dir.path(), free_port());
    let (code, _, err) = status_cmd(&["--config", cfg.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains(&format!("admin listener at 127.0.0.1:{admin}")),
        "{err}"
    );
    std::fs::write(&cfg, "links: []\n").unwrap();
    let (code, _, err) = status_cmd(&["--config", cfg.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(err.contains("admin.listen: missing (required)"), "{err}");
}

#[test]
fn alert_rules_use_only_metrics_replguard_exports() {
    let proxy = Proxy::start(Kind::Redis, free_port(), "");
    let metrics = proxy.http_get("/metrics");
    // name -> counter | gauge, from the `# TYPE` lines (present even with no sessions).
    let exported: std::collections::HashMap<&str, &str> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .collect();

    let text = std::fs::read_to_string("config/replguard-alerts.yml").unwrap();
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let rules = doc["groups"][0]["rules"].as_sequence().unwrap();
    let mut alerts = Vec::new();
    for rule in rules {
        let alert = rule["alert"].as_str().unwrap();
        let expr = rule["expr"].as_str().unwrap();
        let mut used = 0;
        for (i, _) in expr.match_indices("replguard_") {
            let name: String = expr[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let kind = exported
                .get(name.as_str())
                .unwrap_or_else(|| panic!("{alert}: /metrics has no {name}"));
            // increase() is for counters; a gauge is compared as it is.
            let in_increase = expr[..i].ends_with("increase(");
            assert_eq!(
                *kind,
                if in_increase { "counter" } else { "gauge" },
                "{alert}: {name}"
            );
            used += 1;
        }
        assert!(used > 0, "{alert} uses no replguard metric");
        assert!(rule["annotations"]["summary"].is_string(), "{alert}");
        alerts.push(alert);
    }
    assert_eq!(
        alerts,
        [
            "ReplguardUnsafeResumeAccepted",
            "ReplguardReplicaHeld",
            "ReplguardEmptyMaster",
            "ReplguardStaleMaster",
            "ReplguardReplicaLagging",
            "ReplguardLedgerSaveFailing"
        ]
    );
}

/// The ledger record of the replica listening on `port` in the ledger file at `path`.
fn ledger_record(path: &Path, port: u16) -> Option<serde_json::Value> {
    let parsed: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    parsed["replicas"]
        .as_object()?
        .iter()
        .find(|(k, _)| k.ends_with(&format!(":{port}")))
        .map(|(_, v)| v.clone())
}

/// The guard's last verdict about the replica listening on `port`, from `/status`.
fn last_verdict(admin: u16, port: u16) -> Option<serde_json::Value> {
    let st: serde_json::Value = serde_json::from_str(&try_get(admin, "/status")?).ok()?;
    st["links"][0]["ledger"]["last_verdicts"]
        .as_object()?
        .iter()
        .find(|(k, _)| k.ends_with(&format!(":{port}")))
        .map(|(_, v)| v.clone())
}

#[test]
fn sigint_stops_gracefully_and_the_replica_resumes_when_replguard_is_back() {
    let m = Server::start(Kind::Redis, &["--repl-ping-replica-period", "3600"]);
    assert_eq!(m.client().text(&["DEBUG", "POPULATE", "1000"]), "OK");
    let dir = tempfile::tempdir().unwrap();
    let bin = BinConfig::new(dir.path(), m.port, Kind::Redis);
    let mut rg = Replguard::run(&bin.path, &dir.path().join("first.log"), |_| {});
    let r = replica_of(Kind::Redis, bin.port, &[]);
    let off = wait_converged(&m, &r, Duration::from_secs(60));

    rg.signal("-INT");
    let status = rg.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
    let log = rg.log();
    for want in [
        "SIGINT received",
        "session ended",
        "reason=replguard is shutting down",
        "stopped",
    ] {
        assert!(log.contains(want), "no {want:?} in:\n{log}");
    }
    // The replica's record is closed at its exact offset.
    let rec = ledger_record(&dir.path().join("state/main.ledger.json"), r.port)
        .expect("the replica is recorded");
    assert_eq!(rec["open"], false, "{rec}");
    assert_eq!(rec["offset"].as_u64(), Some(off), "{rec}");
    wait_for(
        Duration::from_secs(30),
        "the replica's link to go down",
        || (r.try_info("replication")?.get("master_link_status")? == "down").then_some(()),
    );

    // Back: the replica resumes with its own id and offset.
    let mut mc = m.client();
    let full = info_u64(&mut mc, "stats", "sync_full");
    let partial = info_u64(&mut mc, "stats", "sync_partial_ok");
    assert_eq!(mc.text(&["SET", "while-stopped", "1"]), "OK");
    let rg = Replguard::run(&bin.path, &dir.path().join("second.log"), |_| {});
    wait_converged(&m, &r, Duration::from_secs(60));
    assert_eq!(
        info_u64(&mut mc, "stats", "sync_full"),
        full,
        "no full sync"
    );
    assert_eq!(info_u64(&mut mc, "stats", "sync_partial_ok"), partial + 1);
    let log = rg.log();
    assert!(!log.contains("did not stop cleanly"), "{log}");
    let v = wait_for(Duration::from_secs(20), "the verdict", || {
        last_verdict(bin.admin, r.port)
    });
    assert_eq!(v["verdict"], "pass", "{v}");
    assert_eq!(v["answer"], "+CONTINUE", "{v}");
}

#[test]
fn shutdown_waits_at_most_shutdown_grace_ms() {
    let dir = tempfile::tempdir().unwrap();
    let admin = free_port();
    let cfg = dir.path().join("rg.yaml");
    std::fs::write(
        &cfg,
        format!(
            "state_dir: state\nshutdown_grace_ms: 300\nadmin: {{ listen: 127.0.0.1:{admin} }}\nlinks:\n  - {{ name: main, listen: 127.0.0.1:{}, master: 127.0.0.1:{}, flavor: redis, guard: enforce }}\n",
            free_port(),
            free_port()
        ),
    )
    .unwrap();
    let mut rg = Replguard::run(&cfg, &dir.path().join("rg.log"), |_| {});
    status_json(admin);
    // An admin client that never finishes its request keeps a task busy for 5 s, replguard's
    // limit for a request: longer than the grace.
    let mut slow = std::net::TcpStream::connect(("127.0.0.1", admin)).unwrap();
    std::io::Write::write_all(&mut slow, b"GET /status HTTP/1.1\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(200));

    let asked = std::time::Instant::now();
    rg.signal("-INT");
    let status = rg.wait_exit(Duration::from_secs(10));
    let took = asked.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(2500),
        "stopped {took:?} after SIGINT"
    );
    let log = rg.log();
    let warned = log
        .lines()
        .find(|l| l.contains("some tasks did not finish within the shutdown grace period"))
        .unwrap_or_else(|| panic!("no warning about the grace period:\n{log}"));
    assert!(
        warned.contains("WARN") && warned.contains("grace_ms=300"),
        "{warned}"
    );
    assert!(log.trim_end().ends_with("stopped"), "{log}");
    drop(slow);
}

/// The file a corrupt ledger was moved to, as the ERROR line about it names it.
fn moved_ledger(log: &str, ledger: &Path) -> PathBuf {
    let line = log
        .lines()
        .find(|l| l.contains("is not a valid ledger for this link"))
        .unwrap_or_else(|| panic!("the corrupt ledger is not reported:\n{log}"));
    assert!(line.contains("ERROR"), "{line}");
    assert!(
        line.contains(&format!("{} is not a valid ledger", ledger.display())),
        "{line}"
    );
    assert!(
        line.contains(" and replguard starts with no knowledge") && line.contains("link=\"main\""),
        "{line}"
    );
    let moved = line
        .split_once("it was moved to ")
        .and_then(|(_, rest)| rest.split_once(" and replguard starts"))
        .map(|(p, _)| PathBuf::from(p))
        .unwrap_or_else(|| panic!("no destination in {line}"));
    assert_eq!(moved.parent(), ledger.parent(), "{line}");
    moved
}

#[test]
fn a_corrupt_ledger_is_moved_aside_reported_and_trusted_for_nothing() {
    let m = Server::start(Kind::Redis, &["--repl-ping-replica-period", "3600"]);
    assert_eq!(m.client().text(&["DEBUG", "POPULATE", "1000"]), "OK");
    let dir = tempfile::tempdir().unwrap();
    let bin = BinConfig::new(dir.path(), m.port, Kind::Redis);
    let mut rg = Replguard::run(&bin.path, &dir.path().join("first.log"), |_| {});
    let r = replica_of(Kind::Redis, bin.port, &[]);
    wait_converged(&m, &r, Duration::from_secs(60));
    rg.signal("-TERM");
    assert!(rg.wait_exit(Duration::from_secs(10)).success());

    // Half of a good ledger, which knew the replica: a torn or damaged file.
    let ledger = dir.path().join("state/main.ledger.json");
    assert!(ledger_record(&ledger, r.port).is_some());
    let good = std::fs::read(&ledger).unwrap();
    let corrupt = good[..good.len() / 2].to_vec();
    std::fs::write(&ledger, &corrupt).unwrap();
    let full = info_u64(&mut m.client(), "stats", "sync_full");

    let rg = Replguard::run(&bin.path, &dir.path().join("second.log"), |_| {});
    status_json(bin.admin);
    rg.wait_log("ledger loaded");
    let moved = moved_ledger(&rg.log(), &ledger);
    assert_eq!(std::fs::read(&moved).unwrap(), corrupt, "moved aside whole");

    // No knowledge, never trust: the replica it fed is a stranger now, and full-syncs.
    wait_converged(&m, &r, Duration::from_secs(60));
    let v = wait_for(Duration::from_secs(20), "the verdict", || {
        last_verdict(bin.admin, r.port)
    });
    assert_eq!(v["verdict"], "force_full", "{v}");
    assert_eq!(v["reason_code"], "unknown_replica", "{v}");
    assert_eq!(v["action"], "forced_full", "{v}");
    assert_eq!(info_u64(&mut m.client(), "stats", "sync_full"), full + 1);
}

#[test]
fn a_corrupt_ledger_is_moved_to_the_name_the_readme_gives() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, admin) = idle_config(dir.path(), free_port());
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("main.ledger.json"), "{ not a ledger").unwrap();
    let rg = Replguard::run(&cfg, &dir.path().join("rg.log"), |_| {});
    status_json(admin);
    rg.wait_log("ledger loaded");
    let moved = moved_ledger(&rg.log(), &state.join("main.ledger.json"));
    let name = moved.file_name().unwrap().to_string_lossy().into_owned();
    let time = name
        .strip_prefix("main.ledger.corrupt-")
        .unwrap_or_else(|| panic!("moved to {name}"));
    assert!(
        !time.is_empty() && time.bytes().all(|b| b.is_ascii_digit()),
        "{name}"
    );
}
