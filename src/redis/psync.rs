//! A Redis / Valkey `PSYNC` as the replica sent it, and the request that forces a full sync.

use crate::wire::resp::Command;

/// What replguard sends the master instead of a PSYNC it judged inconsistent.
pub const FULL_SYNC_REQUEST: &[u8] = b"*3\r\n$5\r\nPSYNC\r\n$1\r\n?\r\n$2\r\n-1\r\n";

/// A parsed `PSYNC <replid> <offset> [options...]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PsyncRequest {
    /// `?` when the replica asks for a full sync.
    pub replid: String,
    /// The first offset the replica wants, or -1.
    pub offset: i64,
}

impl PsyncRequest {
    /// Reads a PSYNC command; `None` when its arguments are not a PSYNC the master would accept
    /// (the master's own error reply then reaches the replica unchanged).
    pub fn parse(cmd: &Command) -> Option<PsyncRequest> {
        if cmd.args.len() < 3 {
            return None;
        }
        let offset = cmd.arg_str(2).parse().ok()?;
        Some(PsyncRequest {
            replid: cmd.arg_str(1),
            offset,
        })
    }

    /// Whether the replica asks for a full sync by itself.
    pub fn is_full_request(&self) -> bool {
        self.replid == "?" || self.offset < 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::resp::parse_command;

    fn cmd(b: &[u8]) -> Command {
        parse_command(b).unwrap().unwrap().0
    }

    #[test]
    fn parses_resume_and_full_requests() {
        let r = PsyncRequest::parse(&cmd(
            b"PSYNC 8de1787ba490483314a4d30f1c628bc5025eb761 1234\r\n",
        ))
        .unwrap();
        assert_eq!(r.offset, 1234);
        assert!(!r.is_full_request());
        let r = PsyncRequest::parse(&cmd(FULL_SYNC_REQUEST)).unwrap();
        assert!(r.is_full_request());
        assert_eq!(PsyncRequest::parse(&cmd(b"PSYNC x notanumber\r\n")), None);
        assert_eq!(PsyncRequest::parse(&cmd(b"PSYNC\r\n")), None);
    }
}
