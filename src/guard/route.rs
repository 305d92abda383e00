//! The one place that decides what happens to a replica's PSYNC before it reaches the master.
//!
//! Every PSYNC a session reads is judged by the link's guard ([`crate::guard::verdict`]) and then
//! routed here: forwarded as the replica sent it, rewritten to `PSYNC ? -1` (a full sync), or
//! held with a `-LOADING` answer from replguard itself. In `observe` mode everything is
//! forwarded and only the would-be action is logged and counted.

use crate::config::GuardMode;
use crate::guard::verdict::Verdict;
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

/// What to do with one PSYNC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// The replica's own bytes, unchanged.
    Forward,
    /// [`FULL_SYNC_REQUEST`] instead.
    Full,
    /// Answer the replica with this error line and close; nothing reaches the master.
    Hold(String),
    /// Kvrocks: answer the replica with this error line, which makes it run a full sync;
    /// nothing reaches the master.
    Refuse(&'static str),
}

impl Route {
    /// A word for logs and counters.
    pub fn action(&self) -> &'static str {
        match self {
            Route::Forward => "forwarded",
            Route::Full | Route::Refuse(_) => "forced_full",
            Route::Hold(_) => "held",
        }
    }
}

/// Turns a verdict into what is sent, by guard mode.
pub fn route(mode: GuardMode, verdict: &Verdict) -> Route {
    match (mode, verdict) {
        (_, Verdict::Pass) | (GuardMode::Observe, _) => Route::Forward,
        (GuardMode::Enforce, Verdict::ForceFull(_)) => Route::Full,
        (GuardMode::Enforce, Verdict::Hold(reason)) => Route::Hold(format!(
            "-LOADING replguard is holding this replica: {reason}\r\n"
        )),
    }
}

/// Turns a verdict on a Kvrocks PSYNC into what is sent, by guard mode. A Kvrocks master has
/// no "full sync please" request: the replica is answered the master's own refusal instead.
pub fn route_kvrocks(mode: GuardMode, verdict: &Verdict) -> Route {
    match (mode, verdict) {
        (_, Verdict::Pass) | (GuardMode::Observe, _) => Route::Forward,
        (GuardMode::Enforce, _) => Route::Refuse(crate::kvrocks::wire::FULL_SYNC_ANSWER),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::verdict::Reason;
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

    #[test]
    fn modes_decide_what_is_sent() {
        let full = Verdict::ForceFull(Reason::UnknownId { replid: "x".into() });
        let hold = Verdict::Hold(Reason::EmptyMaster {
            master_replid: "y".into(),
        });
        assert_eq!(route(GuardMode::Enforce, &Verdict::Pass), Route::Forward);
        assert_eq!(route(GuardMode::Enforce, &full), Route::Full);
        assert_eq!(route(GuardMode::Observe, &full), Route::Forward);
        assert_eq!(route(GuardMode::Observe, &hold), Route::Forward);
        match route(GuardMode::Enforce, &hold) {
            Route::Hold(line) => {
                assert!(line.starts_with(
                    "-LOADING replguard is holding this replica: the master came back empty"
                ));
                assert!(line.ends_with("\r\n") && !line[..line.len() - 2].contains('\n'));
            }
            other => panic!("{other:?}"),
        }
    }
}
