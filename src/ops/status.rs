//! The `/status` document: what each link, its sessions and its guard show, as JSON.
//!
//! The guard and the link hand over plain data ([`GuardSnapshot`], [`SessionSnapshot`], the
//! counters); the shape of the document is decided here alone. `replguard status` and the
//! integration tests read it, so field names and their order are kept as they are.

use crate::config::{Flavor, GuardMode, UnknownReplica};
use crate::conn::stats::SessionSnapshot;
use crate::guard::ledger::{Epoch, KvBooks, ReplicaRecord, StaleMaster};
use crate::guard::{Decision, GuardSnapshot};
use crate::link::{LinkCtx, MasterSource};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

#[derive(Serialize)]
struct Status {
    version: &'static str,
    uptime_seconds: f64,
    links: Vec<LinkStatus>,
}

#[derive(Serialize)]
struct LinkStatus {
    name: String,
    listen: String,
    /// The master in force: the configuration's (`config.master`), or an operator's re-point.
    master: String,
    /// Where it came from: `configuration` or `re-point`.
    master_source: &'static str,
    /// When the link was re-pointed, for a master from a re-point.
    master_repointed_at_unix: Option<u64>,
    /// The address the last successful dial connected to (what a name resolved to).
    master_dialled: Option<String>,
    /// Why the last dial of the master failed, until one succeeds.
    master_dial_error: Option<String>,
    flavor: Flavor,
    /// The group whose ledger the link shares, if any.
    group: Option<String>,
    guard: GuardMode,
    max_sessions: usize,
    sessions_active: usize,
    sessions_total: u64,
    sessions_refused: u64,
    full_syncs: u64,
    partial_syncs: u64,
    psync_rejected: u64,
    sessions: Vec<SessionSnapshot>,
    /// [`LedgerStatus`] as a JSON value: every object in it has its keys in alphabetical order,
    /// as the document has always had them.
    ledger: serde_json::Value,
    /// The link's configuration in force. Only references to a password (a variable's name, a
    /// file's path) are in it, never the password itself.
    config: serde_json::Value,
}

/// A link's `ledger` object.
#[derive(Serialize)]
struct LedgerStatus {
    allow_empty_master: bool,
    empty_master: Option<String>,
    /// The group whose ledger this is (shared by its links), if any.
    group: Option<String>,
    holds: u64,
    kvrocks: KvBooks,
    kvrocks_stream_gaps: u64,
    last_verdicts: BTreeMap<String, Decision>,
    ledger_file: String,
    ledger_last_save_error: Option<String>,
    ledger_save_failures: u64,
    lineage: Vec<Epoch>,
    replicas: BTreeMap<String, ReplicaRecord>,
    stale_master: Option<StaleMaster>,
    unknown_replica: UnknownReplica,
    unsafe_resumes_accepted: u64,
}

impl From<GuardSnapshot> for LedgerStatus {
    fn from(g: GuardSnapshot) -> Self {
        LedgerStatus {
            allow_empty_master: g.allow_empty_master,
            empty_master: g.empty_master,
            group: g.group,
            holds: g.holds,
            kvrocks: g.data.kvrocks,
            kvrocks_stream_gaps: g.kvrocks_stream_gaps,
            last_verdicts: g.last_verdicts,
            ledger_file: g.ledger_file.display().to_string(),
            ledger_last_save_error: g.ledger_last_save_error,
            ledger_save_failures: g.ledger_save_failures,
            lineage: g.data.epochs,
            replicas: g.data.replicas,
            stale_master: g.stale_master,
            unknown_replica: g.unknown_replica,
            unsafe_resumes_accepted: g.unsafe_resumes_accepted,
        }
    }
}

fn ledger(g: GuardSnapshot) -> serde_json::Value {
    serde_json::to_value(LedgerStatus::from(g)).expect("the ledger status serializes")
}

/// The `/status` document of `links`, for a process started at `started`.
pub fn document(links: &[Arc<LinkCtx>], started: Instant) -> String {
    let links = links
        .iter()
        .map(|l| {
            let c = &l.counters;
            let sessions = l.snapshots();
            let cfg = l.cfg();
            let m = l.master_state();
            let repointed_at = match m.source {
                MasterSource::Configuration => None,
                MasterSource::Repoint { at_unix } => Some(at_unix),
            };
            LinkStatus {
                name: l.name.clone(),
                listen: cfg.listen.clone(),
                master: m.addr.to_string(),
                master_source: if repointed_at.is_some() {
                    "re-point"
                } else {
                    "configuration"
                },
                master_repointed_at_unix: repointed_at,
                master_dialled: m.dialled.map(|a| a.to_string()),
                master_dial_error: m.dial_error,
                flavor: cfg.flavor,
                group: cfg.group.clone(),
                guard: cfg.guard,
                max_sessions: cfg.max_sessions,
                sessions_active: sessions.len(),
                sessions_total: c.sessions_total.load(Relaxed),
                sessions_refused: c.sessions_refused.load(Relaxed),
                full_syncs: c.full_syncs.load(Relaxed),
                partial_syncs: c.partial_syncs.load(Relaxed),
                psync_rejected: c.psync_rejected.load(Relaxed),
                sessions,
                ledger: ledger(l.guard.snapshot()),
                config: serde_json::to_value(&*cfg).unwrap_or_default(),
            }
        })
        .collect();
    let status = Status {
        version: env!("CARGO_PKG_VERSION"),
        uptime_seconds: started.elapsed().as_secs_f64(),
        links,
    };
    serde_json::to_string_pretty(&status).expect("status serializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::ledger::LedgerData;

    /// The `ledger` object reads as the one the guard used to build with `json!` (with `group`
    /// and `stale_master` since): the keys of every object in alphabetical order.
    #[test]
    fn the_ledger_object_keeps_its_shape() {
        let mut data = LedgerData::new();
        data.extend("a".repeat(40).as_str(), 100);
        data.deliver("10.0.0.1:6380", &"a".repeat(40), 150, true);
        let decision = Decision {
            at_unix: 1,
            requested_replid: "?".into(),
            requested_offset: -1,
            verdict: "pass",
            reason: None,
            reason_code: None,
            action: "forwarded",
            answer: "+FULLRESYNC".into(),
        };
        let g = GuardSnapshot {
            unknown_replica: UnknownReplica::Full,
            allow_empty_master: true,
            empty_master: Some("b".repeat(40)),
            unsafe_resumes_accepted: 2,
            holds: 3,
            data: data.clone(),
            kvrocks_stream_gaps: 4,
            last_verdicts: BTreeMap::from([("10.0.0.1:6380".to_string(), decision.clone())]),
            stale_master: None,
            group: Some("g".into()),
            ledger_file: "/s/main.json".into(),
            ledger_save_failures: 5,
            ledger_last_save_error: Some("disk full".into()),
        };
        let before = serde_json::json!({
            "unknown_replica": UnknownReplica::Full,
            "allow_empty_master": true,
            "empty_master": Some("b".repeat(40)),
            "group": "g",
            "stale_master": null,
            "unsafe_resumes_accepted": 2,
            "holds": 3,
            "lineage": data.epochs,
            "replicas": data.replicas,
            "kvrocks": data.kvrocks,
            "kvrocks_stream_gaps": 4,
            "last_verdicts": BTreeMap::from([("10.0.0.1:6380".to_string(), decision)]),
            "ledger_file": "/s/main.json",
            "ledger_save_failures": 5,
            "ledger_last_save_error": Some("disk full"),
        });
        assert_eq!(
            serde_json::to_string_pretty(&ledger(g)).unwrap(),
            serde_json::to_string_pretty(&before).unwrap()
        );
    }
}
