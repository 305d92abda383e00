//! The lineage guard of one link: its ledger (in memory and on disk), what it learned from the
//! master, the verdicts it gave and how the master answered them.
//!
//! Sessions ask [`Guard::judge`] before forwarding a PSYNC, and report deliveries; the link's
//! keeper task folds in the master's INFO and saves the ledger when it changed.

use crate::ledger::{self, KvGap, KvIdRange, KvRecord, LedgerData, MasterView, ReplicaRecord};
use crate::verdict::{judge, Facts, Request, UnknownReplica, Verdict};
use dashmap::DashMap;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
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
    /// Kvrocks: full syncs relayed per replica address.
    kv_fetches: Mutex<HashMap<IpAddr, FetchBook>>,
    /// Kvrocks: replicas refused a resume, with their address and its full-sync count then.
    kv_refused: Mutex<HashMap<String, (IpAddr, u64)>>,
    /// Kvrocks: gaps seen in streams relayed from the master.
    pub kv_gaps: AtomicU64,
}

/// The Kvrocks full syncs relayed to one address.
#[derive(Debug, Clone, Copy, Default)]
struct FetchBook {
    /// `_fetch_file` answers relayed whole.
    complete: u64,
    /// The checkpoint's last sequence as its files told it, since the last `_fetch_meta`.
    checkpoint_seq: Option<u64>,
    /// Some of those files could not be read: the last sequence is unknown.
    checkpoint_unknown: bool,
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
            .chain(
                data.kvrocks
                    .replicas
                    .iter()
                    .filter(|(_, r)| r.open)
                    .map(|(k, _)| k.clone()),
            )
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
            kv_fetches: Mutex::new(HashMap::new()),
            kv_refused: Mutex::new(HashMap::new()),
            kv_gaps: AtomicU64::new(0),
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
            kv_replica: None,
            kv_full_sync_seen: false,
            kv_checkpoint_seq: None,
        };
        let v = judge(&facts, &Request::Psync2 { replid, offset });
        (v, describe(&data, rec, replid, uncertain, empty.as_deref()))
    }

    /// Judges a Kvrocks PSYNC from `replica` (connected from `ip`); also returns the facts used.
    pub fn judge_kvrocks(
        &self,
        replica: &str,
        ip: IpAddr,
        replid: Option<&str>,
        seq: u64,
    ) -> (Verdict, String) {
        let data = lock(&self.data);
        let uncertain = lock(&self.uncertain).contains(replica);
        let rec = data.kvrocks.replicas.get(replica);
        let full_sync = self.kv_full_sync(replica, ip);
        let seen = full_sync.is_some();
        let facts = Facts {
            ledger: &data,
            replica: None,
            unclean_stop: uncertain,
            empty_master: None,
            allow_empty_master: true,
            unknown_replica: self.policy,
            kv_replica: rec,
            kv_full_sync_seen: seen,
            kv_checkpoint_seq: full_sync.flatten(),
        };
        let v = judge(&facts, &Request::Kvrocks { replid, seq });
        (v, describe_kvrocks(&data, rec, uncertain, full_sync))
    }

    /// Whether a complete full sync from `ip` passed since `replica` was refused, and then the
    /// last sequence of its checkpoint when known.
    fn kv_full_sync(&self, replica: &str, ip: IpAddr) -> Option<Option<u64>> {
        let (at_ip, before) = lock(&self.kv_refused).get(replica).copied()?;
        let book = lock(&self.kv_fetches).get(&ip).copied().unwrap_or_default();
        (at_ip == ip && book.complete > before)
            .then(|| book.checkpoint_seq.filter(|_| !book.checkpoint_unknown))
    }

    /// A Kvrocks replica was refused a resume (by the master or by replguard): it must full-sync.
    pub fn kv_refused(&self, replica: &str, ip: IpAddr) {
        let count = lock(&self.kv_fetches).get(&ip).map_or(0, |b| b.complete);
        lock(&self.kv_refused).insert(replica.to_string(), (ip, count));
        let mut data = lock(&self.data);
        data.kvrocks.update(replica, |r| {
            r.full_sync_pending = true;
            r.open = false;
        });
        self.dirty.store(true, Relaxed);
    }

    /// A `_fetch_meta` from `ip`: a full sync (with a checkpoint of its own) begins.
    pub fn kv_fetch_meta(&self, ip: IpAddr) {
        let mut f = lock(&self.kv_fetches);
        let book = f.entry(ip).or_default();
        book.checkpoint_seq = None;
        book.checkpoint_unknown = false;
    }

    /// A `_fetch_file` answer was relayed whole to `ip`; its files told the checkpoint's last
    /// sequence (`seq`), or could not be read (`unreadable`).
    pub fn kv_fetch_complete(&self, ip: IpAddr, seq: Option<u64>, unreadable: bool) {
        let mut f = lock(&self.kv_fetches);
        let book = f.entry(ip).or_default();
        book.complete += 1;
        book.checkpoint_unknown |= unreadable;
        book.checkpoint_seq = book.checkpoint_seq.max(seq);
    }

    /// The master accepted a Kvrocks PSYNC the guard passed: see [`ledger::KvBooks::start`].
    pub fn kv_started(&self, replica: &str, replid: Option<&str>, seq: u64) -> Vec<KvIdRange> {
        lock(&self.kv_refused).remove(replica);
        lock(&self.uncertain).remove(replica);
        let ids = lock(&self.data).kvrocks.start(replica, replid, seq);
        self.dirty.store(true, Relaxed);
        ids
    }

    /// Records what a Kvrocks replica was delivered: batches up to `next_seq`, their ids by
    /// range. `open` while its session goes on.
    pub fn kv_delivered(&self, replica: &str, next_seq: u64, ids: &[KvIdRange], open: bool) {
        if lock(&self.data)
            .kvrocks
            .deliver(replica, next_seq, ids, open)
        {
            self.dirty.store(true, Relaxed);
        }
    }

    /// A batch from the master carried `replid`.
    pub fn kv_master_id(&self, replid: &str) {
        if lock(&self.data).kvrocks.saw_master_replid(replid) {
            self.dirty.store(true, Relaxed);
        }
    }

    /// Records a gap in the stream delivered to a Kvrocks replica.
    pub fn kv_gap(&self, replica: &str, gap: KvGap) {
        self.kv_gaps.fetch_add(1, Relaxed);
        lock(&self.data).kvrocks.update(replica, |r| {
            r.gap.get_or_insert(gap);
        });
        self.dirty.store(true, Relaxed);
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
            "kvrocks": data.kvrocks,
            "kvrocks_stream_gaps": self.kv_gaps.load(Relaxed),
            "last_verdicts": last.into_iter().collect::<BTreeMap<_, _>>(),
            "ledger_file": self.path.display().to_string(),
        })
    }
}

/// The Kvrocks facts a verdict used, in one line.
fn describe_kvrocks(
    data: &LedgerData,
    rec: Option<&KvRecord>,
    uncertain: bool,
    full_sync: Option<Option<u64>>,
) -> String {
    let mut s = match rec {
        None => "replica never served by this link".to_string(),
        Some(r) if r.next_seq == 0 => "replica delivered no batches through this link".into(),
        Some(r) => format!(
            "replica delivered batches up to sequence {} (next {})",
            r.next_seq - 1,
            r.next_seq
        ),
    };
    if let Some(r) = rec {
        if !r.ids.is_empty() {
            let ranges: Vec<String> = r
                .ids
                .iter()
                .map(|x| format!("{}..: {}", x.from, x.replid.as_deref().unwrap_or("no id")))
                .collect();
            s.push_str(&format!(", batch ids by sequence [{}]", ranges.join(", ")));
        } else if let Some(id) = &r.replid {
            s.push_str(&format!(", last batch id {id}"));
        }
        if let Some(g) = r.gap {
            s.push_str(&format!(", gap {}..{}", g.expected, g.got));
        }
        if r.full_sync_pending {
            s.push_str(&match full_sync {
                None => ", owes a full sync (none seen yet)".to_string(),
                Some(None) => ", full sync seen (checkpoint sequence unknown)".to_string(),
                Some(Some(c)) => format!(", full sync seen (checkpoint at sequence {c})"),
            });
        }
        if uncertain {
            s.push_str(" (session open at an unclean stop)");
        }
    }
    s.push_str(&format!(
        "; {} master ids seen in batches",
        data.kvrocks.master_replids.len()
    ));
    s
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
