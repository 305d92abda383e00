//! Kvrocks replication on the wire: the PSYNC forms, the stream of WAL-batch bulks (each a raw
//! RocksDB WriteBatch with a 12-byte header and, from a node with a replication id, a trailing
//! `r <replid>` record), heartbeats, and the `_fetch_file` framing of a full sync.
//!
//! Everything here is pure: scanners are fed the bytes as they pass and say what they saw; the
//! bytes themselves are forwarded unchanged by the session.

use crate::kvrocks::checkpoint::CheckpointScan;
use crate::wire::resp::{Command, ProtocolError};

/// Length of a Kvrocks replication id.
pub const REPLID_LEN: usize = 16;

/// What replguard answers a Kvrocks replica whose resume point it will not let through: the
/// master's own wording, which makes a 2.7.0 replica start a full sync.
pub const FULL_SYNC_ANSWER: &str = "-ERR sequence out of range, please use fullsync\r\n";

/// Most payload bytes of one batch kept to walk its records; beyond this only the header and
/// the tail are kept.
const KEEP: usize = 64 * 1024;
/// Length of a trailing `r <replid>` LogData record: tag, varint length 18, `r `, the id.
const TAIL: usize = 2 + 2 + REPLID_LEN;
/// Longest bulk header line (`$<len>\r\n`).
const MAX_HEADER: usize = 24;

/// A Kvrocks replication id as a batch carries it: 16 printable ASCII bytes, kept without an
/// allocation since every batch may carry one.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReplId([u8; REPLID_LEN]);

impl ReplId {
    /// 16 printable ASCII bytes, else `None`.
    pub fn parse(id: &str) -> Option<ReplId> {
        Self::from_bytes(id.as_bytes())
    }

    fn from_bytes(id: &[u8]) -> Option<ReplId> {
        let arr: [u8; REPLID_LEN] = id.try_into().ok()?;
        arr.iter().all(u8::is_ascii_graphic).then_some(ReplId(arr))
    }

    pub fn as_str(&self) -> &str {
        // Printable ASCII by construction.
        std::str::from_utf8(&self.0).unwrap_or("?")
    }
}

impl std::fmt::Display for ReplId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for ReplId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

/// A parsed `PSYNC <seq>` or `PSYNC <replid16> <seq>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvPsync {
    pub replid: Option<String>,
    /// The first sequence the replica wants (its latest plus one).
    pub seq: u64,
}

impl KvPsync {
    /// Reads a Kvrocks PSYNC; `None` for anything the master itself would reject (wrong
    /// argument count, a sequence that is not a u64, a replid that is not 16 bytes), whose
    /// error then reaches the replica unchanged.
    pub fn parse(cmd: &Command) -> Option<KvPsync> {
        let (replid, seq) = match cmd.args.len() {
            2 => (None, cmd.arg_str(1)),
            3 => (Some(cmd.arg_str(1)), cmd.arg_str(2)),
            _ => return None,
        };
        if replid.as_ref().is_some_and(|r| r.len() != REPLID_LEN) {
            return None;
        }
        Some(KvPsync {
            replid,
            seq: seq.parse().ok()?,
        })
    }

    /// The request's replid for logs and the ledger (`-` for the two-argument form).
    pub fn replid_or_dash(&self) -> &str {
        self.replid.as_deref().unwrap_or("-")
    }
}

/// The 12-byte WriteBatch header: sequence (fixed64 LE) and record count (fixed32 LE).
pub fn batch_header(payload: &[u8]) -> Option<(u64, u32)> {
    let seq = u64::from_le_bytes(payload.get(..8)?.try_into().ok()?);
    let count = u32::from_le_bytes(payload.get(8..12)?.try_into().ok()?);
    Some((seq, count))
}

/// A batch whose records could not be walked: truncated, or of a type RocksDB does not write
/// to a WAL batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unwalkable;

/// The replication id a batch carries in its trailing `r <replid>` LogData record, found by
/// walking the records. [`Unwalkable`] sends the caller to [`tail_replid`].
pub fn walk_replid(payload: &[u8]) -> Result<Option<ReplId>, Unwalkable> {
    let mut r = Reader {
        buf: payload.get(12..).ok_or(Unwalkable)?,
    };
    let mut last_log: Option<&[u8]> = None;
    while !r.buf.is_empty() {
        let tag = r.byte()?;
        last_log = None;
        match tag {
            // Deletion, SingleDeletion
            0x00 | 0x07 => r.skip_slices(1)?,
            // Value, Merge, BlobIndex
            0x01 | 0x02 | 0x11 => r.skip_slices(2)?,
            // LogData
            0x03 => last_log = Some(r.slice()?),
            // ColumnFamily Deletion, SingleDeletion
            0x04 | 0x08 => {
                r.varint()?;
                r.skip_slices(1)?
            }
            // ColumnFamily Value, Merge, BlobIndex
            0x05 | 0x06 | 0x10 => {
                r.varint()?;
                r.skip_slices(2)?
            }
            // ColumnFamily RangeDeletion
            0x0E => {
                r.varint()?;
                r.skip_slices(2)?
            }
            // RangeDeletion
            0x0F => r.skip_slices(2)?,
            // EndPrepare, Commit, Rollback carry an xid
            0x0A..=0x0C => r.skip_slices(1)?,
            // BeginPrepare, Noop, BeginPersistedPrepare, BeginUnprepare
            0x09 | 0x0D | 0x12 | 0x13 => {}
            _ => return Err(Unwalkable),
        }
    }
    Ok(last_log.and_then(replid_record))
}

/// The replid of a batch judged from its last 20 bytes only (for batches too large to
/// keep whole, or with record types [`walk_replid`] does not know).
pub fn tail_replid(tail: &[u8]) -> Option<ReplId> {
    let t = tail.get(tail.len().checked_sub(TAIL)?..)?;
    if t[0] != 0x03 || t[1] as usize != 2 + REPLID_LEN {
        return None;
    }
    replid_record(&t[2..])
}

/// `r <16 printable bytes>` -> the id.
fn replid_record(data: &[u8]) -> Option<ReplId> {
    ReplId::from_bytes(data.strip_prefix(b"r ")?)
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, Unwalkable> {
        let (&b, rest) = self.buf.split_first().ok_or(Unwalkable)?;
        self.buf = rest;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u32, Unwalkable> {
        let mut v: u32 = 0;
        for shift in (0..35).step_by(7) {
            let b = self.byte()?;
            v |= u32::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(Unwalkable)
    }

    fn slice(&mut self) -> Result<&'a [u8], Unwalkable> {
        let n = self.varint()? as usize;
        if n > self.buf.len() {
            return Err(Unwalkable);
        }
        let (s, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(s)
    }

    fn skip_slices(&mut self, n: usize) -> Result<(), Unwalkable> {
        for _ in 0..n {
            self.slice()?;
        }
        Ok(())
    }
}

/// One WAL batch seen on the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub seq: u64,
    pub count: u32,
    /// The id in its trailing `r` record, when the master writes one.
    pub replid: Option<ReplId>,
}

impl Batch {
    /// The sequence after this batch. A batch with no records (only LogData) takes none.
    pub fn next(&self) -> u64 {
        self.seq + u64::from(self.count)
    }
}

/// What a complete bulk payload is.
#[derive(Debug)]
enum Read {
    Ping,
    Batch {
        seq: u64,
        count: u32,
        replid: Option<ReplId>,
    },
}

/// Reads a bulk payload: `payload` whole, or (for a batch too large to keep) its first bytes
/// and its `tail`.
fn inspect(payload: &[u8], tail: Option<&[u8]>) -> Result<Read, ProtocolError> {
    if tail.is_none() && payload == b"ping" {
        return Ok(Read::Ping);
    }
    let Some((seq, count)) = batch_header(payload) else {
        return Err(ProtocolError::Malformed(format!(
            "a {}-byte bulk on a Kvrocks stream is neither a WAL batch nor ping",
            payload.len()
        )));
    };
    if seq.checked_add(u64::from(count)).is_none() {
        // The batch would end past the last sequence there is: no real master sends one.
        return Err(ProtocolError::OutOfRange {
            what: "the end of a WAL batch (sequence + count)",
            value: format!("{seq} + {count}"),
            max: u64::MAX,
        });
    }
    let replid = match tail {
        None => walk_replid(payload).unwrap_or_else(|_| tail_replid(payload)),
        Some(t) => tail_replid(t),
    };
    Ok(Read::Batch { seq, count, replid })
}

/// What the stream scanner saw, with where in the fed chunk the bulk it concerns began (`None`
/// when that was in an earlier chunk).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalEvent {
    /// A batch continuing the sequence (or overlapping what was already delivered).
    Batch(Batch),
    /// A batch starting beyond the expected next sequence: batches in between are missing.
    Gap {
        expected: u64,
        batch: Batch,
        bulk_start: Option<usize>,
    },
    /// `$4\r\nping\r\n`, the master's liveness probe.
    Ping,
}

#[derive(Debug)]
enum State {
    Header,
    Payload { total: usize, seen: usize },
    Crlf { seen: usize },
}

/// Follows the master-to-replica stream of a Kvrocks link after `+OK`: bulks of raw WAL batches
/// and `ping`s. Keeps the expected next sequence and the totals.
#[derive(Debug)]
pub struct WalScanner {
    state: State,
    line: Vec<u8>,
    /// Payload kept for the record walk (whole when it fits in [`KEEP`], else the header).
    body: Vec<u8>,
    tail: Vec<u8>,
    /// The current bulk's payload, read once it is complete.
    read: Option<Read>,
    /// Where the current bulk began in the chunk being fed.
    bulk_start: Option<usize>,
    /// The sequence the next batch should start at.
    pub next_seq: u64,
    pub batches: u64,
    pub pings: u64,
    /// Stream bytes seen, headers and heartbeats included.
    pub bytes: u64,
}

impl WalScanner {
    /// A scanner for a stream the replica asked to start at `seq`.
    pub fn new(seq: u64) -> Self {
        WalScanner {
            state: State::Header,
            line: Vec::with_capacity(MAX_HEADER),
            body: Vec::new(),
            tail: Vec::new(),
            read: None,
            bulk_start: None,
            next_seq: seq,
            batches: 0,
            pings: 0,
            bytes: 0,
        }
    }

    /// Whether the stream stands between two bulks.
    pub fn at_boundary(&self) -> bool {
        matches!(self.state, State::Header) && self.line.is_empty()
    }

    /// Scans one chunk; events are appended in stream order.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<WalEvent>) -> Result<(), ProtocolError> {
        // Positions are within this chunk; a bulk begun earlier has none.
        self.bulk_start = None;
        let mut i = 0;
        while i < chunk.len() {
            match self.state {
                State::Header => {
                    if self.line.is_empty() {
                        self.bulk_start = Some(i);
                        if chunk[i] != b'$' {
                            return Err(ProtocolError::Malformed(format!(
                                "expected a WAL-batch bulk ('$'), got byte 0x{:02x}",
                                chunk[i]
                            )));
                        }
                    }
                    let rest = &chunk[i..];
                    let take = match memchr::memchr(b'\n', rest) {
                        Some(p) => p + 1,
                        None => rest.len(),
                    };
                    self.line.extend_from_slice(&rest[..take]);
                    i += take;
                    if self.line.len() > MAX_HEADER {
                        return Err(ProtocolError::TooLong(MAX_HEADER));
                    }
                    if self.line.ends_with(b"\n") {
                        let total = self.bulk_len()?;
                        self.line.clear();
                        self.body.clear();
                        self.tail.clear();
                        self.state = State::Payload { total, seen: 0 };
                    }
                }
                State::Payload { total, seen } => {
                    let take = (total - seen).min(chunk.len() - i);
                    let part = &chunk[i..i + take];
                    // A payload wholly inside this chunk is read in place, without a copy.
                    let in_place = seen == 0 && take == total;
                    if !in_place && total <= KEEP {
                        self.body.extend_from_slice(part);
                    } else if !in_place {
                        let head = 12usize.saturating_sub(seen).min(take);
                        self.body.extend_from_slice(&part[..head]);
                        let tail_from = (total - TAIL).saturating_sub(seen).min(take);
                        self.tail.extend_from_slice(&part[tail_from..]);
                    }
                    i += take;
                    let seen = seen + take;
                    self.state = if seen == total {
                        self.read = Some(if in_place {
                            inspect(part, None)?
                        } else if total <= KEEP {
                            inspect(&self.body, None)?
                        } else {
                            inspect(&self.body, Some(&self.tail))?
                        });
                        State::Crlf { seen: 0 }
                    } else {
                        State::Payload { total, seen }
                    };
                }
                State::Crlf { seen } => {
                    let want = b"\r\n"[seen];
                    if chunk[i] != want {
                        return Err(ProtocolError::Malformed(
                            "a WAL-batch bulk does not end with CRLF".into(),
                        ));
                    }
                    i += 1;
                    if seen == 1 {
                        self.finish_bulk(out)?;
                        self.bulk_start = None;
                        self.state = State::Header;
                    } else {
                        self.state = State::Crlf { seen: 1 };
                    }
                }
            }
        }
        self.bytes += chunk.len() as u64;
        Ok(())
    }

    fn bulk_len(&self) -> Result<usize, ProtocolError> {
        let text = self
            .line
            .strip_prefix(b"$")
            .and_then(|l| l.strip_suffix(b"\r\n"))
            .and_then(|l| std::str::from_utf8(l).ok())
            .and_then(|l| l.parse::<usize>().ok());
        match text {
            Some(n) if n > 0 => Ok(n),
            _ => Err(ProtocolError::Malformed(format!(
                "bad WAL-batch bulk header {:?}",
                String::from_utf8_lossy(&self.line)
            ))),
        }
    }

    fn finish_bulk(&mut self, out: &mut Vec<WalEvent>) -> Result<(), ProtocolError> {
        let Some(Read::Batch { seq, count, replid }) = self.read.take() else {
            self.pings += 1;
            out.push(WalEvent::Ping);
            return Ok(());
        };
        let batch = Batch { seq, count, replid };
        self.batches += 1;
        let expected = self.next_seq;
        self.next_seq = self.next_seq.max(batch.next());
        out.push(if seq > expected {
            WalEvent::Gap {
                expected,
                batch,
                bulk_start: self.bulk_start,
            }
        } else {
            WalEvent::Batch(batch)
        });
        Ok(())
    }
}

/// Follows a `_fetch_file` answer: per file, a `<size>\r\n` line then exactly that many raw
/// bytes. Says when every requested file has arrived whole, and the checkpoint's last sequence
/// when its files tell it.
#[derive(Debug)]
pub struct FetchScanner {
    names: Vec<String>,
    line: Vec<u8>,
    remaining: Option<u64>,
    checkpoint: CheckpointScan,
    /// Files received whole.
    pub files: usize,
    /// File bytes received (size lines not counted).
    pub file_bytes: u64,
}

impl FetchScanner {
    /// A scanner for an answer to `_fetch_file` naming `names`, in order.
    pub fn new(names: Vec<String>) -> Self {
        FetchScanner {
            names,
            line: Vec::with_capacity(MAX_HEADER),
            remaining: None,
            checkpoint: CheckpointScan::new(),
            files: 0,
            file_bytes: 0,
        }
    }

    /// Whether every requested file has arrived whole.
    pub fn complete(&self) -> bool {
        self.files == self.names.len() && self.remaining.is_none() && self.line.is_empty()
    }

    /// The last sequence recorded in these files (a MANIFEST or WAL among them).
    pub fn checkpoint_seq(&self) -> Option<u64> {
        self.checkpoint.last_seq()
    }

    /// A MANIFEST or WAL among these files could not be read: the checkpoint's last sequence
    /// is unknown.
    pub fn checkpoint_unreadable(&self) -> bool {
        self.checkpoint.unreadable()
    }

    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), ProtocolError> {
        let mut i = 0;
        while i < chunk.len() {
            match self.remaining {
                Some(left) => {
                    let take = left.min((chunk.len() - i) as u64);
                    self.checkpoint.feed(&chunk[i..i + take as usize]);
                    i += take as usize;
                    self.file_bytes += take;
                    if take == left {
                        self.end_file();
                    } else {
                        self.remaining = Some(left - take);
                    }
                }
                None => {
                    if self.files == self.names.len() {
                        return Err(ProtocolError::Malformed(
                            "bytes after the last requested file".into(),
                        ));
                    }
                    let rest = &chunk[i..];
                    let take = memchr::memchr(b'\n', rest).map_or(rest.len(), |p| p + 1);
                    self.line.extend_from_slice(&rest[..take]);
                    i += take;
                    if self.line.len() > MAX_HEADER {
                        return Err(ProtocolError::TooLong(MAX_HEADER));
                    }
                    if self.line.ends_with(b"\n") {
                        let size = std::str::from_utf8(&self.line)
                            .ok()
                            .and_then(|l| l.strip_suffix("\r\n"))
                            .and_then(|l| l.parse::<u64>().ok())
                            .ok_or_else(|| {
                                ProtocolError::Malformed(format!(
                                    "expected a file size line, got {:?}",
                                    String::from_utf8_lossy(&self.line)
                                ))
                            })?;
                        self.line.clear();
                        self.checkpoint.begin_file(&self.names[self.files]);
                        if size == 0 {
                            self.end_file();
                        } else {
                            self.remaining = Some(size);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn end_file(&mut self) {
        self.checkpoint.end_file();
        self.remaining = None;
        self.files += 1;
    }
}

/// The files a `_fetch_file <f1,f2,...>` names.
pub fn fetch_file_names(cmd: &Command) -> Vec<String> {
    cmd.args.get(1).map_or_else(Vec::new, |list| {
        list.split(|&b| b == b',')
            .filter(|f| !f.is_empty())
            .map(|f| String::from_utf8_lossy(f).into_owned())
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::resp::parse_command;

    /// A batch as Kvrocks 2.7.0 writes `set <key> <value>` (cluster key encoding), optionally
    /// with the trailing `r` record.
    fn put_batch(seq: u64, key: &[u8], value: &[u8], replid: Option<&str>) -> Vec<u8> {
        let mut b = seq.to_le_bytes().to_vec();
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&[0x03, 0x01, b'1']);
        let mut k = vec![0x0b];
        k.extend_from_slice(b"__namespace");
        k.extend_from_slice(&[0x12, 0x34]);
        k.extend_from_slice(key);
        let mut v = vec![0x01, 0, 0, 0, 0];
        v.extend_from_slice(value);
        b.extend_from_slice(&[0x05, 0x01, k.len() as u8]);
        b.extend_from_slice(&k);
        b.push(v.len() as u8);
        b.extend_from_slice(&v);
        if let Some(id) = replid {
            b.extend_from_slice(&[0x03, 18, b'r', b' ']);
            b.extend_from_slice(id.as_bytes());
        }
        b
    }

    fn bulk(payload: &[u8]) -> Vec<u8> {
        let mut out = format!("${}\r\n", payload.len()).into_bytes();
        out.extend_from_slice(payload);
        out.extend_from_slice(b"\r\n");
        out
    }

    fn cmd(line: &[u8]) -> Command {
        parse_command(line).unwrap().unwrap().0
    }

    #[test]
    fn psync_forms_parse_like_the_master_does() {
        assert_eq!(
            KvPsync::parse(&cmd(b"PSYNC 5\r\n")),
            Some(KvPsync {
                replid: None,
                seq: 5
            })
        );
        assert_eq!(
            KvPsync::parse(&cmd(b"PSYNC E1PZBV0DJ9JAP0TH 6\r\n")),
            Some(KvPsync {
                replid: Some("E1PZBV0DJ9JAP0TH".into()),
                seq: 6
            })
        );
        assert_eq!(KvPsync::parse(&cmd(b"PSYNC short 6\r\n")), None);
        assert_eq!(KvPsync::parse(&cmd(b"PSYNC -1\r\n")), None);
        assert_eq!(KvPsync::parse(&cmd(b"PSYNC\r\n")), None);
    }

    #[test]
    fn header_and_replid_are_read_from_a_batch() {
        let b = put_batch(6, b"k1", b"v1-UPDATED", Some("C3EORR3YM0FAK7BG"));
        assert_eq!(batch_header(&b), Some((6, 1)));
        let id = ReplId::parse("C3EORR3YM0FAK7BG");
        assert_eq!(walk_replid(&b), Ok(id));
        assert_eq!(tail_replid(&b), id);
        assert_eq!(id.unwrap().to_string(), "C3EORR3YM0FAK7BG");
        let plain = put_batch(2, b"k1", b"v1", None);
        assert_eq!(walk_replid(&plain), Ok(None));
        assert_eq!(tail_replid(&plain), None);
        // A value that merely ends like an `r` record is not taken for one by the walk.
        let mut tricky = b"xx".to_vec();
        tricky.extend_from_slice(&[0x03, 18, b'r', b' ']);
        tricky.extend_from_slice(b"AAAAAAAAAAAAAAAA");
        let b = put_batch(7, b"k", &tricky, None);
        assert_eq!(walk_replid(&b), Ok(None));
        // An unknown record type is reported, not guessed.
        let mut odd = put_batch(8, b"k", b"v", None);
        odd.push(0x7f);
        assert_eq!(walk_replid(&odd), Err(Unwalkable));
    }

    fn scan_all(s: &mut WalScanner, bytes: &[u8], step: usize) -> Vec<WalEvent> {
        let mut out = Vec::new();
        for chunk in bytes.chunks(step) {
            s.feed(chunk, &mut out).unwrap();
        }
        out
    }

    #[test]
    fn stream_scanner_follows_batches_and_pings_in_any_chunking() {
        let mut stream = bulk(&put_batch(
            6,
            b"k1",
            b"v1-UPDATED",
            Some("C3EORR3YM0FAK7BG"),
        ));
        stream.extend(bulk(&put_batch(7, b"k4", b"v4", Some("C3EORR3YM0FAK7BG"))));
        stream.extend_from_slice(b"$4\r\nping\r\n");
        stream.extend(bulk(&put_batch(8, b"k5", b"v5", None)));
        for step in [1, 2, 3, 7, 13, stream.len()] {
            let mut s = WalScanner::new(6);
            let ev = scan_all(&mut s, &stream, step);
            assert_eq!(ev.len(), 4, "chunks of {step}");
            assert!(
                matches!(&ev[0], WalEvent::Batch(b) if b.seq == 6 && b.replid == ReplId::parse("C3EORR3YM0FAK7BG"))
            );
            assert_eq!(ev[2], WalEvent::Ping);
            assert!(matches!(&ev[3], WalEvent::Batch(b) if b.seq == 8 && b.replid.is_none()));
            assert_eq!(s.next_seq, 9);
            assert_eq!((s.batches, s.pings), (3, 1));
            assert_eq!(s.bytes, stream.len() as u64);
            assert!(s.at_boundary());
        }
    }

    #[test]
    fn a_batch_of_log_data_only_takes_no_sequence() {
        let mut empty = 4u64.to_le_bytes().to_vec();
        empty.extend_from_slice(&0u32.to_le_bytes());
        empty.extend_from_slice(&[0x03, 0x01, b'x']);
        let mut stream = bulk(&put_batch(3, b"a", b"1", None));
        stream.extend(bulk(&empty));
        stream.extend(bulk(&put_batch(4, b"b", b"2", None)));
        let mut s = WalScanner::new(3);
        let ev = scan_all(&mut s, &stream, 5);
        assert!(ev.iter().all(|e| matches!(e, WalEvent::Batch(_))), "{ev:?}");
        assert_eq!(s.next_seq, 5);
    }

    #[test]
    fn a_gap_is_reported_with_where_its_bulk_began() {
        let first = bulk(&put_batch(2, b"k1", b"v1", None));
        let mut stream = first.clone();
        stream.extend(bulk(&put_batch(5, b"k2", b"v2", None)));
        let mut s = WalScanner::new(2);
        let mut out = Vec::new();
        s.feed(&stream, &mut out).unwrap();
        assert_eq!(
            out[1],
            WalEvent::Gap {
                expected: 3,
                batch: Batch {
                    seq: 5,
                    count: 1,
                    replid: None,
                },
                bulk_start: Some(first.len()),
            }
        );
        assert_eq!(s.next_seq, 6);
        // Split inside the gapped bulk's header: its start was in an earlier chunk.
        let mut s = WalScanner::new(2);
        let mut out = Vec::new();
        s.feed(&stream[..first.len() + 3], &mut out).unwrap();
        s.feed(&stream[first.len() + 3..], &mut out).unwrap();
        assert!(matches!(
            out[1],
            WalEvent::Gap {
                bulk_start: None,
                ..
            }
        ));
    }

    #[test]
    fn a_large_batch_keeps_only_its_header_and_tail() {
        let big = vec![b'x'; KEEP + 100];
        let b = put_batch(9, b"big", &big, Some("JOIHWP2Q0S09AG7L"));
        let mut s = WalScanner::new(9);
        let ev = scan_all(&mut s, &bulk(&b), 4096);
        assert!(
            matches!(&ev[0], WalEvent::Batch(x) if x.seq == 9 && x.replid == ReplId::parse("JOIHWP2Q0S09AG7L"))
        );
        assert!(s.body.len() <= 12 && s.tail.len() == TAIL);
    }

    #[test]
    fn stream_garbage_is_an_error() {
        let mut out = Vec::new();
        assert!(WalScanner::new(1).feed(b"+OK\r\n", &mut out).is_err());
        assert!(WalScanner::new(1).feed(b"$0\r\n\r\n", &mut out).is_err());
        assert!(WalScanner::new(1).feed(b"$3\r\nabc\r\n", &mut out).is_err());
        let mut s = WalScanner::new(1);
        assert!(s.feed(b"$4\r\npingXX", &mut out).is_err());
    }

    #[test]
    fn a_batch_ending_past_the_last_sequence_ends_the_stream() {
        // Found by the kvrocks_wal fuzz target (fuzz/corpus/kvrocks_wal/crash-*): the next
        // sequence overflowed.
        let mut header = u64::MAX.to_le_bytes().to_vec();
        header.extend_from_slice(&2u32.to_le_bytes());
        let mut out = Vec::new();
        let err = WalScanner::new(5)
            .feed(&bulk(&header), &mut out)
            .unwrap_err();
        assert!(matches!(err, ProtocolError::OutOfRange { .. }), "{err:?}");
        assert!(out.is_empty());
        // Up to the last sequence there is, it is a batch like any other.
        let mut s = WalScanner::new(5);
        s.feed(&bulk(&put_batch(u64::MAX - 1, b"k", b"v", None)), &mut out)
            .unwrap();
        assert_eq!(s.next_seq, u64::MAX);
    }

    #[test]
    fn fetch_scanner_counts_whole_files() {
        let c = cmd(b"*2\r\n$11\r\n_fetch_file\r\n$23\r\nOPTIONS-1,CURRENT,0.log\r\n");
        let names = fetch_file_names(&c);
        assert_eq!(names, ["OPTIONS-1", "CURRENT", "0.log"]);
        let answer = b"5\r\nhello16\r\nMANIFEST-000011\n0\r\n";
        for step in [1, 4, answer.len()] {
            let mut f = FetchScanner::new(names.clone());
            for chunk in answer.chunks(step) {
                f.feed(chunk).unwrap();
            }
            assert!(f.complete(), "chunks of {step}");
            assert_eq!(f.file_bytes, 21);
        }
        let mut short = FetchScanner::new(names.clone());
        short.feed(b"5\r\nhel").unwrap();
        assert!(!short.complete());
        let one = vec!["CURRENT".to_string()];
        assert!(FetchScanner::new(one.clone())
            .feed(b"-ERR nope\r\n")
            .is_err());
        assert!(FetchScanner::new(one).feed(b"1\r\nxy").is_err());
    }

    #[test]
    fn a_recorded_checkpoint_tells_its_last_sequence() {
        // The `_fetch_file` answer of a real Kvrocks 2.7.0 master (checkpoint at sequence 5:
        // its WAL holds batches 1..=5; the replica then asked PSYNC <id> 6).
        let answer =
            include_bytes!("../../tests/data/kvrocks-wire/wire-cluster-rsid-yes.txt.conn3.s2c.bin");
        let c = cmd(b"*2\r\n$11\r\n_fetch_file\r\n$49\r\nOPTIONS-000013,MANIFEST-000011,CURRENT,000010.log\r\n");
        for step in [1000, answer.len()] {
            let mut f = FetchScanner::new(fetch_file_names(&c));
            for chunk in answer.chunks(step) {
                f.feed(chunk).unwrap();
            }
            assert!(f.complete());
            assert_eq!(f.checkpoint_seq(), Some(5));
        }
    }
}
