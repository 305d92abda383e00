//! One guard decision: the log line an operator greps, the counters, and the replica's last
//! verdict kept for /status.

use super::route::Route;
use super::verdict::Verdict;
use super::{Decision, Guard};
use crate::config::GuardMode;
use std::sync::atomic::Ordering::Relaxed;
use tracing::{debug, info, warn};

/// One guard decision, logged once the master's answer is known.
pub struct DecisionCtx<'a> {
    pub replica: &'a str,
    /// The requested id and offset (sequence for Kvrocks), when the PSYNC could be read.
    pub req: Option<(&'a str, i64)>,
    pub facts: &'a str,
    pub verdict: &'a Verdict,
    pub route: &'a Route,
}

impl DecisionCtx<'_> {
    /// One line per decision, counted, and kept as the replica's last verdict. A master that
    /// resumes a replica replguard judged inconsistent (observe mode) is called out.
    pub fn log(&self, guard: &Guard, mode: GuardMode, answer: &str) {
        let (replid, offset) = self.req.unwrap_or(("-", 0));
        let reason = self.verdict.reason().map(|r| r.to_string());
        let first = answer
            .split_ascii_whitespace()
            .next()
            .unwrap_or("")
            .to_string();
        // `+OK` is a Kvrocks master's acceptance.
        let unsafe_accepted = matches!(self.verdict, Verdict::ForceFull(_))
            && matches!(first.as_str(), "+CONTINUE" | "+OK");
        if unsafe_accepted {
            guard.unsafe_accepted.fetch_add(1, Relaxed);
        }
        macro_rules! line {
            ($lvl:ident, $msg:expr) => {
                $lvl!(
                    mode = %mode,
                    replica = self.replica,
                    requested_replid = replid,
                    requested_offset = offset,
                    facts = self.facts,
                    verdict = self.verdict.name(),
                    reason_code = self.verdict.reason().map_or("-", |r| r.code()),
                    reason = reason.as_deref().unwrap_or("-"),
                    action = self.route.action(),
                    master_answer = answer,
                    $msg
                )
            };
        }
        match self.verdict {
            Verdict::Pass => line!(info, "guard: pass"),
            _ if unsafe_accepted => line!(
                warn,
                "guard: the master RESUMED a replica whose resume point replguard judged inconsistent (observe mode): data may be missing on it"
            ),
            Verdict::ForceFull(_) => line!(warn, "guard: force full sync"),
            // A held replica retries every second: its hold is logged once, then once a
            // minute with the number of retries in between.
            Verdict::Hold(_) => match guard.hold_log_due(self.replica) {
                Some(0) => line!(warn, "guard: hold"),
                Some(retries) => {
                    line!(warn, "guard: hold");
                    info!(
                        replica = self.replica,
                        retries, "guard: the replica was held that many more times since the last hold line"
                    );
                }
                None => debug!(replica = self.replica, "guard: hold (again)"),
            },
        }
        guard.record(
            self.replica,
            self.verdict,
            Decision {
                at_unix: super::ledger::now_unix(),
                requested_replid: replid.to_string(),
                requested_offset: offset,
                verdict: self.verdict.name(),
                reason,
                reason_code: self.verdict.reason().map(|r| r.code()),
                action: self.route.action(),
                answer: first,
            },
        );
    }
}
