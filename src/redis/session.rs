//! One replica connection: dial the master, relay the handshake command by command, then relay
//! the sync and the command stream byte for byte while keeping the offset books.
//!
//! The flow of one session:
//! 1. Dial the link's master (connect timeout), TCP_NODELAY on both sockets.
//! 2. Handshake: read one command from the replica (within the link's deadlines), forward it,
//!    read exactly one reply from the master, forward it. Bare newlines are forwarded and never
//!    answered. The replica authenticates with its own `AUTH` (`masterauth`); replguard never
//!    adds credentials of its own. It may add `REPLCONF ip-address` (its reply is swallowed).
//!    `REPLCONF capa dual-channel` is removed so a Valkey replica syncs over this one connection.
//!    The first replication command moves the connection to a replica's place on the link.
//! 3. A command that no replica sends in its handshake turns the session into a plain
//!    bidirectional pipe: an ordinary client passes through unchanged.
//! 4. `PSYNC` goes through [`crate::guard::route::route`] (unless the master already answered
//!    this connection `-NOAUTH`: then it goes as sent, for the master to answer); its reply
//!    decides the relay's starting point:
//!    `+FULLRESYNC` (payload then stream), `+CONTINUE` (stream), an error (back to the handshake,
//!    where the replica may fall back to `SYNC`).
//! 5. Relay: master-to-replica bytes are watched by [`Downstream`] and forwarded unchanged; after a
//!    diskless payload the stream waits for the replica's first `REPLCONF ACK`. Replica-to-master
//!    bytes are forwarded at once and scanned for ACK offsets.
//! 6. Whichever side closes or fails first ends both: the replica then reconnects and resumes with
//!    its own replication id and offset. Shutdown cancels the session the same way.

use crate::config::LinkConfig;
use crate::conn::handshake::{
    exchange, forward_unserved, next_command, probe_auth, refuse, replconf, replication_command,
    Handshake,
};
use crate::conn::passthrough::passthrough;
use crate::conn::pump::{pump, Gate, Observer, Step, DOWN_BUF, UP_BUF};
use crate::conn::stats::{SessionState, SessionStats};
use crate::conn::Stream;
use crate::conn::{Peer, Result, SessionEnd, Side};
use crate::guard::decision::DecisionCtx;
use crate::guard::route::{self, Route};
use crate::guard::verdict::Verdict;
use crate::link::LinkCtx;
use crate::redis::psync::{PsyncRequest, FULL_SYNC_REQUEST};
use crate::redis::stream::{Downstream, Event};
use crate::wire::resp::{encode_command, parse_offset, Command, CommandParser, ProtocolError};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// Runs a Redis or Valkey session on an established pair of connections.
pub(crate) async fn run(
    link: &LinkCtx,
    cfg: &LinkConfig,
    mut r: Peer<Stream>,
    mut m: Peer<Stream>,
    stats: &SessionStats,
) -> Result<()> {
    let t = &cfg.timeouts;
    let mut hs = Handshake::new(stats.started, t);
    let step = t.handshake_step();

    loop {
        let (cmd, raw) = next_command(&mut r, &mut hs, step).await?;
        let name = cmd.name();
        match name.as_str() {
            "" => m.send(&raw).await?,
            "PING" | "AUTH" => exchange(&mut r, &mut m, &mut hs, &name, &raw, step).await?,
            "REPLCONF" => {
                replication_command(&link.admission, stats, &mut r, &mut hs).await?;
                if let Err(refusal) = replconf(&cmd, stats, &mut hs) {
                    return Err(refuse(&mut r, refusal).await);
                }
                let rewritten = without_dual_channel(&cmd);
                m.send(rewritten.as_deref().unwrap_or(&raw)).await?;
                if !is_ack(&cmd) {
                    let reply = m.reply(step, "a REPLCONF reply").await?;
                    hs.master_replied(&reply);
                    r.send(&reply).await?;
                }
            }
            "PSYNC" | "SYNC" => {
                replication_command(&link.admission, stats, &mut r, &mut hs).await?;
                probe_auth(&mut m, &mut hs, step).await?;
                if !hs.unauthenticated {
                    announce_ip(cfg, &mut m, &mut hs, stats, step).await?;
                }
                if hs.unauthenticated {
                    forward_unserved(&mut r, &mut m, &mut hs, &raw, step).await?;
                    continue;
                }
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
                let replica = stats.snapshot().replica;
                let (verdict, facts) = match &req {
                    Some(q) => {
                        // The master's own view first, so the verdict sees a failover or a
                        // restart that happened since the last poll.
                        if !link.refresh_master(crate::link::PSYNC_INFO_TIMEOUT).await {
                            warn!("cannot read the master's INFO: judging this PSYNC on the ledger alone");
                        }
                        link.record_live_books_of(&replica, stats.id);
                        link.guard.judge(&replica, &q.replid, q.offset)
                    }
                    None => (
                        Verdict::Pass,
                        "unparseable PSYNC: the master answers it".into(),
                    ),
                };
                let route = route::route(cfg.guard, &verdict, None);
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
                        decision.log(&link.guard, cfg.guard, "-LOADING (from replguard)");
                        return Err(SessionEnd::Held);
                    }
                    Route::Full if name == "PSYNC" => m.send(FULL_SYNC_REQUEST).await?,
                    Route::Full | Route::Forward | Route::Refuse(_) => m.send(&raw).await?,
                }
                let down = if name == "SYNC" {
                    decision.log(&link.guard, cfg.guard, "(inline SYNC: payload follows)");
                    link.guard
                        .claim(&stats.snapshot().replica, stats.id, stats.peer);
                    stats.begin_full(None, None);
                    link.counters.full_syncs.fetch_add(1, Relaxed);
                    Downstream::full_sync()
                } else {
                    let (down, answer) =
                        psync_reply(link, &mut r, &mut m, stats, req.as_ref(), step).await?;
                    decision.log(&link.guard, cfg.guard, &answer);
                    match down {
                        Some(down) => down,
                        // Rejected: the replica decides what to do next on this connection.
                        None => continue,
                    }
                };
                return relay(link, cfg, r, m, stats, down).await;
            }
            _ => return passthrough(&link.counters, r, m, stats, raw).await,
        }
    }
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

/// A `REPLCONF` without `capa dual-channel`, when it had it: the whole sync then runs over the
/// one connection replguard relays and accounts for. `None` when nothing is removed (a
/// `REPLCONF` left with no options would be an error, so the original goes then).
fn without_dual_channel(cmd: &Command) -> Option<Vec<u8>> {
    let mut keep: Vec<&[u8]> = vec![&cmd.args[0]];
    let mut changed = false;
    for pair in cmd.args[1..].chunks(2) {
        let val = pair.get(1).map(|v| v.as_slice()).unwrap_or_default();
        if pair[0].eq_ignore_ascii_case(b"capa") && val.eq_ignore_ascii_case(b"dual-channel") {
            changed = true;
            continue;
        }
        keep.extend(pair.iter().map(|a| a.as_slice()));
    }
    (changed && keep.len() > 1).then(|| encode_command(&keep))
}

fn is_ack(cmd: &Command) -> bool {
    cmd.args
        .get(1)
        .is_some_and(|a| a.eq_ignore_ascii_case(b"ack") || a.eq_ignore_ascii_case(b"getack"))
}

/// Tells the master the replica's real address when the replica did not.
async fn announce_ip<S: AsyncRead + AsyncWrite + Unpin>(
    cfg: &LinkConfig,
    m: &mut Peer<S>,
    hs: &mut Handshake,
    stats: &SessionStats,
    step: Duration,
) -> Result<()> {
    if !cfg.announce_replica_ip || hs.ip_announced {
        return Ok(());
    }
    hs.ip_announced = true;
    let ip = stats.peer.ip().to_string();
    m.send(&encode_command(&["REPLCONF", "ip-address", ip.as_str()]))
        .await?;
    let reply = m.reply(step, "the reply to REPLCONF ip-address").await?;
    hs.master_replied(&reply);
    if hs.unauthenticated {
        // The connection did not authenticate: the master answers its PSYNC the same way.
        return Ok(());
    }
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
                link.guard
                    .claim(&stats.snapshot().replica, stats.id, stats.peer);
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
                let replica = stats.snapshot().replica;
                link.guard.claim(&replica, stats.id, stats.peer);
                if let Some(id) = replid {
                    link.guard.delivered(&replica, stats.id, id, start, true);
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

/// Relays both directions until one side ends.
async fn relay(
    link: &LinkCtx,
    cfg: &LinkConfig,
    r: Peer<Stream>,
    m: Peer<Stream>,
    stats: &SessionStats,
    down: Downstream,
) -> Result<()> {
    let (mut rr, mut rw) = r.io.into_split();
    let (mut mr, mut mw) = m.io.into_split();
    let sync_idle = cfg.timeouts.sync_idle();
    let (acked_tx, mut acked_rx) = watch::channel(false);
    let mut down = DownObserver {
        link,
        stats,
        down,
        events: Vec::new(),
        sync_idle,
    };
    let mut up = UpObserver {
        stats,
        commands: CommandParser::strict(),
        acked: acked_tx,
        open: false,
    };
    // After a diskless payload the stream waits for the replica's first ACK, as the master
    // itself does: the replica reads past the mark at its peril.
    let gate = Gate {
        open: &mut acked_rx,
        within: sync_idle,
        waiting_for: "the first ACK after a diskless payload",
    };
    tokio::select! {
        r = pump(&mut mr, &mut rw, Side::Master, &m.buf, DOWN_BUF, &mut down, Some(gate)) => r,
        r = pump(&mut rr, &mut mw, Side::Replica, &r.buf, UP_BUF, &mut up, None) => r,
    }
}

/// Watches the master's bytes: payload framing and command boundaries, for the books.
struct DownObserver<'a> {
    link: &'a LinkCtx,
    stats: &'a SessionStats,
    down: Downstream,
    events: Vec<Event>,
    sync_idle: Duration,
}

impl Observer for DownObserver<'_> {
    fn observe(&mut self, chunk: &[u8]) -> Result<Step> {
        self.events.clear();
        let fed = self
            .down
            .feed(chunk, &mut self.events)
            .map_err(|err| SessionEnd::Protocol {
                side: Side::Master,
                err,
            })?;
        for e in &self.events {
            if let Some(end) = on_event(self.link, self.stats, e) {
                // The master's refusal goes to the replica, then the session ends.
                return Ok(Step::Cut(chunk.len(), end));
            }
        }
        Ok(match fed.hold_from {
            Some(at) => Step::Hold(at),
            None => Step::Forward(chunk.len()),
        })
    }

    fn forwarded(&mut self) {
        if self.down.in_stream() {
            self.stats
                .record_stream(self.down.stream.bytes, self.down.stream.boundary);
        } else {
            self.stats.set_rdb_bytes(self.down.rdb_bytes);
        }
    }

    fn deadline(&self) -> Option<(Duration, &'static str)> {
        (!self.down.in_stream()).then_some((self.sync_idle, "the RDB payload"))
    }

    fn open_frame(&self) -> Option<&'static str> {
        self.down.open_frame()
    }
}

/// Watches the replica's bytes: only whole, checked commands go to the master, exactly as
/// received; ACK offsets go to the books and open the gate of a held stream.
struct UpObserver<'a> {
    stats: &'a SessionStats,
    commands: CommandParser,
    acked: watch::Sender<bool>,
    open: bool,
}

impl Observer for UpObserver<'_> {
    fn observe(&mut self, bytes: &[u8]) -> Result<Step> {
        let replica_err = |err| SessionEnd::Protocol {
            side: Side::Replica,
            err,
        };
        let (mut ready, mut ack) = (0, None);
        while let Some((cmd, used)) = self.commands.parse(&bytes[ready..]).map_err(replica_err)? {
            ready += used;
            ack = ack_offset(&cmd).map_err(replica_err)?.or(ack);
        }
        if let Some(off) = ack {
            self.stats.record_ack(off);
            self.acked.send_replace(true);
        }
        self.open = ready < bytes.len();
        Ok(Step::Forward(ready))
    }

    fn open_frame(&self) -> Option<&'static str> {
        self.open.then_some("a command")
    }
}

/// Books an event of the master's stream; the end of the session when it is one.
fn on_event(link: &LinkCtx, stats: &SessionStats, e: &Event) -> Option<SessionEnd> {
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
                link.guard.delivered(&snap.replica, snap.id, id, off, true);
            }
            info!(
                rdb_bytes = bytes,
                diskless, "RDB payload relayed; streaming"
            );
        }
        Event::Rejected(msg) => return Some(SessionEnd::SyncRefused(format!("-{msg}"))),
    }
    None
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
        let out = without_dual_channel(&cmd).unwrap();
        assert_eq!(
            out,
            encode_command(&["REPLCONF", "capa", "eof", "capa", "psync2"])
        );
        let plain = parse_command(b"REPLCONF listening-port 6380\r\n")
            .unwrap()
            .unwrap()
            .0;
        assert_eq!(without_dual_channel(&plain), None);
        let stats = SessionStats::new(1, "t", "127.0.0.1:1".parse().unwrap());
        let mut hs = Handshake::default();
        replconf(&plain, &stats, &mut hs).unwrap();
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
        replconf(&cmd, &stats, &mut hs).unwrap();
        assert!(hs.ip_announced);
    }
}
