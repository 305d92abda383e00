//! RESP framing for the handshake: commands from the replica (flat RESP arrays of bulk strings,
//! inline commands, bare newlines), single replies from the master, and plain lines.
//!
//! Everything here works on a byte slice and returns how many bytes one unit took, so callers can
//! forward the exact bytes they received.
//!
//! Peer bytes never reach a recursive decoder as they come. [`CommandParser`], [`ReplyScanner`]
//! and [`LineScanner`] walk them iteratively, keep their place while the buffer grows (a frame
//! that arrives one byte at a time costs linear work, not quadratic), and refuse a frame as soon
//! as a header breaks a limit: an array inside a command, more than [`MAX_ARGS`] arguments, a
//! reply nested deeper than [`MAX_REPLY_DEPTH`], a frame declared longer than its cap. Only a
//! complete frame that passed those checks is decoded by redis-protocol.

use redis_protocol::resp2::decode::decode_range;
use redis_protocol::resp2::types::RangeFrame;

/// Longest inline command or reply line accepted (Redis itself allows 64 KiB inline).
pub const MAX_LINE: usize = 64 * 1024;
/// Largest handshake command, the whole frame.
pub const MAX_COMMAND: usize = 64 * 1024;
/// Largest `_fetch_file` command: a Kvrocks replica names every checkpoint file it wants in one
/// argument, and a large database has thousands.
pub const MAX_FETCH_FILE_COMMAND: usize = 1024 * 1024;
/// Most arguments in a handshake command, its name included (real ones have at most 9).
pub const MAX_ARGS: usize = 64;
/// Largest argument count in the header of a command that only passes through (Redis' own
/// limit for a multibulk length).
pub const MAX_MULTIBULK: u64 = 1024 * 1024;
/// Largest reply to one handshake command.
pub const MAX_REPLY: usize = 64 * 1024;
/// Largest reply [`reply_len`] accepts (an `INFO` reply).
pub const MAX_FRAME: usize = 1024 * 1024;
/// Deepest nesting of arrays accepted in a reply.
pub const MAX_REPLY_DEPTH: usize = 8;
/// Largest offset or length accepted from a peer: Redis keeps them as signed 64-bit numbers.
pub const MAX_OFFSET: u64 = i64::MAX as u64;
/// Most digits in a `*<n>` / `$<n>` header (`i64::MAX` has 19).
const MAX_LEN_DIGITS: usize = 19;

/// Bytes that are not valid RESP where RESP was expected, or that break a limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("malformed RESP: {0}")]
    Malformed(String),
    #[error("frame longer than the limit of {0} bytes")]
    TooLong(usize),
    #[error("an array nested in a command (the limit is depth 1: a flat array of bulk strings)")]
    Nested,
    #[error("a command of {got} arguments (the limit is {max})")]
    TooManyArgs { got: u64, max: u64 },
    #[error("a reply nested deeper than the limit of {0} arrays")]
    TooDeep(usize),
    #[error("{what} {value} is out of range (the limit is {max})")]
    OutOfRange {
        what: &'static str,
        value: String,
        max: u64,
    },
}

/// One command read from a client, with the exact bytes it took on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// Arguments; empty for a bare newline.
    pub args: Vec<Vec<u8>>,
    /// Whether it came as an inline command (`SYNC\r\n`) rather than a RESP array.
    pub inline: bool,
    /// Only the name was read: a command no replication handshake sends, whose other arguments
    /// are left unread in the buffer for the plain pipe (see [`CommandParser::handshake`]).
    pub rest_unread: bool,
}

impl Command {
    /// The command name, upper-cased; empty for a bare newline.
    pub fn name(&self) -> String {
        self.args
            .first()
            .map(|a| String::from_utf8_lossy(a).to_ascii_uppercase())
            .unwrap_or_default()
    }

    /// Argument `i` as text (lossy), or "" when absent.
    pub fn arg_str(&self, i: usize) -> String {
        self.args
            .get(i)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .unwrap_or_default()
    }

    /// A bare newline: a keepalive, never answered.
    pub fn is_blank(&self) -> bool {
        self.args.is_empty()
    }
}

/// Encodes a command as a RESP array of bulk strings.
pub fn encode_command<A: AsRef<[u8]>>(args: &[A]) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(16 + args.iter().map(|a| a.as_ref().len() + 16).sum::<usize>());
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        let a = a.as_ref();
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Parses one command from the start of `buf` under the handshake limits, whatever its name.
/// `Ok(None)` means more bytes are needed.
pub fn parse_command(buf: &[u8]) -> Result<Option<(Command, usize)>, ProtocolError> {
    CommandParser::strict().parse(buf)
}

/// The frame cap of a command replicas send in a handshake; `None` for any other command.
fn handshake_cap(name: &[u8]) -> Option<usize> {
    const NAMES: [&[u8]; 7] = [
        b"PING",
        b"AUTH",
        b"REPLCONF",
        b"PSYNC",
        b"SYNC",
        b"_DB_NAME",
        b"_FETCH_META",
    ];
    if name.eq_ignore_ascii_case(b"_FETCH_FILE") {
        return Some(MAX_FETCH_FILE_COMMAND);
    }
    NAMES
        .iter()
        .any(|n| name.eq_ignore_ascii_case(n))
        .then_some(MAX_COMMAND)
}

/// Reads commands from a buffer that grows between calls, keeping its place in the command in
/// progress. The caller hands it the same buffer, longer, until a command comes out, and then
/// drops that command's bytes from the front before the next call.
#[derive(Debug, Clone)]
pub struct CommandParser {
    /// Commands no handshake sends are returned as soon as their name is read.
    head_only_for_others: bool,
    state: CmdState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CmdState {
    /// Nothing read of the next command.
    Start,
    /// An inline command: no newline in the first `searched` bytes.
    Inline { searched: usize },
    /// Inside a RESP array.
    Array {
        /// Where the next bulk header (or the pending body) starts.
        pos: usize,
        /// Bulks still to come, the pending one included.
        left: u64,
        /// Bulks in the whole array.
        total: u64,
        /// The frame's cap, known for sure once the name is read.
        cap: usize,
        /// A bulk body of this many bytes starts at `pos`.
        body: Option<usize>,
        /// The first bulk (the name) has been read.
        named: bool,
    },
}

impl CommandParser {
    /// For the handshake: every command a replica sends there is read whole under the limits;
    /// any other command is returned after its name with [`Command::rest_unread`] set, since it
    /// only passes through and the master applies its own limits to it.
    pub fn handshake() -> Self {
        CommandParser {
            head_only_for_others: true,
            state: CmdState::Start,
        }
    }

    /// Every command read whole under the handshake limits (the replica's side of a relay).
    pub fn strict() -> Self {
        CommandParser {
            head_only_for_others: false,
            state: CmdState::Start,
        }
    }

    /// Reads one command from the start of `buf`: `Ok(None)` until it is complete. After a
    /// command or an error the parser starts afresh.
    pub fn parse(&mut self, buf: &[u8]) -> Result<Option<(Command, usize)>, ProtocolError> {
        let r = self.step(buf);
        if !matches!(r, Ok(None)) {
            self.state = CmdState::Start;
        }
        r
    }

    fn step(&mut self, buf: &[u8]) -> Result<Option<(Command, usize)>, ProtocolError> {
        loop {
            match &mut self.state {
                CmdState::Start => {
                    let Some(&first) = buf.first() else {
                        return Ok(None);
                    };
                    if first != b'*' {
                        self.state = CmdState::Inline { searched: 0 };
                        continue;
                    }
                    let Some((len, end)) = length_header(buf, 0)? else {
                        return Ok(None);
                    };
                    let Some(total) = len else {
                        return Err(ProtocolError::Malformed(
                            "a null array where a command was expected".into(),
                        ));
                    };
                    if total == 0 {
                        // As Redis reads it: an empty command, skipped.
                        return Ok(Some((command(Vec::new(), false), end)));
                    }
                    let max = if self.head_only_for_others {
                        MAX_MULTIBULK
                    } else {
                        MAX_ARGS as u64
                    };
                    if total > max {
                        return Err(ProtocolError::TooManyArgs { got: total, max });
                    }
                    self.state = CmdState::Array {
                        pos: end,
                        left: total,
                        total,
                        cap: MAX_COMMAND,
                        body: None,
                        named: false,
                    };
                }
                CmdState::Inline { searched } => {
                    let from = (*searched).min(buf.len());
                    let Some(i) = memchr::memchr(b'\n', &buf[from..]) else {
                        *searched = buf.len();
                        if buf.len() > MAX_LINE {
                            return Err(ProtocolError::TooLong(MAX_LINE));
                        }
                        return Ok(None);
                    };
                    let nl = from + i;
                    if nl > MAX_LINE {
                        return Err(ProtocolError::TooLong(MAX_LINE));
                    }
                    let line = &buf[..nl];
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    let args: Vec<Vec<u8>> = line
                        .split(|b| *b == b' ' || *b == b'\t')
                        .filter(|a| !a.is_empty())
                        .map(|a| a.to_vec())
                        .collect();
                    let limited = !self.head_only_for_others
                        || args.first().is_some_and(|n| handshake_cap(n).is_some());
                    if limited && args.len() > MAX_ARGS {
                        return Err(ProtocolError::TooManyArgs {
                            got: args.len() as u64,
                            max: MAX_ARGS as u64,
                        });
                    }
                    return Ok(Some((command(args, true), nl + 1)));
                }
                CmdState::Array {
                    pos,
                    left,
                    total,
                    cap,
                    body,
                    named,
                } => {
                    if let Some(len) = *body {
                        // Within the cap, checked when the header was read.
                        let end = *pos + len + 2;
                        if buf.len() < end {
                            return Ok(None);
                        }
                        if &buf[end - 2..end] != b"\r\n" {
                            return Err(ProtocolError::Malformed(
                                "a bulk string not followed by CRLF".into(),
                            ));
                        }
                        let name = &buf[*pos..end - 2];
                        (*pos, *body, *left) = (end, None, *left - 1);
                        if !*named {
                            *named = true;
                            match handshake_cap(name) {
                                Some(c) => *cap = c,
                                None if self.head_only_for_others => {
                                    let cmd = Command {
                                        args: vec![name.to_vec()],
                                        inline: false,
                                        rest_unread: true,
                                    };
                                    return Ok(Some((cmd, end)));
                                }
                                None => {}
                            }
                            if *total > MAX_ARGS as u64 {
                                return Err(ProtocolError::TooManyArgs {
                                    got: *total,
                                    max: MAX_ARGS as u64,
                                });
                            }
                        }
                        continue;
                    }
                    if *left == 0 {
                        let used = *pos;
                        let args = decode_flat(&buf[..used])?;
                        return Ok(Some((command(args, false), used)));
                    }
                    let Some(&b) = buf.get(*pos) else {
                        return Ok(None);
                    };
                    match b {
                        b'$' => {}
                        b'*' => return Err(ProtocolError::Nested),
                        _ => {
                            return Err(ProtocolError::Malformed(format!(
                                "expected '$' of a command argument, got 0x{b:02x}"
                            )))
                        }
                    }
                    let Some((len, end)) = length_header(buf, *pos)? else {
                        return Ok(None);
                    };
                    let Some(len) = len else {
                        return Err(ProtocolError::Malformed(
                            "a null bulk string as a command argument".into(),
                        ));
                    };
                    // Refused on the header: a frame declared over its cap is never buffered.
                    let len = usize::try_from(len)
                        .ok()
                        .filter(|l| {
                            end.checked_add(*l).and_then(|e| e.checked_add(2)) <= Some(*cap)
                        })
                        .ok_or(ProtocolError::TooLong(*cap))?;
                    (*pos, *body) = (end, Some(len));
                }
            }
        }
    }
}

fn command(args: Vec<Vec<u8>>, inline: bool) -> Command {
    Command {
        args,
        inline,
        rest_unread: false,
    }
}

/// Decodes a frame already walked by [`CommandParser`]: one array of bulk strings, within the
/// caps, so redis-protocol's decoder goes one level deep. It must agree on where the frame ends.
fn decode_flat(frame: &[u8]) -> Result<Vec<Vec<u8>>, ProtocolError> {
    match decode_range(frame).map_err(malformed)? {
        Some((RangeFrame::Array(items), used)) if used == frame.len() => items
            .into_iter()
            .map(|item| match item {
                RangeFrame::BulkString((s, e)) => Ok(frame[s..e].to_vec()),
                _ => Err(ProtocolError::Malformed(
                    "command arguments must be bulk strings".into(),
                )),
            })
            .collect(),
        _ => Err(ProtocolError::Malformed(
            "the RESP decoder disagrees on the command's bounds".into(),
        )),
    }
}

/// Reads the `*<n>` / `$<n>` header at `buf[at..]`, type byte included: `Ok(None)` when
/// incomplete, else the length (`None` for the null `-1`) and where the header ends.
fn length_header(buf: &[u8], at: usize) -> Result<Option<(Option<u64>, usize)>, ProtocolError> {
    let rest = &buf[at + 1..];
    let negative = rest.first() == Some(&b'-');
    let mut i = usize::from(negative);
    let mut n: u64 = 0;
    loop {
        let Some(&b) = rest.get(i) else {
            return Ok(None);
        };
        match b {
            b'0'..=b'9' => {
                let digits = i + 1 - usize::from(negative);
                n = n
                    .checked_mul(10)
                    .and_then(|n| n.checked_add(u64::from(b - b'0')))
                    .filter(|n| *n <= MAX_OFFSET && digits <= MAX_LEN_DIGITS)
                    .ok_or_else(|| ProtocolError::OutOfRange {
                        what: "a RESP length",
                        value: format!("{}...", String::from_utf8_lossy(&rest[..=i])),
                        max: MAX_OFFSET,
                    })?;
            }
            b'\r' => break,
            _ => {
                return Err(ProtocolError::Malformed(format!(
                    "unexpected byte 0x{b:02x} in a length"
                )))
            }
        }
        i += 1;
    }
    if i == usize::from(negative) {
        return Err(ProtocolError::Malformed("an empty length".into()));
    }
    match rest.get(i + 1) {
        None => return Ok(None),
        Some(b'\n') => {}
        Some(&b) => {
            return Err(ProtocolError::Malformed(format!(
                "expected LF after a length, got 0x{b:02x}"
            )))
        }
    }
    let end = at + 1 + i + 2;
    match (negative, n) {
        (false, n) => Ok(Some((Some(n), end))),
        (true, 1) => Ok(Some((None, end))),
        (true, _) => Err(ProtocolError::Malformed("a negative length".into())),
    }
}

/// Finds the end of one reply in a buffer that grows between calls, keeping its place, and
/// refuses replies nested deeper or declared longer than its limits.
#[derive(Debug, Clone)]
pub struct ReplyScanner {
    max_len: usize,
    max_depth: usize,
    /// Where the next element (or the pending bulk body) starts.
    pos: usize,
    /// Elements still expected by each open array, innermost last.
    open: Vec<u64>,
    /// A bulk body of this many bytes starts at `pos`.
    body: Option<usize>,
    /// A `+`/`-`/`:` line starts at `pos` and has no LF before `searched`.
    searched: usize,
}

impl ReplyScanner {
    /// Replies up to `max_len` bytes and `max_depth` nested arrays.
    pub fn new(max_len: usize, max_depth: usize) -> Self {
        ReplyScanner {
            max_len,
            max_depth,
            pos: 0,
            open: Vec::new(),
            body: None,
            searched: 0,
        }
    }

    /// For replies to handshake commands.
    pub fn handshake() -> Self {
        Self::new(MAX_REPLY, MAX_REPLY_DEPTH)
    }

    /// Length of the reply at the start of `buf`: `Ok(None)` until it is complete. After a
    /// reply or an error the scanner starts afresh.
    pub fn scan(&mut self, buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
        let r = self.step(buf);
        if !matches!(r, Ok(None)) {
            (self.pos, self.body, self.searched) = (0, None, 0);
            self.open.clear();
        }
        r
    }

    fn step(&mut self, buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
        loop {
            if self.pos > self.max_len {
                return Err(ProtocolError::TooLong(self.max_len));
            }
            if let Some(len) = self.body {
                // Within the cap, checked when the header was read.
                let end = self.pos + len + 2;
                if buf.len() < end {
                    return Ok(None);
                }
                if &buf[end - 2..end] != b"\r\n" {
                    return Err(ProtocolError::Malformed(
                        "a bulk string not followed by CRLF".into(),
                    ));
                }
                (self.pos, self.body) = (end, None);
            } else {
                let Some(&kind) = buf.get(self.pos) else {
                    return Ok(None);
                };
                match kind {
                    b'+' | b'-' | b':' => {
                        let limit = buf.len().min(self.max_len);
                        let from = self.searched.max(self.pos + 1).min(limit);
                        let Some(i) = memchr::memchr(b'\n', &buf[from..limit]) else {
                            if buf.len() >= self.max_len {
                                return Err(ProtocolError::TooLong(self.max_len));
                            }
                            self.searched = limit;
                            return Ok(None);
                        };
                        let nl = from + i;
                        if buf[nl - 1] != b'\r' {
                            return Err(ProtocolError::Malformed(
                                "a reply line that ends in a bare LF".into(),
                            ));
                        }
                        (self.pos, self.searched) = (nl + 1, 0);
                    }
                    b'$' => {
                        let Some((len, end)) = length_header(buf, self.pos)? else {
                            return Ok(None);
                        };
                        self.pos = end;
                        if let Some(len) = len {
                            let len = usize::try_from(len)
                                .ok()
                                .filter(|l| {
                                    end.checked_add(*l).and_then(|e| e.checked_add(2))
                                        <= Some(self.max_len)
                                })
                                .ok_or(ProtocolError::TooLong(self.max_len))?;
                            self.body = Some(len);
                            continue;
                        }
                    }
                    b'*' => {
                        let Some((len, end)) = length_header(buf, self.pos)? else {
                            return Ok(None);
                        };
                        self.pos = end;
                        if let Some(n) = len.filter(|n| *n > 0) {
                            if self.open.len() >= self.max_depth {
                                return Err(ProtocolError::TooDeep(self.max_depth));
                            }
                            // Every element takes at least three bytes.
                            let fits = n
                                .checked_mul(3)
                                .and_then(|b| usize::try_from(b).ok())
                                .and_then(|b| b.checked_add(end))
                                .is_some_and(|e| e <= self.max_len);
                            if !fits {
                                return Err(ProtocolError::TooLong(self.max_len));
                            }
                            self.open.push(n);
                            continue;
                        }
                    }
                    _ => {
                        return Err(ProtocolError::Malformed(format!(
                            "unexpected byte 0x{kind:02x} where a reply starts"
                        )))
                    }
                }
            }
            // One element is complete: close the arrays it completes.
            loop {
                let Some(left) = self.open.last_mut() else {
                    return self.finish(buf);
                };
                *left -= 1;
                if *left > 0 {
                    break;
                }
                self.open.pop();
            }
        }
    }

    /// The reply has been walked and is within the limits: redis-protocol decodes it (at most
    /// `max_depth` levels deep) and must agree on where it ends.
    fn finish(&self, buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
        let used = self.pos;
        // A last element with no body (`*0`, `*-1`, `$-1`) is checked against the cap here:
        // its header may cross it.
        if used > self.max_len {
            return Err(ProtocolError::TooLong(self.max_len));
        }
        match decode_range(&buf[..used]).map_err(malformed)? {
            Some((_, n)) if n == used => Ok(Some(used)),
            _ => Err(ProtocolError::Malformed(
                "the RESP decoder disagrees on the reply's bounds".into(),
            )),
        }
    }
}

/// Length of one complete RESP reply at the start of `buf` (up to [`MAX_FRAME`] bytes and
/// [`MAX_REPLY_DEPTH`] nested arrays); `Ok(None)` means incomplete.
pub fn reply_len(buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
    ReplyScanner::new(MAX_FRAME, MAX_REPLY_DEPTH).scan(buf)
}

/// Finds the first line in a buffer that grows between calls without searching the same bytes
/// twice.
#[derive(Debug, Clone, Default)]
pub struct LineScanner {
    /// No LF in the buffer before this.
    searched: usize,
}

impl LineScanner {
    /// The first line of `buf` without its CRLF and the bytes it took, `Ok(None)` until its LF
    /// arrives; a line longer than `max` bytes is an error.
    pub fn scan<'a>(
        &mut self,
        buf: &'a [u8],
        max: usize,
    ) -> Result<Option<(&'a [u8], usize)>, ProtocolError> {
        let from = self.searched.min(buf.len());
        let Some(i) = memchr::memchr(b'\n', &buf[from..]) else {
            if buf.len() > max {
                self.searched = 0;
                return Err(ProtocolError::TooLong(max));
            }
            self.searched = buf.len();
            return Ok(None);
        };
        self.searched = 0;
        let nl = from + i;
        if nl > max {
            return Err(ProtocolError::TooLong(max));
        }
        let line = &buf[..nl];
        Ok(Some((line.strip_suffix(b"\r").unwrap_or(line), nl + 1)))
    }
}

/// Splits a first line (without CRLF) off `buf`: `Some((line, consumed))`, `None` if incomplete.
pub fn split_line(buf: &[u8], max: usize) -> Result<Option<(&[u8], usize)>, ProtocolError> {
    LineScanner::default().scan(buf, max)
}

/// Reads a replication offset or length a peer sent as decimal text: `0..=`[`MAX_OFFSET`].
pub fn parse_offset(text: &str, what: &'static str) -> Result<u64, ProtocolError> {
    let out_of_range = || ProtocolError::OutOfRange {
        what,
        value: text.chars().take(32).collect(),
        max: MAX_OFFSET,
    };
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(
            if text
                .strip_prefix('-')
                .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
            {
                out_of_range()
            } else {
                ProtocolError::Malformed(format!("{what} {:?} is not a number", text))
            },
        );
    }
    text.parse::<u64>()
        .ok()
        .filter(|n| *n <= MAX_OFFSET)
        .ok_or_else(out_of_range)
}

fn malformed(e: redis_protocol::error::RedisProtocolError) -> ProtocolError {
    ProtocolError::Malformed(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn resp_array_command() {
        let b = b"*3\r\n$8\r\nREPLCONF\r\n$14\r\nlistening-port\r\n$4\r\n6380\r\n*1\r\n";
        let (c, n) = parse_command(b).unwrap().unwrap();
        assert_eq!(n, b.len() - 4);
        assert_eq!(c.name(), "REPLCONF");
        assert_eq!(c.arg_str(2), "6380");
        assert!(!c.inline && !c.rest_unread);
        assert_eq!(parse_command(&b[..10]).unwrap(), None);
    }

    #[test]
    fn inline_sync_and_bare_newlines() {
        let (c, n) = parse_command(b"SYNC\r\nx").unwrap().unwrap();
        assert_eq!((c.name().as_str(), n, c.inline), ("SYNC", 6, true));
        let (c, n) = parse_command(b"\n*1").unwrap().unwrap();
        assert!(c.is_blank());
        assert_eq!(n, 1);
        let (c, n) = parse_command(b"\r\n").unwrap().unwrap();
        assert!(c.is_blank());
        assert_eq!(n, 2);
        assert_eq!(parse_command(b"PSYNC ? -").unwrap(), None);
        let (c, n) = parse_command(b"*0\r\n").unwrap().unwrap();
        assert!(c.is_blank() && !c.inline);
        assert_eq!(n, 4);
    }

    #[test]
    fn encode_roundtrips() {
        let e = encode_command(&["REPLCONF", "ip-address", "10.0.0.1"]);
        let (c, n) = parse_command(&e).unwrap().unwrap();
        assert_eq!(n, e.len());
        assert_eq!(
            c.args,
            vec![
                b"REPLCONF".to_vec(),
                b"ip-address".to_vec(),
                b"10.0.0.1".to_vec()
            ]
        );
    }

    #[test]
    fn replies_of_every_kind() {
        assert_eq!(reply_len(b"+OK\r\n+PONG\r\n").unwrap(), Some(5));
        assert_eq!(
            reply_len(b"-NOAUTH Authentication required.\r\n").unwrap(),
            Some(34)
        );
        assert_eq!(reply_len(b"$3\r\nabc\r\n").unwrap(), Some(9));
        assert_eq!(reply_len(b"*2\r\n:1\r\n$-1\r\n").unwrap(), Some(13));
        assert_eq!(reply_len(b"*-1\r\n").unwrap(), Some(5));
        assert_eq!(reply_len(b"*0\r\n").unwrap(), Some(4));
        assert_eq!(reply_len(b"*2\r\n*0\r\n*1\r\n+a\r\n").unwrap(), Some(16));
        assert_eq!(reply_len(b"$3\r\nab").unwrap(), None);
        assert_eq!(reply_len(b"*2\r\n:1\r\n").unwrap(), None);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(parse_command(b"*x\r\n").is_err());
        assert!(parse_command(b"*1\r\n:5\r\n").is_err());
        assert!(parse_command(b"*1\r\n$-1\r\n").is_err());
        assert!(parse_command(b"*1\r\n$3\r\nabcXY").is_err());
        assert!(parse_command(b"*-1\r\n").is_err());
        assert!(parse_command(b"*1\r\r").is_err());
        assert!(reply_len(b"!!!\r\n").is_err());
        assert!(reply_len(b"+OK\n").is_err());
        assert!(reply_len(b":x\r\n").is_err());
        assert!(reply_len(b"$-2\r\n").is_err());
        let long = vec![b'a'; MAX_LINE + 1];
        assert_eq!(parse_command(&long), Err(ProtocolError::TooLong(MAX_LINE)));
        let mut long_line = long.clone();
        long_line.push(b'\n');
        assert_eq!(
            parse_command(&long_line),
            Err(ProtocolError::TooLong(MAX_LINE))
        );
    }

    #[test]
    fn a_nesting_bomb_is_refused_at_its_second_header() {
        let bomb = b"*1\r\n".repeat(20_000);
        assert_eq!(parse_command(&bomb), Err(ProtocolError::Nested));
        assert_eq!(
            CommandParser::handshake().parse(&bomb),
            Err(ProtocolError::Nested)
        );
        assert_eq!(parse_command(&bomb[..5]), Err(ProtocolError::Nested));
        assert_eq!(
            reply_len(&bomb),
            Err(ProtocolError::TooDeep(MAX_REPLY_DEPTH))
        );
        let mut deepest = b"*1\r\n".repeat(MAX_REPLY_DEPTH);
        deepest.extend_from_slice(b":1\r\n");
        assert_eq!(reply_len(&deepest), Ok(Some(deepest.len())));
        let mut too_deep = b"*1\r\n".repeat(MAX_REPLY_DEPTH + 1);
        too_deep.extend_from_slice(b":1\r\n");
        assert_eq!(
            reply_len(&too_deep),
            Err(ProtocolError::TooDeep(MAX_REPLY_DEPTH))
        );
    }

    #[test]
    fn argument_counts_are_capped() {
        let name_and = |n: usize| {
            let mut args = vec!["REPLCONF".to_string()];
            args.extend((1..n).map(|i| format!("a{i}")));
            args
        };
        let ok = encode_command(&name_and(MAX_ARGS));
        assert_eq!(parse_command(&ok).unwrap().unwrap().0.args.len(), MAX_ARGS);
        let over = encode_command(&name_and(MAX_ARGS + 1));
        let err = ProtocolError::TooManyArgs {
            got: MAX_ARGS as u64 + 1,
            max: MAX_ARGS as u64,
        };
        // Strict: on the array header alone.
        assert_eq!(parse_command(&over[..5]), Err(err.clone()));
        // Handshake: once the name shows it is a handshake command.
        assert_eq!(CommandParser::handshake().parse(&over), Err(err.clone()));
        let inline = name_and(MAX_ARGS + 1).join(" ") + "\r\n";
        assert_eq!(parse_command(inline.as_bytes()), Err(err));
        assert_eq!(
            CommandParser::handshake().parse(b"*99999999\r\n"),
            Err(ProtocolError::TooManyArgs {
                got: 99_999_999,
                max: MAX_MULTIBULK
            })
        );
    }

    #[test]
    fn an_oversized_frame_is_refused_on_its_header() {
        let head = b"*3\r\n$8\r\nREPLCONF\r\n$14\r\nlistening-port\r\n$70000\r\n";
        assert_eq!(
            parse_command(head),
            Err(ProtocolError::TooLong(MAX_COMMAND))
        );
        // Exactly at the cap is fine.
        let pad = MAX_COMMAND - encode_command(&["PING", ""]).len() - 4;
        let at_cap = encode_command(&["PING".to_string(), "x".repeat(pad)]);
        assert_eq!(at_cap.len(), MAX_COMMAND);
        assert_eq!(parse_command(&at_cap).unwrap().unwrap().1, MAX_COMMAND);
        let over = encode_command(&["PING".to_string(), "x".repeat(pad + 1)]);
        assert_eq!(
            parse_command(&over),
            Err(ProtocolError::TooLong(MAX_COMMAND))
        );
        // A Kvrocks replica's list of checkpoint files may be longer.
        let files = vec!["000123.sst"; 20_000].join(",");
        let fetch = encode_command(&["_fetch_file", files.as_str()]);
        assert!(fetch.len() > MAX_COMMAND);
        assert_eq!(parse_command(&fetch).unwrap().unwrap().1, fetch.len());
        let huge = format!("*2\r\n$11\r\n_fetch_file\r\n${MAX_FETCH_FILE_COMMAND}\r\n");
        assert_eq!(
            parse_command(huge.as_bytes()),
            Err(ProtocolError::TooLong(MAX_FETCH_FILE_COMMAND))
        );
        assert_eq!(
            reply_len(format!("${}\r\n", MAX_FRAME).as_bytes()),
            Err(ProtocolError::TooLong(MAX_FRAME))
        );
        assert_eq!(
            ReplyScanner::handshake().scan(format!("*{}\r\n", MAX_REPLY / 3).as_bytes()),
            Err(ProtocolError::TooLong(MAX_REPLY))
        );
        let mut line = vec![b'+'; MAX_REPLY];
        assert_eq!(
            ReplyScanner::handshake().scan(&line),
            Err(ProtocolError::TooLong(MAX_REPLY))
        );
        line.truncate(MAX_REPLY - 2);
        line.extend_from_slice(b"\r\n");
        assert_eq!(ReplyScanner::handshake().scan(&line), Ok(Some(MAX_REPLY)));
        // A null or empty last element whose header crosses the cap (found by the reply fuzz
        // target: fuzz/corpus/reply/crash-*).
        for last in ["*-1", "*0", "$-1"] {
            let mut reply = b"*2\r\n+".to_vec();
            reply.resize(256 - 2, b'a');
            reply.extend_from_slice(b"\r\n");
            reply.extend_from_slice(format!("{last}\r\n").as_bytes());
            assert!(reply.len() > 256);
            let mut s = ReplyScanner::new(256, 2);
            assert_eq!(s.scan(&reply), Err(ProtocolError::TooLong(256)), "{last}");
            let mut s = ReplyScanner::new(reply.len(), 2);
            assert_eq!(s.scan(&reply), Ok(Some(reply.len())), "{last}");
        }
    }

    #[test]
    fn lengths_are_checked_numbers() {
        for bad in [
            &b"*9223372036854775808\r\n"[..],
            b"*99999999999999999999999\r\n",
            b"*00000000000000000000001\r\n",
        ] {
            assert!(
                matches!(parse_command(bad), Err(ProtocolError::OutOfRange { .. })),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
            assert!(matches!(
                reply_len(bad),
                Err(ProtocolError::OutOfRange { .. })
            ));
        }
        assert!(matches!(
            reply_len(b"$18446744073709551615\r\n"),
            Err(ProtocolError::OutOfRange { .. })
        ));
        assert!(reply_len(b"$\r\n").is_err());
        assert!(reply_len(b"$-\r\n").is_err());
        assert_eq!(parse_offset("0", "x"), Ok(0));
        assert_eq!(parse_offset("9223372036854775807", "x"), Ok(MAX_OFFSET));
        for bad in [
            "9223372036854775808",
            "18446744073709551615",
            "-1",
            "1e3",
            "",
            "+1",
        ] {
            assert!(parse_offset(bad, "x").is_err(), "{bad}");
        }
        assert_eq!(
            parse_offset("18446744073709551615", "the +FULLRESYNC offset")
                .unwrap_err()
                .to_string(),
            "the +FULLRESYNC offset 18446744073709551615 is out of range (the limit is 9223372036854775807)"
        );
    }

    #[test]
    fn other_commands_are_read_up_to_their_name() {
        let value = "v".repeat(100_000);
        let set = encode_command(&["SET", "k", value.as_str()]);
        let (c, n) = CommandParser::handshake().parse(&set).unwrap().unwrap();
        assert_eq!((c.name().as_str(), n, c.rest_unread), ("SET", 13, true));
        assert_eq!(c.args.len(), 1);
        let mut mset = vec!["MSET".to_string()];
        mset.extend((0..500).map(|i| format!("k{i}")));
        let (c, _) = CommandParser::handshake()
            .parse(&encode_command(&mset))
            .unwrap()
            .unwrap();
        assert_eq!(c.name(), "MSET");
        // The same commands are refused where every command must be read whole.
        assert_eq!(
            parse_command(&set),
            Err(ProtocolError::TooLong(MAX_COMMAND))
        );
        // A handshake command is read whole, whatever its case.
        let p = encode_command(&["psync", "?", "-1"]);
        let (c, n) = CommandParser::handshake().parse(&p).unwrap().unwrap();
        assert_eq!((n, c.rest_unread, c.args.len()), (p.len(), false, 3));
    }

    /// Bytes the parser has searched are not searched again: a newline written into them
    /// afterwards is not seen. (Callers only ever append; this shows the cursor is kept.)
    #[test]
    fn searched_bytes_are_not_searched_again() {
        let mut p = CommandParser::strict();
        assert_eq!(p.parse(b"PING abc").unwrap(), None);
        let (c, n) = p.parse(b"PING\nabc def\r\n").unwrap().unwrap();
        assert_eq!((c.args.len(), n), (2, 14));

        let mut r = ReplyScanner::handshake();
        assert_eq!(r.scan(b"+OK abc").unwrap(), None);
        assert_eq!(r.scan(b"+OK\nabc\r\n").unwrap(), Some(9));

        let mut l = LineScanner::default();
        assert_eq!(l.scan(b"+OK abc", 100).unwrap(), None);
        assert_eq!(l.scan(b"+OK\nabc\r\n", 100).unwrap().unwrap().1, 9);
    }

    /// Feeds `wire` to `parse` the way a session does: the buffer grows by the pieces between
    /// `cuts`, and each complete unit is removed from its front. Returns every unit's outcome.
    fn feed<T>(
        wire: &[u8],
        cuts: &[usize],
        mut parse: impl FnMut(&[u8]) -> Result<Option<(T, usize)>, ProtocolError>,
    ) -> Vec<Result<(T, usize), ProtocolError>> {
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
        points.push(wire.len());
        points.sort_unstable();
        let (mut buf, mut fed, mut out) = (Vec::new(), 0, Vec::new());
        for p in points {
            buf.extend_from_slice(&wire[fed..p]);
            fed = p;
            loop {
                match parse(&buf) {
                    Ok(None) => break,
                    Ok(Some((t, n))) => {
                        buf.drain(..n);
                        out.push(Ok((t, n)));
                    }
                    Err(e) => {
                        out.push(Err(e));
                        return out;
                    }
                }
            }
        }
        out
    }

    /// Pieces of a replica's byte stream: valid commands of both forms, blanks, nested arrays,
    /// broken headers, and noise.
    fn command_piece() -> impl Strategy<Value = Vec<u8>> {
        let arg = prop::collection::vec(any::<u8>(), 0..12);
        let name = prop::sample::select(vec!["PING", "REPLCONF", "psync", "SET", "_fetch_file"]);
        prop_oneof![
            (name.clone(), prop::collection::vec(arg, 0..4)).prop_map(|(n, mut a)| {
                a.insert(0, n.as_bytes().to_vec());
                encode_command(&a)
            }),
            (name, "[a-z0-9 ?-]{0,20}")
                .prop_map(|(n, rest)| format!("{n} {rest}\r\n").into_bytes()),
            Just(b"\n".to_vec()),
            (1usize..12).prop_map(|d| b"*1\r\n".repeat(d)),
            prop::sample::select(vec![
                &b"*0\r\n"[..],
                b"*-1\r\n",
                b"*2\r\n$4\r\nPING\r\n:1\r\n",
                b"*9999999999999999999\r\n",
                b"$5\r\nhello\r\n",
                b"*1\r\n$99999\r\n",
            ])
            .prop_map(<[u8]>::to_vec),
            prop::collection::vec(any::<u8>(), 0..16),
        ]
    }

    /// Pieces of a master's replies: trees of arrays (some too deep), every scalar type, noise.
    fn reply_piece() -> impl Strategy<Value = Vec<u8>> {
        let leaf = prop_oneof![
            "[a-zA-Z0-9 ]{0,10}".prop_map(|s| format!("+{s}\r\n").into_bytes()),
            "[a-zA-Z0-9 ]{0,10}".prop_map(|s| format!("-ERR {s}\r\n").into_bytes()),
            any::<i64>().prop_map(|i| format!(":{i}\r\n").into_bytes()),
            prop::collection::vec(any::<u8>(), 0..10).prop_map(|b| {
                let mut v = format!("${}\r\n", b.len()).into_bytes();
                v.extend(b);
                v.extend_from_slice(b"\r\n");
                v
            }),
            Just(b"$-1\r\n".to_vec()),
            Just(b"*-1\r\n".to_vec()),
        ];
        let tree = leaf.prop_recursive(12, 64, 3, |inner| {
            prop::collection::vec(inner, 0..3).prop_map(|items| {
                let mut v = format!("*{}\r\n", items.len()).into_bytes();
                items.iter().for_each(|i| v.extend_from_slice(i));
                v
            })
        });
        prop_oneof![
            4 => tree,
            1 => prop::collection::vec(any::<u8>(), 0..16),
        ]
    }

    proptest! {
        /// However the bytes are cut into reads, commands come out the same as from the whole
        /// buffer at once, and nothing panics.
        #[test]
        fn commands_do_not_depend_on_read_sizes(
            pieces in prop::collection::vec(command_piece(), 1..8),
            cuts in prop::collection::vec(any::<usize>(), 0..12),
            handshake in any::<bool>(),
        ) {
            let wire = pieces.concat();
            let new = || if handshake { CommandParser::handshake() } else { CommandParser::strict() };
            let mut p = new();
            let cut = feed(&wire, &cuts, |b| p.parse(b));
            let whole = feed(&wire, &[], |b| new().parse(b));
            prop_assert_eq!(cut, whole);
        }

        /// A valid command comes out with its arguments, however it is cut.
        #[test]
        fn valid_commands_come_out_whole(
            args in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..MAX_ARGS),
            cuts in prop::collection::vec(any::<usize>(), 0..12),
        ) {
            let mut args = args;
            args[0] = b"REPLCONF".to_vec();
            let wire = encode_command(&args);
            let mut p = CommandParser::handshake();
            let out = feed(&wire, &cuts, |b| p.parse(b));
            prop_assert_eq!(out.len(), 1);
            let (cmd, n) = out[0].clone().unwrap();
            prop_assert_eq!(n, wire.len());
            prop_assert_eq!(cmd.args, args);
        }

        /// Replies too: the same lengths or errors however they are cut, agreeing with
        /// redis-protocol's decoder whenever the nesting is within the limit.
        #[test]
        fn replies_do_not_depend_on_read_sizes(
            pieces in prop::collection::vec(reply_piece(), 1..6),
            cuts in prop::collection::vec(any::<usize>(), 0..12),
        ) {
            let wire = pieces.concat();
            let mut s = ReplyScanner::handshake();
            let cut = feed(&wire, &cuts, |b| Ok(s.scan(b)?.map(|n| ((), n))));
            let whole = feed(&wire, &[], |b| Ok(ReplyScanner::handshake().scan(b)?.map(|n| ((), n))));
            prop_assert_eq!(&cut, &whole);
            if let Some(Ok(((), n))) = whole.first() {
                let decoded = decode_range(&wire).unwrap().map(|(_, used)| used);
                prop_assert_eq!(decoded, Some(*n));
            }
        }

        /// Lines: the same however they are cut.
        #[test]
        fn lines_do_not_depend_on_read_sizes(
            wire in prop::collection::vec(prop::sample::select(vec![b'a', b'\r', b'\n']), 0..64),
            cuts in prop::collection::vec(any::<usize>(), 0..12),
        ) {
            let mut l = LineScanner::default();
            let cut = feed(&wire, &cuts, |b| Ok(l.scan(b, 8)?.map(|(t, n)| (t.to_vec(), n))));
            let whole = feed(&wire, &[], |b| Ok(split_line(b, 8)?.map(|(t, n)| (t.to_vec(), n))));
            prop_assert_eq!(cut, whole);
        }
    }
}
