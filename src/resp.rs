//! RESP framing for the handshake: commands from the replica (RESP arrays via redis-protocol,
//! inline commands, bare newlines) and single replies from the master.
//!
//! Everything here works on a byte slice and returns how many bytes one unit took, so callers can
//! forward the exact bytes they received.

use redis_protocol::resp2::decode::decode_range;
use redis_protocol::resp2::types::RangeFrame;

/// Longest inline command or reply line accepted (Redis itself allows 64 KiB inline).
pub const MAX_LINE: usize = 64 * 1024;
/// Largest single handshake command or reply held in memory.
pub const MAX_FRAME: usize = 1024 * 1024;

/// Bytes that are not valid RESP where RESP was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("malformed RESP: {0}")]
    Malformed(String),
    #[error("frame longer than {0} bytes")]
    TooLong(usize),
}

/// One command read from a client, with the exact bytes it took on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// Arguments; empty for a bare newline.
    pub args: Vec<Vec<u8>>,
    /// Whether it came as an inline command (`SYNC\r\n`) rather than a RESP array.
    pub inline: bool,
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

/// Parses one command from the start of `buf`. `Ok(None)` means more bytes are needed.
pub fn parse_command(buf: &[u8]) -> Result<Option<(Command, usize)>, ProtocolError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    if first == b'*' {
        let Some((frame, used)) = decode_range(buf).map_err(malformed)? else {
            return check_pending(buf);
        };
        let RangeFrame::Array(items) = frame else {
            return Err(ProtocolError::Malformed("expected an array".into()));
        };
        let mut args = Vec::with_capacity(items.len());
        for item in items {
            match item {
                RangeFrame::BulkString((s, e)) => args.push(buf[s..e].to_vec()),
                _ => {
                    return Err(ProtocolError::Malformed(
                        "command arguments must be bulk strings".into(),
                    ))
                }
            }
        }
        return Ok(Some((
            Command {
                args,
                inline: false,
            },
            used,
        )));
    }
    // Inline command or bare newline.
    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
        return if buf.len() > MAX_LINE {
            Err(ProtocolError::TooLong(MAX_LINE))
        } else {
            Ok(None)
        };
    };
    let line = &buf[..nl];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let args = line
        .split(|b| *b == b' ' || *b == b'\t')
        .filter(|a| !a.is_empty())
        .map(|a| a.to_vec())
        .collect();
    Ok(Some((Command { args, inline: true }, nl + 1)))
}

/// Length of one complete RESP reply at the start of `buf`; `Ok(None)` means incomplete.
pub fn reply_len(buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
    match decode_range(buf).map_err(malformed)? {
        Some((_, used)) => Ok(Some(used)),
        None => check_pending::<usize>(buf),
    }
}

/// Splits a first line (without CRLF) off `buf`: `Some((line, consumed))`, `None` if incomplete.
pub fn split_line(buf: &[u8], max: usize) -> Result<Option<(&[u8], usize)>, ProtocolError> {
    match buf.iter().position(|&b| b == b'\n') {
        Some(nl) => {
            let line = &buf[..nl];
            Ok(Some((line.strip_suffix(b"\r").unwrap_or(line), nl + 1)))
        }
        None if buf.len() > max => Err(ProtocolError::TooLong(max)),
        None => Ok(None),
    }
}

fn check_pending<T>(buf: &[u8]) -> Result<Option<T>, ProtocolError> {
    if buf.len() > MAX_FRAME {
        Err(ProtocolError::TooLong(MAX_FRAME))
    } else {
        Ok(None)
    }
}

fn malformed(e: redis_protocol::error::RedisProtocolError) -> ProtocolError {
    ProtocolError::Malformed(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resp_array_command() {
        let b = b"*3\r\n$8\r\nREPLCONF\r\n$14\r\nlistening-port\r\n$4\r\n6380\r\n*1\r\n";
        let (c, n) = parse_command(b).unwrap().unwrap();
        assert_eq!(n, b.len() - 4);
        assert_eq!(c.name(), "REPLCONF");
        assert_eq!(c.arg_str(2), "6380");
        assert!(!c.inline);
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
        assert_eq!(reply_len(b"$3\r\nab").unwrap(), None);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(parse_command(b"*x\r\n").is_err());
        assert!(parse_command(b"*1\r\n:5\r\n").is_err());
        assert!(reply_len(b"!!!\r\n").is_err());
        let long = vec![b'a'; MAX_LINE + 1];
        assert_eq!(parse_command(&long), Err(ProtocolError::TooLong(MAX_LINE)));
    }
}
