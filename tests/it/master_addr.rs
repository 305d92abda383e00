//! A link's master address: given by host name (resolved at each dial, relayed and guarded as
//! an IP address is), a name that does not resolve (check warns, run retries), and an operator's
//! re-point kept across a restart and an unchanged reload, until the configuration's master is
//! edited.

use crate::common::*;
use std::process::Command;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);
/// No pings from the master: offsets move only with the test's writes.
const QUIET: [&str; 4] = [
    "--repl-ping-replica-period",
    "3600",
    "--repl-diskless-sync",
    "no",
];

/// Full syncs, partial syncs accepted and refused that `s` served as a master.
fn syncs(s: &Server) -> (u64, u64, u64) {
    let mut c = s.client();
    (
        info_u64(&mut c, "stats", "sync_full"),
        info_u64(&mut c, "stats", "sync_partial_ok"),
        info_u64(&mut c, "stats", "sync_partial_err"),
    )
}

fn link_status(proxy: &Proxy) -> serde_json::Value {
    proxy.status()["links"][0].clone()
}

/// The guard's verdict on the replica on `port` asking to resume (its first sync asks for
/// none), once there is one answered.
fn resume_verdict(proxy: &Proxy, port: u16) -> serde_json::Value {
    wait_for(LONG, "a verdict on a resume", || {
        proxy
            .last_verdict(port)
            .filter(|v| v["requested_replid"] != "?")
            .filter(|v| v["answer"].as_str().is_some_and(|a| !a.is_empty()))
    })
}

/// `localhost:<port>` as the master: the link relays, reads the master's lineage and judges
/// resumes exactly as with `127.0.0.1:<port>`.
fn a_master_by_name_relays_and_guards_like_an_ip(kind: Kind) {
    let m = Server::start(kind, &QUIET);
    assert_eq!(m.client().text(&["DEBUG", "POPULATE", "1000"]), "OK");
    let by_name = format!("localhost:{}", m.port);
    let ip = format!("127.0.0.1:{}", m.port);
    let proxy = Proxy::start_at(kind.flavor(), &by_name, "enforce", "");
    let mut r = replica_of(kind, proxy.port, &QUIET);
    wait_converged(&m, &r, LONG);

    let st = link_status(&proxy);
    assert_eq!(st["master"], by_name, "{st}");
    assert_eq!(st["config"]["master"], by_name, "{st}");
    assert_eq!(st["master_source"], "configuration", "{st}");
    assert_eq!(st["master_dialled"], ip, "{st}");
    assert!(st["master_dial_error"].is_null(), "{st}");
    let line = wait_logged(
        LONG,
        &[
            "master name resolved",
            &format!("master={by_name}"),
            &format!("address={ip}"),
        ],
    );
    assert!(line.contains(" INFO "), "{line}");
    // The keeper read the master's INFO through the name: the lineage is known.
    let replid = m.client().info("replication")["master_replid"].clone();
    wait_for(LONG, "the master's lineage in the ledger", || {
        let st = proxy.try_status()?;
        let lineage = st["links"][0]["ledger"]["lineage"].as_array()?.clone();
        lineage
            .iter()
            .any(|e| e["replid"] == replid.as_str())
            .then_some(())
    });

    // A restarted replica resumes partially, judged and passed by the guard.
    for i in 0..100 {
        let k = format!("k{i}");
        assert_eq!(m.client().text(&["SET", k.as_str(), "v"]), "OK");
    }
    wait_converged(&m, &r, LONG);
    let (full, partial, _) = syncs(&m);
    r.restart();
    wait_converged(&m, &r, LONG);
    let v = resume_verdict(&proxy, r.port);
    assert_eq!(v["verdict"], "pass", "{v}");
    assert_eq!(v["answer"], "+CONTINUE", "{v}");
    assert_eq!(syncs(&m).0, full, "no full sync");
    assert_eq!(syncs(&m).1, partial + 1, "one partial resync");

    // A replica the ledger never saw is sent to a full sync: the guard acts on this link.
    let d = replica_of(kind, m.port, &QUIET);
    wait_converged(&m, &d, LONG);
    let (full, _, _) = syncs(&m);
    let link_port = proxy.port.to_string();
    assert_eq!(
        d.client()
            .text(&["REPLICAOF", "127.0.0.1", link_port.as_str()]),
        "OK"
    );
    let v = resume_verdict(&proxy, d.port);
    assert_eq!(v["verdict"], "force_full", "{v}");
    assert_eq!(v["reason_code"], "unknown_replica", "{v}");
    wait_converged(&m, &d, LONG);
    assert_eq!(syncs(&m).0, full + 1, "the forced full sync");
}

#[test]
fn a_master_by_name_relays_and_guards_like_an_ip_redis() {
    a_master_by_name_relays_and_guards_like_an_ip(Kind::Redis);
}

#[test]
fn a_master_by_name_relays_and_guards_like_an_ip_valkey() {
    a_master_by_name_relays_and_guards_like_an_ip(Kind::Valkey);
}

/// A configuration file with one link whose master is `master`; (path, link port, admin port).
fn config_file(dir: &std::path::Path, master: &str) -> (std::path::PathBuf, u16, u16) {
    let [port, admin] = free_ports();
    let path = dir.join("rg.yaml");
    write_config(&path, port, admin, master);
    (path, port, admin)
}

fn write_config(path: &std::path::Path, port: u16, admin: u16, master: &str) {
    std::fs::write(
        path,
        format!(
            "state_dir: state\nadmin: {{ listen: 127.0.0.1:{admin} }}\nlinks:\n  - name: main\n    listen: 127.0.0.1:{port}\n    master: {master}\n    flavor: redis\n    guard: enforce\n    timeouts: {{ connect_ms: 1000 }}\n"
        ),
    )
    .unwrap();
}

/// A name that does not resolve: `check` accepts it with a warning at its YAML path; `run`
/// starts, reports the master unreachable and looks the name up again at every dial; a reload
/// naming a reachable master puts the link to work.
#[test]
fn a_name_that_does_not_resolve_is_warned_about_and_retried() {
    let m = Server::start(Kind::Redis, &QUIET);
    assert_eq!(m.client().text(&["SET", "k", "v"]), "OK");
    let dir = tempfile::tempdir().unwrap();
    let (path, port, admin) = config_file(dir.path(), "db-0.replguard-test.invalid:6379");

    let out = Command::new(env!("CARGO_BIN_EXE_replguard"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("valid (1 link)"), "{stdout}");
    assert!(
        stderr.contains(
            "warning: links[0].master: db-0.replguard-test.invalid:6379 does not resolve now ("
        ),
        "{stderr}"
    );

    let mut rg = Replguard::run(&path, &dir.path().join("rg.log"), |_| {});
    rg.wait_log("link ready");
    let log = rg.log();
    assert!(
        log.lines().any(|l| l.contains(" WARN ")
            && l.contains("links[0].master")
            && l.contains("does not resolve now")),
        "{log}"
    );
    // A replica keeps coming; every dial looks the name up again and fails (the session's end
    // is logged once a minute, and counted every time).
    let r = replica_of(Kind::Redis, port, &QUIET);
    wait_for(LONG, "two failed dials", || {
        let metrics = try_http(admin, "GET", "/metrics")?;
        let errors: f64 = metrics
            .lines()
            .find(|l| l.starts_with("replguard_session_errors_total{link=\"main\"}"))?
            .rsplit(' ')
            .next()?
            .parse()
            .ok()?;
        (errors >= 2.0).then_some(())
    });
    let ended = rg
        .log()
        .lines()
        .filter(|l| {
            l.contains("session ended")
                && l.contains("cannot connect to master db-0.replguard-test.invalid:6379: the name does not resolve")
        })
        .count();
    assert_eq!(ended, 1, "{}", rg.log());
    assert!(rg.alive());
    let st: serde_json::Value = serde_json::from_str(&http(admin, "GET", "/status")).unwrap();
    let link = &st["links"][0];
    assert!(
        link["master_dial_error"]
            .as_str()
            .is_some_and(|e| e.contains("does not resolve")),
        "{link}"
    );
    assert!(link["master_dialled"].is_null(), "{link}");
    // The unresolved name is logged once at WARN, not once per dial.
    let warned = rg
        .log()
        .lines()
        .filter(|l| l.contains("the master's name does not resolve"))
        .count();
    assert_eq!(warned, 1, "{}", rg.log());

    write_config(&path, port, admin, &format!("localhost:{}", m.port));
    rg.signal("-HUP");
    wait_converged(&m, &r, LONG);
    assert_eq!(r.client().text(&["GET", "k"]), "v");
}

/// A re-point to a host name; one to replguard's own listener by name is refused; a reload
/// with an unchanged file keeps the re-point, one that edits the master wins over it.
#[test]
fn a_repoint_to_a_name() {
    let m1 = Server::start(Kind::Redis, &QUIET);
    let m2 = Server::start(Kind::Redis, &QUIET);
    let m3 = Server::start(Kind::Redis, &QUIET);
    assert_eq!(m2.client().text(&["SET", "on", "m2"]), "OK");
    assert_eq!(m3.client().text(&["SET", "on", "m3"]), "OK");
    let mut proxy = Proxy::start(Kind::Redis, m1.port, "");
    let r = replica_of(Kind::Redis, proxy.port, &QUIET);
    wait_converged(&m1, &r, LONG);

    // The replica holds `on`'s value from `node` (the offsets of unrelated masters may match,
    // so the data tells which master the replica synced from).
    let synced_from = |node: &Server, value: &str| {
        wait_for(LONG, &format!("the replica on {value}"), || {
            let got = r.try_client()?.try_cmd(&["GET", "on"]).ok()?;
            (got == Reply::BulkString(value.into())).then_some(())
        });
        wait_converged(node, &r, LONG);
    };
    let post = |addr: &str| {
        let req = format!(
            "POST /links/main/master?addr={addr} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\r\n"
        );
        http_exchange(proxy.admin_port, req.as_bytes()).unwrap()
    };
    let (head, body) = post(&format!("localhost:{}", proxy.port));
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert_eq!(
        body,
        format!(
            "addr: localhost:{p} (resolves to 127.0.0.1:{p}) is replguard's own listener of link main (127.0.0.1:{p}); link main would dial itself. Give the real master's address\n",
            p = proxy.port
        )
    );
    let (head, body) = post("db:99999");
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert!(
        body.starts_with("addr: \"db:99999\" is not a master address"),
        "{body}"
    );

    let to_m2 = format!("localhost:{}", m2.port);
    let (head, body) = post(&to_m2);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, format!("link main now dials {to_m2}\n"));
    synced_from(&m2, "m2");
    let st = link_status(&proxy);
    assert_eq!(st["master"], to_m2, "{st}");
    assert_eq!(st["master_source"], "re-point", "{st}");
    assert!(st["master_repointed_at_unix"].as_u64().is_some(), "{st}");
    assert_eq!(st["master_dialled"], format!("127.0.0.1:{}", m2.port));
    assert_eq!(st["config"]["master"], format!("127.0.0.1:{}", m1.port));
    let kept: serde_json::Value = serde_json::from_slice(
        &std::fs::read(proxy.state_dir.path().join("main.master.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(kept["link"], "main", "{kept}");
    assert_eq!(kept["master"], to_m2, "{kept}");
    assert_eq!(
        kept["configured_master"],
        format!("127.0.0.1:{}", m1.port),
        "{kept}"
    );
    assert_eq!(
        kept["set_at_unix"], st["master_repointed_at_unix"],
        "{kept}"
    );

    // A name that does not resolve now is taken, with a warning in the answer.
    let (head, body) = post("db.replguard-test.invalid:6379");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        body.starts_with("link main now dials db.replguard-test.invalid:6379\nwarning: db.replguard-test.invalid:6379 does not resolve now ("),
        "{body}"
    );
    let (head, _) = post(&to_m2);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    synced_from(&m2, "m2");

    // SIGHUP with the file as it was: the re-point stays, the session is not cut.
    let id = wait_for(LONG, "the session on m2", || proxy.session_of(r.port))["id"].clone();
    proxy.reload();
    let st = link_status(&proxy);
    assert_eq!(st["master"], to_m2, "{st}");
    assert_eq!(st["master_source"], "re-point", "{st}");
    assert_eq!(proxy.session_of(r.port).unwrap()["id"], id);

    // SIGHUP with the master edited: the configuration wins and the re-point is dropped.
    let yaml = proxy.yaml().replace(
        &format!("127.0.0.1:{}", m1.port),
        &format!("127.0.0.1:{}", m3.port),
    );
    proxy.set_yaml(yaml);
    proxy.reload();
    synced_from(&m3, "m3");
    let st = link_status(&proxy);
    assert_eq!(st["master"], format!("127.0.0.1:{}", m3.port), "{st}");
    assert_eq!(st["master_source"], "configuration", "{st}");
    assert!(!proxy.state_dir.path().join("main.master.json").exists());
    wait_logged(
        LONG,
        &[
            "reload: the configuration's master changed after the re-point; the configuration wins",
            &format!("master=127.0.0.1:{}", m3.port),
            &format!("repointed={to_m2}"),
        ],
    );
}

/// The reported failure: re-pointed at a promoted replica, writes on it, replguard restarted
/// with the same file while the old master is back. The link dials the promoted node, the
/// other replica resumes partially and keeps every write; the old master is never asked.
/// Then the file's master is edited: the configuration wins, and the log says so.
fn a_repoint_survives_a_restart(kind: Kind) {
    let mut m = Server::start(kind, &QUIET);
    assert_eq!(m.client().text(&["DEBUG", "POPULATE", "1000"]), "OK");
    let mut proxy = Proxy::start(kind, m.port, "");
    let r1 = replica_of(kind, proxy.port, &QUIET);
    let r2 = replica_of(kind, proxy.port, &QUIET);
    wait_converged(&m, &r1, LONG);
    wait_converged(&m, &r2, LONG);
    let (old, new) = (
        format!("127.0.0.1:{}", m.port),
        format!("127.0.0.1:{}", r1.port),
    );

    // Failover by hand: the old master stops (keeping its data), r1 is promoted, the link follows.
    m.stop(true);
    assert_eq!(r1.client().text(&["REPLICAOF", "NO", "ONE"]), "OK");
    proxy.http_post(&format!("/links/main/master?addr={new}"));
    for i in 0..200 {
        let k = format!("after-failover:{i}");
        assert_eq!(r1.client().text(&["SET", k.as_str(), "1"]), "OK");
    }
    wait_converged(&r1, &r2, LONG);
    assert_eq!(syncs(&r1), (0, 1, 0), "r2 resumed partially on r1");

    // SIGHUP with the file unchanged keeps the re-point and the session.
    let id = wait_for(LONG, "r2's session", || proxy.session_of(r2.port))["id"].clone();
    proxy.reload();
    let st = link_status(&proxy);
    assert_eq!(st["master"], new, "{st}");
    assert_eq!(st["master_source"], "re-point", "{st}");
    assert_eq!(proxy.session_of(r2.port).unwrap()["id"], id, "not cut");

    // Restart with the same file, the old master running again with its data.
    proxy.stop();
    for i in 0..200 {
        let k = format!("while-down:{i}");
        assert_eq!(r1.client().text(&["SET", k.as_str(), "1"]), "OK");
    }
    m.start_again();
    proxy.resume();
    let line = wait_logged(
        LONG,
        &[
            "master in force: the re-point wins",
            &format!("master={new}"),
            &format!("configured={old}"),
        ],
    );
    assert!(line.contains(" INFO "), "{line}");
    wait_converged(&r1, &r2, LONG);
    assert_eq!(r2.client().int(&["EXISTS", "while-down:199"]), 1);
    assert_eq!(r2.client().int(&["EXISTS", "after-failover:0"]), 1);
    assert_eq!(syncs(&r1), (0, 2, 0), "r2 resumed partially on r1 again");
    assert_eq!(syncs(&m), (0, 0, 0), "the old master was never asked");
    let v = resume_verdict(&proxy, r2.port);
    assert_eq!(v["verdict"], "pass", "{v}");
    assert_eq!(v["answer"], "+CONTINUE", "{v}");
    let st = link_status(&proxy);
    assert_eq!(st["master"], new, "{st}");
    assert_eq!(st["master_source"], "re-point", "{st}");
    assert_eq!(st["config"]["master"], old, "{st}");

    // The operator writes the new master into the file: the configuration wins, the re-point
    // is dropped, the ledger (kept for that master) stays.
    proxy.stop();
    let yaml = proxy.yaml().replace(&old, &new);
    proxy.set_yaml(yaml);
    proxy.resume();
    let line = wait_logged(
        LONG,
        &[
            "master in force: the configuration wins",
            &format!("master={new}"),
            &format!("configured_then={old}"),
        ],
    );
    assert!(line.contains(" INFO "), "{line}");
    let st = link_status(&proxy);
    assert_eq!(st["master_source"], "configuration", "{st}");
    assert!(!proxy.state_dir.path().join("main.master.json").exists());
    let v = resume_verdict(&proxy, r2.port);
    assert_eq!(v["answer"], "+CONTINUE", "{v}");
    wait_converged(&r1, &r2, LONG);
    assert_eq!(syncs(&r1), (0, 3, 0), "and partially once more");
}

#[test]
fn a_repoint_survives_a_restart_redis() {
    a_repoint_survives_a_restart(Kind::Redis);
}

#[test]
fn a_repoint_survives_a_restart_valkey() {
    a_repoint_survives_a_restart(Kind::Valkey);
}

/// A re-point that cannot be written to `state_dir` is in force, and the answer and the log
/// say a restart would not find it.
#[test]
fn a_repoint_that_cannot_be_kept_says_so() {
    let m1 = Server::start(Kind::Redis, &QUIET);
    let m2 = Server::start(Kind::Redis, &QUIET);
    let proxy = Proxy::start(Kind::Redis, m1.port, "");
    // A folder where the file goes: the atomic replace cannot put a file there.
    std::fs::create_dir(proxy.state_dir.path().join("main.master.json")).unwrap();
    let to = format!("127.0.0.1:{}", m2.port);
    let body = proxy.http_post(&format!("/links/main/master?addr={to}"));
    assert!(
        body.starts_with(&format!(
            "link main now dials {to}\nwarning: the re-point is not kept (cannot write "
        )) && body.ends_with("): a restart would dial the configuration's master\n"),
        "{body}"
    );
    assert_eq!(link_status(&proxy)["master"], to);
    let line = wait_logged(LONG, &["the re-point is in force but not kept", &to]);
    assert!(line.contains(" ERROR "), "{line}");
}
