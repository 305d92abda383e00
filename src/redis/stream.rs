//! What flows from the master to a replica after the PSYNC reply: keepalive newlines, the RDB
//! payload (`$<len>` or diskless `$EOF:<mark>`), then the command stream.
//!
//! [`Downstream`] watches those bytes as they pass, never changing them, and reports where the
//! payload starts and ends and how far the command stream has got. [`StreamScanner`] only finds
//! frame boundaries in the command stream: bulk bodies are skipped, not looked at, so the cost per
//! byte stays close to a plain copy.

use crate::wire::resp::{parse_offset, split_line, ProtocolError};

/// Longest preamble line (`$EOF:<40 hex>` is 45 bytes).
const MAX_PREAMBLE_LINE: usize = 512;
/// Length of the diskless end mark.
pub const EOF_MARK_LEN: usize = 40;
/// Largest array length or bulk length accepted in the command stream (Redis' own
/// proto-max-bulk-len tops out at 2^63, but nothing real comes near this). A digit is taken only
/// while the number is at most a tenth of this, so a length never exceeds it and reading one
/// never overflows; twelve nines make that bound exact.
const MAX_STREAM_LEN: u64 = 999_999_999_999;

/// Something the downstream watcher noticed, in stream order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A bare newline from the master while it prepares the RDB.
    Keepalive,
    /// The payload header: `Some(len)` for `$<len>`, `None` for diskless `$EOF:`.
    RdbStart { len: Option<u64> },
    /// The whole payload has passed; `diskless` payloads hold the stream until the replica's
    /// first ACK.
    RdbEnd { bytes: u64, diskless: bool },
    /// An error line where the payload header was expected.
    Rejected(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// Newlines, then `$<len>` / `$EOF:<mark>`.
    Preamble { line: Vec<u8> },
    /// `left` payload bytes to go.
    Rdb { left: u64 },
    /// Diskless payload: ends where the mark is seen; `tail` keeps the last bytes to find a mark
    /// that straddles two reads.
    RdbEof {
        mark: [u8; EOF_MARK_LEN],
        tail: Vec<u8>,
    },
    /// The command stream.
    Stream,
    /// An error ended the exchange; nothing more is expected.
    Done,
}

/// Watches the master-to-replica bytes after a PSYNC/SYNC reply.
#[derive(Debug, Clone)]
pub struct Downstream {
    phase: Phase,
    /// Payload bytes seen so far.
    pub rdb_bytes: u64,
    /// The command stream's frame scanner.
    pub stream: StreamScanner,
}

/// What one call to [`Downstream::feed`] found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Fed {
    /// Index in the chunk where the command stream of a diskless sync starts, if it starts in
    /// this chunk. Bytes from here on must wait for the replica's first ACK.
    pub hold_from: Option<usize>,
}

impl Downstream {
    /// After `+FULLRESYNC` or an inline `SYNC`: a payload comes first.
    pub fn full_sync() -> Self {
        Downstream {
            phase: Phase::Preamble { line: Vec::new() },
            rdb_bytes: 0,
            stream: StreamScanner::default(),
        }
    }

    /// After `+CONTINUE`: the command stream starts at once.
    pub fn partial() -> Self {
        Downstream {
            phase: Phase::Stream,
            rdb_bytes: 0,
            stream: StreamScanner::default(),
        }
    }

    /// Whether the command stream has started.
    pub fn in_stream(&self) -> bool {
        self.phase == Phase::Stream
    }

    /// The frame the master's bytes stand inside, if any: a close there cut it.
    pub fn open_frame(&self) -> Option<&'static str> {
        match &self.phase {
            Phase::Preamble { line } if !line.is_empty() => Some("the payload header"),
            Phase::Rdb { .. } | Phase::RdbEof { .. } => Some("the RDB payload"),
            Phase::Stream if self.stream.bytes != self.stream.boundary => {
                Some("a command of the replication stream")
            }
            _ => None,
        }
    }

    /// Looks at one chunk, exactly as it will be forwarded. Events are appended to `events`.
    pub fn feed(&mut self, chunk: &[u8], events: &mut Vec<Event>) -> Result<Fed, ProtocolError> {
        let mut fed = Fed::default();
        let mut i = 0;
        while i < chunk.len() {
            let rest = &chunk[i..];
            match &mut self.phase {
                Phase::Stream => {
                    self.stream.scan(rest)?;
                    break;
                }
                Phase::Preamble { line } => {
                    if line.is_empty() && rest[0] == b'\n' {
                        events.push(Event::Keepalive);
                        i += 1;
                        continue;
                    }
                    let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
                        line.extend_from_slice(rest);
                        if line.len() > MAX_PREAMBLE_LINE {
                            return Err(ProtocolError::TooLong(MAX_PREAMBLE_LINE));
                        }
                        break;
                    };
                    line.extend_from_slice(&rest[..=nl]);
                    i += nl + 1;
                    let full = std::mem::take(line);
                    let (text, _) = split_line(&full, MAX_PREAMBLE_LINE)?
                        .ok_or_else(|| ProtocolError::Malformed("unterminated line".into()))?;
                    self.phase = parse_preamble(text, events)?;
                }
                Phase::Rdb { left } => {
                    let take = (*left).min(rest.len() as u64);
                    *left -= take;
                    self.rdb_bytes += take;
                    i += take as usize;
                    if *left == 0 {
                        events.push(Event::RdbEnd {
                            bytes: self.rdb_bytes,
                            diskless: false,
                        });
                        self.phase = Phase::Stream;
                    }
                }
                Phase::RdbEof { mark, tail } => match find_mark(tail, rest, mark) {
                    Some(end) => {
                        self.rdb_bytes += end as u64;
                        i += end;
                        events.push(Event::RdbEnd {
                            bytes: self.rdb_bytes,
                            diskless: true,
                        });
                        fed.hold_from = Some(i);
                        self.phase = Phase::Stream;
                    }
                    None => {
                        self.rdb_bytes += rest.len() as u64;
                        keep_tail(tail, rest);
                        break;
                    }
                },
                Phase::Done => {
                    return Err(ProtocolError::Malformed(
                        "bytes after an error reply to SYNC".into(),
                    ))
                }
            }
        }
        Ok(fed)
    }
}

fn parse_preamble(text: &[u8], events: &mut Vec<Event>) -> Result<Phase, ProtocolError> {
    if let Some(err) = text.strip_prefix(b"-") {
        events.push(Event::Rejected(String::from_utf8_lossy(err).into_owned()));
        return Ok(Phase::Done);
    }
    let Some(spec) = text.strip_prefix(b"$") else {
        return Err(ProtocolError::Malformed(format!(
            "expected an RDB payload header, got {:?}",
            String::from_utf8_lossy(text)
        )));
    };
    if let Some(mark) = spec.strip_prefix(b"EOF:") {
        let mark: [u8; EOF_MARK_LEN] = mark.try_into().map_err(|_| {
            ProtocolError::Malformed(format!("diskless mark of {} bytes, not 40", mark.len()))
        })?;
        events.push(Event::RdbStart { len: None });
        return Ok(Phase::RdbEof {
            mark,
            tail: Vec::with_capacity(EOF_MARK_LEN),
        });
    }
    let len = parse_offset(&String::from_utf8_lossy(spec), "the RDB payload length")?;
    events.push(Event::RdbStart { len: Some(len) });
    Ok(if len == 0 {
        events.push(Event::RdbEnd {
            bytes: 0,
            diskless: false,
        });
        Phase::Stream
    } else {
        Phase::Rdb { left: len }
    })
}

/// Finds the end of the first occurrence of `mark` in `tail ++ chunk`, as an index into `chunk`.
/// `tail` holds fewer than 40 bytes of what came before.
fn find_mark(tail: &[u8], chunk: &[u8], mark: &[u8; EOF_MARK_LEN]) -> Option<usize> {
    // A mark straddling the previous read and this one.
    if !tail.is_empty() {
        let head = &chunk[..chunk.len().min(EOF_MARK_LEN - 1)];
        let mut joined = [0u8; 2 * EOF_MARK_LEN];
        joined[..tail.len()].copy_from_slice(tail);
        joined[tail.len()..tail.len() + head.len()].copy_from_slice(head);
        let joined = &joined[..tail.len() + head.len()];
        if let Some(p) = joined.windows(EOF_MARK_LEN).position(|w| w == mark) {
            return Some(p + EOF_MARK_LEN - tail.len());
        }
    }
    memchr::memmem::find(chunk, mark).map(|p| p + EOF_MARK_LEN)
}

/// Keeps the last (up to 39) bytes of the payload seen so far.
fn keep_tail(tail: &mut Vec<u8>, chunk: &[u8]) {
    const KEEP: usize = EOF_MARK_LEN - 1;
    if chunk.len() >= KEEP {
        tail.clear();
        tail.extend_from_slice(&chunk[chunk.len() - KEEP..]);
    } else {
        tail.extend_from_slice(chunk);
        if tail.len() > KEEP {
            tail.drain(..tail.len() - KEEP);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Scan {
    /// Expecting `*` of the next command.
    #[default]
    Start,
    /// Digits of `*<n>`.
    ArrayLen,
    /// `\n` after the array length.
    ArrayLf,
    /// Expecting `$` of the next argument.
    BulkStart,
    /// Digits of `$<len>`.
    BulkLen,
    /// `\n` after the bulk length.
    BulkLf,
    /// Skipping bulk bytes.
    BulkBody,
    /// `\r` after a bulk body.
    BodyCr,
    /// `\n` after a bulk body.
    BodyLf,
}

/// Finds command boundaries in a replication stream (RESP arrays of bulk strings, nothing else).
///
/// `bytes` counts every stream byte seen; `boundary` counts the bytes up to the end of the last
/// complete command, which is where a replica's own offset stands after applying what it got.
#[derive(Debug, Clone, Default)]
pub struct StreamScanner {
    state: Scan,
    /// The number being read (array or bulk length).
    num: u64,
    /// Digits read for `num`, to refuse empty lengths.
    digits: u8,
    /// Arguments left in the current command.
    elems_left: u64,
    /// Body bytes left in the current bulk.
    body_left: u64,
    /// Every stream byte seen.
    pub bytes: u64,
    /// Stream bytes up to the end of the last complete command.
    pub boundary: u64,
    /// Complete commands seen.
    pub commands: u64,
}

impl StreamScanner {
    /// Scans one chunk of the command stream.
    pub fn scan(&mut self, chunk: &[u8]) -> Result<(), ProtocolError> {
        // The state lives in locals for the loop and is written back once: this loop runs for
        // every header byte of the stream.
        let base = self.bytes;
        let (mut state, mut num, mut digits) = (self.state, self.num, self.digits);
        let (mut elems_left, mut body_left) = (self.elems_left, self.body_left);
        let (mut boundary, mut commands) = (self.boundary, self.commands);
        let n = chunk.len();
        let mut i = 0;
        let mut fault = None;
        while i < n {
            if state == Scan::BulkBody {
                let take = body_left.min((n - i) as u64);
                body_left -= take;
                i += take as usize;
                if body_left == 0 {
                    state = Scan::BodyCr;
                }
                continue;
            }
            let b = chunk[i];
            i += 1;
            state = match (state, b) {
                (Scan::Start, b'*') => {
                    (num, digits) = (0, 0);
                    Scan::ArrayLen
                }
                (Scan::ArrayLen | Scan::BulkLen, b'0'..=b'9')
                    if num <= MAX_STREAM_LEN / 10 && digits < 20 =>
                {
                    num = num * 10 + u64::from(b - b'0');
                    digits += 1;
                    state
                }
                (Scan::ArrayLen, b'\r') if digits > 0 => Scan::ArrayLf,
                (Scan::BulkLen, b'\r') if digits > 0 => Scan::BulkLf,
                (Scan::ArrayLf, b'\n') => {
                    elems_left = num;
                    if elems_left == 0 {
                        boundary = base + i as u64;
                        commands += 1;
                        Scan::Start
                    } else {
                        Scan::BulkStart
                    }
                }
                (Scan::BulkStart, b'$') => {
                    (num, digits) = (0, 0);
                    Scan::BulkLen
                }
                (Scan::BulkLf, b'\n') => {
                    body_left = num;
                    if body_left == 0 {
                        Scan::BodyCr
                    } else {
                        Scan::BulkBody
                    }
                }
                (Scan::BodyCr, b'\r') => Scan::BodyLf,
                (Scan::BodyLf, b'\n') => {
                    elems_left -= 1;
                    if elems_left == 0 {
                        boundary = base + i as u64;
                        commands += 1;
                        Scan::Start
                    } else {
                        Scan::BulkStart
                    }
                }
                _ => {
                    fault = Some((b, base + i as u64 - 1));
                    break;
                }
            };
        }
        self.elems_left = elems_left;
        self.body_left = body_left;
        self.boundary = boundary;
        self.commands = commands;
        self.num = num;
        self.digits = digits;
        if let Some((b, at)) = fault {
            return Err(stream_fault(b, at, state));
        }
        self.state = state;
        self.bytes = base + n as u64;
        Ok(())
    }

    /// Whether the scanner stands between two commands.
    #[cfg(test)]
    pub fn at_boundary(&self) -> bool {
        self.state == Scan::Start
    }
}

/// The error for a byte the scanner refused at stream offset `at` in `state`. Kept out of the
/// scanning loop: it runs once per session at most.
#[cold]
#[inline(never)]
fn stream_fault(b: u8, at: u64, state: Scan) -> ProtocolError {
    // A digit refused inside a length: the length would pass the limit.
    if b.is_ascii_digit() && matches!(state, Scan::ArrayLen | Scan::BulkLen) {
        return ProtocolError::OutOfRange {
            what: "a length in the replication stream at stream offset",
            value: at.to_string(),
            max: MAX_STREAM_LEN,
        };
    }
    ProtocolError::Malformed(format!(
        "unexpected byte 0x{b:02x} in the replication stream at stream offset {at} (state {state:?})"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::resp::encode_command;
    use proptest::prelude::*;

    fn feed_all(d: &mut Downstream, chunks: &[&[u8]]) -> (Vec<Event>, Vec<Option<usize>>) {
        let mut ev = Vec::new();
        let holds = chunks
            .iter()
            .map(|c| d.feed(c, &mut ev).unwrap().hold_from)
            .collect();
        (ev, holds)
    }

    #[test]
    fn disk_payload_then_stream() {
        let mut d = Downstream::full_sync();
        let cmd = encode_command(&["SET", "k", "v"]);
        let mut wire = b"\n\n$5\r\nREDIS".to_vec();
        wire.extend_from_slice(&cmd);
        let (ev, holds) = feed_all(&mut d, &[&wire[..4], &wire[4..9], &wire[9..]]);
        assert_eq!(
            ev,
            vec![
                Event::Keepalive,
                Event::Keepalive,
                Event::RdbStart { len: Some(5) },
                Event::RdbEnd {
                    bytes: 5,
                    diskless: false
                }
            ]
        );
        assert_eq!(holds, vec![None, None, None]);
        assert_eq!(d.rdb_bytes, 5);
        assert_eq!(d.stream.bytes, cmd.len() as u64);
        assert_eq!(d.stream.boundary, cmd.len() as u64);
    }

    #[test]
    fn diskless_mark_split_across_reads_is_found() {
        let mark = [b'a'; 40];
        let mut mark2 = mark;
        mark2[39] = b'b';
        let mut wire = b"$EOF:".to_vec();
        wire.extend_from_slice(&mark2);
        wire.extend_from_slice(b"\r\nREDIS0011");
        // A near-miss first, then the mark itself, split in the middle.
        wire.extend_from_slice(&mark[..39]);
        wire.extend_from_slice(&mark2);
        let payload_len = 9 + 39 + 40;
        let stream = b"*1\r\n$4\r\nPING\r\n";
        wire.extend_from_slice(stream);
        let split = wire.len() - stream.len() - 20;
        let mut d = Downstream::full_sync();
        let (ev, holds) = feed_all(&mut d, &[&wire[..split], &wire[split..]]);
        assert_eq!(
            ev,
            vec![
                Event::RdbStart { len: None },
                Event::RdbEnd {
                    bytes: payload_len,
                    diskless: true
                }
            ]
        );
        assert_eq!(holds, vec![None, Some(20)]);
        assert_eq!(d.stream.boundary, stream.len() as u64);
    }

    #[test]
    fn error_instead_of_payload() {
        let mut d = Downstream::full_sync();
        let (ev, _) = feed_all(&mut d, &[b"-NOAUTH Authentication required.\r\n"]);
        assert_eq!(
            ev,
            vec![Event::Rejected("NOAUTH Authentication required.".into())]
        );
    }

    #[test]
    fn malformed_stream_is_reported_with_its_offset() {
        let mut s = StreamScanner::default();
        let e = s.scan(b"*1\r\n$4\r\nPING\r\nGARBAGE").unwrap_err();
        assert!(e.to_string().contains("offset 14"), "{e}");
        let mut s = StreamScanner::default();
        assert!(s.scan(b"*1\r\n$4\r\nPINGxx").is_err());
        let mut s = StreamScanner::default();
        assert!(s.scan(b"*\r\n").is_err());
        let mut s = StreamScanner::default();
        let zeros = [b'0'; 300];
        assert!(s.scan(b"*").and_then(|_| s.scan(&zeros)).is_err());
    }

    #[test]
    fn lengths_out_of_range_are_errors_not_wraps() {
        let mut d = Downstream::full_sync();
        let e = d
            .feed(b"$18446744073709551615\r\n", &mut Vec::new())
            .unwrap_err();
        assert!(matches!(e, ProtocolError::OutOfRange { .. }), "{e}");
        let mut d = Downstream::full_sync();
        assert!(d
            .feed(b"$9223372036854775808\r\n", &mut Vec::new())
            .is_err());
        let mut d = Downstream::full_sync();
        d.feed(b"$9223372036854775807\r\n", &mut Vec::new())
            .unwrap();
        for wire in [
            &b"*1\r\n$1000000000000\r\n"[..],
            b"*1000000000000\r\n",
            b"*1\r\n$18446744073709551617\r\n",
            b"*1\r\n$000000000000000000001\r\n",
        ] {
            let mut s = StreamScanner::default();
            let e = s.scan(wire).unwrap_err();
            assert!(matches!(e, ProtocolError::OutOfRange { .. }), "{e}");
        }
        let mut s = StreamScanner::default();
        s.scan(b"*1\r\n$999999999999\r\n").unwrap();
        assert_eq!(s.body_left, MAX_STREAM_LEN);
    }

    fn commands() -> impl Strategy<Value = Vec<Vec<Vec<u8>>>> {
        prop::collection::vec(
            prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..5),
            1..20,
        )
    }

    proptest! {
        /// However the stream is cut into reads, the scanner finds the same boundaries and
        /// counts every byte.
        #[test]
        fn boundaries_do_not_depend_on_read_sizes(cmds in commands(), cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8), partial in 0usize..30) {
            let mut wire = Vec::new();
            for c in &cmds { wire.extend(encode_command(c)); }
            let complete = wire.len();
            // A cut-off command at the end must not count as complete.
            let extra = encode_command(&[vec![b'x'; 20]]);
            let partial = partial.min(extra.len() - 1);
            wire.extend_from_slice(&extra[..partial]);
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(wire.len() + 1)).collect();
            points.push(0);
            points.push(wire.len());
            points.sort();
            let mut s = StreamScanner::default();
            for w in points.windows(2) { s.scan(&wire[w[0]..w[1]]).unwrap(); }
            prop_assert_eq!(s.bytes, wire.len() as u64);
            prop_assert_eq!(s.boundary, complete as u64);
            prop_assert_eq!(s.commands, cmds.len() as u64);
            prop_assert_eq!(s.at_boundary(), partial == 0);
        }

        /// The diskless mark is found wherever the reads are cut.
        #[test]
        fn mark_found_wherever_cut(body in prop::collection::vec(any::<u8>(), 0..200), cut in any::<prop::sample::Index>()) {
            let mark = *b"0123456789abcdef0123456789abcdef01234567";
            let mut wire = b"$EOF:".to_vec();
            wire.extend_from_slice(&mark);
            wire.extend_from_slice(b"\r\n");
            let header = wire.len();
            wire.extend_from_slice(&body);
            wire.extend_from_slice(&mark);
            prop_assume!(!body.windows(40).any(|w| w == mark));
            let c = cut.index(wire.len() + 1);
            let mut d = Downstream::full_sync();
            let mut ev = Vec::new();
            d.feed(&wire[..c], &mut ev).unwrap();
            d.feed(&wire[c..], &mut ev).unwrap();
            prop_assert!(d.in_stream());
            prop_assert_eq!(d.rdb_bytes, (wire.len() - header) as u64);
        }
    }
}
