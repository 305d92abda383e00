//! The lineage guard of one link: its ledger (in memory and on disk), what it learned from the
//! master, the verdicts it gave and how the master answered them.
//!
//! Sessions ask [`Guard::judge`] before forwarding a PSYNC, and report deliveries; the link's
//! keeper task folds in the master's INFO and saves the ledger when it changed.

use crate::ledger::{self, LedgerData, MasterView, ReplicaRecord};
use crate::verdict::{judge, Facts, Request, UnknownReplica, Verdict};
use dashmap::DashMap;
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard};
use tracing::{error, info, warn};

/// One decision, kept per replica for /status.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub at_unix: u64,
    pub requested_replid: String,
    pub requested_offset: i64,
    pub verdict: &'static str,
    pub reason: Option<String>,
    pub reason_code: Option<&'static str>,
    /// What replguard did: forwarded, rewritten to `PSYNC ? -1`, or held.
    pub action: &'static str,
    /// The master's answer (first word), or what replguard answered itself.
    pub answer: String,
}

/// The guard state of a link.
pub struct Guard {
    path: PathBuf,
    data: Mutex<LedgerData>,
    /// Replicas whose record was open when replguard last stopped without a clean shutdown.
    uncertain: Mutex<HashSet<String>>,
    /// The master's current id when it showed a brand-new, empty lineage.
    empty_master: Mutex<Option<String>>,
    allow_empty: AtomicBool,
    /// `allow_empty_master` from the configuration: allowed whatever the operator did at runtime.
    allow_empty_config: AtomicBool,
    dirty: AtomicBool,
    pub policy: UnknownReplica,
    /// Verdicts by (verdict, reason code, action).
    counts: Mutex<BTreeMap<(&'static str, &'static str, &'static str), u64>>,
    /// Resumes the master accepted although the verdict was ForceFull (observe mode).
    pub unsafe_accepted: AtomicU64,
    pub holds: AtomicU64,
    pub last: DashMap<String, Decision>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Guard {
    /// Loads the link's ledger; a missing or corrupt file is reported and means no knowledge.
    pub fn open(
        state_dir: &std::path::Path,
        link: &str,
        policy: UnknownReplica,
        allow_empty: bool,
    ) -> Guard {
        let path = ledger::ledger_path(state_dir, link);
        let data = match ledger::load(&path) {
            Ok(Some(d)) => d,
            Ok(None) => {
                info!(link, path = %path.display(), "no ledger yet: starting with no knowledge");
                LedgerData::new()
            }
            Err(e) => {
                error!(link, "{e}");
                LedgerData::new()
            }
        };
        let uncertain: HashSet<String> = data
            .replicas
            .iter()
            .filter(|(_, r)| r.open)
            .map(|(k, _)| k.clone())
            .collect();
        if !uncertain.is_empty() {
            warn!(
                link,
                replicas = ?uncertain,
                "replguard did not stop cleanly last time: these replicas' sessions were open, so their recorded offsets are lower bounds; a resume beyond them is forced to a full sync"
            );
        }
        info!(
            link,
            epochs = data.epochs.len(),
            replicas = data.replicas.len(),
            "ledger loaded"
        );
        Guard {
            path,
            data: Mutex::new(data),
            uncertain: Mutex::new(uncertain),
            empty_master: Mutex::new(None),
            allow_empty: AtomicBool::new(allow_empty),
            allow_empty_config: AtomicBool::new(allow_empty),
            dirty: AtomicBool::new(false),
            policy,
            counts: Mutex::new(BTreeMap::new()),
            unsafe_accepted: AtomicU64::new(0),
            holds: AtomicU64::new(0),
            last: DashMap::new(),
        }
    }

    /// Judges a PSYNC; also returns the ledger facts used, in words for the log.
    pub fn judge(&self, replica: &str, replid: &str, offset: i64) -> (Verdict, String) {
        let data = lock(&self.data);
        let uncertain = lock(&self.uncertain).contains(replica);
        let empty = lock(&self.empty_master).clone();
        let rec = data.replicas.get(replica);
        let facts = Facts {
            ledger: &data,
            replica: rec,
            unclean_stop: uncertain,
            empty_master: empty.as_deref(),
            allow_empty_master: self.allow_empty.load(Relaxed),
            unknown_replica: self.policy,
        };
        let v = judge(&facts, &Request { replid, offset });
        (v, describe(&data, rec, replid, uncertain, empty.as_deref()))
    }

    /// Counts a decision and keeps it as the replica's last.
    pub fn record(&self, replica: &str, verdict: &Verdict, d: Decision) {
        let code = verdict.reason().map_or("none", |r| r.code());
        *lock(&self.counts)
            .entry((verdict.name(), code, d.action))
            .or_default() += 1;
        self.last.insert(replica.to_string(), d);
    }

    /// Folds in the master's own view; detects a brand-new empty lineage.
    pub fn observe(&self, link: &str, v: &MasterView) {
        let mut data = lock(&self.data);
        let unrelated = data.is_unrelated(v);
        {
            let mut em = lock(&self.empty_master);
            let same = em.as_deref() == Some(v.replid.as_str());
            if same && v.empty {
                // Still the same empty master.
            } else if unrelated && v.empty {
                error!(
                    link,
                    master_replid = %v.replid,
                    "the master came back EMPTY with a new replication id unrelated to this link's history: replicas this link filled are HELD (answered -LOADING) so a full sync cannot wipe them; allow with POST /links/{link}/allow-empty-master or allow_empty_master: true"
                );
                *em = Some(v.replid.clone());
            } else if let Some(old) = em.take() {
                info!(link, master_replid = %old, empty = v.empty, "empty-master hold lifted: the master has data or a different lineage");
                self.allow_empty
                    .store(self.allow_empty_config.load(Relaxed), Relaxed);
            }
        }
        if data.observe_master(v) {
            self.dirty.store(true, Relaxed);
        }
    }

    /// Notes a `+FULLRESYNC <id> <offset>`: the master serves `id` at `offset`.
    pub fn saw_full_resync(&self, replid: &str, offset: u64) {
        lock(&self.data).extend(replid, offset);
        self.dirty.store(true, Relaxed);
    }

    /// Records that `replica` has been delivered `replid` up to `offset`; `open` while its
    /// session goes on.
    pub fn delivered(&self, replica: &str, replid: &str, offset: u64, open: bool) {
        let mut data = lock(&self.data);
        let same = data
            .replicas
            .get(replica)
            .is_some_and(|r| r.replid == replid && r.offset == offset && r.open == open);
        if !same {
            data.deliver(replica, replid, offset, open);
            self.dirty.store(true, Relaxed);
        }
        lock(&self.uncertain).remove(replica);
    }

    /// Lets held replicas sync from the empty master.
    pub fn allow_empty_master(&self) -> Option<String> {
        self.allow_empty.store(true, Relaxed);
        lock(&self.empty_master).clone()
    }

    pub fn empty_master(&self) -> Option<String> {
        lock(&self.empty_master).clone()
    }

    /// Saves the ledger if it changed since the last save.
    pub fn save_if_dirty(&self, link: &str) {
        if self.dirty.swap(false, Relaxed) {
            let snapshot = lock(&self.data).clone();
            if let Err(e) = ledger::save(&self.path, &snapshot) {
                self.dirty.store(true, Relaxed);
                error!(link, path = %self.path.display(), error = %e, "cannot save the ledger");
            }
        }
    }

    pub fn counts(&self) -> Vec<((&'static str, &'static str, &'static str), u64)> {
        lock(&self.counts).iter().map(|(k, v)| (*k, *v)).collect()
    }

    /// The guard's part of /status.
    pub fn status(&self) -> serde_json::Value {
        let data = lock(&self.data).clone();
        let mut last: Vec<_> = self
            .last
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        last.sort_by(|a, b| a.0.cmp(&b.0));
        serde_json::json!({
            "unknown_replica": self.policy,
            "allow_empty_master": self.allow_empty.load(Relaxed),
            "empty_master": self.empty_master(),
            "unsafe_resumes_accepted": self.unsafe_accepted.load(Relaxed),
            "holds": self.holds.load(Relaxed),
            "lineage": data.epochs,
            "replicas": data.replicas,
            "last_verdicts": last.into_iter().collect::<BTreeMap<_, _>>(),
            "ledger_file": self.path.display().to_string(),
        })
    }
}

/// The ledger facts a verdict used, in one line.
fn describe(
    data: &LedgerData,
    rec: Option<&ReplicaRecord>,
    replid: &str,
    uncertain: bool,
    empty: Option<&str>,
) -> String {
    let mut s = String::new();
    match data.epoch(replid) {
        None if replid == "?" => s.push_str("full sync requested"),
        None => s.push_str(&format!(
            "id unknown to the ledger ({} ids known)",
            data.epochs.len()
        )),
        Some(e) => {
            s.push_str(&format!(
                "id seen at offsets {}..={}",
                e.first_offset, e.last_offset
            ));
            if let Some(sw) = &e.superseded {
                s.push_str(&format!(", superseded by {} at {}", sw.by, sw.at));
            }
            if let Some(f) = e.first_fork() {
                s.push_str(&format!(", forked at {f}"));
            }
        }
    }
    match rec {
        None => s.push_str("; replica never served by this link"),
        Some(r) => s.push_str(&format!(
            "; replica delivered {} up to {}{}",
            r.replid,
            r.offset,
            if uncertain {
                " (session open at an unclean stop)"
            } else {
                ""
            }
        )),
    }
    if let Some(e) = empty {
        s.push_str(&format!("; master is empty with new id {e}"));
    }
    s
}
