//! One configured link: the listener replicas connect to, the master it leads to, its bounded set
//! of sessions and its counters, the dial, and the keeper that folds the master's view and the
//! live books into the ledger.
//!
//! A link knows no server flavour: what a session does after the dial, how the master's own
//! view is read and how a session's books go into the ledger come from its [`Flavour`], which
//! the server picks from the configuration.

use crate::config::{parse_addr, Credentials, LinkConfig};
use crate::conn::admission::{Admission, Refusal};
use crate::conn::stats::{LinkCounters, SessionSnapshot, SessionState, SessionStats};
use crate::conn::{Peer, SessionEnd, Side};
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
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

/// Longest a refused connection is given to take its answer.
const REFUSAL_WRITE: Duration = Duration::from_secs(1);

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
        replica: Peer<TcpStream>,
        master: Peer<TcpStream>,
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
    /// Counters that outlive sessions.
    pub counters: LinkCounters,
    /// Live sessions by id.
    pub sessions: DashMap<u64, Arc<SessionStats>>,
    /// Who may hold a connection, on which budget: `allow_from`, the cap per source address,
    /// `max_clients` and `max_sessions`.
    pub admission: Arc<Admission>,
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
        let guard = Guard::open(
            state_dir,
            &cfg.name,
            &cfg.master,
            cfg.unknown_replica,
            cfg.allow_empty_master,
            cfg.max_replica_records,
        );
        Ok(LinkCtx {
            admission: Arc::new(Admission::new(&cfg)),
            guard,
            session_cancel: std::sync::Mutex::new(cancel.child_token()),
            poll_lock: tokio::sync::Mutex::new(()),
            cfg,
            master: RwLock::new(master),
            credentials,
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
        let id = NEXT_SESSION.fetch_add(1, Relaxed);
        let pass = match link.admission.admit(peer.ip(), id) {
            Ok(p) => p,
            Err(refusal) => {
                link.admission.refused(peer, &refusal);
                let msg = refusal.answer();
                tracker.spawn(async move {
                    let _ = timeout(REFUSAL_WRITE, async {
                        sock.write_all(msg.as_bytes()).await?;
                        sock.shutdown().await
                    })
                    .await;
                });
                continue;
            }
        };
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
    let dial = async {
        let addr = link.master();
        let limit = link.cfg.timeouts.connect();
        let upstream = match timeout(limit, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return Err(SessionEnd::Connect {
                    addr,
                    reason: e.to_string(),
                })
            }
            Err(_) => {
                return Err(SessionEnd::Connect {
                    addr,
                    reason: format!("no answer within {} ms", limit.as_millis()),
                })
            }
        };
        let _ = upstream.set_nodelay(true);
        let _ = replica.set_nodelay(true);
        let r = Peer::new(replica, Side::Replica);
        let m = Peer::new(upstream, Side::Master);
        link.flavour.session(link, r, m, stats).await
    };
    tokio::select! {
        r = dial => r,
        _ = cancel.cancelled() => Err(SessionEnd::Shutdown),
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
