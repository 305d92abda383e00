//! One configured link: the listener replicas connect to, the master it leads to, its bounded set
//! of sessions and its counters, the dial, and the keeper that folds the master's view and the
//! live books into the ledger.
//!
//! A link knows no server flavour: what a session does after the dial, how the master's own
//! view is read and how a session's books go into the ledger come from its [`Flavour`], which
//! the server picks from the configuration.
//!
//! A link's configuration can change while it runs (SIGHUP, [`LinkCtx::reconfigure`]): new
//! sessions and the keeper read the one in force; a session keeps the one it started with.

use crate::config::{parse_addr, Credentials, LinkConfig};
use crate::conn::admission::{Admission, Refusal};
use crate::conn::stats::{LinkCounters, SessionSnapshot, SessionState, SessionStats};
use crate::conn::tls::LinkTls;
use crate::conn::{Peer, SessionEnd, Side, Stream};
use crate::guard::{Books, Guard};
use dashmap::DashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn, Instrument};

/// Longest a refused connection is given to take its answer.
const REFUSAL_WRITE: Duration = Duration::from_secs(1);

/// Session ids are unique within the process.
static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

/// A boxed future, for the flavour's async hooks.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a server flavour brings to a link.
pub trait Flavour: Send + Sync {
    /// Runs a session on an established pair of connections, under the link's configuration
    /// as it was when the session started.
    fn session<'a>(
        &'a self,
        link: &'a LinkCtx,
        cfg: &'a LinkConfig,
        replica: Peer<Stream>,
        master: Peer<Stream>,
        stats: &'a SessionStats,
    ) -> BoxFuture<'a, Result<(), SessionEnd>>;

    /// Reads the master's own view into the guard; whether it could.
    fn refresh_master<'a>(&'a self, link: &'a LinkCtx, limit: Duration) -> BoxFuture<'a, bool>;

    /// Writes what a streaming session delivered into the ledger; `open` while it goes on.
    fn record_delivery(&self, link: &LinkCtx, s: &SessionSnapshot, open: bool);
}

/// What every session of a link shares.
pub struct LinkCtx {
    /// The link's name; it never changes (a link renamed in the file is another link).
    pub name: String,
    /// The configuration in force; a reload replaces it whole.
    cfg: RwLock<Arc<LinkConfig>>,
    /// The master sessions dial; a lock because it can be re-pointed at runtime.
    master: RwLock<SocketAddr>,
    /// Resolved credentials for the master, if configured; a reload reads the secret again.
    credentials: RwLock<Option<Credentials>>,
    /// TLS material for the link port and the dial; replaced on reload.
    tls: RwLock<LinkTls>,
    /// The address its listener is bound to, once bound.
    bound: std::sync::OnceLock<SocketAddr>,
    /// Counters that outlive sessions.
    pub counters: LinkCounters,
    /// Live sessions by id.
    pub sessions: DashMap<u64, Arc<SessionStats>>,
    /// Who may hold a connection, on which budget: `allow_from`, the cap per source address,
    /// `max_clients` and `max_sessions`.
    pub admission: Arc<Admission>,
    /// The lineage guard: ledger, verdict bookkeeping.
    pub guard: Guard,
    /// Fires when the link stops: at shutdown, or when a reload removes it. Parent of every
    /// token of the link (accept loop, keeper, sessions).
    pub stop: CancellationToken,
    /// The link's tasks: its accept loop, its keeper and its sessions.
    pub tasks: TaskTracker,
    /// Cancels this link's sessions (replaced when the master is re-pointed).
    session_cancel: std::sync::Mutex<CancellationToken>,
    /// Serializes reads of the master so their results are folded in in order.
    pub poll_lock: tokio::sync::Mutex<()>,
    flavour: Box<dyn Flavour>,
}

impl LinkCtx {
    /// Builds a link from a validated configuration; `cancel` is the process-wide token, parent
    /// of the link's own.
    pub fn new(
        cfg: LinkConfig,
        books: Arc<Books>,
        cancel: &CancellationToken,
        flavour: Box<dyn Flavour>,
    ) -> anyhow::Result<Self> {
        let master = parse_addr(&cfg.master).map_err(anyhow::Error::msg)?;
        let credentials = match &cfg.auth {
            Some(a) => Some(a.resolve().map_err(anyhow::Error::msg)?),
            None => None,
        };
        let tls = LinkTls::load(cfg.tls.as_ref(), cfg.master_tls.as_ref(), master)
            .map_err(|e| anyhow::anyhow!("link {}: {e}", cfg.name))?;
        let guard = Guard::new(
            &cfg.name,
            books,
            cfg.unknown_replica,
            cfg.allow_empty_master,
        );
        let stop = cancel.child_token();
        Ok(LinkCtx {
            name: cfg.name.clone(),
            admission: Arc::new(Admission::new(&cfg)),
            guard,
            session_cancel: std::sync::Mutex::new(stop.child_token()),
            stop,
            tasks: TaskTracker::new(),
            poll_lock: tokio::sync::Mutex::new(()),
            cfg: RwLock::new(Arc::new(cfg)),
            master: RwLock::new(master),
            credentials: RwLock::new(credentials),
            tls: RwLock::new(tls),
            bound: std::sync::OnceLock::new(),
            counters: LinkCounters::default(),
            sessions: DashMap::new(),
            flavour,
        })
    }

    /// The master new sessions dial.
    pub fn master(&self) -> SocketAddr {
        *self.master.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The configuration in force.
    pub fn cfg(&self) -> Arc<LinkConfig> {
        self.cfg.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_cfg(&self, cfg: LinkConfig) {
        *self.cfg.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(cfg);
    }

    /// Credentials for the master, if the link has them.
    pub fn credentials(&self) -> Option<Credentials> {
        self.credentials
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The address the link's listener is bound to.
    pub fn bound(&self) -> Option<SocketAddr> {
        self.bound.get().copied()
    }

    /// Notes the address the link's listener was bound to.
    pub fn set_bound(&self, addr: SocketAddr) {
        let _ = self.bound.set(addr);
        self.name_node();
    }

    /// Tells the guard which addresses the node behind the link presents as a replica: the
    /// link's own (what a node of a group announces) and the node's.
    fn name_node(&self) {
        let addrs: Vec<SocketAddr> = self
            .bound
            .get()
            .copied()
            .into_iter()
            .chain([self.master()])
            .collect();
        self.guard.set_node_addresses(&addrs);
    }

    /// The TLS material in force.
    pub fn tls(&self) -> LinkTls {
        self.tls.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reads the link's certificate files again (on reload, or when the master's address the
    /// default server name comes from changes); on an error the material in force stays.
    pub fn reload_tls(&self, cfg: &LinkConfig) -> Result<(), crate::conn::tls::TlsError> {
        let tls = LinkTls::load(cfg.tls.as_ref(), cfg.master_tls.as_ref(), self.master())?;
        *self.tls.write().unwrap_or_else(|p| p.into_inner()) = tls;
        Ok(())
    }

    /// Dials the master, over TLS when the link says so; the connect timeout bounds both the
    /// TCP connect and the TLS handshake.
    pub async fn dial_master(&self) -> Result<Stream, SessionEnd> {
        let addr = self.master();
        let limit = self.cfg().timeouts.connect();
        let tls = self.tls();
        let dial = async {
            let tcp = TcpStream::connect(addr)
                .await
                .map_err(|e| SessionEnd::Connect {
                    addr,
                    reason: e.to_string(),
                })?;
            let _ = tcp.set_nodelay(true);
            tls.connect(tcp).await.map_err(|e| {
                self.counters.tls_failures.fetch_add(1, Relaxed);
                SessionEnd::Tls {
                    side: Side::Master,
                    reason: e.to_string(),
                }
            })
        };
        timeout(limit, dial).await.unwrap_or_else(|_| {
            Err(SessionEnd::Connect {
                addr,
                reason: format!("no answer within {} ms", limit.as_millis()),
            })
        })
    }

    /// The token the next session is cancelled by.
    fn session_token(&self) -> CancellationToken {
        self.session_cancel
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .child_token()
    }

    /// Points the link at another master: its sessions are closed so every replica reconnects
    /// and is judged against the new master's lineage. The configuration in force then names
    /// the new master.
    pub async fn repoint(&self, addr: SocketAddr) {
        let old = self.master();
        *self.master.write().unwrap_or_else(|p| p.into_inner()) = addr;
        let mut cfg = (*self.cfg()).clone();
        cfg.master = addr.to_string();
        self.guard.set_master(&cfg.master);
        self.set_cfg(cfg);
        self.name_node();
        let previous = std::mem::replace(
            &mut *self
                .session_cancel
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
            self.stop.child_token(),
        );
        previous.cancel();
        if self.cfg().master_tls.is_some() {
            // The name the master's certificate is checked against may be its address.
            if let Err(e) = self.reload_tls(&self.cfg()) {
                warn!(link = %self.name, error = %e, "re-point: the TLS material in force stays");
            }
        }
        info!(link = %self.name, %old, new = %addr, "master re-pointed; closing this link's sessions");
        self.refresh_master(self.cfg().timeouts.handshake_step())
            .await;
    }

    /// Puts `new` (a validated configuration of this link) in force, except what only a restart
    /// can change (`listen`, `flavor`), which stays as it was and is listed in the answer. A
    /// `master` that changed re-points the link; `auth` is read again, and when its secret
    /// cannot be read the link keeps its credentials and its `auth`.
    pub async fn reconfigure(&self, new: &LinkConfig) -> Reconfigured {
        let old = self.cfg();
        let mut next = new.clone();
        let mut out = Reconfigured::default();
        if !same_addr(&next.listen, &old.listen) {
            out.needs_restart.push("listen");
        }
        next.listen = old.listen.clone();
        if next.group != old.group {
            out.needs_restart.push("group");
            next.group = old.group.clone();
        }
        if next.flavor != old.flavor {
            out.needs_restart.push("flavor");
            next.flavor = old.flavor;
        }
        let repoint = parse_addr(&next.master)
            .ok()
            .filter(|a| *a != self.master());
        if repoint.is_none() {
            next.master = old.master.clone();
        }
        let credentials = match &next.auth {
            None => None,
            Some(auth) => match auth.resolve() {
                Ok(c) => Some(c),
                Err(e) => {
                    error!(link = %self.name, error = %e,
                           "reload: cannot read the link's password; it keeps its credentials and auth");
                    out.failed.push("auth");
                    next.auth = old.auth.clone();
                    self.credentials()
                }
            },
        };
        // TLS files are read again whether or not their paths changed (renewed certificates
        // keep their names); a `tls` or `master_tls` taken out of the file is taken off.
        let dial = repoint.unwrap_or_else(|| self.master());
        match LinkTls::load(next.tls.as_ref(), next.master_tls.as_ref(), dial) {
            Ok(tls) => {
                if next.tls.is_some() || next.master_tls.is_some() {
                    info!(link = %self.name, "reload: TLS certificates read again");
                }
                *self.tls.write().unwrap_or_else(|p| p.into_inner()) = tls;
            }
            Err(e) => {
                error!(link = %self.name, error = %e, "reload: the TLS material in force stays");
                out.failed.push("tls");
                next.tls = old.tls.clone();
                next.master_tls = old.master_tls.clone();
            }
        }
        out.changed = changed_fields(&old, &next);
        if credentials != self.credentials() {
            if !out.changed.iter().any(|f| f.starts_with("auth")) {
                out.changed.push("auth (password)".into());
            }
            *self.credentials.write().unwrap_or_else(|p| p.into_inner()) = credentials;
        }
        if next.unknown_replica != old.unknown_replica {
            self.guard.set_unknown_replica(next.unknown_replica);
        }
        if next.allow_empty_master != old.allow_empty_master {
            self.guard.set_allow_empty_master(next.allow_empty_master);
        }
        self.admission.reconfigure(&next);
        self.guard.set_max_replica_records(next.max_replica_records);
        self.set_cfg(next);
        if let Some(addr) = repoint {
            self.repoint(addr).await;
        }
        out
    }

    /// Reads the master's own view into the guard (as its flavour does); whether it could.
    pub async fn refresh_master(&self, limit: Duration) -> bool {
        self.flavour.refresh_master(self, limit).await
    }

    /// Writes what live sessions delivered into the ledger (as open records).
    fn record_live_deliveries(&self) {
        for s in self.sessions.iter() {
            if s.state() != SessionState::Streaming {
                continue;
            }
            self.flavour.record_delivery(self, &s.snapshot(), true);
        }
    }

    /// Writes what other live sessions of `replica` delivered into the ledger, so a PSYNC from
    /// a replica whose previous connection is still winding down is judged on its live books,
    /// not on the last periodic flush.
    pub fn record_live_books_of(&self, replica: &str, except: u64) {
        for s in self.sessions.iter() {
            if s.id == except || s.state() != SessionState::Streaming {
                continue;
            }
            let snap = s.snapshot();
            if snap.replica == replica {
                self.flavour.record_delivery(self, &snap, true);
            }
        }
    }

    /// Snapshots of the live sessions, oldest first.
    pub fn snapshots(&self) -> Vec<SessionSnapshot> {
        let mut v: Vec<_> = self.sessions.iter().map(|s| s.snapshot()).collect();
        v.sort_by_key(|s| s.id);
        v
    }
}

/// Accepts replicas on `listener` until `cancel` fires; sessions run on `tracker`.
pub async fn serve(
    link: Arc<LinkCtx>,
    listener: TcpListener,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let (mut sock, peer) = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    warn!(link = %link.name, error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let id = NEXT_SESSION.fetch_add(1, Relaxed);
        let pass = match link.admission.admit(peer.ip(), id) {
            Ok(p) => p,
            Err(refusal) => {
                link.admission.refused(peer, &refusal);
                // A TLS link port says nothing in clear: the refused client only sees a close.
                let msg = (!link.tls().serves_tls()).then(|| refusal.answer());
                tracker.spawn(async move {
                    let _ = timeout(REFUSAL_WRITE, async {
                        if let Some(msg) = msg {
                            sock.write_all(msg.as_bytes()).await?;
                        }
                        sock.shutdown().await
                    })
                    .await;
                });
                continue;
            }
        };
        let stats = Arc::new(SessionStats::new(id, &link.name, peer));
        link.sessions.insert(id, stats.clone());
        link.counters.sessions_total.fetch_add(1, Relaxed);
        let span = tracing::info_span!("session", link = %link.name, id, %peer);
        let link2 = link.clone();
        let cancel2 = link.session_token();
        tracker.spawn(
            async move {
                debug!("replica connected");
                let end = run_session(&link2, sock, &stats, cancel2).await;
                // The books go into the ledger while the session is still listed: a PSYNC of
                // the same replica judged meanwhile finds them either way.
                let s = stats.snapshot();
                if s.state == SessionState::Streaming {
                    link2.flavour.record_delivery(&link2, &s, false);
                }
                link2.sessions.remove(&id);
                finish(&link2, peer, s, end).await;
                drop(pass);
            }
            .instrument(span),
        );
    }
}

/// Runs one session to its end: dials the master, then the flavour's session; shutdown or a
/// re-point cancels it.
async fn run_session(
    link: &LinkCtx,
    replica: TcpStream,
    stats: &SessionStats,
    cancel: CancellationToken,
) -> Result<(), SessionEnd> {
    let cfg = link.cfg();
    let dial = async {
        let _ = replica.set_nodelay(true);
        // A TLS link port: the replica's handshake, bounded like a handshake step.
        let limit = cfg.timeouts.handshake_step();
        let replica = match timeout(limit, link.tls().accept(replica)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(tls_refused(link, e.to_string())),
            Err(_) => {
                return Err(tls_refused(
                    link,
                    format!("no TLS handshake within {} ms", limit.as_millis()),
                ))
            }
        };
        let upstream = link.dial_master().await?;
        let r = Peer::new(replica, Side::Replica);
        let m = Peer::new(upstream, Side::Master);
        link.flavour.session(link, &cfg, r, m, stats).await
    };
    tokio::select! {
        r = dial => r,
        _ = cancel.cancelled() => Err(SessionEnd::Shutdown),
    }
}

/// A replica's TLS handshake failed: counted, and the session ends with the reason.
fn tls_refused(link: &LinkCtx, reason: String) -> SessionEnd {
    link.counters.tls_failures.fetch_add(1, Relaxed);
    SessionEnd::Tls {
        side: Side::Replica,
        reason,
    }
}

/// Logs the end of a session with its books, at a level chosen by whose fault it was; a
/// refusal is counted and logged by the link's admission (once per source a minute).
async fn finish(link: &LinkCtx, peer: SocketAddr, s: SessionSnapshot, end: Result<(), SessionEnd>) {
    link.counters.add_ended(&s);
    if let Err(SessionEnd::Refused(r)) = &end {
        if matches!(r, Refusal::MaxSessions { .. }) {
            link.counters.sessions_refused.fetch_add(1, Relaxed);
        }
        link.admission.refused(peer, r);
    }
    if s.state == SessionState::Streaming {
        link.guard.save_if_dirty().await;
    }
    let reason = match &end {
        Ok(()) => "completed".to_string(),
        Err(e) => e.to_string(),
    };
    let routine = end.as_ref().map_or_else(|e| e.is_routine(), |_| true);
    if !routine {
        link.counters.session_errors.fetch_add(1, Relaxed);
    }
    macro_rules! report {
        ($lvl:ident) => {
            $lvl!(
                replica = s.replica.as_str(),
                state = s.state.as_str(),
                replid = s.replid.as_deref().unwrap_or("-"),
                start_offset = %Number(s.start_offset),
                expected_offset = %Number(s.expected_offset),
                ack_offset = %Number(s.ack_offset),
                delivered_bytes = s.delivered_bytes,
                rdb_bytes = s.rdb_bytes,
                seconds = format_args!("{:.1}", s.connected_seconds),
                reason = %reason,
                "session ended"
            )
        };
    }
    if matches!(end, Err(SessionEnd::Held | SessionEnd::Refused(_))) {
        // A hold is in the guard's decision line, logged once a minute while it lasts; a
        // refusal in the admission's line, once per source a minute.
        report!(debug);
    } else if routine {
        report!(info);
    } else {
        report!(warn);
    }
}

/// An offset for a log line: the number, or `-` when there is none.
struct Number(Option<u64>);

impl std::fmt::Display for Number {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(n) => write!(f, "{n}"),
            None => f.write_str("-"),
        }
    }
}

/// Longest a PSYNC waits for a fresh read of the master's INFO before it is judged on what the
/// ledger already knows.
pub const PSYNC_INFO_TIMEOUT: Duration = Duration::from_secs(2);

/// How often live deliveries are written to the ledger; bounds what an unclean stop can lose.
pub const LEDGER_FLUSH_EVERY: Duration = Duration::from_millis(200);

/// Keeps the link's ledger current: reads the master every `lineage_poll_ms` (as in force at
/// each turn), records live deliveries and saves the ledger when it changed, until `cancel`
/// fires.
pub async fn keep(link: Arc<LinkCtx>, cancel: CancellationToken) {
    let mut last_poll: Option<std::time::Instant> = None;
    loop {
        let cfg = link.cfg();
        let poll_every = Duration::from_millis(cfg.lineage_poll_ms);
        if last_poll.is_none_or(|t| t.elapsed() >= poll_every) {
            last_poll = Some(std::time::Instant::now());
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = link.refresh_master(cfg.timeouts.handshake_step()) => {}
            }
        }
        link.record_live_deliveries();
        link.guard.save_if_dirty().await;
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(LEDGER_FLUSH_EVERY.min(poll_every)) => {}
        }
    }
}

/// What [`LinkCtx::reconfigure`] did.
#[derive(Debug, Default)]
pub struct Reconfigured {
    /// Fields now in force with a new value, as YAML paths within the link (`timeouts.connect_ms`).
    pub changed: Vec<String>,
    /// Fields whose new value needs a restart; they keep their old value.
    pub needs_restart: Vec<&'static str>,
    /// Fields whose new value could not be applied; they keep their old value.
    pub failed: Vec<&'static str>,
}

/// Whether two addresses from the configuration are the same (as parsed; as text when one does
/// not parse).
pub(crate) fn same_addr(a: &str, b: &str) -> bool {
    match (parse_addr(a), parse_addr(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// The fields that differ between two configurations of one link, as YAML paths, in the
/// schema's order.
fn changed_fields(old: &LinkConfig, new: &LinkConfig) -> Vec<String> {
    use serde_yaml::Value;
    fn walk(prefix: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
        match (a, b) {
            (Value::Mapping(x), Value::Mapping(y)) => {
                let keys = x.keys().chain(y.keys().filter(|k| !x.contains_key(*k)));
                for k in keys {
                    let name = k.as_str().unwrap_or("?");
                    let path = if prefix.is_empty() {
                        name.to_string()
                    } else {
                        format!("{prefix}.{name}")
                    };
                    let (va, vb) = (x.get(k), y.get(k));
                    walk(
                        &path,
                        va.unwrap_or(&Value::Null),
                        vb.unwrap_or(&Value::Null),
                        out,
                    );
                }
            }
            _ if a != b => out.push(prefix.to_string()),
            _ => {}
        }
    }
    let (Ok(a), Ok(b)) = (serde_yaml::to_value(old), serde_yaml::to_value(new)) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    walk("", &a, &b, &mut out);
    out
}

/// The links in force, in configuration order: the admin endpoints read them, a reload
/// replaces the list whole.
#[derive(Default)]
pub struct Links(RwLock<Arc<Vec<Arc<LinkCtx>>>>);

impl Links {
    pub fn new(links: Vec<Arc<LinkCtx>>) -> Self {
        Links(RwLock::new(Arc::new(links)))
    }

    /// The links now.
    pub fn load(&self) -> Arc<Vec<Arc<LinkCtx>>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the list.
    pub fn store(&self, links: Vec<Arc<LinkCtx>>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(links);
    }

    /// The link named `name`, if there is one now.
    pub fn find(&self, name: &str) -> Option<Arc<LinkCtx>> {
        self.load().iter().find(|l| l.name == name).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(extra: &str) -> LinkConfig {
        let guard = if extra.contains("guard:") {
            ""
        } else {
            ", guard: enforce"
        };
        let yaml = format!(
            "state_dir: /tmp/x\nadmin: {{ listen: 127.0.0.1:1 }}\nlinks:\n  - {{ name: a, listen: 127.0.0.1:2, master: 127.0.0.1:3, flavor: redis{guard}{extra} }}\n"
        );
        crate::config::Config::from_yaml(&yaml, "t.yaml")
            .unwrap()
            .links
            .remove(0)
    }

    #[test]
    fn changed_fields_are_named_by_their_path_in_schema_order() {
        let old = link("");
        assert!(changed_fields(&old, &old).is_empty());
        let new = link(
            ", lineage_poll_ms: 50, guard: observe, timeouts: { sync_idle_ms: 9, connect_ms: 8 }, auth: { password_env: HOME }",
        );
        assert_eq!(
            changed_fields(&old, &new),
            [
                "guard",
                "auth",
                "timeouts.connect_ms",
                "timeouts.sync_idle_ms",
                "lineage_poll_ms"
            ]
        );
        let other = link(", auth: { password_env: PATH }");
        assert_eq!(
            changed_fields(&link(", auth: { password_env: HOME }"), &other),
            ["auth.password_env"]
        );
    }

    #[test]
    fn addresses_compare_as_addresses() {
        assert!(!same_addr("a", "b"));
        assert!(same_addr("[::1]:7000", "[0:0::1]:7000"));
        assert!(!same_addr("127.0.0.1:7000", "127.0.0.1:7001"));
    }
}
