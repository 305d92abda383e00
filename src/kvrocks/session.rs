//! One connection on a Kvrocks link: its handshake command by command, the guard's verdict on
//! its `PSYNC`, then the stream of WAL batches relayed byte for byte with the sequence books; or
//! one of the full-sync connections (`_fetch_meta`, `_fetch_file`), relayed unchanged.
//!
//! The flow (see [`crate::kvrocks::wire`] for the wire facts):
//! 1. `AUTH` (a replica may send it several times, with its `masterauth`), `PING`: forwarded,
//!    one RESP reply back. replguard sends no credentials of its own on these connections.
//! 2. `_db_name`: forwarded; the master's answer is a raw line, relayed as is.
//! 3. `replconf listening-port <p> [ip-address <ip>]`: noted (it names the replica), forwarded.
//! 4. `PSYNC [replid] <seq>`: judged by the link's guard (unless the master answered this
//!    connection `-NOAUTH`: then forwarded unjudged, and its answer touches no books). Passed or `observe`: forwarded, and
//!    the master's `+OK` starts the stream relay; an error reply is relayed and marks the replica
//!    as due for a full sync. Forced full under `enforce`: replguard answers
//!    [`crate::kvrocks::wire::FULL_SYNC_ANSWER`] itself and the replica starts its full sync.
//! 5. `_fetch_meta` / `_fetch_file`: forwarded, then both directions are copied unchanged until
//!    the master closes; a `_fetch_file` answer that arrives whole is counted as a full sync
//!    of the replica at that address.
//! 6. Anything else: a plain pipe, as for any client.

use crate::config::{GuardMode, LinkConfig};
use crate::conn::handshake::{
    exchange, forward_unserved, next_command, probe_auth, refuse, replconf, replication_command,
    Handshake,
};
use crate::conn::passthrough::passthrough;
use crate::conn::pump::{pump, AtEof, Observer, Plain, Step, DOWN_BUF, UP_BUF};
use crate::conn::stats::{SessionState, SessionStats};
use crate::conn::Stream;
use crate::conn::{Peer, Result, SessionEnd, Side};
use crate::guard::decision::DecisionCtx;
use crate::guard::ledger::{self, KvGap, KvIdRange};
use crate::guard::route::{self, Route};
use crate::kvrocks::wire::{
    fetch_file_names, FetchScanner, KvPsync, ReplId, WalEvent, WalScanner, FULL_SYNC_ANSWER,
};
use crate::link::LinkCtx;
use bytes::BytesMut;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tracing::{error, info, warn};

/// Runs a Kvrocks session on an established pair of connections.
pub(crate) async fn run(
    link: &LinkCtx,
    cfg: &LinkConfig,
    mut r: Peer<Stream>,
    mut m: Peer<Stream>,
    stats: &SessionStats,
) -> Result<()> {
    let step = cfg.timeouts.handshake_step();
    let mut hs = Handshake::new(stats.started, &cfg.timeouts);
    loop {
        let (cmd, raw) = next_command(&mut r, &mut hs, step).await?;
        let name = cmd.name();
        match name.as_str() {
            "" => m.send(&raw).await?,
            "AUTH" | "PING" => exchange(&mut r, &mut m, &mut hs, &name, &raw, step).await?,
            "_DB_NAME" => {
                replication_command(&link.admission, stats, &mut r, &mut hs).await?;
                m.send(&raw).await?;
                let (_, line) = m.line(step, "the _db_name reply").await?;
                hs.master_replied(&line);
                r.send(&line).await?;
            }
            "REPLCONF" => {
                replication_command(&link.admission, stats, &mut r, &mut hs).await?;
                if let Err(refusal) = replconf(&cmd, stats, &mut hs) {
                    return Err(refuse(&mut r, refusal).await);
                }
                m.send(&raw).await?;
                let reply = m.reply(step, "a replconf reply").await?;
                hs.master_replied(&reply);
                r.send(&reply).await?;
            }
            "PSYNC" => {
                replication_command(&link.admission, stats, &mut r, &mut hs).await?;
                probe_auth(&mut m, &mut hs, step).await?;
                if hs.unauthenticated {
                    forward_unserved(&mut r, &mut m, &mut hs, &raw, step).await?;
                    continue;
                }
                let Some(req) = KvPsync::parse(&cmd) else {
                    warn!(
                        command = %String::from_utf8_lossy(&raw).escape_debug(),
                        "a PSYNC replguard cannot read: the connection passes through unguarded"
                    );
                    return passthrough(&link.counters, r, m, stats, raw).await;
                };
                match psync(link, cfg, &mut r, &mut m, stats, &req, &raw).await? {
                    Some((scanner, ids)) => {
                        return relay(link, cfg, r, m, stats, scanner, ids).await
                    }
                    None => continue,
                }
            }
            "_FETCH_META" | "_FETCH_FILE" => {
                replication_command(&link.admission, stats, &mut r, &mut hs).await?;
                let files = (name == "_FETCH_FILE").then(|| fetch_file_names(&cmd));
                return checkpoint(link, cfg, r, m, stats, raw, files).await;
            }
            _ => return passthrough(&link.counters, r, m, stats, raw).await,
        }
    }
}

/// Judges and routes one PSYNC and relays the answer. `Some` when the master answered `+OK`
/// and the stream follows; `None` when the replica was refused and the handshake goes on.
async fn psync(
    link: &LinkCtx,
    cfg: &LinkConfig,
    r: &mut Peer<Stream>,
    m: &mut Peer<Stream>,
    stats: &SessionStats,
    req: &KvPsync,
    raw: &[u8],
) -> Result<Option<(WalScanner, Vec<KvIdRange>)>> {
    let step = cfg.timeouts.handshake_step();
    let seq_i64 = i64::try_from(req.seq).unwrap_or(i64::MAX);
    stats.set_psync_request(req.replid_or_dash(), seq_i64);
    let replica = stats.snapshot().replica;
    let ip = stats.peer.ip();
    // In a group: the node read now (a promotion since the keeper's last reading counts), and
    // the live books of this link's other sessions (the old master, fed here, sends on to its
    // own replicas). Without a fresh reading the group vouches for nobody here and the
    // replica's record notes no epoch: the node may have restarted or been replaced since.
    let fresh = if link.guard.books().group().is_some() {
        link.record_live_deliveries();
        link.refresh_master(crate::link::PSYNC_INFO_TIMEOUT).await
    } else {
        link.record_live_books_of(&replica, stats.id);
        false
    };
    let (verdict, facts) =
        link.guard
            .judge_kvrocks(&replica, ip, req.replid.as_deref(), req.seq, fresh);
    let route = route::route(cfg.guard, &verdict, Some(FULL_SYNC_ANSWER));
    let decision = DecisionCtx {
        replica: &replica,
        req: Some((req.replid_or_dash(), seq_i64)),
        facts: &facts,
        verdict: &verdict,
        route: &route,
    };
    if let Route::Refuse(answer) = route {
        r.send(answer.as_bytes()).await?;
        decision.log(
            &link.guard,
            cfg.guard,
            &format!("{} (from replguard)", answer.trim_end()),
        );
        link.counters.psync_rejected.fetch_add(1, Relaxed);
        link.guard.kv_refused(&replica, ip);
        return Ok(None);
    }
    m.send(raw).await?;
    let (line, raw_reply) = m.line(step, "the PSYNC reply").await?;
    r.send(&raw_reply).await?;
    decision.log(&link.guard, cfg.guard, &line);
    if line == "+OK" {
        let ids = link.guard.kv_started(
            &replica,
            stats.id,
            stats.peer,
            req.replid.as_deref(),
            req.seq,
            fresh,
        );
        stats.begin_kvrocks(req.replid.as_deref(), req.seq, &ids);
        link.counters.partial_syncs.fetch_add(1, Relaxed);
        let scanner = WalScanner::new(req.seq);
        return Ok(Some((scanner, ids)));
    }
    if line.starts_with('-') {
        link.counters.psync_rejected.fetch_add(1, Relaxed);
        // The 2.7.0 replica resends the two-argument form after this one; every other
        // refusal makes it run a full sync.
        if !line.contains("wrong number of arguments") {
            link.guard.kv_refused(&replica, ip);
        }
        return Ok(None);
    }
    Err(SessionEnd::Unsupported(line))
}

/// Relays the stream of WAL batches until one side ends, keeping the sequence books.
async fn relay(
    link: &LinkCtx,
    cfg: &LinkConfig,
    r: Peer<Stream>,
    m: Peer<Stream>,
    stats: &SessionStats,
    scanner: WalScanner,
    ids: Vec<KvIdRange>,
) -> Result<()> {
    let (mut rr, mut rw) = r.io.into_split();
    let (mut mr, mut mw) = m.io.into_split();
    let mut wal = WalObserver {
        link,
        stats,
        replica: stats.snapshot().replica,
        enforce: cfg.guard == GuardMode::Enforce,
        scanner,
        ids,
        ids_changed: false,
        master_id: None,
        events: Vec::new(),
    };
    // A Kvrocks replica never writes on its stream connection; whatever it does send is
    // forwarded unchanged.
    let mut up = Plain;
    tokio::select! {
        r = pump(&mut mr, &mut rw, Side::Master, &m.buf, DOWN_BUF, &mut wal, None) => r,
        r = pump(&mut rr, &mut mw, Side::Replica, &r.buf, UP_BUF, &mut up, None) => r,
    }
}

/// Watches the WAL batches on their way to the replica: sequences, ids, gaps.
struct WalObserver<'a> {
    link: &'a LinkCtx,
    stats: &'a SessionStats,
    replica: String,
    enforce: bool,
    scanner: WalScanner,
    /// The ids of the batches delivered, by range.
    ids: Vec<KvIdRange>,
    ids_changed: bool,
    /// The last id the master's batches carried that the ledger was told of.
    master_id: Option<String>,
    events: Vec<WalEvent>,
}

impl Observer for WalObserver<'_> {
    fn observe(&mut self, chunk: &[u8]) -> Result<Step> {
        self.events.clear();
        self.scanner
            .feed(chunk, &mut self.events)
            .map_err(|err| SessionEnd::Protocol {
                side: Side::Master,
                err,
            })?;
        for e in &self.events {
            if let WalEvent::Batch(b) | WalEvent::Gap { batch: b, .. } = e {
                let id = b.replid.as_ref().map(ReplId::as_str);
                if ledger::note_kv_id(&mut self.ids, b.seq, id) {
                    self.ids_changed = true;
                }
                // Every id the master's batches carry is one of its ids, also when the first
                // batch carries the id the replica presented (no new range then).
                if let Some(id) = id.filter(|id| self.master_id.as_deref() != Some(*id)) {
                    self.link.guard.kv_master_id(id);
                    self.master_id = Some(id.to_string());
                }
            }
            if let WalEvent::Gap {
                expected,
                batch,
                bulk_start,
            } = e
            {
                let last = batch.seq - 1;
                error!(
                    replica = %self.replica,
                    expected,
                    got = batch.seq,
                    missing = format_args!("{expected}..={last}"),
                    "kvrocks stream gap: the master's stream skipped batches; this replica is missing them"
                );
                self.stats.count_kvrocks_gap();
                self.link.guard.kv_gap(
                    &self.replica,
                    KvGap {
                        expected: *expected,
                        got: batch.seq,
                    },
                );
                if self.enforce {
                    // Everything before the batch goes; the batch itself and what follows do not.
                    return Ok(Step::Cut(
                        bulk_start.unwrap_or(0),
                        SessionEnd::StreamGap {
                            expected: *expected,
                            got: batch.seq,
                        },
                    ));
                }
            }
        }
        Ok(Step::Forward(chunk.len()))
    }

    fn forwarded(&mut self) {
        if std::mem::take(&mut self.ids_changed) {
            self.stats.set_kvrocks_ids(&self.ids);
        }
        self.stats.record_kvrocks(
            self.scanner.next_seq,
            self.scanner.batches,
            self.scanner.pings,
            self.scanner.bytes,
        );
    }

    fn open_frame(&self) -> Option<&'static str> {
        (!self.scanner.at_boundary()).then_some("a WAL batch")
    }
}

/// Relays a full-sync connection unchanged until the master closes it. For `_fetch_file`
/// (`files` named), the answer's framing is followed so a complete transfer can be counted.
async fn checkpoint(
    link: &LinkCtx,
    cfg: &LinkConfig,
    r: Peer<Stream>,
    m: Peer<Stream>,
    stats: &SessionStats,
    first: BytesMut,
    files: Option<Vec<String>>,
) -> Result<()> {
    stats.set_state(SessionState::Checkpoint);
    if files.is_none() {
        link.guard.kv_fetch_meta(stats.peer.ip());
    }
    let (mut rr, mut rw) = r.io.into_split();
    let (mut mr, mut mw) = m.io.into_split();
    let mut up_first = first;
    up_first.extend_from_slice(&r.buf);
    let mut fetch = FetchObserver {
        link,
        stats,
        scan: files.map(FetchScanner::new),
        counted: false,
        idle: cfg.timeouts.sync_idle(),
    };
    let mut up = HalfClose;
    let out = tokio::select! {
        r = pump(&mut mr, &mut rw, Side::Master, &m.buf, DOWN_BUF, &mut fetch, None) => r,
        r = pump(&mut rr, &mut mw, Side::Replica, &up_first, UP_BUF, &mut up, None) => r,
    };
    out.and(Err(SessionEnd::Closed(Side::Master)))
}

/// The replica's side of a full-sync connection: once it is done sending, the master's answer
/// may still be on its way.
struct HalfClose;

impl Observer for HalfClose {
    fn observe(&mut self, bytes: &[u8]) -> Result<Step> {
        Ok(Step::Forward(bytes.len()))
    }

    fn at_eof(&mut self, _: Side) -> AtEof {
        AtEof::HalfClose
    }
}

/// Follows a `_fetch_file` answer's framing to count a complete transfer.
struct FetchObserver<'a> {
    link: &'a LinkCtx,
    stats: &'a SessionStats,
    scan: Option<FetchScanner>,
    counted: bool,
    idle: Duration,
}

impl Observer for FetchObserver<'_> {
    fn observe(&mut self, chunk: &[u8]) -> Result<Step> {
        if let Some(f) = self.scan.as_mut() {
            if let Err(e) = f.feed(chunk) {
                warn!(error = %e, "the _fetch_file answer is not framed as expected; relaying it unchanged without counting it");
                self.scan = None;
            } else {
                self.stats.set_rdb_bytes(f.file_bytes);
                if f.complete() && !self.counted {
                    // Counted before the last bytes go out: the replica's PSYNC that follows
                    // them must find its full sync on the books.
                    self.counted = true;
                    fetch_complete(self.link, self.stats, f);
                }
            }
        }
        Ok(Step::Forward(chunk.len()))
    }

    fn deadline(&self) -> Option<(Duration, &'static str)> {
        Some((self.idle, "the checkpoint files"))
    }

    fn at_eof(&mut self, _: Side) -> AtEof {
        if let Some(f) = self.scan.as_ref().filter(|f| !f.complete()) {
            warn!(
                files = f.files,
                bytes = f.file_bytes,
                "kvrocks full sync: the master closed before every file arrived whole"
            );
        }
        AtEof::Finish
    }
}

/// A `_fetch_file` answer arrived whole: the replica at that address has its full sync.
fn fetch_complete(link: &LinkCtx, stats: &SessionStats, f: &FetchScanner) {
    let seq = f.checkpoint_seq();
    link.guard
        .kv_fetch_complete(stats.peer.ip(), seq, f.checkpoint_unreadable());
    link.counters.full_syncs.fetch_add(1, Relaxed);
    info!(
        files = f.files,
        bytes = f.file_bytes,
        checkpoint_seq = %seq.map_or("unknown".to_string(), |s| s.to_string()),
        unreadable = f.checkpoint_unreadable(),
        "kvrocks full sync: checkpoint files relayed whole"
    );
}
