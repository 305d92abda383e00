//! TLS on both sides of a link, on real Redis 7.0: a master that speaks only TLS and requires
//! client certificates, a replica with `tls-replication yes` through replguard.

use crate::common::tls::{Certs, TlsServer};
use crate::common::*;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(60);

/// The link's YAML: TLS on the link port (client certificates required) and towards the master.
fn link_tls(c: &Certs) -> String {
    format!(
        "    tls: {{ cert_file: {}, key_file: {}, client_ca_file: {} }}\n    master_tls: {{ ca_file: {}, cert_file: {}, key_file: {} }}\n",
        c.path("server.crt").display(),
        c.path("server.key").display(),
        c.path("ca.crt").display(),
        c.path("ca.crt").display(),
        c.path("client.crt").display(),
        c.path("client.key").display(),
    )
}

fn tls_replica(c: &Certs, link_port: u16) -> Server {
    let port = link_port.to_string();
    let mut args = vec![
        "--replicaof",
        "127.0.0.1",
        &port,
        "--tls-replication",
        "yes",
    ];
    let tls = c.redis_args("client");
    args.extend(tls.iter().map(String::as_str));
    Server::start(Kind::Redis, &args)
}

fn info_field(c: &mut Client, section: &str, field: &str) -> Option<String> {
    c.try_info(section)?.get(field).cloned()
}

/// Waits until the replica's link is up at the master's offset, then compares the data.
fn converged(master: &TlsServer, replica: &Server) {
    wait_for(LIMIT, "the replica to reach the master's offset", || {
        let mo = info_field(
            &mut master.try_client()?,
            "replication",
            "master_repl_offset",
        )?;
        let ri = replica.try_info("replication")?;
        (ri.get("master_link_status")? == "up" && ri.get("slave_repl_offset")? == &mo).then_some(())
    });
    assert_eq!(master.client().digest(), replica.client().digest());
}

fn write_keys(master: &TlsServer, prefix: &str, n: usize) {
    let mut c = master.client();
    for i in 0..n {
        let key = format!("{prefix}:{i}");
        assert_eq!(c.text(&["SET", &key, "value"]), "OK");
    }
}

#[test]
fn tls_replica_syncs_and_resumes_through_a_tls_link_to_a_tls_only_master() {
    let certs = Certs::new();
    let master = TlsServer::start(Kind::Redis, &certs, &[]);
    write_keys(&master, "before", 500);
    let proxy = Proxy::start(Kind::Redis, master.tls_port, &link_tls(&certs));
    let mut replica = tls_replica(&certs, proxy.port);
    converged(&master, &replica);
    assert_eq!(proxy.metric("replguard_full_syncs_total", ""), 1.0);

    // The stream, then a restart: the replica resumes partially over TLS on both sides.
    write_keys(&master, "streamed", 200);
    converged(&master, &replica);
    replica.restart();
    write_keys(&master, "after", 100);
    converged(&master, &replica);
    let ok = info_field(&mut master.client(), "stats", "sync_partial_ok");
    assert_eq!(
        ok.as_deref(),
        Some("1"),
        "the master served a partial resync"
    );
    assert_eq!(proxy.metric("replguard_partial_syncs_total", ""), 1.0);
    assert_eq!(proxy.verdicts("pass", "none"), 2.0);
    // replguard's own INFO reads reach the TLS master too: the ledger knows its id.
    let id = info_field(&mut master.client(), "replication", "master_replid").unwrap();
    wait_for(LIMIT, "the ledger to know the master's id", || {
        proxy.status().to_string().contains(&id).then_some(())
    });
    assert_eq!(
        proxy.metric("replguard_tls_handshake_failures_total", ""),
        0.0
    );
}

/// Reads whatever comes back until the peer closes or goes quiet.
fn read_all(sock: &mut std::net::TcpStream) -> Vec<u8> {
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match sock.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    out
}

#[test]
fn a_tls_link_port_gives_nothing_to_plaintext_or_certificateless_clients() {
    let certs = Certs::new();
    let master = TlsServer::start(Kind::Redis, &certs, &[]);
    write_keys(&master, "secret", 10);
    let proxy = Proxy::start(Kind::Redis, master.tls_port, &link_tls(&certs));

    // A plaintext client asking for the dataset.
    let mut plain = std::net::TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    plain
        .write_all(b"*1\r\n$4\r\nPING\r\n*3\r\n$5\r\nPSYNC\r\n$1\r\n?\r\n$2\r\n-1\r\n")
        .unwrap();
    let got = read_all(&mut plain);
    let text = String::from_utf8_lossy(&got);
    assert!(
        !text.contains("PONG") && !text.contains("FULLRESYNC") && !text.contains("secret"),
        "a plaintext client got {text:?}"
    );
    assert!(
        got.first().is_none_or(|b| !b"+-$*:".contains(b)),
        "a plaintext client got a RESP answer: {text:?}"
    );

    // A TLS client without a certificate.
    let refused = certs
        .client(proxy.port, false)
        .and_then(|mut c| c.try_cmd(&["PING"]));
    assert!(
        !matches!(refused, Ok(Reply::SimpleString(_))),
        "a client without a certificate got {refused:?}"
    );
    wait_for(LIMIT, "both refusals to be counted", || {
        (proxy.metric("replguard_tls_handshake_failures_total", "") >= 2.0).then_some(())
    });

    // A client with one reaches the master through the link.
    let mut ok = certs.client(proxy.port, true).unwrap();
    assert_eq!(ok.text(&["PING"]), "PONG");
}

#[test]
fn check_names_a_tls_file_that_does_not_load() {
    let certs = Certs::new();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("rg.yaml");
    std::fs::write(
        &cfg,
        format!(
            "state_dir: ./state\nadmin: {{ listen: 127.0.0.1:1 }}\nlinks:\n  - name: main\n    listen: 127.0.0.1:2\n    master: 127.0.0.1:3\n    flavor: redis\n    guard: enforce\n    tls: {{ cert_file: missing.crt, key_file: {} }}\n  - name: second\n    listen: 127.0.0.1:4\n    master: 127.0.0.1:5\n    flavor: redis\n    guard: enforce\n    master_tls: {{ ca_file: {} }}\n",
            certs.path("server.key").display(),
            certs.path("server.key").display(),
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_replguard"))
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "check accepted it: {err}");
    assert!(
        err.contains("links[0].tls.cert_file: cannot read")
            && err.contains(&dir.path().join("missing.crt").display().to_string()),
        "{err}"
    );
    assert!(
        err.contains("links[1].master_tls.ca_file:") && err.contains("no PEM certificate"),
        "{err}"
    );
}

#[test]
fn sighup_reads_the_link_certificate_again() {
    let (a, b) = (Certs::new(), Certs::new());
    let master = Server::start(Kind::Redis, &[]);
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("link.crt"), dir.path().join("link.key"));
    let install = |c: &Certs| {
        std::fs::copy(c.path("server.crt"), &cert).unwrap();
        std::fs::copy(c.path("server.key"), &key).unwrap();
    };
    install(&a);
    let [port, admin] = free_ports();
    let cfg = dir.path().join("rg.yaml");
    std::fs::write(
        &cfg,
        format!(
            "state_dir: ./state\nadmin: {{ listen: 127.0.0.1:{admin} }}\nlinks:\n  - name: main\n    listen: 127.0.0.1:{port}\n    master: 127.0.0.1:{}\n    flavor: redis\n    guard: enforce\n    tls: {{ cert_file: link.crt, key_file: link.key }}\n",
            master.port
        ),
    )
    .unwrap();
    let rg = Replguard::run(&cfg, &dir.path().join("rg.log"), |_| {});
    let ping = |c: &Certs| {
        c.client(port, false)
            .and_then(|mut cl| cl.try_cmd(&["PING"]))
            .ok()
    };
    wait_for(LIMIT, "the TLS link port to answer", || ping(&a));
    assert!(ping(&b).is_none(), "a client trusting another CA connected");

    install(&b);
    rg.signal("-HUP");
    rg.wait_log("TLS certificates read again");
    wait_for(LIMIT, "the new certificate to be presented", || ping(&b));
    assert!(ping(&a).is_none(), "the old certificate is still presented");

    // A key file that no longer matches: the certificate in force stays.
    std::fs::copy(a.path("server.key"), &key).unwrap();
    rg.signal("-HUP");
    rg.wait_log("the TLS material in force stays");
    assert!(ping(&b).is_some(), "a bad reload replaced the certificate");
}

#[test]
fn a_client_refused_at_accept_on_a_tls_port_gets_no_clear_text() {
    let certs = Certs::new();
    let master = Server::start(Kind::Redis, &[]);
    let link = format!(
        "    allow_from: [10.0.0.0/8]\n    tls: {{ cert_file: {}, key_file: {} }}\n",
        certs.path("server.crt").display(),
        certs.path("server.key").display(),
    );
    let proxy = Proxy::start(Kind::Redis, master.port, &link);
    let mut plain = std::net::TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    plain.write_all(b"*1\r\n$4\r\nPING\r\n").unwrap();
    let got = read_all(&mut plain);
    assert!(
        got.is_empty(),
        "a refused client got {:?}",
        String::from_utf8_lossy(&got)
    );
    wait_for(LIMIT, "the refusal to be counted", || {
        (proxy.metric(
            "replguard_connections_refused_total",
            "reason=\"allow_from\"",
        ) >= 1.0)
            .then_some(())
    });
}
