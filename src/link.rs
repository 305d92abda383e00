//! One configured link: the listener replicas connect to, the master it leads to, its bounded set
//! of sessions and its counters, the dial, and the keeper that folds the master's view and the
//! live books into the ledger.
//!
//! A link knows no server flavour: what a session does after the dial, how the master's own
//! view is read and how a session's books go into the ledger come from its [`Flavour`], which
//! the server picks from the configuration.

use crate::config::{parse_addr, Credentials, LinkConfig};
use crate::conn::stats::{LinkCounters, SessionSnapshot, SessionState, SessionStats};
use crate::conn::tls::LinkTls;
use crate::conn::{Peer, SessionEnd, Side, Stream};
use crate::guard::Guard;
use dashmap::DashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

/// Session ids are unique within the process.
static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

/// A boxed future, for the flavour's async hooks.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a server flavour brings to a link.
pub trait Flavour: Send + Sync {
    /// Runs a session on an established pair of connections.
    fn session<'a>(
        &'a self,
        link: &'a LinkCtx,
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
    /// The link's configuration as loaded.
    pub cfg: LinkConfig,
    /// The master sessions dial; a lock because it can be re-pointed at runtime.
    master: RwLock<SocketAddr>,
    /// Resolved credentials for the master, if configured.
    credentials: Option<Credentials>,
    /// TLS material for the link port and the dial; replaced on reload.
    tls: RwLock<LinkTls>,
    /// Counters that outlive sessions.
    pub counters: LinkCounters,
    /// Live sessions by id.
    pub sessions: DashMap<u64, Arc<SessionStats>>,
    /// Bounds the number of live sessions.
    permits: Arc<Semaphore>,
    /// The lineage guard: ledger, verdict bookkeeping.
    pub guard: Guard,
    /// Cancels this link's sessions (replaced when the master is re-pointed).
    session_cancel: std::sync::Mutex<CancellationToken>,
    /// Serializes reads of the master so their results are folded in in order.
    pub poll_lock: tokio::sync::Mutex<()>,
    flavour: Box<dyn Flavour>,
}

impl LinkCtx {
    /// Builds a link from a validated configuration; `cancel` is the process-wide token.
    pub fn new(
        cfg: LinkConfig,
        state_dir: &Path,
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
        if cfg
            .master_tls
            .as_ref()
            .is_some_and(|t| t.cert_file.is_some())
            && cfg.tls.as_ref().is_none_or(|t| t.client_ca_file.is_none())
        {
            warn!(link = %cfg.name,
                  "master_tls presents replguard's client certificate for every replica session, \
                   and the link port asks replicas for none: set tls.client_ca_file");
        }
        let guard = Guard::open(
            state_dir,
            &cfg.name,
            &cfg.master,
            cfg.unknown_replica,
            cfg.allow_empty_master,
        );
        Ok(LinkCtx {
            permits: Arc::new(Semaphore::new(cfg.max_sessions)),
            guard,
            session_cancel: std::sync::Mutex::new(cancel.child_token()),
            poll_lock: tokio::sync::Mutex::new(()),
            cfg,
            master: RwLock::new(master),
            credentials,
            tls: RwLock::new(tls),
            counters: LinkCounters::default(),
            sessions: DashMap::new(),
            flavour,
        })
    }

    /// The master new sessions dial.
    pub fn master(&self) -> SocketAddr {
        *self.master.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Credentials for the master, if the link has them.
    pub fn credentials(&self) -> Option<Credentials> {
        self.credentials.clone()
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
        let limit = self.cfg.timeouts.connect();
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
    /// and is judged against the new master's lineage.
    pub async fn repoint(&self, addr: SocketAddr, parent: &CancellationToken) {
        let old = self.master();
        *self.master.write().unwrap_or_else(|p| p.into_inner()) = addr;
        let previous = std::mem::replace(
            &mut *self
                .session_cancel
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
            parent.child_token(),
        );
        previous.cancel();
        if self.cfg.master_tls.is_some() {
            // The name the master's certificate is checked against may be its address.
            if let Err(e) = self.reload_tls(&self.cfg) {
                warn!(link = %self.cfg.name, error = %e, "re-point: the TLS material in force stays");
            }
        }
        info!(link = %self.cfg.name, %old, new = %addr, "master re-pointed; closing this link's sessions");
        self.refresh_master(self.cfg.timeouts.handshake_step())
            .await;
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
                    warn!(link = %link.cfg.name, error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = link.permits.clone().try_acquire_owned() else {
            link.counters.sessions_refused.fetch_add(1, Relaxed);
            warn!(link = %link.cfg.name, %peer, max = link.cfg.max_sessions,
                  "session refused: the link is at max_sessions");
            let msg = format!(
                "-ERR replguard: link {} is at its limit of {} sessions\r\n",
                link.cfg.name, link.cfg.max_sessions
            );
            tracker.spawn(async move {
                let _ = sock.write_all(msg.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
            continue;
        };
        let id = NEXT_SESSION.fetch_add(1, Relaxed);
        let stats = Arc::new(SessionStats::new(id, &link.cfg.name, peer));
        link.sessions.insert(id, stats.clone());
        link.counters.sessions_total.fetch_add(1, Relaxed);
        let span = tracing::info_span!("session", link = %link.cfg.name, id, %peer);
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
                finish(&link2, s, end).await;
                drop(permit);
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
    let dial = async {
        let _ = replica.set_nodelay(true);
        // A TLS link port: the replica's handshake, bounded like a handshake step.
        let limit = link.cfg.timeouts.handshake_step();
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
        link.flavour.session(link, r, m, stats).await
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

/// Logs the end of a session with its books, at a level chosen by whose fault it was.
async fn finish(link: &LinkCtx, s: SessionSnapshot, end: Result<(), SessionEnd>) {
    link.counters.add_ended(&s);
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
    if matches!(end, Err(SessionEnd::Held)) {
        // Its hold is in the guard's decision line, logged once a minute while it lasts.
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

/// Keeps the link's ledger current: reads the master every `lineage_poll_ms`, records live
/// deliveries and saves the ledger when it changed, until `cancel` fires.
pub async fn keep(link: Arc<LinkCtx>, cancel: CancellationToken) {
    let poll_every = Duration::from_millis(link.cfg.lineage_poll_ms);
    let mut last_poll: Option<std::time::Instant> = None;
    loop {
        if last_poll.is_none_or(|t| t.elapsed() >= poll_every) {
            last_poll = Some(std::time::Instant::now());
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = link.refresh_master(link.cfg.timeouts.handshake_step()) => {}
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
