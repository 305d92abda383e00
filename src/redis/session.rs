//! One replica connection: dial the master, relay the handshake command by command, then relay
//! the sync and the command stream byte for byte while keeping the offset books.
//!
//! The flow of one session:
//! 1. Dial the link's master (connect timeout), TCP_NODELAY on both sockets.
//! 2. Handshake: read one command from the replica, forward it, read exactly one reply from the
//!    master, forward it. Bare newlines are forwarded and never answered. replguard may add its
//!    own `AUTH` (link credentials) and `REPLCONF ip-address`; their replies are swallowed.
//!    `REPLCONF capa dual-channel` is removed so a Valkey replica syncs over this one connection.
//! 3. A command that no replica sends in its handshake turns the session into a plain
//!    bidirectional pipe: an ordinary client passes through unchanged.
//! 4. `PSYNC` goes through [`crate::guard::route::route`]; its reply decides the relay's starting point:
//!    `+FULLRESYNC` (payload then stream), `+CONTINUE` (stream), an error (back to the handshake,
//!    where the replica may fall back to `SYNC`).
//! 5. Relay: master-to-replica bytes are watched by [`Downstream`] and forwarded unchanged; after a
//!    diskless payload the stream waits for the replica's first `REPLCONF ACK`. Replica-to-master
//!    bytes are forwarded at once and scanned for ACK offsets.
//! 6. Whichever side closes or fails first ends both: the replica then reconnects and resumes with
//!    its own replication id and offset. Shutdown cancels the session the same way.

use crate::config::{Credentials, Flavor};
use crate::conn::stats::{SessionState, SessionStats};
use crate::guard::route::{self, PsyncRequest, Route};
use crate::guard::verdict::Verdict;
use crate::link::LinkCtx;
use crate::redis::stream::{Downstream, Event};
use crate::wire::resp::{
    encode_command, parse_offset, Command, CommandParser, LineScanner, ProtocolError, ReplyScanner,
};
use bytes::{Buf, BytesMut};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Size of the master-to-replica relay buffer; bounds a session's memory with the one below.
const DOWN_BUF: usize = 64 * 1024;
/// Size of the replica-to-master relay buffer (ACKs are small).
const UP_BUF: usize = 8 * 1024;
/// Longest PSYNC reply line (`+FULLRESYNC <40> <offset>` is about 75 bytes).
const MAX_REPLY_LINE: usize = 1024;
/// How long a client refused for a protocol error gets to read replguard's answer.
const REFUSE_GRACE: Duration = Duration::from_secs(1);
/// Most bytes of a refused client's input discarded while it reads the answer.
const REFUSE_DRAIN: usize = 1024 * 1024;

/// Which side of the session something concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Replica,
    Master,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Replica => "replica",
            Side::Master => "master",
        })
    }
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionEnd {
    #[error("{0} closed the connection")]
    Closed(Side),
    #[error("replguard is shutting down")]
    Shutdown,
    #[error("cannot connect to master {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    #[error("{side} connection failed: {err}")]
    Io { side: Side, err: io::Error },
    #[error("{side} sent bytes that are not valid here: {err}")]
    Protocol { side: Side, err: ProtocolError },
    #[error("{side} sent nothing for {after:?} while replguard waited for {step}")]
    Timeout {
        side: Side,
        step: &'static str,
        after: Duration,
    },
    #[error("master refused replguard's credentials: {0}")]
    UpstreamAuth(String),
    #[error("master answered PSYNC with {0:?}, which replguard does not relay")]
    Unsupported(String),
    #[error("held by the lineage guard (answered -LOADING)")]
    Held,
    #[error("master refused the sync with {0:?} (relayed to the replica)")]
    SyncRefused(String),
    #[error("the master's stream skipped sequences {expected}..={}; closed before the batch that starts at {got} (guard: enforce)", .got - 1)]
    StreamGap { expected: u64, got: u64 },
}

impl SessionEnd {
    /// Whether the end is routine (a peer went away or replguard stopped) rather than a fault.
    pub fn is_routine(&self) -> bool {
        matches!(
            self,
            SessionEnd::Closed(_) | SessionEnd::Shutdown | SessionEnd::Held
        )
    }
}

pub(crate) type Result<T> = std::result::Result<T, SessionEnd>;

/// A byte source with a buffer and a name, so reads can be bounded by time and errors say
/// which side failed.
pub(crate) struct Peer<S> {
    pub(crate) io: S,
    pub(crate) buf: BytesMut,
    side: Side,
    /// Its place in the command being read, kept between reads.
    commands: CommandParser,
    /// Its place in the reply being read, kept between reads.
    replies: ReplyScanner,
    /// Its place in the line being read, kept between reads.
    lines: LineScanner,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Peer<S> {
    fn new(io: S, side: Side) -> Self {
        Peer {
            io,
            buf: BytesMut::with_capacity(4096),
            side,
            commands: CommandParser::handshake(),
            replies: ReplyScanner::handshake(),
            lines: LineScanner::default(),
        }
    }

    /// Reads more bytes into the buffer; a clean close is `Closed`.
    async fn fill(&mut self, limit: Option<(Duration, &'static str)>) -> Result<()> {
        let read = self.io.read_buf(&mut self.buf);
        let n = match limit {
            Some((after, step)) => timeout(after, read)
                .await
                .map_err(|_| SessionEnd::Timeout {
                    side: self.side,
                    step,
                    after,
                })?,
            None => read.await,
        }
        .map_err(|err| SessionEnd::Io {
            side: self.side,
            err,
        })?;
        if n == 0 {
            return Err(SessionEnd::Closed(self.side));
        }
        Ok(())
    }

    pub(crate) async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.io
            .write_all(bytes)
            .await
            .map_err(|err| SessionEnd::Io {
                side: self.side,
                err,
            })
    }

    fn protocol(&self, err: ProtocolError) -> SessionEnd {
        SessionEnd::Protocol {
            side: self.side,
            err,
        }
    }

    /// Reads one command from a client, whole and checked before any of it goes further (a
    /// command no handshake sends is read up to its name: see [`CommandParser::handshake`]).
    /// A client whose bytes break the protocol or a limit is answered `-ERR Protocol error`,
    /// as Redis answers it, before its session ends.
    pub(crate) async fn command(
        &mut self,
        limit: Option<(Duration, &'static str)>,
    ) -> Result<(Command, BytesMut)> {
        loop {
            match self.commands.parse(&self.buf) {
                Ok(Some((cmd, used))) => return Ok((cmd, self.buf.split_to(used))),
                Ok(None) => self.fill(limit).await?,
                Err(err) => {
                    self.refuse(&err).await;
                    return Err(self.protocol(err));
                }
            }
        }
    }

    /// Answers a client's protocol error and lets it read the answer: the write side is shut
    /// and its further input discarded for a moment, since closing on unread input would
    /// reset the connection and could take the answer with it. Bounded in time and bytes.
    async fn refuse(&mut self, err: &ProtocolError) {
        let text = err.to_string().replace(['\r', '\n'], " ");
        let answer = format!("-ERR Protocol error: {text}\r\n");
        let _ = timeout(REFUSE_GRACE, async {
            self.io.write_all(answer.as_bytes()).await?;
            self.io.shutdown().await?;
            let mut sink = [0u8; 4096];
            let mut left = REFUSE_DRAIN;
            while left > 0 {
                match self.io.read(&mut sink).await? {
                    0 => break,
                    n => left = left.saturating_sub(n),
                }
            }
            Ok::<_, io::Error>(())
        })
        .await;
    }

    /// Reads one complete reply from the master. A bare newline counts as a reply, as the
    /// replica itself would read it.
    pub(crate) async fn reply(&mut self, after: Duration, step: &'static str) -> Result<BytesMut> {
        loop {
            if self.buf.first() == Some(&b'\n') {
                return Ok(self.buf.split_to(1));
            }
            if let Some(used) = self.replies.scan(&self.buf).map_err(|e| self.protocol(e))? {
                return Ok(self.buf.split_to(used));
            }
            self.fill(Some((after, step))).await?;
        }
    }

    /// Reads one line (without its CRLF) and the exact bytes it took.
    pub(crate) async fn line(
        &mut self,
        after: Duration,
        step: &'static str,
    ) -> Result<(String, BytesMut)> {
        loop {
            if let Some((text, used)) = self
                .lines
                .scan(&self.buf, MAX_REPLY_LINE)
                .map_err(|e| self.protocol(e))?
            {
                let text = String::from_utf8_lossy(text).into_owned();
                return Ok((text, self.buf.split_to(used)));
            }
            self.fill(Some((after, step))).await?;
        }
    }
}

/// What the handshake learned, used to decide what replguard adds on its own.
#[derive(Debug, Default)]
pub(crate) struct Handshake {
    /// The replica authenticated itself successfully.
    client_authed: bool,
    /// replguard already sent its own AUTH.
    proxy_authed: bool,
    /// The replica announced `REPLCONF ip-address` (or replguard did for it).
    ip_announced: bool,
    /// The client sent a replication-only command, so it is a replica.
    is_replica: bool,
}

/// Runs one session to its end.
pub async fn run(
    link: Arc<LinkCtx>,
    replica: TcpStream,
    stats: Arc<SessionStats>,
    cancel: CancellationToken,
) -> Result<()> {
    tokio::select! {
        r = session(&link, replica, &stats) => r,
        _ = cancel.cancelled() => Err(SessionEnd::Shutdown),
    }
}

async fn session(link: &LinkCtx, replica: TcpStream, stats: &SessionStats) -> Result<()> {
    let addr = link.master();
    let t = &link.cfg.timeouts;
    let upstream = match timeout(t.connect(), TcpStream::connect(addr)).await {
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
                reason: format!("no answer within {:?}", t.connect()),
            })
        }
    };
    let _ = upstream.set_nodelay(true);
    let _ = replica.set_nodelay(true);
    let mut r = Peer::new(replica, Side::Replica);
    let mut m = Peer::new(upstream, Side::Master);
    if link.cfg.flavor == Flavor::Kvrocks {
        return crate::kvrocks::session::run(link, r, m, stats).await;
    }
    let mut hs = Handshake::default();
    let step = t.handshake_step();

    loop {
        let (cmd, raw) = next_command(&mut r, &hs, step).await?;
        let name = cmd.name();
        match name.as_str() {
            "" => m.send(&raw).await?,
            "PING" | "AUTH" => exchange(&mut r, &mut m, &mut hs, &name, &raw, step).await?,
            "REPLCONF" => {
                replication_command(link, &mut m, &mut hs, step).await?;
                let rewritten = replconf(&cmd, stats, &mut hs);
                m.send(rewritten.as_deref().unwrap_or(&raw)).await?;
                if !is_ack(&cmd) {
                    let reply = m.reply(step, "a REPLCONF reply").await?;
                    r.send(&reply).await?;
                }
            }
            "PSYNC" | "SYNC" => {
                replication_command(link, &mut m, &mut hs, step).await?;
                announce_ip(link, &mut m, &mut hs, stats, step).await?;
                let req = if name == "SYNC" {
                    Some(PsyncRequest {
                        replid: "?".into(),
                        offset: -1,
                    })
                } else {
                    PsyncRequest::parse(&cmd)
                };
                if let Some(q) = &req {
                    stats.set_psync_request(&q.replid, q.offset);
                }
                // The master's own view first, so the verdict sees a failover or a restart
                // that happened since the last poll.
                if !link.refresh_master(crate::link::PSYNC_INFO_TIMEOUT).await {
                    warn!("cannot read the master's INFO: judging this PSYNC on the ledger alone");
                }
                let replica = stats.snapshot().replica;
                link.record_live_books_of(&replica, stats.id);
                let (verdict, facts) = match &req {
                    Some(q) => link.guard.judge(&replica, &q.replid, q.offset),
                    None => (
                        Verdict::Pass,
                        "unparseable PSYNC: the master answers it".into(),
                    ),
                };
                let route = route::route(link.cfg.guard, &verdict);
                let decision = DecisionCtx {
                    replica: &replica,
                    req: req.as_ref().map(|q| (q.replid.as_str(), q.offset)),
                    facts: &facts,
                    verdict: &verdict,
                    route: &route,
                };
                match &route {
                    Route::Hold(line) => {
                        r.send(line.as_bytes()).await?;
                        link.guard.holds.fetch_add(1, Relaxed);
                        decision.log(link, "-LOADING (from replguard)");
                        return Err(SessionEnd::Held);
                    }
                    Route::Full if name == "PSYNC" => m.send(route::FULL_SYNC_REQUEST).await?,
                    Route::Full | Route::Forward | Route::Refuse(_) => m.send(&raw).await?,
                }
                let down = if name == "SYNC" {
                    decision.log(link, "(inline SYNC: payload follows)");
                    stats.begin_full(None, None);
                    link.counters.full_syncs.fetch_add(1, Relaxed);
                    Downstream::full_sync()
                } else {
                    let (down, answer) =
                        psync_reply(link, &mut r, &mut m, stats, req.as_ref(), step).await?;
                    decision.log(link, &answer);
                    match down {
                        Some(down) => down,
                        // Rejected: the replica decides what to do next on this connection.
                        None => continue,
                    }
                };
                return relay(link, r, m, stats, down).await;
            }
            _ => return passthrough(link, r, m, stats, raw).await,
        }
    }
}

/// Reads the next handshake command. A client that has not shown it is a replica may sit idle
/// like any client; a replica's steps are timed.
pub(crate) async fn next_command<S: AsyncRead + AsyncWrite + Unpin>(
    r: &mut Peer<S>,
    hs: &Handshake,
    step: Duration,
) -> Result<(Command, BytesMut)> {
    let limit = hs
        .is_replica
        .then_some((step, "the next handshake command"));
    r.command(limit).await
}

/// Forwards `PING` or `AUTH` and relays its one reply; notes a successful `AUTH`.
pub(crate) async fn exchange<S, T>(
    r: &mut Peer<S>,
    m: &mut Peer<T>,
    hs: &mut Handshake,
    name: &str,
    raw: &[u8],
    step: Duration,
) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    m.send(raw).await?;
    let reply = m.reply(step, "a handshake reply").await?;
    if name == "AUTH" && reply.starts_with(b"+") {
        hs.client_authed = true;
    }
    r.send(&reply).await
}

/// The offset in a replica's `REPLCONF ACK <offset> [FACK <offset>]`; `None` for any other
/// command, and for a negative offset (a replica that could not read its sync offset counts
/// from -1), which the books cannot hold. An offset that is not a number, or does not fit the
/// master's own 64-bit offsets, is an error.
fn ack_offset(cmd: &Command) -> std::result::Result<Option<u64>, ProtocolError> {
    let is_ack = cmd.args.len() > 2
        && cmd.args[0].eq_ignore_ascii_case(b"REPLCONF")
        && cmd.args[1].eq_ignore_ascii_case(b"ACK");
    if !is_ack {
        return Ok(None);
    }
    let text = String::from_utf8_lossy(&cmd.args[2]);
    if text.parse::<i64>().is_ok_and(|o| o < 0) {
        return Ok(None);
    }
    parse_offset(&text, "the REPLCONF ACK offset").map(Some)
}

fn is_ack(cmd: &Command) -> bool {
    cmd.args
        .get(1)
        .is_some_and(|a| a.eq_ignore_ascii_case(b"ack") || a.eq_ignore_ascii_case(b"getack"))
}

/// Notes what a REPLCONF announces and returns a rewritten command when one must be sent
/// instead (dual-channel capability removed).
pub(crate) fn replconf(cmd: &Command, stats: &SessionStats, hs: &mut Handshake) -> Option<Vec<u8>> {
    let mut keep: Vec<&[u8]> = vec![&cmd.args[0]];
    let mut changed = false;
    for pair in cmd.args[1..].chunks(2) {
        let opt = &pair[0];
        let val = pair.get(1).map(|v| v.as_slice()).unwrap_or_default();
        if opt.eq_ignore_ascii_case(b"listening-port") {
            if let Ok(p) = std::str::from_utf8(val).unwrap_or("").parse() {
                stats.set_replica_port(p);
            }
        } else if opt.eq_ignore_ascii_case(b"ip-address") {
            hs.ip_announced = true;
            stats.set_replica_ip(&String::from_utf8_lossy(val));
        } else if opt.eq_ignore_ascii_case(b"capa") && val.eq_ignore_ascii_case(b"dual-channel") {
            changed = true;
            continue;
        }
        keep.extend(pair.iter().map(|a| a.as_slice()));
    }
    // A REPLCONF left with no options would be an error; keep the original then.
    (changed && keep.len() > 1).then(|| encode_command(&keep))
}

/// A replication command is about to be forwarded: the client is a replica from now on, and
/// replguard's own AUTH goes first if it is due.
pub(crate) async fn replication_command<S: AsyncRead + AsyncWrite + Unpin>(
    link: &LinkCtx,
    m: &mut Peer<S>,
    hs: &mut Handshake,
    step: Duration,
) -> Result<()> {
    hs.is_replica = true;
    proxy_auth(link, m, hs, step).await
}

/// Sends replguard's own AUTH once, before the first replication command, when the link has
/// credentials and the replica did not authenticate itself.
async fn proxy_auth<S: AsyncRead + AsyncWrite + Unpin>(
    link: &LinkCtx,
    m: &mut Peer<S>,
    hs: &mut Handshake,
    step: Duration,
) -> Result<()> {
    let Some(creds) = link.credentials() else {
        return Ok(());
    };
    if hs.client_authed || hs.proxy_authed {
        return Ok(());
    }
    hs.proxy_authed = true;
    m.send(&auth_command(&creds)).await?;
    let reply = m.reply(step, "the reply to replguard's AUTH").await?;
    if reply.starts_with(b"+") {
        Ok(())
    } else {
        Err(SessionEnd::UpstreamAuth(
            String::from_utf8_lossy(&reply).trim_end().to_string(),
        ))
    }
}

fn auth_command(c: &Credentials) -> Vec<u8> {
    match &c.user {
        Some(u) => encode_command(&["AUTH", u.as_str(), c.password.as_str()]),
        None => encode_command(&["AUTH", c.password.as_str()]),
    }
}

/// Tells the master the replica's real address when the replica did not.
async fn announce_ip<S: AsyncRead + AsyncWrite + Unpin>(
    link: &LinkCtx,
    m: &mut Peer<S>,
    hs: &mut Handshake,
    stats: &SessionStats,
    step: Duration,
) -> Result<()> {
    if !link.cfg.announce_replica_ip || hs.ip_announced {
        return Ok(());
    }
    hs.ip_announced = true;
    let ip = stats.peer.ip().to_string();
    m.send(&encode_command(&["REPLCONF", "ip-address", ip.as_str()]))
        .await?;
    let reply = m.reply(step, "the reply to REPLCONF ip-address").await?;
    if !reply.starts_with(b"+") {
        // The master keeps showing replguard's address; replication itself is unaffected.
        warn!(
            reply = %String::from_utf8_lossy(&reply).trim_end(),
            "master refused REPLCONF ip-address"
        );
    }
    Ok(())
}

/// Relays the PSYNC reply (after any keepalive newlines) and says where the relay starts;
/// `None` when the master refused and the handshake goes on.
async fn psync_reply<S, T>(
    link: &LinkCtx,
    r: &mut Peer<S>,
    m: &mut Peer<T>,
    stats: &SessionStats,
    req: Option<&PsyncRequest>,
    step: Duration,
) -> Result<(Option<Downstream>, String)>
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let (line, raw) = m.line(step, "the PSYNC reply").await?;
        let mut words = line.split_ascii_whitespace();
        let (first, replid) = (words.next(), words.next());
        // An offset replguard cannot keep books on ends the session before the replica sees it.
        let offset = match (first, words.next()) {
            (Some("+FULLRESYNC"), Some(o)) => {
                Some(parse_offset(o, "the +FULLRESYNC offset").map_err(|e| m.protocol(e))?)
            }
            _ => None,
        };
        r.send(&raw).await?;
        match first {
            None => continue, // keepalive while the master prepares
            Some("+FULLRESYNC") => {
                stats.begin_full(replid, offset);
                if let (Some(id), Some(off)) = (replid, offset) {
                    link.guard.saw_full_resync(id, off);
                }
                link.counters.full_syncs.fetch_add(1, Relaxed);
                return Ok((Some(Downstream::full_sync()), line));
            }
            Some("+CONTINUE") => {
                let replid = replid.or(req.map(|q| q.replid.as_str()));
                // The replica asked for the first byte it wants: the stream continues after
                // the one before it.
                let start = req.map_or(0, |q| {
                    u64::try_from(q.offset.saturating_sub(1)).unwrap_or(0)
                });
                stats.begin_partial(replid, start);
                if let Some(id) = replid {
                    link.guard
                        .delivered(&stats.snapshot().replica, id, start, true);
                }
                link.counters.partial_syncs.fetch_add(1, Relaxed);
                return Ok((Some(Downstream::partial()), line));
            }
            Some(w) if w.starts_with('-') => {
                link.counters.psync_rejected.fetch_add(1, Relaxed);
                return Ok((None, line));
            }
            Some(_) => return Err(SessionEnd::Unsupported(line)),
        }
    }
}

/// One guard decision, logged once the master's answer is known.
pub(crate) struct DecisionCtx<'a> {
    pub(crate) replica: &'a str,
    /// The requested id and offset (sequence for Kvrocks), when the PSYNC could be read.
    pub(crate) req: Option<(&'a str, i64)>,
    pub(crate) facts: &'a str,
    pub(crate) verdict: &'a Verdict,
    pub(crate) route: &'a Route,
}

impl DecisionCtx<'_> {
    /// One line per decision, counted, and kept as the replica's last verdict. A master that
    /// resumes a replica replguard judged inconsistent (observe mode) is called out.
    pub(crate) fn log(&self, link: &LinkCtx, answer: &str) {
        let (replid, offset) = self.req.unwrap_or(("-", 0));
        let reason = self.verdict.reason().map(|r| r.to_string());
        let first = answer
            .split_ascii_whitespace()
            .next()
            .unwrap_or("")
            .to_string();
        // `+OK` is a Kvrocks master's acceptance.
        let unsafe_accepted = matches!(self.verdict, Verdict::ForceFull(_))
            && matches!(first.as_str(), "+CONTINUE" | "+OK");
        if unsafe_accepted {
            link.guard.unsafe_accepted.fetch_add(1, Relaxed);
        }
        macro_rules! line {
            ($lvl:ident, $msg:expr) => {
                $lvl!(
                    mode = %link.cfg.guard,
                    replica = self.replica,
                    requested_replid = replid,
                    requested_offset = offset,
                    facts = self.facts,
                    verdict = self.verdict.name(),
                    reason = reason.as_deref().unwrap_or("-"),
                    action = self.route.action(),
                    master_answer = answer,
                    $msg
                )
            };
        }
        match self.verdict {
            Verdict::Pass => line!(info, "guard: pass"),
            _ if unsafe_accepted => line!(
                warn,
                "guard: the master RESUMED a replica whose resume point replguard judged inconsistent (observe mode): data may be missing on it"
            ),
            Verdict::ForceFull(_) => line!(warn, "guard: force full sync"),
            Verdict::Hold(_) => line!(warn, "guard: hold"),
        }
        link.guard.record(
            self.replica,
            self.verdict,
            crate::guard::Decision {
                at_unix: crate::guard::ledger::now_unix(),
                requested_replid: replid.to_string(),
                requested_offset: offset,
                verdict: self.verdict.name(),
                reason,
                reason_code: self.verdict.reason().map(|r| r.code()),
                action: self.route.action(),
                answer: first,
            },
        );
    }
}

/// Relays both directions until one side ends.
async fn relay(
    link: &LinkCtx,
    r: Peer<TcpStream>,
    m: Peer<TcpStream>,
    stats: &SessionStats,
    mut down: Downstream,
) -> Result<()> {
    let (mut rr, mut rw) = r.io.into_split();
    let (mut mr, mut mw) = m.io.into_split();
    let sync_idle = link.cfg.timeouts.sync_idle();
    let (acked_tx, mut acked_rx) = watch::channel(false);
    let mut up_pending = r.buf; // bytes the replica sent after its PSYNC
    let first = m.buf; // bytes the master sent right after its reply

    let downstream = async {
        let mut events = Vec::new();
        let mut buf = vec![0u8; DOWN_BUF];
        let mut chunk: &[u8] = &first;
        loop {
            if !chunk.is_empty() {
                events.clear();
                let fed = down
                    .feed(chunk, &mut events)
                    .map_err(|err| SessionEnd::Protocol {
                        side: Side::Master,
                        err,
                    })?;
                for e in &events {
                    on_event(link, stats, e)?;
                }
                let (now, held) = chunk.split_at(fed.hold_from.unwrap_or(chunk.len()));
                rw.write_all(now).await.map_err(replica_io)?;
                if fed.hold_from.is_some() {
                    // The replica reads past the mark at its peril: stream bytes wait for its
                    // first ACK, as the master itself does.
                    match timeout(sync_idle, acked_rx.wait_for(|a| *a)).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(_)) => return Err(SessionEnd::Closed(Side::Replica)),
                        Err(_) => {
                            return Err(SessionEnd::Timeout {
                                side: Side::Replica,
                                step: "the first ACK after a diskless payload",
                                after: sync_idle,
                            })
                        }
                    }
                    rw.write_all(held).await.map_err(replica_io)?;
                }
                if down.in_stream() {
                    stats.record_stream(down.stream.bytes, down.stream.boundary);
                } else {
                    stats.set_rdb_bytes(down.rdb_bytes);
                }
            }
            let read = mr.read(&mut buf);
            let n = if down.in_stream() {
                read.await
            } else {
                timeout(sync_idle, read)
                    .await
                    .map_err(|_| SessionEnd::Timeout {
                        side: Side::Master,
                        step: "the RDB payload",
                        after: sync_idle,
                    })?
            }
            .map_err(|err| SessionEnd::Io {
                side: Side::Master,
                err,
            })?;
            if n == 0 {
                return Err(SessionEnd::Closed(Side::Master));
            }
            chunk = &buf[..n];
        }
    };

    let upstream = async {
        let mut buf = vec![0u8; UP_BUF];
        let mut commands = CommandParser::strict();
        let replica_err = |err| SessionEnd::Protocol {
            side: Side::Replica,
            err,
        };
        // Bytes already read during the handshake go first.
        loop {
            // Only whole commands, read and checked, go to the master, exactly as received;
            // the start of the next one waits for the rest of it.
            let (mut ready, mut ack) = (0, None);
            while let Some((cmd, used)) =
                commands.parse(&up_pending[ready..]).map_err(replica_err)?
            {
                ready += used;
                ack = ack_offset(&cmd).map_err(replica_err)?.or(ack);
            }
            if ready > 0 {
                mw.write_all(&up_pending[..ready])
                    .await
                    .map_err(master_io)?;
                up_pending.advance(ready);
            }
            if let Some(off) = ack {
                stats.record_ack(off);
                acked_tx.send_replace(true);
            }
            let n = rr.read(&mut buf).await.map_err(replica_io)?;
            if n == 0 {
                return Err(SessionEnd::Closed(Side::Replica));
            }
            up_pending.extend_from_slice(&buf[..n]);
        }
    };

    tokio::select! {
        r = downstream => r,
        r = upstream => r,
    }
}

pub(crate) fn replica_io(err: io::Error) -> SessionEnd {
    SessionEnd::Io {
        side: Side::Replica,
        err,
    }
}

pub(crate) fn master_io(err: io::Error) -> SessionEnd {
    SessionEnd::Io {
        side: Side::Master,
        err,
    }
}

fn on_event(link: &LinkCtx, stats: &SessionStats, e: &Event) -> Result<()> {
    match e {
        Event::Keepalive => {}
        Event::RdbStart { len } => {
            stats.set_rdb_mode(len.is_none());
            debug!(len = ?len, "RDB payload starts");
        }
        Event::RdbEnd { bytes, diskless } => {
            stats.set_rdb_bytes(*bytes);
            stats.set_state(SessionState::Streaming);
            // The replica now holds this id's data up to the sync offset.
            let snap = stats.snapshot();
            if let (Some(id), Some(off)) = (&snap.replid, snap.start_offset) {
                link.guard.delivered(&snap.replica, id, off, true);
            }
            info!(
                rdb_bytes = bytes,
                diskless, "RDB payload relayed; streaming"
            );
        }
        Event::Rejected(msg) => return Err(SessionEnd::SyncRefused(format!("-{msg}"))),
    }
    Ok(())
}

/// Not a replica: forward everything both ways, untouched, until either side closes.
pub(crate) async fn passthrough(
    link: &LinkCtx,
    mut r: Peer<TcpStream>,
    mut m: Peer<TcpStream>,
    stats: &SessionStats,
    first: BytesMut,
) -> Result<()> {
    stats.set_state(SessionState::Passthrough);
    link.counters.passthrough_total.fetch_add(1, Relaxed);
    m.send(&first).await?;
    let rest = std::mem::take(&mut r.buf);
    m.send(&rest).await?;
    let early = std::mem::take(&mut m.buf);
    r.send(&early).await?;
    match tokio::io::copy_bidirectional(&mut r.io, &mut m.io).await {
        Ok(_) => Err(SessionEnd::Closed(Side::Replica)),
        Err(err) => Err(SessionEnd::Io {
            side: Side::Replica,
            err,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::resp::parse_command;

    #[test]
    fn dual_channel_capability_is_removed_and_the_rest_kept() {
        let cmd = parse_command(b"REPLCONF capa eof capa psync2 capa dual-channel\r\n")
            .unwrap()
            .unwrap()
            .0;
        let stats = SessionStats::new(1, "t", "127.0.0.1:1".parse().unwrap());
        let mut hs = Handshake::default();
        let out = replconf(&cmd, &stats, &mut hs).unwrap();
        assert_eq!(
            out,
            encode_command(&["REPLCONF", "capa", "eof", "capa", "psync2"])
        );
        let plain = parse_command(b"REPLCONF listening-port 6380\r\n")
            .unwrap()
            .unwrap()
            .0;
        assert_eq!(replconf(&plain, &stats, &mut hs), None);
        assert_eq!(stats.snapshot().replica, "127.0.0.1:6380");
    }

    #[test]
    fn ack_offsets_are_checked() {
        let ack = |line: &str| ack_offset(&parse_command(line.as_bytes()).unwrap().unwrap().0);
        assert_eq!(ack("REPLCONF ACK 1234\r\n"), Ok(Some(1234)));
        assert_eq!(ack("replconf ack 5 FACK 3\r\n"), Ok(Some(5)));
        assert_eq!(ack("REPLCONF GETACK *\r\n"), Ok(None));
        assert_eq!(ack("REPLCONF ACK -1\r\n"), Ok(None));
        assert_eq!(ack("PING\r\n"), Ok(None));
        for bad in [
            "REPLCONF ACK 18446744073709551615\r\n",
            "REPLCONF ACK 9223372036854775808\r\n",
            "REPLCONF ACK -9223372036854775809\r\n",
            "REPLCONF ACK 12x\r\n",
        ] {
            assert!(ack(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn announced_ip_is_remembered() {
        let cmd = parse_command(b"REPLCONF ip-address 10.9.8.7\r\n")
            .unwrap()
            .unwrap()
            .0;
        let stats = SessionStats::new(1, "t", "127.0.0.1:1".parse().unwrap());
        let mut hs = Handshake::default();
        assert_eq!(replconf(&cmd, &stats, &mut hs), None);
        assert!(hs.ip_announced);
    }
}
