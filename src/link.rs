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
//!
//! The master a link dials is the configuration's `master` until an operator re-points the
//! link ([`LinkCtx::repoint`]). A re-point is kept in `<state_dir>/<link>.master.json` with the
//! configuration's `master` of that time:
//! 1. at start, while the configuration still names that master, the re-point wins; once the
//!    configuration names another (the operator edited it after), the configuration wins and
//!    the file is removed; one INFO line says which won and why;
//! 2. a reload changes the master only when the file's `master` changed, and then the
//!    configuration wins the same way;
//! 3. a re-point back to the configuration's master removes the file.
//!
//! A master given by name is resolved at every dial, and every address it resolves to is tried
//! in the resolver's order (see [`LinkCtx::dial_master`]).

use crate::config::{parse_addr, reaches, same_master, Credentials, LinkConfig, MasterAddr};
use crate::conn::admission::{Admission, Refusal};
use crate::conn::stats::{LinkCounters, SessionSnapshot, SessionState, SessionStats};
use crate::conn::tls::LinkTls;
use crate::conn::{Peer, SessionEnd, Side, Stream};
use crate::guard::ledger::now_unix;
use crate::guard::{Books, Guard};
use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
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
    /// The master sessions dial, where it came from and how the last dial went; a lock
    /// because it can be re-pointed at runtime.
    master: RwLock<MasterState>,
    /// Where a re-point of this link is kept.
    master_file: PathBuf,
    /// Serialises changes of the master (re-points, reloads), so the file and the master in
    /// force never tell two stories.
    master_change: tokio::sync::Mutex<()>,
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
    /// Sessions that ended because the master could not be dialled: when that was last logged,
    /// and how many since (every client of a node that is down ends so).
    dial_failures: std::sync::Mutex<(Option<std::time::Instant>, u64)>,
    flavour: Box<dyn Flavour>,
}

impl LinkCtx {
    /// Builds a link from a validated configuration, its `books` (opened under the master
    /// `start` chose) and that master; `cancel` is the process-wide token, parent of the link's
    /// own.
    pub fn new(
        cfg: LinkConfig,
        books: Arc<Books>,
        start: MasterAtStart,
        cancel: &CancellationToken,
        flavour: Box<dyn Flavour>,
    ) -> anyhow::Result<Self> {
        let MasterAtStart {
            addr: master,
            source,
            file: master_file,
            ..
        } = start;
        let credentials = match &cfg.auth {
            Some(a) => Some(a.resolve().map_err(anyhow::Error::msg)?),
            None => None,
        };
        let tls = LinkTls::load(cfg.tls.as_ref(), cfg.master_tls.as_ref(), &master)
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
            dial_failures: std::sync::Mutex::new((None, 0)),
            cfg: RwLock::new(Arc::new(cfg)),
            master: RwLock::new(MasterState {
                addr: master,
                source,
                dialled: None,
                dial_error: None,
            }),
            master_file,
            master_change: tokio::sync::Mutex::new(()),
            credentials: RwLock::new(credentials),
            tls: RwLock::new(tls),
            bound: std::sync::OnceLock::new(),
            counters: LinkCounters::default(),
            sessions: DashMap::new(),
            flavour,
        })
    }

    /// The master new sessions dial.
    pub fn master(&self) -> MasterAddr {
        self.master_state().addr
    }

    /// The master new sessions dial, where it came from and how the last dial went.
    pub fn master_state(&self) -> MasterState {
        self.master
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
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
    /// link's own (what a node of a group announces) and the node's (a name's: what it resolved
    /// to at the last dial).
    fn name_node(&self) {
        let node = match self.master_state() {
            MasterState {
                addr: MasterAddr::Ip(a),
                ..
            } => Some(a),
            MasterState { dialled, .. } => dialled,
        };
        let addrs: Vec<SocketAddr> = self.bound.get().copied().into_iter().chain(node).collect();
        self.guard.set_node_addresses(&addrs);
    }

    /// The TLS material in force.
    pub fn tls(&self) -> LinkTls {
        self.tls.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reads the link's certificate files again (on reload, or when the master's address the
    /// default server name comes from changes); on an error the material in force stays.
    pub fn reload_tls(&self, cfg: &LinkConfig) -> Result<(), crate::conn::tls::TlsError> {
        let tls = LinkTls::load(cfg.tls.as_ref(), cfg.master_tls.as_ref(), &self.master())?;
        *self.tls.write().unwrap_or_else(|p| p.into_inner()) = tls;
        Ok(())
    }

    /// Dials the master, over TLS when the link says so; the connect timeout bounds the whole
    /// dial: the name's lookup, the TCP connects and the TLS handshake. The caller counts a
    /// failed TLS handshake when it should.
    pub async fn dial_master(&self) -> Result<Stream, SessionEnd> {
        let master = self.master();
        let limit = self.cfg().timeouts.connect();
        let tls = self.tls();
        let deadline = Instant::now() + limit;
        let dial = async {
            let tcp = self.connect_master(&master, deadline).await?;
            let _ = tcp.set_nodelay(true);
            tls.connect(tcp).await.map_err(|e| SessionEnd::Tls {
                side: Side::Master,
                reason: e.to_string(),
            })
        };
        let r = timeout(limit, dial).await.unwrap_or_else(|_| {
            Err(SessionEnd::Connect {
                addr: master.to_string(),
                reason: format!("no answer within {} ms", limit.as_millis()),
            })
        });
        if let Err(e) = &r {
            self.note_dial_error(&master, e);
        }
        r
    }

    /// Opens a TCP connection to `master`. A name is looked up now (every dial looks it up
    /// again, so a failed dial is followed by a fresh lookup), and its addresses are tried in
    /// the resolver's order until one accepts, each given an equal share of the time left
    /// before `deadline`: a name with an IPv6 and an IPv4 address (`localhost`) reaches a
    /// master listening on either, and one address that does not answer leaves time for the
    /// next. An address that is this link's own listener is skipped.
    async fn connect_master(
        &self,
        master: &MasterAddr,
        deadline: Instant,
    ) -> Result<TcpStream, SessionEnd> {
        let fail = |reason: String| SessionEnd::Connect {
            addr: master.to_string(),
            reason,
        };
        let addrs = master
            .resolve()
            .await
            .map_err(|e| fail(format!("the name does not resolve: {e}")))?;
        let own = if master.is_name() { self.bound() } else { None };
        let (tcp, addr) = connect_first(&addrs, own, master.is_name(), deadline)
            .await
            .map_err(fail)?;
        self.note_dialled(master, addr);
        Ok(tcp)
    }

    /// Notes the address a dial of `master` connected to; a name's new address is logged.
    fn note_dialled(&self, master: &MasterAddr, addr: SocketAddr) {
        let mut m = self.master.write().unwrap_or_else(|p| p.into_inner());
        if m.addr != *master {
            return;
        }
        let (before, failing) = (m.dialled.replace(addr), m.dial_error.take());
        drop(m);
        if master.is_name() && before != Some(addr) {
            self.name_node();
        }
        if master.is_name() && (before != Some(addr) || failing.is_some()) {
            info!(link = %self.name, master = %master, address = %addr,
                  previous = %before.map_or_else(|| "-".to_string(), |a| a.to_string()),
                  "master name resolved: dialling this address");
        }
    }

    /// Notes why a dial of `master` failed, for /status; a name that stops resolving is
    /// logged once, until a dial succeeds.
    fn note_dial_error(&self, master: &MasterAddr, e: &SessionEnd) {
        let mut m = self.master.write().unwrap_or_else(|p| p.into_inner());
        if m.addr != *master {
            return;
        }
        let first = m.dial_error.is_none();
        m.dial_error = Some(e.to_string());
        drop(m);
        let unresolved = matches!(e, SessionEnd::Connect { reason, .. } if reason.starts_with("the name does not resolve"));
        if first && unresolved {
            warn!(link = %self.name, master = %master, error = %e,
                  "the master's name does not resolve; the link reports the master unreachable and looks the name up again at every dial");
        }
    }

    /// The token the next session is cancelled by.
    fn session_token(&self) -> CancellationToken {
        self.session_cancel
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .child_token()
    }

    /// Points the link at another master on an operator's word (failover following), and keeps
    /// it in `state_dir` so that a restart dials it too while the configuration names the master
    /// it names now; a re-point back to the configuration's master removes what was kept.
    /// `Err`: the re-point is in force, but a restart would not find it as it is (why, and
    /// what a restart would do).
    pub async fn repoint(&self, addr: MasterAddr) -> Result<(), String> {
        let _one_at_a_time = self.master_change.lock().await;
        let configured = self.cfg().master.clone();
        let back_to_configuration = MasterAddr::parse(&configured).is_ok_and(|c| c == addr);
        if back_to_configuration {
            let kept = self.drop_kept().await.map_err(|e| {
                format!("{e}: a restart would dial the earlier re-point until the file is removed")
            });
            self.set_master(addr, MasterSource::Configuration, &configured)
                .await;
            return kept;
        }
        let record = KeptMaster {
            link: self.name.clone(),
            master: addr.to_string(),
            set_at_unix: now_unix(),
            configured_master: configured,
        };
        let path = self.master_file.clone();
        let rec = record.clone();
        let kept = tokio::task::spawn_blocking(move || rec.save(&path))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
            .map_err(|e| {
                format!(
                    "the re-point is not kept (cannot write {}: {e}): a restart would dial the configuration's master",
                    self.master_file.display()
                )
            });
        if let Err(e) = &kept {
            error!(link = %self.name, master = %record.master, configured = %record.configured_master,
                   error = %e, "the re-point is in force but not kept in state_dir");
        }
        let source = MasterSource::Repoint {
            at_unix: record.set_at_unix,
        };
        self.set_master(addr, source, &record.master).await;
        kept
    }

    /// Removes the kept re-point, if there is one.
    async fn drop_kept(&self) -> Result<(), String> {
        let path = self.master_file.clone();
        let r = tokio::task::spawn_blocking(move || remove_kept(&path))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
            .map_err(|e| format!("cannot remove {}: {e}", self.master_file.display()));
        if let Err(e) = &r {
            error!(link = %self.name, error = %e, "the kept re-point could not be removed");
        }
        r
    }

    /// Puts `addr` in force as the master, from `source`; `ledger_master` is how the ledger file
    /// names it from now on (as a restart will name it). A new address closes the link's
    /// sessions so every replica reconnects and is judged against the new master's lineage.
    async fn set_master(&self, addr: MasterAddr, source: MasterSource, ledger_master: &str) {
        let old = {
            let mut m = self.master.write().unwrap_or_else(|p| p.into_inner());
            m.source = source;
            if m.addr == addr {
                None
            } else {
                m.dialled = None;
                m.dial_error = None;
                Some(std::mem::replace(&mut m.addr, addr.clone()))
            }
        };
        self.guard.set_master(ledger_master);
        let Some(old) = old else { return };
        self.guard.node_replaced();
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
    /// `master` that changed in the file re-points the link and wins over an operator's
    /// re-point; one that did not change leaves the master in force as it is, re-point
    /// included. `auth` is read again, and when its secret cannot be read the link keeps its
    /// credentials and its `auth`.
    pub async fn reconfigure(&self, new: &LinkConfig) -> Reconfigured {
        let _one_at_a_time = self.master_change.lock().await;
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
        // The file's master against the file's previous one, never against a run-time re-point.
        let repoint = if same_master(&next.master, &old.master) {
            next.master = old.master.clone();
            None
        } else {
            MasterAddr::parse(&next.master).ok()
        };
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
        let dial = repoint.clone().unwrap_or_else(|| self.master());
        match LinkTls::load(next.tls.as_ref(), next.master_tls.as_ref(), &dial) {
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
        let configured = next.master.clone();
        self.set_cfg(next);
        if let Some(addr) = repoint {
            let st = self.master_state();
            if let MasterSource::Repoint { at_unix } = st.source {
                info!(link = %self.name, master = %addr, repointed = %st.addr,
                      repointed_at = %utc(at_unix), configured_before = %old.master,
                      "reload: the configuration's master changed after the re-point; the configuration wins and the re-point is dropped");
            }
            if self.drop_kept().await.is_err() {
                out.failed
                    .push("master (the kept re-point could not be removed)");
            }
            self.set_master(addr, MasterSource::Configuration, &configured)
                .await;
        }
        out
    }

    /// Reads the master's own view into the guard (as its flavour does); whether it could.
    pub async fn refresh_master(&self, limit: Duration) -> bool {
        self.flavour.refresh_master(self, limit).await
    }

    /// Runs `read` (a flavour's INFO reader) on a connection of replguard's own to the master,
    /// with the link's credentials, then `apply` to what it read, one reading at a time (so
    /// readings are applied in the order they were taken), within `limit`; whether it could.
    /// A failure is logged at debug level, as `cannot read <what>`: the master may simply be
    /// down, which sessions report.
    pub async fn read_master_with<T, F, Fut, E>(
        &self,
        limit: Duration,
        what: &str,
        read: F,
        apply: impl FnOnce(T),
    ) -> bool
    where
        F: FnOnce(Stream, Option<Credentials>) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: std::fmt::Display,
    {
        let creds = self.credentials();
        let attempt = async {
            // Waiting behind another reading counts against the limit too.
            let _one_at_a_time = self.poll_lock.lock().await;
            let s = self.dial_master().await.map_err(|e| e.to_string())?;
            let v = read(s, creds).await.map_err(|e| e.to_string())?;
            apply(v);
            Ok(())
        };
        let done: Result<(), String> = timeout(limit, attempt)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {} ms", limit.as_millis())));
        if let Err(e) = &done {
            tracing::debug!(link = %self.name, error = %e, "cannot read {what}");
        }
        done.is_ok()
    }

    /// Writes what live sessions delivered into the ledger (as open records).
    pub fn record_live_deliveries(&self) {
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
        let upstream = link.dial_master().await.inspect_err(|e| {
            if matches!(e, SessionEnd::Tls { .. }) {
                link.counters.tls_failures.fetch_add(1, Relaxed);
            }
        })?;
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
    } else if matches!(end, Err(SessionEnd::Connect { .. })) {
        // While the master is down every client's session ends so: one line a minute.
        match link.dial_failure_log_due() {
            Some(since) => {
                report!(warn);
                if since > 0 {
                    warn!(link = %link.name, sessions = since,
                          "sessions that ended because the master could not be dialled since the last such line (logged once a minute)");
                }
            }
            None => report!(debug),
        }
    } else if routine {
        report!(info);
    } else {
        report!(warn);
    }
}

/// Least time between two log lines about sessions that could not dial the master.
const DIAL_FAILURE_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

impl LinkCtx {
    /// Whether a session that could not dial the master is logged now: the first, then one a
    /// minute. `Some(n)`: log it, `n` such sessions having gone unlogged since the last line.
    fn dial_failure_log_due(&self) -> Option<u64> {
        let mut d = self.dial_failures.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        match d.0 {
            Some(at) if now.duration_since(at) < DIAL_FAILURE_LOG_EVERY => {
                d.1 = d.1.saturating_add(1);
                None
            }
            _ => {
                d.0 = Some(now);
                Some(std::mem::take(&mut d.1))
            }
        }
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

/// Connects to the first of `addrs` that accepts, in order, each but the last given an equal
/// share of the time left before `deadline` (the caller bounds the last, and the whole); an
/// address that reaches `own` (the link's listener) is skipped. `Err`: what each address answered, prefixed with the address when `named` (for
/// an IP master the address is already in the message around it).
async fn connect_first(
    addrs: &[SocketAddr],
    own: Option<SocketAddr>,
    named: bool,
    deadline: Instant,
) -> Result<(TcpStream, SocketAddr), String> {
    let at = |a: SocketAddr| {
        if named {
            format!("{a}: ")
        } else {
            String::new()
        }
    };
    let mut why = Vec::new();
    for (i, &a) in addrs.iter().enumerate() {
        if own.is_some_and(|b| reaches(a, b)) {
            why.push(format!("{a} is this link's own listener, skipped"));
            continue;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let share = left / u32::try_from(addrs.len() - i).unwrap_or(u32::MAX);
        let connect = TcpStream::connect(a);
        let answer = if i + 1 == addrs.len() {
            // The last address has what is left: the caller's bound ends its dial.
            Ok(connect.await)
        } else {
            timeout(share, connect).await
        };
        match answer {
            Ok(Ok(s)) => return Ok((s, a)),
            Ok(Err(e)) => why.push(format!("{}{e}", at(a))),
            Err(_) => why.push(format!(
                "{}no answer within {} ms",
                at(a),
                share.as_millis()
            )),
        }
    }
    Err(why.join("; "))
}

/// Where the master in force came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MasterSource {
    /// The configuration's `master`.
    Configuration,
    /// An operator's re-point (`POST /links/<name>/master`), at this time (Unix seconds); kept
    /// in `state_dir` until the configuration's `master` changes.
    Repoint { at_unix: u64 },
}

/// The master a link dials, where it came from, and how the last dial went.
#[derive(Debug, Clone)]
pub struct MasterState {
    pub addr: MasterAddr,
    pub source: MasterSource,
    /// The address the last successful dial connected to (what a name resolved to).
    pub dialled: Option<SocketAddr>,
    /// Why the last dial failed, until one succeeds.
    pub dial_error: Option<String>,
}

/// The file a link's re-point is kept in.
pub fn kept_master_path(state_dir: &Path, link: &str) -> PathBuf {
    state_dir.join(format!("{link}.master.json"))
}

/// A master set at run time, as kept in `<state_dir>/<link>.master.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeptMaster {
    /// The link it belongs to.
    pub link: String,
    /// The master the link was re-pointed at.
    pub master: String,
    /// When, in Unix seconds.
    pub set_at_unix: u64,
    /// The configuration's `master` at that time: while the configuration still names it, the
    /// re-point wins at start.
    pub configured_master: String,
}

impl KeptMaster {
    /// Reads a kept re-point: `Ok(None)` when there is none; `Err` says why the file cannot be
    /// used.
    fn load(path: &Path, link: &str) -> Result<Option<KeptMaster>, String> {
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read it: {e}")),
        };
        let k: KeptMaster = serde_json::from_slice(&text)
            .map_err(|e| format!("it is not a kept re-point ({e})"))?;
        if k.link != link {
            return Err(format!("it belongs to link {}", k.link));
        }
        MasterAddr::parse(&k.master).map_err(|e| format!("master: {e}"))?;
        Ok(Some(k))
    }

    /// Writes the file by atomic replace, with the ledger's writer: a crash leaves the old or
    /// the new file whole.
    fn save(&self, path: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        crate::guard::store::write_atomic(path, &bytes)
    }
}

/// Removes a kept re-point (none is fine), durably.
fn remove_kept(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::File::open(dir)?.sync_all()
}

/// Which master a link starts with, and why.
#[derive(Debug, PartialEq, Eq)]
enum AtStart {
    /// No re-point is kept.
    Configuration,
    /// The re-point wins: the configuration still names the master it named then.
    Repoint,
    /// The configuration wins: its master changed after the re-point.
    Superseded,
}

/// The rule: a kept re-point wins while the configuration names the master it named when the
/// re-point was made.
fn who_wins(configured: &str, kept: Option<&KeptMaster>) -> AtStart {
    match kept {
        None => AtStart::Configuration,
        Some(k) if same_master(&k.configured_master, configured) => AtStart::Repoint,
        Some(_) => AtStart::Superseded,
    }
}

/// The master a link starts with: the configuration's, or a re-point kept in `state_dir` (see
/// the module's documentation). It is chosen before the link's ledger is opened, as the ledger
/// file names the master it was kept for.
#[derive(Debug)]
pub struct MasterAtStart {
    addr: MasterAddr,
    source: MasterSource,
    /// How the link's own ledger file names the master: as the re-point wrote it there, or as
    /// the configuration does.
    pub ledger_master: String,
    /// Where a re-point of the link is kept.
    file: PathBuf,
}

impl MasterAtStart {
    /// Chooses, and logs which won when a re-point was kept; a kept re-point that lost to the
    /// configuration is removed.
    pub fn choose(cfg: &LinkConfig, state_dir: &Path) -> anyhow::Result<MasterAtStart> {
        let file = kept_master_path(state_dir, &cfg.name);
        let (addr, source, ledger_master) = master_at_start(cfg, &file)?;
        Ok(MasterAtStart {
            addr,
            source,
            ledger_master,
            file,
        })
    }
}

/// The master a link starts with, where it came from, and how its ledger file names it; logs
/// which won when a re-point was kept. A kept file that cannot be read stops the link: picking
/// the configuration's master then could roll the replicas back to a superseded master.
fn master_at_start(
    cfg: &LinkConfig,
    path: &Path,
) -> anyhow::Result<(MasterAddr, MasterSource, String)> {
    let configured = MasterAddr::parse(&cfg.master).map_err(anyhow::Error::msg)?;
    let kept = KeptMaster::load(path, &cfg.name).map_err(|e| {
        anyhow::anyhow!(
            "{}: {e}; replguard cannot tell which master the link was last pointed at. Remove the file to start on the configuration's master ({})",
            path.display(),
            cfg.master
        )
    })?;
    let link = cfg.name.as_str();
    match (who_wins(&cfg.master, kept.as_ref()), kept) {
        (AtStart::Repoint, Some(k)) => {
            let addr = MasterAddr::parse(&k.master).map_err(anyhow::Error::msg)?;
            info!(link, master = %k.master, configured = %cfg.master,
                  repointed_at = %utc(k.set_at_unix), file = %path.display(),
                  "master in force: the re-point wins, as the configuration still names the master it named when the link was re-pointed");
            let source = MasterSource::Repoint {
                at_unix: k.set_at_unix,
            };
            Ok((addr, source, k.master))
        }
        (AtStart::Superseded, Some(k)) => {
            info!(link, master = %cfg.master, repointed = %k.master,
                  repointed_at = %utc(k.set_at_unix), configured_then = %k.configured_master,
                  "master in force: the configuration wins, as its master was changed after the re-point; the re-point is dropped");
            if let Err(e) = remove_kept(path) {
                warn!(link, file = %path.display(), error = %e, "cannot remove the dropped re-point; it is ignored while the configuration names another master");
            }
            Ok((configured, MasterSource::Configuration, cfg.master.clone()))
        }
        _ => Ok((configured, MasterSource::Configuration, cfg.master.clone())),
    }
}

/// A Unix time as UTC, `2025-01-31T12:00:00Z`.
pub fn utc(at_unix: u64) -> String {
    let (days, secs) = (at_unix / 86_400, at_unix % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3_600,
        secs % 3_600 / 60,
        secs % 60
    )
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

    fn kept(master: &str, configured: &str) -> KeptMaster {
        KeptMaster {
            link: "a".into(),
            master: master.into(),
            set_at_unix: 1_700_000_000,
            configured_master: configured.into(),
        }
    }

    #[test]
    fn a_kept_repoint_wins_while_the_configuration_names_the_master_it_named() {
        assert_eq!(who_wins("10.0.0.1:6379", None), AtStart::Configuration);
        let k = kept("10.0.0.2:6379", "10.0.0.1:6379");
        assert_eq!(who_wins("10.0.0.1:6379", Some(&k)), AtStart::Repoint);
        // Spelt differently, the same master.
        let k = kept("10.0.0.2:6379", "DB-0.example:6379");
        assert_eq!(who_wins("db-0.example:6379", Some(&k)), AtStart::Repoint);
        // Edited after the re-point: to the re-pointed master, or to another one.
        let k = kept("10.0.0.2:6379", "10.0.0.1:6379");
        assert_eq!(who_wins("10.0.0.2:6379", Some(&k)), AtStart::Superseded);
        assert_eq!(who_wins("10.0.0.3:6379", Some(&k)), AtStart::Superseded);
    }

    #[test]
    fn the_master_at_start_comes_from_the_kept_file_or_the_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = link("");
        let path = kept_master_path(dir.path(), &cfg.name);
        assert_eq!(path, dir.path().join("a.master.json"));
        let (m, source, ledger) = master_at_start(&cfg, &path).unwrap();
        assert_eq!(m.to_string(), "127.0.0.1:3");
        assert_eq!(source, MasterSource::Configuration);
        assert_eq!(ledger, "127.0.0.1:3");

        kept("localhost:7000", "127.0.0.1:3").save(&path).unwrap();
        let (m, source, ledger) = master_at_start(&cfg, &path).unwrap();
        assert_eq!(m.to_string(), "localhost:7000");
        assert_eq!(
            source,
            MasterSource::Repoint {
                at_unix: 1_700_000_000
            }
        );
        assert_eq!(ledger, "localhost:7000");
        assert!(path.exists(), "a re-point that wins stays kept");

        kept("localhost:7000", "127.0.0.1:9").save(&path).unwrap();
        let (m, source, _) = master_at_start(&cfg, &path).unwrap();
        assert_eq!(m.to_string(), "127.0.0.1:3");
        assert_eq!(source, MasterSource::Configuration);
        assert!(!path.exists(), "a superseded re-point is removed");

        // A file that cannot be used stops the link, naming the file and the way out.
        for bad in [
            "{ not json".to_string(),
            serde_json::to_string(&KeptMaster {
                link: "other".into(),
                ..kept("127.0.0.1:7", "127.0.0.1:3")
            })
            .unwrap(),
            serde_json::to_string(&kept("no port", "127.0.0.1:3")).unwrap(),
        ] {
            std::fs::write(&path, &bad).unwrap();
            let e = master_at_start(&cfg, &path).unwrap_err().to_string();
            assert!(e.contains("a.master.json"), "{e}");
            assert!(e.contains("Remove the file"), "{e}");
        }
        // No temporary file is left behind by the saves.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
        remove_kept(&path).unwrap();
        remove_kept(&path).unwrap();
    }

    #[test]
    fn times_read_as_utc() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(utc(4_102_444_799), "2099-12-31T23:59:59Z");
    }

    /// Every address a name resolves to is tried in order: one that refuses (a master that
    /// listens on IPv4 only, dialled first on `::1`) leaves the next one its chance.
    #[tokio::test]
    async fn the_addresses_of_a_name_are_tried_in_order() {
        let open = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open_addr = open.local_addr().unwrap();
        let closed_addr = {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap()
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        let (_, got) = connect_first(&[closed_addr, open_addr], None, true, deadline)
            .await
            .unwrap();
        assert_eq!(got, open_addr);
        // The link's own listener is never dialled.
        let e = connect_first(&[open_addr], Some(open_addr), true, deadline)
            .await
            .unwrap_err();
        assert!(e.contains("this link's own listener, skipped"), "{e}");
        let e = connect_first(&[closed_addr], None, true, deadline)
            .await
            .unwrap_err();
        assert!(e.starts_with(&format!("{closed_addr}: ")), "{e}");
        let e = connect_first(&[closed_addr], None, false, deadline)
            .await
            .unwrap_err();
        assert!(!e.contains(&closed_addr.to_string()), "{e}");
    }

    #[test]
    fn addresses_compare_as_addresses() {
        assert!(!same_addr("a", "b"));
        assert!(same_addr("[::1]:7000", "[0:0::1]:7000"));
        assert!(!same_addr("127.0.0.1:7000", "127.0.0.1:7001"));
    }
}
