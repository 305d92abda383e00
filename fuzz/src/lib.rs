//! The fuzz targets' bodies, one function per target. Each takes the fuzzer's bytes, feeds them
//! to one of replguard's parsers the way the proxy does, and checks what is cheap to check: no
//! panic, and for the parsers that keep their place between reads, the same result whether the
//! bytes come whole or cut into chunks.
//!
//! The stable test suite includes this file (`tests/it/fuzz_corpus.rs`) and replays every
//! corpus input through the same functions, so nightly is not needed to keep a crash fixed.
//!
//! Input layout of the chunked targets: byte 0 gives `n = byte & 15`, the next `n` bytes are
//! chunk lengths used in turn (0 feeds an empty read; all zero, or `n = 0`, means one chunk),
//! then any target-specific header, then the payload.

use replguard::guard::ledger::{KvIdRange, LedgerData, MasterView, NO_REPLID};
use replguard::guard::store::{self, Identity};
use replguard::guard::verdict::{self, kvrocks, psync2};
use replguard::kvrocks::checkpoint::CheckpointScan;
use replguard::kvrocks::wire::{
    fetch_file_names, FetchScanner, KvPsync, ReplId, WalEvent, WalScanner,
};
use replguard::redis::stream::{Downstream, Event};
use replguard::wire::resp::{
    parse_command, parse_offset, Command, CommandParser, LineScanner, ProtocolError, ReplyScanner,
    MAX_OFFSET,
};

/// Splits the chunk-length header off `data`: the lengths and the rest.
fn cuts(data: &[u8]) -> (&[u8], &[u8]) {
    let Some((&b, rest)) = data.split_first() else {
        return (&[], &[]);
    };
    let n = usize::from(b & 15).min(rest.len());
    rest.split_at(n)
}

/// `payload` cut by the lengths in turn (the whole of it when no length is above zero).
fn chunks<'a>(lens: &[u8], payload: &'a [u8]) -> Vec<&'a [u8]> {
    if lens.iter().all(|&l| l == 0) {
        return vec![payload];
    }
    let mut out = Vec::new();
    let mut rest = payload;
    for &l in lens.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (c, r) = rest.split_at(usize::from(l).min(rest.len()));
        out.push(c);
        rest = r;
    }
    out
}

/// A buffer that grows by `chunks`, read by `step` as the proxy's peers read theirs: after each
/// read, units are taken from the front while complete ones come out. `step` returns the bytes
/// a unit took, `Ok(None)` for "need more", and whether reading stops after this unit.
fn drive<T>(
    chunks: &[&[u8]],
    mut step: impl FnMut(&[u8]) -> Result<Option<(T, usize, bool)>, ProtocolError>,
) -> Vec<Result<(T, usize), ProtocolError>> {
    let mut buf: Vec<u8> = Vec::new();
    let mut out = Vec::new();
    for c in chunks {
        buf.extend_from_slice(c);
        loop {
            match step(&buf) {
                Ok(Some((t, n, stop))) => {
                    assert!(
                        n > 0 && n <= buf.len(),
                        "a unit of {n} bytes in {}",
                        buf.len()
                    );
                    buf.drain(..n);
                    out.push(Ok((t, n)));
                    if stop {
                        return out;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    out.push(Err(e));
                    return out;
                }
            }
        }
    }
    out
}

/// What the proxy reads out of a handshake command, beyond the command itself.
fn read_command(c: &Command) {
    let _ = (c.name(), c.arg_str(1), c.is_blank());
    if let Some(p) = KvPsync::parse(c) {
        let _ = p.replid_or_dash();
    }
    let _ = fetch_file_names(c);
    for a in &c.args {
        let text = String::from_utf8_lossy(a);
        let _ = ReplId::parse(&text);
        if let Ok(n) = parse_offset(&text, "fuzz") {
            assert!(n <= MAX_OFFSET);
        }
    }
}

/// Handshake and relay command parsing (`wire::resp::CommandParser`).
pub fn command(data: &[u8]) {
    let (lens, payload) = cuts(data);
    let pieces = chunks(lens, payload);
    for mk in [CommandParser::handshake, CommandParser::strict] {
        let run = |pieces: &[&[u8]]| {
            let mut p = mk();
            drive(pieces, |buf| {
                Ok(p.parse(buf)?.map(|(c, n)| {
                    let stop = c.rest_unread;
                    (c, n, stop)
                }))
            })
        };
        let whole = run(&[payload]);
        let cut = run(&pieces);
        assert_eq!(whole, cut, "whole vs cut at {lens:?}");
        for c in whole.iter().flatten() {
            read_command(&c.0);
        }
    }
    // The one-shot form agrees with the parser on the first command.
    let first = parse_command(payload);
    let mut p = CommandParser::strict();
    assert_eq!(first, p.parse(payload));
}

/// Reply framing (`wire::resp::ReplyScanner`, `reply_len`) and line reading (`LineScanner`).
pub fn reply(data: &[u8]) {
    let (lens, payload) = cuts(data);
    let pieces = chunks(lens, payload);
    for (max_len, depth) in [(64 * 1024, 8), (1024 * 1024, 8), (256, 2)] {
        let run = |pieces: &[&[u8]]| {
            let mut s = ReplyScanner::new(max_len, depth);
            drive(pieces, |buf| Ok(s.scan(buf)?.map(|n| ((), n, false))))
        };
        let whole = run(&[payload]);
        assert_eq!(whole, run(&pieces), "replies, whole vs cut at {lens:?}");
        for r in whole.iter().flatten() {
            assert!(r.1 <= max_len);
        }
    }
    assert_eq!(
        replguard::wire::resp::reply_len(payload),
        ReplyScanner::new(1024 * 1024, 8).scan(payload)
    );
    for max in [64 * 1024, 16] {
        let run = |pieces: &[&[u8]]| {
            let mut s = LineScanner::default();
            drive(pieces, |buf| {
                Ok(s.scan(buf, max)?.map(|(line, n)| {
                    assert!(line.len() <= max && line.len() < n);
                    (line.to_vec(), n, false)
                }))
            })
        };
        assert_eq!(
            run(&[payload]),
            run(&pieces),
            "lines, whole vs cut at {lens:?}"
        );
    }
}

/// Everything [`Downstream`] reports after a series of reads.
#[derive(Debug, PartialEq)]
struct DownSeen {
    events: Vec<Event>,
    /// Stream position where a diskless sync's command stream starts (none after an error).
    hold_from: Option<usize>,
    result: Result<(), ProtocolError>,
    /// Where it stands, when no error.
    state: Option<DownState>,
}

#[derive(Debug, PartialEq)]
struct DownState {
    rdb_bytes: u64,
    stream_bytes: u64,
    boundary: u64,
    commands: u64,
    in_stream: bool,
    open_frame: Option<&'static str>,
}

fn downstream(mut d: Downstream, pieces: &[&[u8]]) -> DownSeen {
    let mut events = Vec::new();
    let mut hold_from = None;
    let mut at = 0;
    for c in pieces {
        match d.feed(c, &mut events) {
            Ok(fed) => {
                if let Some(h) = fed.hold_from {
                    assert!(h <= c.len());
                    assert!(hold_from.is_none(), "a second start of the stream");
                    hold_from = Some(at + h);
                }
            }
            Err(e) => {
                // The session ends: where its stream would have started no longer matters
                // (a single read that fails does not report it).
                return DownSeen {
                    events,
                    hold_from: None,
                    result: Err(e),
                    state: None,
                };
            }
        }
        at += c.len();
    }
    let s = &d.stream;
    assert!(s.boundary <= s.bytes);
    DownSeen {
        events,
        hold_from,
        result: Ok(()),
        state: Some(DownState {
            rdb_bytes: d.rdb_bytes,
            stream_bytes: s.bytes,
            boundary: s.boundary,
            commands: s.commands,
            in_stream: d.in_stream(),
            open_frame: d.open_frame(),
        }),
    }
}

/// The PSYNC2 stream after the master's reply (`redis::stream::Downstream`). A header byte
/// after the chunk lengths picks a full sync (even) or `+CONTINUE` (odd).
pub fn psync_stream(data: &[u8]) {
    let (lens, rest) = cuts(data);
    let Some((&mode, payload)) = rest.split_first() else {
        return;
    };
    let mk = || {
        if mode & 1 == 0 {
            Downstream::full_sync()
        } else {
            Downstream::partial()
        }
    };
    let whole = downstream(mk(), &[payload]);
    let cut = downstream(mk(), &chunks(lens, payload));
    assert_eq!(whole, cut, "whole vs cut at {lens:?}");
}

/// What a Kvrocks stream's observer keeps after a series of reads.
#[derive(Debug, PartialEq)]
struct WalSeen {
    /// Events without their chunk-relative `bulk_start`.
    events: Vec<WalEvent>,
    result: Result<(), ProtocolError>,
    ids: Vec<KvIdRange>,
    /// `(next_seq, batches, pings, bytes, at_boundary)`, when no error.
    state: Option<(u64, u64, u64, u64, bool)>,
}

fn wal(seq: u64, pieces: &[&[u8]]) -> WalSeen {
    let mut s = WalScanner::new(seq);
    let mut events = Vec::new();
    let mut ids = Vec::new();
    let mut result = Ok(());
    for c in pieces {
        let mut out = Vec::new();
        let r = s.feed(c, &mut out);
        for e in out {
            // As the session's observer does with each batch.
            let e = match e {
                WalEvent::Gap {
                    expected,
                    batch,
                    bulk_start,
                } => {
                    assert!(batch.seq > expected);
                    if let Some(b) = bulk_start {
                        assert_eq!(c.get(b), Some(&b'$'), "a bulk starts at {b}");
                    }
                    WalEvent::Gap {
                        expected,
                        batch,
                        bulk_start: None,
                    }
                }
                e => e,
            };
            if let WalEvent::Batch(b) | WalEvent::Gap { batch: b, .. } = &e {
                assert!(
                    b.seq.checked_add(u64::from(b.count)).is_some(),
                    "a batch ending past the last sequence: {b:?}"
                );
                let id = b.replid.as_ref().map(ReplId::as_str);
                replguard::guard::ledger::note_kv_id(&mut ids, b.seq, id);
            }
            events.push(e);
        }
        if let Err(e) = r {
            result = Err(e);
            break;
        }
    }
    let state = result
        .is_ok()
        .then(|| (s.next_seq, s.batches, s.pings, s.bytes, s.at_boundary()));
    WalSeen {
        events,
        result,
        ids,
        state,
    }
}

/// A Kvrocks replication stream (`kvrocks::wire::WalScanner`, and the id books the session's
/// observer keeps from it). Eight header bytes after the chunk lengths: the sequence the
/// replica asked for, little-endian.
pub fn kvrocks_wal(data: &[u8]) {
    let (lens, rest) = cuts(data);
    if rest.len() < 8 {
        return;
    }
    let (seq, payload) = rest.split_at(8);
    let seq = u64::from_le_bytes(seq.try_into().expect("eight bytes"));
    let whole = wal(seq, &[payload]);
    let cut = wal(seq, &chunks(lens, payload));
    assert_eq!(whole, cut, "whole vs cut at {lens:?}");
}

fn fetch(names: &[String], pieces: &[&[u8]]) -> String {
    let mut f = FetchScanner::new(names.to_vec());
    let mut result = Ok(());
    for c in pieces {
        if let Err(e) = f.feed(c) {
            result = Err(e);
            break;
        }
    }
    assert!(f.files <= names.len());
    format!(
        "{result:?} files={} bytes={} complete={} seq={:?} unreadable={}",
        f.files,
        f.file_bytes,
        f.complete(),
        f.checkpoint_seq(),
        f.checkpoint_unreadable()
    )
}

/// A `_fetch_file` answer (`kvrocks::wire::FetchScanner` over the checkpoint reader). After the
/// chunk lengths, a first line names the files as the command does (`a,b,c\n`).
pub fn kvrocks_fetch(data: &[u8]) {
    let (lens, rest) = cuts(data);
    let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
        return;
    };
    let cmd = Command {
        args: vec![b"_fetch_file".to_vec(), rest[..nl].to_vec()],
        inline: false,
        rest_unread: false,
    };
    let names = fetch_file_names(&cmd);
    let payload = &rest[nl + 1..];
    assert_eq!(
        fetch(&names, &[payload]),
        fetch(&names, &chunks(lens, payload)),
        "whole vs cut at {lens:?}"
    );
}

/// One checkpoint file read by `kvrocks::checkpoint::CheckpointScan`. A header byte after the
/// chunk lengths picks the file's name: a WAL (`.log`), a MANIFEST, or another file.
pub fn checkpoint(data: &[u8]) {
    let (lens, rest) = cuts(data);
    let Some((&kind, payload)) = rest.split_first() else {
        return;
    };
    let name = ["000010.log", "MANIFEST-000011", "CURRENT"][usize::from(kind % 3)];
    let run = |pieces: &[&[u8]]| {
        let mut s = CheckpointScan::new();
        s.begin_file(name);
        for c in pieces {
            s.feed(c);
        }
        s.end_file();
        (s.last_seq(), s.unreadable())
    };
    let whole = run(&[payload]);
    assert_eq!(
        whole,
        run(&chunks(lens, payload)),
        "whole vs cut at {lens:?}"
    );
}

/// The configuration loader (`config::Config::from_yaml`): a configuration it accepts has no
/// problem left when validated again.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match replguard::config::Config::from_yaml(text, "fuzz.yaml") {
        Ok(c) => assert!(c.validate().is_empty()),
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

/// Offsets a peer can send (`parse_offset` caps them at `MAX_OFFSET`) around `x`.
fn near(x: u64) -> [u64; 4] {
    let x = x.min(MAX_OFFSET);
    [0, x.saturating_sub(1), x, (x + 1).min(MAX_OFFSET)]
}

/// The ledger loader (`guard::store::parse`), then what the guard does with a loaded ledger:
/// verdicts over its records and updates to it with the values peers can send.
pub fn ledger(data: &[u8]) {
    let id = Identity::link("main", "127.0.0.1:6379");
    let Ok(d) = store::parse(data, &id) else {
        return;
    };
    // What is saved loads back the same.
    let saved = serde_json::to_vec(&d).expect("a ledger serializes");
    assert_eq!(store::parse(&saved, &id).as_ref(), Ok(&d));

    let mut ids: Vec<&str> = d.epochs.iter().map(|e| e.replid.as_str()).collect();
    ids.extend(d.replicas.values().map(|r| r.replid.as_str()));
    ids.extend(["?", NO_REPLID]);
    ids.truncate(8);
    for a in &ids {
        let _ = d.chain(a);
        for b in &ids {
            let _ = d.same_lineage(a, b);
        }
    }
    // A master serving any of the ids (or restarted from one) may be stale.
    let stale = ids.iter().find_map(|a| {
        d.stale_master(&MasterView {
            replid: (*a).to_string(),
            replid2: ids.get(1).copied().unwrap_or(NO_REPLID).to_string(),
            second_offset: 1,
            offset: 0,
            empty: false,
            replica: false,
        })
    });
    // Joining another ledger (a link's own, into a group's) keeps it a ledger.
    let mut joined = d.clone();
    joined.absorb(d.clone());
    assert_eq!(joined.replicas.len(), d.replicas.len());
    for (name, rec) in d.replicas.iter().take(4) {
        if let Some(s) = &stale {
            let _ = d.past_stale(rec, s);
        }
        for (replica, unclean) in [(Some(rec), rec.open), (None, false)] {
            for offset in near(rec.offset).into_iter().chain([MAX_OFFSET]) {
                for replid in [rec.replid.as_str(), ids[0]] {
                    let facts = psync2::Facts {
                        ledger: &d,
                        replica,
                        unclean_stop: unclean,
                        empty_master: ids.first().copied(),
                        stale_master: stale.as_ref(),
                        allow_empty_master: offset % 2 == 0,
                        unknown_replica: Default::default(),
                    };
                    let v = psync2::judge(&facts, replid, offset as i64);
                    let _ = v.reason().map(|r| r.code());
                }
            }
        }
        let mut m = d.clone();
        m.deliver(name, &rec.replid, rec.offset.min(MAX_OFFSET), false);
    }
    for (name, rec) in d.kvrocks.replicas.iter().take(4) {
        for seq in near(rec.next_seq).into_iter().chain([MAX_OFFSET]) {
            for replid in [rec.replid.as_deref(), None] {
                for (seen, cp) in [(false, None), (true, Some(seq)), (true, Some(u64::MAX))] {
                    let facts = kvrocks::Facts {
                        books: &d.kvrocks,
                        replica: Some(rec),
                        unclean_stop: rec.open,
                        unknown_replica: Default::default(),
                        full_sync_seen: seen,
                        checkpoint_seq: cp,
                        vouch: None,
                    };
                    let v = kvrocks::judge(&facts, replid, seq);
                    // Owed a full sync and seen to take one: asking at most one past the
                    // checkpoint, or past the last sequence there is, is no local write.
                    if let (true, true, Some(c)) = (rec.full_sync_pending, seen, cp) {
                        if u128::from(seq) <= u128::from(c) + 1 {
                            assert_eq!(v, verdict::Verdict::Pass, "checkpoint {c}, seq {seq}");
                        }
                    }
                }
            }
            // Vouched for by another link of a group: every record may be the promoted node's
            // or the replica's there, with any switch.
            for node in d.kvrocks.replicas.values().take(2) {
                for switch in [node.next_seq, seq, u64::MAX] {
                    let facts = kvrocks::Facts {
                        books: &d.kvrocks,
                        replica: None,
                        unclean_stop: false,
                        unknown_replica: Default::default(),
                        full_sync_seen: false,
                        checkpoint_seq: None,
                        vouch: Some(kvrocks::Vouch {
                            from: name,
                            switch,
                            node: Some(node),
                            replica: Some(rec),
                            unclean_stop: rec.open,
                            epoch: node.epoch.unwrap_or(0),
                            chain: Some(node),
                            newer_at: None,
                        }),
                    };
                    let v = kvrocks::judge(&facts, rec.replid.as_deref(), seq);
                    if v == verdict::Verdict::Pass && seq > 1 && seq > switch {
                        assert!(
                            node.since.is_some_and(|p| p <= switch) && seq <= node.next_seq,
                            "passed {seq} past the switch {switch} without a chain"
                        );
                    }
                }
            }
            let _ = (rec.id_at(seq), rec.ids_before(seq));
            let mut m = d.kvrocks.clone();
            let ids = m.start(name, rec.replid.as_deref(), seq);
            m.deliver(name, seq, &ids, true);
        }
    }
    // Kvrocks nodes read with any figures, over the nodes the file holds.
    let mut kv = d.kvrocks.clone();
    let links: Vec<String> = kv.nodes.keys().take(3).cloned().collect();
    for (i, link) in links.iter().enumerate() {
        let n = kv.nodes[link].clone();
        for latest in near(n.latest) {
            let v = replguard::guard::ledger::KvNodeView {
                master: i % 2 == 0,
                latest,
                process_id: n.process_id,
                uptime_secs: latest,
            };
            kv.observe_node(link, &v, Some("other"), n.started_unix);
            if let Some(e) = kv.master_epoch(link) {
                kv.vouch_sources(link, &["x".to_string()], e, latest);
            }
            kv.node_replaced(link);
        }
    }
    // The master's view folded in, with offsets a peer can send.
    let mut m: LedgerData = d.clone();
    for (i, a) in ids.iter().enumerate().take(4) {
        let e = d.epoch(a).map_or(0, |e| e.last_offset);
        for off in near(e) {
            m.see(a, off);
            m.extend(a, off);
            let b = ids[(i + 1) % ids.len()];
            m.supersede(a, b, off);
            let v = MasterView {
                replid: b.to_string(),
                replid2: a.to_string(),
                second_offset: off as i64,
                offset: off,
                empty: false,
                replica: false,
            };
            let _ = m.is_unrelated(&v);
            m.observe_master(&v);
        }
    }
}
