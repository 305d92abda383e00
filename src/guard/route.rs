//! The one place that decides what happens to a replica's PSYNC before it reaches the master.
//!
//! Every PSYNC a session reads is judged by the link's guard ([`crate::guard::verdict`]) and then
//! routed here: forwarded as the replica sent it, rewritten to `PSYNC ? -1` (a full sync), or
//! held with a `-LOADING` answer from replguard itself. In `observe` mode everything is
//! forwarded and only the would-be action is logged and counted.

use crate::config::GuardMode;
use crate::guard::verdict::Verdict;

/// What to do with one PSYNC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// The replica's own bytes, unchanged.
    Forward,
    /// The flavour's own full-sync request to the master instead.
    Full,
    /// Answer the replica with this error line and close; nothing reaches the master.
    Hold(String),
    /// Answer the replica with this error line, which makes it run a full sync; nothing
    /// reaches the master (a flavour whose master takes no full-sync request).
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

/// Turns a verdict into what is sent, by guard mode. `refusal` is the answer that makes a
/// replica run a full sync, for a flavour whose master takes no full-sync request; without
/// one, a forced full sync is the flavour's request to the master.
pub fn route(mode: GuardMode, verdict: &Verdict, refusal: Option<&'static str>) -> Route {
    match (mode, verdict, refusal) {
        (_, Verdict::Pass, _) | (GuardMode::Observe, _, _) => Route::Forward,
        (GuardMode::Enforce, Verdict::ForceFull(_), None) => Route::Full,
        (GuardMode::Enforce, _, Some(line)) => Route::Refuse(line),
        (GuardMode::Enforce, Verdict::Hold(reason), None) => Route::Hold(format!(
            "-LOADING replguard is holding this replica: {reason}\r\n"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::verdict::Reason;
    #[test]
    fn modes_decide_what_is_sent() {
        let full = Verdict::ForceFull(Reason::UnknownId { replid: "x".into() });
        let hold = Verdict::Hold(Reason::EmptyMaster {
            master_replid: "y".into(),
        });
        assert_eq!(
            route(GuardMode::Enforce, &Verdict::Pass, None),
            Route::Forward
        );
        assert_eq!(route(GuardMode::Enforce, &full, None), Route::Full);
        assert_eq!(route(GuardMode::Observe, &full, None), Route::Forward);
        assert_eq!(route(GuardMode::Observe, &hold, None), Route::Forward);
        assert_eq!(
            route(GuardMode::Enforce, &full, Some("-ERR x\r\n")),
            Route::Refuse("-ERR x\r\n")
        );
        assert_eq!(
            route(GuardMode::Observe, &full, Some("-ERR x\r\n")),
            Route::Forward
        );
        match route(GuardMode::Enforce, &hold, None) {
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
