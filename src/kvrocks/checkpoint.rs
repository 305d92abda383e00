//! The last sequence of a Kvrocks checkpoint, read from its files as `_fetch_file` relays them.
//!
//! A Kvrocks full sync ships a RocksDB checkpoint; the replica restores it and asks
//! `PSYNC [id] <last sequence + 1>`. The last sequence is the highest of the MANIFEST's
//! "last sequence" and the sequences of the WriteBatches in the checkpoint's WAL (`*.log`)
//! files, which the replica replays when it opens the database. Knowing it lets the guard tell
//! an honest first PSYNC after a full sync from one that asks past the checkpoint (the replica
//! wrote locally in between).
//!
//! Both file kinds use the RocksDB log format: 32 KiB blocks of records, each with a 7-byte
//! header (crc32, length u16 LE, type) or an 11-byte one for recyclable types; a logical record
//! is one FULL fragment or FIRST, MIDDLE..., LAST. WAL records are WriteBatch reps (12-byte
//! header: sequence, count); MANIFEST records are VersionEdits (tagged fields).

/// RocksDB log block size.
const BLOCK: usize = 32 * 1024;
/// Most bytes kept of one MANIFEST record (VersionEdits are small).
const MAX_EDIT: usize = 1024 * 1024;

/// What a checkpoint file is to the scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Wal,
    Manifest,
    Other,
}

impl Kind {
    fn of(name: &str) -> Kind {
        let base = name.rsplit('/').next().unwrap_or(name);
        if base.ends_with(".log") {
            Kind::Wal
        } else if base.starts_with("MANIFEST-") {
            Kind::Manifest
        } else {
            Kind::Other
        }
    }
}

/// Follows the files of one `_fetch_file` answer and the last sequence they hold.
#[derive(Debug, Default)]
pub struct CheckpointScan {
    log: Option<LogScan>,
    /// Highest sequence covered by a WAL batch.
    wal_last: Option<u64>,
    /// Last sequence recorded in a MANIFEST.
    manifest_last: Option<u64>,
    /// A MANIFEST or WAL could not be read: the result is unknown.
    unreadable: bool,
}

impl CheckpointScan {
    pub fn new() -> Self {
        Self::default()
    }

    /// A file named `name` starts.
    pub fn begin_file(&mut self, name: &str) {
        let kind = Kind::of(name);
        self.log = (kind != Kind::Other).then(|| LogScan::new(kind));
    }

    /// Bytes of the current file.
    pub fn feed(&mut self, bytes: &[u8]) {
        let Some(log) = self.log.as_mut() else {
            return;
        };
        let kind = log.kind;
        let mut records = Vec::new();
        if log.feed(bytes, &mut records).is_err() {
            self.unreadable = true;
            self.log = None;
            return;
        }
        for r in records {
            match kind {
                Kind::Wal => {
                    if r.len() < 12 {
                        self.unreadable = true;
                        continue;
                    }
                    let seq = u64::from_le_bytes(r[..8].try_into().unwrap_or_default());
                    let count = u32::from_le_bytes(r[8..12].try_into().unwrap_or_default());
                    if count > 0 {
                        // A batch that would end past the last sequence there is: not a WAL
                        // this reader understands.
                        let Some(last) = seq.checked_add(u64::from(count) - 1) else {
                            self.unreadable = true;
                            continue;
                        };
                        self.wal_last = Some(self.wal_last.map_or(last, |w| w.max(last)));
                    }
                }
                Kind::Manifest => match last_sequence(&r) {
                    Ok(Some(s)) => self.manifest_last = Some(s),
                    Ok(None) => {}
                    Err(()) => self.unreadable = true,
                },
                Kind::Other => {}
            }
        }
    }

    /// The current file ended.
    pub fn end_file(&mut self) {
        if let Some(log) = self.log.take() {
            if log.mid_record() {
                self.unreadable = true;
            }
        }
    }

    /// A MANIFEST or WAL could not be read.
    pub fn unreadable(&self) -> bool {
        self.unreadable
    }

    /// The checkpoint's last sequence, when the files read were all understood and at least
    /// one of them recorded a sequence.
    pub fn last_seq(&self) -> Option<u64> {
        if self.unreadable {
            return None;
        }
        match (self.wal_last, self.manifest_last) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0).max(b.unwrap_or(0))),
        }
    }
}

/// An incremental reader of the RocksDB log format.
#[derive(Debug)]
struct LogScan {
    kind: Kind,
    /// Position within the current 32 KiB block.
    at: usize,
    header: Vec<u8>,
    /// Payload bytes left in the current fragment, and its type.
    left: usize,
    frag_type: u8,
    /// The logical record being assembled (only its prefix for WAL files).
    record: Vec<u8>,
    in_record: bool,
    /// The file's tail is preallocated zeros.
    ended: bool,
}

impl LogScan {
    fn new(kind: Kind) -> Self {
        LogScan {
            kind,
            at: 0,
            header: Vec::with_capacity(11),
            left: 0,
            frag_type: 0,
            record: Vec::new(),
            in_record: false,
            ended: false,
        }
    }

    fn keep(&self) -> usize {
        match self.kind {
            Kind::Wal => 12,
            _ => MAX_EDIT,
        }
    }

    fn mid_record(&self) -> bool {
        !self.ended && (self.in_record || self.left > 0 || !self.header.is_empty())
    }

    fn feed(&mut self, mut bytes: &[u8], out: &mut Vec<Vec<u8>>) -> Result<(), ()> {
        while !bytes.is_empty() && !self.ended {
            let room = BLOCK - self.at;
            if self.left > 0 {
                let take = self.left.min(bytes.len()).min(room);
                let keep = self.keep().saturating_sub(self.record.len()).min(take);
                if self.frag_type != SKIP {
                    self.record.extend_from_slice(&bytes[..keep]);
                }
                self.advance(take);
                bytes = &bytes[take..];
                self.left -= take;
                if self.left == 0 {
                    self.fragment_done(out)?;
                }
                continue;
            }
            if self.header.is_empty() && room < 7 {
                // Block trailer: padding.
                let take = room.min(bytes.len());
                self.advance(take);
                bytes = &bytes[take..];
                continue;
            }
            // Header: 7 bytes, or 11 for recyclable types.
            let want = if self.header.len() >= 7 && is_recyclable(self.header[6]) {
                11
            } else {
                7
            };
            let take = (want - self.header.len()).min(bytes.len());
            self.header.extend_from_slice(&bytes[..take]);
            self.advance(take);
            bytes = &bytes[take..];
            if self.header.len() < 7 {
                continue;
            }
            let t = self.header[6];
            if is_recyclable(t) && self.header.len() < 11 {
                continue;
            }
            let len = usize::from(u16::from_le_bytes([self.header[4], self.header[5]]));
            self.header.clear();
            if t == 0 && len == 0 {
                self.ended = true;
                break;
            }
            self.frag_type = match t {
                1..=8 => (t - 1) % 4 + 1,
                // Metadata records (compression type, timestamp sizes): not data.
                9..=12 => SKIP,
                _ => return Err(()),
            };
            self.left = len;
            if len == 0 {
                self.fragment_done(out)?;
            }
        }
        Ok(())
    }

    fn advance(&mut self, n: usize) {
        self.at = (self.at + n) % BLOCK;
    }

    fn fragment_done(&mut self, out: &mut Vec<Vec<u8>>) -> Result<(), ()> {
        match self.frag_type {
            FULL => {
                out.push(std::mem::take(&mut self.record));
                self.in_record = false;
            }
            FIRST => {
                self.in_record = true;
            }
            MIDDLE if self.in_record => {}
            LAST if self.in_record => {
                out.push(std::mem::take(&mut self.record));
                self.in_record = false;
            }
            SKIP => {}
            _ => return Err(()),
        }
        Ok(())
    }
}

const FULL: u8 = 1;
const FIRST: u8 = 2;
const MIDDLE: u8 = 3;
const LAST: u8 = 4;
const SKIP: u8 = 0xff;

fn is_recyclable(t: u8) -> bool {
    matches!(t, 5..=8 | 11)
}

/// The "last sequence" field of a VersionEdit; `Err` on a field this reader cannot skip.
fn last_sequence(edit: &[u8]) -> Result<Option<u64>, ()> {
    let mut r = Reader { buf: edit };
    let mut last = None;
    while !r.buf.is_empty() {
        let tag = r.varint()?;
        match tag {
            // comparator, column family add
            1 | 201 => r.slice()?,
            // log number, next file number, prev log number, min log number to keep
            2 | 3 | 9 | 10 => {
                r.varint()?;
            }
            4 => last = Some(r.varint()?),
            // compact cursor: level + internal key
            5 => {
                r.varint()?;
                r.slice()?
            }
            // deleted file: level + file number
            6 => {
                r.varint()?;
                r.varint()?;
            }
            // new file (4): level, number, size, smallest, largest, seqnos, custom fields
            103 => {
                r.varint()?;
                r.varint()?;
                r.varint()?;
                r.slice()?;
                r.slice()?;
                r.varint()?;
                r.varint()?;
                loop {
                    let custom = r.varint()?;
                    if custom == 1 {
                        break;
                    }
                    r.slice()?;
                }
            }
            // column family, max column family, in atomic group
            200 | 203 | 300 => {
                r.varint()?;
            }
            // column family drop
            202 => {}
            // Fields marked safe to ignore are length-prefixed.
            t if t & (1 << 13) != 0 => r.slice()?,
            _ => return Err(()),
        }
    }
    Ok(last)
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl Reader<'_> {
    fn varint(&mut self) -> Result<u64, ()> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self.buf.split_first().ok_or(())?;
            self.buf = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(())
    }

    fn slice(&mut self) -> Result<(), ()> {
        let n = usize::try_from(self.varint()?).map_err(|_| ())?;
        if n > self.buf.len() {
            return Err(());
        }
        self.buf = &self.buf[n..];
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A WAL file of one record (FULL fragment) holding a batch header: `seq`, `count`.
    fn wal_of_one_batch(seq: u64, count: u32) -> Vec<u8> {
        let mut batch = seq.to_le_bytes().to_vec();
        batch.extend_from_slice(&count.to_le_bytes());
        let mut file = vec![0, 0, 0, 0];
        file.extend_from_slice(&(batch.len() as u16).to_le_bytes());
        file.push(1);
        file.extend_from_slice(&batch);
        file
    }

    fn read_wal(file: &[u8]) -> CheckpointScan {
        let mut s = CheckpointScan::new();
        s.begin_file("000010.log");
        s.feed(file);
        s.end_file();
        s
    }

    #[test]
    fn a_wal_batch_ending_past_the_last_sequence_is_unreadable() {
        // Found by the checkpoint fuzz target (fuzz/corpus/checkpoint/crash-*): the batch's
        // last sequence overflowed.
        let s = read_wal(&wal_of_one_batch(u64::MAX, 2));
        assert!(s.unreadable());
        assert_eq!(s.last_seq(), None);
        let s = read_wal(&wal_of_one_batch(u64::MAX, 1));
        assert!(!s.unreadable());
        assert_eq!(s.last_seq(), Some(u64::MAX));
        assert_eq!(read_wal(&wal_of_one_batch(3, 3)).last_seq(), Some(5));
    }
}
