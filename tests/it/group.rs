//! Link groups on real servers: one link per node, every node announcing its link, a failover
//! done by hand the way a failover manager does it (promote a replica, re-point the others,
//! demote the old master). The links of a group share one ledger, so a replica that moves to
//! the promoted node's link resumes partially, as it would without replguard.

use crate::common::*;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(30);

/// `sync_full` and `sync_partial_ok` of a node's `INFO stats`.
fn syncs(s: &Server) -> (u64, u64) {
    let mut c = s.client();
    (
        info_u64(&mut c, "stats", "sync_full"),
        info_u64(&mut c, "stats", "sync_partial_ok"),
    )
}

fn write(s: &Server, prefix: &str, n: usize) {
    let mut c = s.client();
    for i in 0..n {
        let k = format!("{prefix}:{i}");
        assert_eq!(c.text(&["SET", &k, &k]), "OK");
    }
}

/// The links' YAML: one per node, in `group` when given.
fn links(kind: Kind, ports: &[(u16, u16)], group: Option<&str>) -> String {
    ports
        .iter()
        .zip(["la", "lb", "lc"])
        .map(|((listen, master), name)| {
            let group = group.map_or(String::new(), |g| format!("    group: {g}\n"));
            format!(
                "  - name: {name}\n    listen: 127.0.0.1:{listen}\n    master: 127.0.0.1:{master}\n    flavor: {}\n    guard: enforce\n    lineage_poll_ms: 100\n{group}",
                kind.flavor()
            )
        })
        .collect()
}

/// The last verdict link `i` gave the replica announced on `port`.
fn verdict(p: &Proxy, i: usize, port: u16) -> Option<(String, String)> {
    let st = p.try_status()?;
    let last = st["links"][i]["ledger"]["last_verdicts"]
        .as_object()?
        .clone();
    let v = last
        .into_iter()
        .find(|(k, _)| k.ends_with(&format!(":{port}")))?
        .1;
    Some((
        v["verdict"].as_str()?.to_string(),
        v["reason_code"].as_str().unwrap_or("-").to_string(),
    ))
}

/// Three nodes behind three links; A the master, B and C its replicas through A's link.
struct Deployment {
    a: Server,
    b: Server,
    c: Server,
    /// The links' ports: A's, B's, C's.
    ports: [u16; 3],
    proxy: Proxy,
}

fn deploy(kind: Kind, group: Option<&str>) -> Deployment {
    let ports: [u16; 3] = free_ports();
    let [pa, pb, pc] = ports;
    let start = |link: u16, master: Option<u16>| {
        let args = node_args(link, master);
        Server::start(kind, &args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let a = start(pa, None);
    let b = start(pb, Some(pa));
    let c = start(pc, Some(pa));
    let nodes = [(pa, a.port), (pb, b.port), (pc, c.port)];
    let proxy = Proxy::start_links(&links(kind, &nodes, group));
    Deployment {
        a,
        b,
        c,
        ports,
        proxy,
    }
}

/// A node that announces `link` as its address (and never pings its replicas on its own, so
/// offsets move only with writes), a replica of the link on `replica_of` when given.
fn node_args(link: u16, replica_of: Option<u16>) -> Vec<String> {
    let mut args: Vec<String> = [
        "--replica-announce-ip",
        "127.0.0.1",
        "--replica-announce-port",
        &link.to_string(),
        "--repl-ping-replica-period",
        "3600",
    ]
    .map(String::from)
    .to_vec();
    if let Some(m) = replica_of {
        args.extend(["--replicaof".into(), "127.0.0.1".into(), m.to_string()]);
    }
    args
}

/// Promotes B, writes on it and re-points C at B's link, as a failover manager would.
fn promote_b_and_move_c(d: &Deployment) {
    write(&d.a, "before", 500);
    wait_converged(&d.a, &d.b, LIMIT);
    wait_converged(&d.a, &d.c, LIMIT);
    assert_eq!(d.b.client().text(&["REPLICAOF", "NO", "ONE"]), "OK");
    write(&d.b, "after", 200);
    let pb = d.ports[1].to_string();
    assert_eq!(d.c.client().text(&["REPLICAOF", "127.0.0.1", &pb]), "OK");
    wait_converged(&d.b, &d.c, LIMIT);
}

fn failover_through_a_group(kind: Kind) {
    let d = deploy(kind, Some("g"));
    let [pa, pb, pc] = d.ports;
    promote_b_and_move_c(&d);
    // C resumed through B's link on what A's link delivered it.
    assert_eq!(syncs(&d.b), (0, 1), "B served C one partial resync");
    assert_eq!(verdict(&d.proxy, 1, pc), Some(("pass".into(), "-".into())));

    // A still serves the id B took over from: C pointed back at A's link is held, not rolled
    // back.
    wait_for(LIMIT, "A's link to see its master is stale", || {
        let st = d.proxy.try_status()?;
        st["links"][0]["ledger"]["stale_master"]["newer"]
            .as_str()
            .map(str::to_string)
    });
    let digest = d.c.client().digest();
    let a_before = syncs(&d.a);
    assert_eq!(
        d.c.client()
            .text(&["REPLICAOF", "127.0.0.1", &pa.to_string()]),
        "OK"
    );
    wait_for(LIMIT, "C to be held at A's link", || {
        let v = verdict(&d.proxy, 0, pc)?;
        (v == ("hold".into(), "stale_master".into())).then_some(())
    });
    assert_eq!(syncs(&d.a), a_before, "A did not serve C");
    assert_eq!(d.c.client().digest(), digest, "C kept B's writes");
    assert_eq!(d.proxy.metric("replguard_stale_master", "link=\"la\""), 1.0);
    assert_eq!(
        d.c.client()
            .text(&["REPLICAOF", "127.0.0.1", &pb.to_string()]),
        "OK"
    );
    wait_converged(&d.b, &d.c, LIMIT);
    assert_eq!(syncs(&d.b), (0, 2), "C resumed at B's link again");

    // The old master rejoins as B's replica: the group saw it serve the id, up to the switch.
    assert_eq!(
        d.a.client()
            .text(&["REPLICAOF", "127.0.0.1", &pb.to_string()]),
        "OK"
    );
    wait_converged(&d.b, &d.a, LIMIT);
    assert_eq!(syncs(&d.b), (0, 3), "A rejoined with a partial resync");
    assert_eq!(verdict(&d.proxy, 1, pa), Some(("pass".into(), "-".into())));
    wait_for(LIMIT, "A's link to lift the stale-master hold", || {
        let st = d.proxy.try_status()?;
        st["links"][0]["ledger"]["stale_master"]
            .is_null()
            .then_some(())
    });
    write(&d.b, "later", 100);
    wait_converged(&d.b, &d.a, LIMIT);
    wait_converged(&d.b, &d.c, LIMIT);

    let st = d.proxy.status();
    for i in 0..3 {
        assert_eq!(st["links"][i]["group"], "g");
        assert_eq!(st["links"][i]["ledger"]["group"], "g");
    }
    assert_eq!(d.proxy.metric("replguard_link_group", "group=\"g\""), 3.0);
}

#[test]
fn a_failover_inside_a_group_resumes_partially_on_redis() {
    failover_through_a_group(Kind::Redis);
}

#[test]
fn a_failover_inside_a_group_resumes_partially_on_valkey() {
    failover_through_a_group(Kind::Valkey);
}

/// Without a group each link keeps its own ledger: the promoted node's link never served C
/// and forces it into a full sync (what the group is for).
#[test]
fn without_a_group_the_promoted_nodes_link_forces_a_full_sync() {
    let d = deploy(Kind::Redis, None);
    let [pa, pb, pc] = d.ports;
    promote_b_and_move_c(&d);
    assert_eq!(syncs(&d.b), (1, 0), "B served C a full sync");
    assert_eq!(
        verdict(&d.proxy, 1, pc),
        Some(("force_full".into(), "unknown_replica".into()))
    );
    assert_eq!(
        d.a.client()
            .text(&["REPLICAOF", "127.0.0.1", &pb.to_string()]),
        "OK"
    );
    wait_converged(&d.b, &d.a, LIMIT);
    assert_eq!(syncs(&d.b), (2, 0));
    assert_eq!(
        verdict(&d.proxy, 1, pa),
        Some(("force_full".into(), "unknown_replica".into()))
    );
}

/// A link on its own, re-pointed at a promoted replica and then back at the old master (by
/// hand, a configuration or a restart): the old master serves the lineage the ledger saw hand
/// over, so the replica filled from the newer one is held rather than rolled back.
#[test]
fn a_link_pointed_back_at_the_old_master_holds_its_replica() {
    let a = Server::start(Kind::Redis, &["--repl-ping-replica-period", "3600"]);
    let b = replica_of(Kind::Redis, a.port, &["--repl-ping-replica-period", "3600"]);
    let proxy = Proxy::start(Kind::Redis, a.port, "");
    let r = replica_of(
        Kind::Redis,
        proxy.port,
        &["--repl-ping-replica-period", "3600"],
    );
    write(&a, "before", 300);
    wait_converged(&a, &b, LIMIT);
    wait_converged(&a, &r, LIMIT);

    assert_eq!(b.client().text(&["REPLICAOF", "NO", "ONE"]), "OK");
    proxy.http_post(&format!("/links/main/master?addr=127.0.0.1:{}", b.port));
    wait_converged(&b, &r, LIMIT);
    write(&b, "after", 200);
    wait_converged(&b, &r, LIMIT);
    let digest = r.client().digest();

    proxy.http_post(&format!("/links/main/master?addr=127.0.0.1:{}", a.port));
    let v = wait_for(LIMIT, "the hold", || {
        proxy
            .last_verdict(r.port)
            .filter(|v| v["verdict"] == "hold")
    });
    assert_eq!(v["reason_code"], "stale_master", "{v}");
    assert_eq!(
        r.client().digest(),
        digest,
        "the replica kept the newer writes"
    );
    assert_eq!(r.client().int(&["DBSIZE"]), 500);
    let st = proxy.status();
    let stale = &st["links"][0]["ledger"]["stale_master"];
    assert_eq!(
        stale["newer"].as_str(),
        b.client()
            .info("replication")
            .get("master_replid")
            .map(String::as_str),
        "{stale}"
    );
    // The operator's release lets the old master's full sync through: the newer writes go.
    proxy.http_post("/links/main/allow-empty-master");
    wait_converged(&a, &r, LIMIT);
    assert_eq!(r.client().int(&["DBSIZE"]), 300);
}
