//! The lineage ledger of one link: which replication ids its master(s) had, over which offsets,
//! how each ended, and what this link delivered to each replica. Persisted under `state_dir` by
//! atomic replace with fsync; a missing or unreadable file means "no knowledge", never "trust".
//!
//! Lineage facts come from two places: the handshake replies replguard relays (`+FULLRESYNC`,
//! `+CONTINUE <id>`) and the master's `INFO replication`, polled by [`crate::redis::watch`].

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

/// Format version of the ledger file.
pub const LEDGER_VERSION: u32 = 1;
/// The replid2 of a server that never had a previous id.
pub const NO_REPLID: &str = "0000000000000000000000000000000000000000";

/// How an id handed over to another: requests under the old id are good up to `at`, the first
/// offset the new id serves (PSYNC2's `second_repl_offset`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Switch {
    pub by: String,
    pub at: u64,
}

/// One replication id of the link's master lineage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Epoch {
    pub replid: String,
    /// Lowest offset seen under this id.
    pub first_offset: u64,
    /// Highest offset seen under this id (delivered, or reported by the master).
    pub last_offset: u64,
    /// Set when another id took over.
    pub superseded: Option<Switch>,
    /// Points where the history under this id stopped being the one seen before: the id came
    /// back (directly, or as the replid2 of a restarted master) at a lower offset than the
    /// ledger had already seen. Data beyond such a point diverged.
    #[serde(default)]
    pub forks: Vec<Fork>,
}

/// One divergence of an id's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fork {
    /// The first offset whose data differs from what was seen before.
    pub at: u64,
    /// Ledger sequence number when the fork was found; deliveries recorded after it are of the
    /// new history.
    pub seq: u64,
}

/// Most forks kept per id; older ones are merged conservatively (lowest point, latest seq).
const MAX_FORKS: usize = 16;

impl Epoch {
    fn add_fork(&mut self, at: u64, seq: u64) {
        self.forks.push(Fork { at, seq });
        if self.forks.len() > MAX_FORKS {
            let a = self.forks.remove(0);
            let b = &mut self.forks[0];
            b.at = b.at.min(a.at);
            b.seq = b.seq.max(a.seq);
        }
    }

    /// The earliest fork point, if any.
    pub fn first_fork(&self) -> Option<u64> {
        self.forks.iter().map(|f| f.at).min()
    }
}

/// What this link delivered to one replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaRecord {
    /// The replication id of what it was delivered.
    pub replid: String,
    /// The offset it reaches by applying everything delivered (complete commands).
    pub offset: u64,
    /// Ledger sequence number of the last update.
    pub seq: u64,
    /// Wall-clock time of the last update, seconds since the epoch.
    pub updated_unix: u64,
    /// A session was delivering to it when this was written; if replguard then stopped
    /// uncleanly, `offset` is only a lower bound.
    pub open: bool,
    /// The address the session that wrote it came from (`ip:port` of the TCP peer); absent in
    /// records written before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
}

/// Everything the ledger file holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerData {
    pub version: u32,
    /// The link this ledger belongs to, and the master its configuration names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master: Option<String>,
    /// Bumped on every change; orders forks against deliveries.
    pub seq: u64,
    pub epochs: Vec<Epoch>,
    /// Keyed by replica identity: `ip:port` (announced or peer IP, and listening port).
    pub replicas: BTreeMap<String, ReplicaRecord>,
    /// The books of a Kvrocks link (sequences instead of offsets).
    #[serde(default, skip_serializing_if = "KvBooks::is_empty")]
    pub kvrocks: KvBooks,
}

/// Most replication ids a Kvrocks link remembers having seen in its master's batches.
const KV_REPLIDS_KEPT: usize = 64;

/// What a Kvrocks link knows: the ids its master's batches carried, and per replica the
/// sequence it was delivered up to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvBooks {
    /// Ids seen in the trailing `r` record of batches relayed from the master, oldest first.
    pub master_replids: Vec<String>,
    /// Keyed like [`LedgerData::replicas`].
    pub replicas: BTreeMap<String, KvRecord>,
}

/// Batches from `expected` on were missing when a batch starting at `got` arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvGap {
    pub expected: u64,
    pub got: u64,
}

/// What a Kvrocks link delivered to one replica.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvRecord {
    /// The sequence it should ask for next: one past the last batch delivered, or the sequence
    /// it asked for when its books were (re)started.
    pub next_seq: u64,
    /// The id the last batch delivered carried (or the replica presented at its baseline).
    pub replid: Option<String>,
    /// The ids the delivered batches carried, by sequence range (see [`KvIdRange`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ids: Vec<KvIdRange>,
    /// Batches were missing from the stream it was delivered.
    pub gap: Option<KvGap>,
    /// It was refused a resume and must run a full sync; its next PSYNC starts new books.
    pub full_sync_pending: bool,
    pub updated_unix: u64,
    /// A session was delivering to it when this was written (see [`ReplicaRecord::open`]).
    pub open: bool,
    /// The address the session that wrote it came from (see [`ReplicaRecord::peer`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
}

/// Most id ranges kept per Kvrocks replica; older ones are dropped, and the ids of the
/// sequences they covered are then unknown.
pub const KV_ID_RANGES_KEPT: usize = 16;

/// The batches delivered to a Kvrocks replica from sequence `from` on (up to the next range)
/// carried `replid` (`None`: no `r` record, a master without `use-rsid-psync`). The first range
/// of a replica's books may instead hold, at its sequence before the first one delivered, the id
/// the replica itself presented when the books began.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvIdRange {
    pub from: u64,
    pub replid: Option<String>,
}

/// Notes that the batch starting at `seq` carried `replid`; `true` when that opened a range.
pub fn note_kv_id(ranges: &mut Vec<KvIdRange>, seq: u64, replid: Option<&str>) -> bool {
    if ranges.last().is_some_and(|r| r.replid.as_deref() == replid) {
        return false;
    }
    ranges.push(KvIdRange {
        from: seq,
        replid: replid.map(str::to_string),
    });
    if ranges.len() > KV_ID_RANGES_KEPT {
        ranges.remove(0);
    }
    true
}

impl KvRecord {
    /// The id the batch holding sequence `seq` carried, for a sequence this replica's books
    /// cover: `Some(None)` when that batch carried none, `None` when the books cannot tell.
    pub fn id_at(&self, seq: u64) -> Option<Option<&str>> {
        if seq >= self.next_seq {
            return None;
        }
        if self.ids.is_empty() {
            // Books written before ranges were kept know the last batch's id only.
            return self
                .replid
                .as_deref()
                .filter(|_| seq + 1 == self.next_seq)
                .map(Some);
        }
        self.ids
            .iter()
            .rev()
            .find(|r| r.from <= seq)
            .map(|r| r.replid.as_deref())
    }

    /// Whether `replid` is an id this replica may hold from the master's data rather than from
    /// a write of its own: one it presented when its books began, or one a batch carried before
    /// `seq`. A 2.7.0 replica whose last batch carried no id presents the id stored in its
    /// database, which only such data (or a write of its own) put there.
    pub fn had_id_before(&self, replid: &str, seq: u64) -> bool {
        self.ids
            .iter()
            .any(|r| r.from <= seq && r.replid.as_deref() == Some(replid))
    }

    /// The ranges that still hold for books restarting at `seq` (a rewind): those before it.
    pub fn ids_before(&self, seq: u64) -> Vec<KvIdRange> {
        self.ids.iter().filter(|r| r.from < seq).cloned().collect()
    }
}

impl KvBooks {
    pub fn is_empty(&self) -> bool {
        self.master_replids.is_empty() && self.replicas.is_empty()
    }

    /// Notes an id carried by the master's batches.
    pub fn saw_master_replid(&mut self, replid: &str) -> bool {
        if self.master_replids.last().map(String::as_str) == Some(replid) {
            return false;
        }
        self.master_replids.retain(|r| r != replid);
        self.master_replids.push(replid.to_string());
        if self.master_replids.len() > KV_REPLIDS_KEPT {
            self.master_replids.remove(0);
        }
        true
    }

    pub fn knows_master_replid(&self, replid: &str) -> bool {
        self.master_replids.iter().any(|r| r == replid)
    }

    /// A replica's PSYNC `[replid] <seq>` was passed and accepted: its books continue from
    /// `seq`, as new books after a full sync or a rewind of the old ones. Returns the id ranges
    /// they start with: those of the old books before `seq` (a rewind), and the id the replica
    /// presented for `seq - 1`.
    pub fn start(&mut self, replica: &str, replid: Option<&str>, seq: u64) -> Vec<KvIdRange> {
        let mut ids = match self.replicas.get(replica) {
            Some(r) if !r.full_sync_pending => r.ids_before(seq),
            _ => Vec::new(),
        };
        if let (Some(id), Some(last)) = (replid, seq.checked_sub(1)) {
            note_kv_id(&mut ids, last, Some(id));
        }
        self.update(replica, |r| {
            *r = KvRecord {
                next_seq: seq,
                replid: replid.map(str::to_string),
                ids: ids.clone(),
                gap: None,
                full_sync_pending: false,
                updated_unix: 0,
                open: true,
                peer: None,
            }
        });
        ids
    }

    /// Records what a replica was delivered: batches up to `next_seq`, their ids by range.
    /// `false` when the record already said so.
    pub fn deliver(&mut self, replica: &str, next_seq: u64, ids: &[KvIdRange], open: bool) -> bool {
        let same = self
            .replicas
            .get(replica)
            .is_some_and(|r| r.next_seq == next_seq && r.ids.as_slice() == ids && r.open == open);
        if !same {
            self.update(replica, |r| {
                r.next_seq = next_seq;
                r.replid = ids.last().and_then(|x| x.replid.clone());
                r.ids = ids.to_vec();
                r.open = open;
            });
        }
        !same
    }

    /// Updates a replica's record (creating it) and stamps it.
    pub fn update(&mut self, replica: &str, f: impl FnOnce(&mut KvRecord)) {
        let rec = self.replicas.entry(replica.to_string()).or_default();
        f(rec);
        rec.updated_unix = now_unix();
    }
}

/// A replica record pruned from a ledger that held too many.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pruned {
    Redis(ReplicaRecord),
    Kvrocks(KvRecord),
}

impl Pruned {
    pub fn updated_unix(&self) -> u64 {
        match self {
            Pruned::Redis(r) => r.updated_unix,
            Pruned::Kvrocks(r) => r.updated_unix,
        }
    }

    pub fn peer(&self) -> Option<&str> {
        match self {
            Pruned::Redis(r) => r.peer.as_deref(),
            Pruned::Kvrocks(r) => r.peer.as_deref(),
        }
    }
}

/// What the master says about itself in `INFO replication` (and `INFO keyspace`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterView {
    pub replid: String,
    pub replid2: String,
    /// `second_repl_offset`: the first offset served by `replid` that `replid2` did not.
    pub second_offset: i64,
    pub offset: u64,
    /// The master holds no keys.
    pub empty: bool,
}

impl LedgerData {
    pub fn new() -> Self {
        LedgerData {
            version: LEDGER_VERSION,
            ..Default::default()
        }
    }

    pub fn epoch(&self, replid: &str) -> Option<&Epoch> {
        self.epochs.iter().find(|e| e.replid == replid)
    }

    fn epoch_mut(&mut self, replid: &str) -> Option<&mut Epoch> {
        self.epochs.iter_mut().find(|e| e.replid == replid)
    }

    fn bump(&mut self) -> u64 {
        // Saturates: a loaded file may hold any number.
        self.seq = self.seq.saturating_add(1);
        self.seq
    }

    /// Notes that `replid` serves `offset`. A known id seen again below what the ledger saw
    /// for it is a fork. Returns whether anything changed.
    pub fn see(&mut self, replid: &str, offset: u64) -> bool {
        if replid == "?" || replid == NO_REPLID {
            return false;
        }
        let seq = self.seq.saturating_add(1);
        match self.epoch_mut(replid) {
            Some(e) if offset < e.last_offset && e.superseded.is_none() => {
                // The same id, earlier in its history than already seen: what came after is
                // not the same history any more.
                e.add_fork(offset + 1, seq);
                e.last_offset = offset;
                self.bump();
                true
            }
            Some(e) => {
                let changed = offset > e.last_offset || offset < e.first_offset;
                e.last_offset = e.last_offset.max(offset);
                e.first_offset = e.first_offset.min(offset);
                changed
            }
            None => {
                self.epochs.push(Epoch {
                    replid: replid.to_string(),
                    first_offset: offset,
                    last_offset: offset,
                    superseded: None,
                    forks: Vec::new(),
                });
                self.bump();
                true
            }
        }
    }

    /// Notes that `old` handed over to `new`, requests under `old` being good up to `at`.
    /// If the ledger saw `old` beyond that point, that part of its history was lost: a fork.
    pub fn supersede(&mut self, old: &str, new: &str, at: u64) -> bool {
        if old == new || old == NO_REPLID || old == "?" {
            return false;
        }
        if self.epoch(old).is_none() {
            // Learned from a master's replid2: history this link did not see, vouched for by
            // the master itself up to the switch.
            self.see(old, at.saturating_sub(1));
        }
        let seq = self.seq.saturating_add(1);
        let e = self.epoch_mut(old).expect("just added");
        let switch = Switch {
            by: new.to_string(),
            at,
        };
        if e.superseded.as_ref() == Some(&switch) {
            return false;
        }
        if e.last_offset >= at {
            e.add_fork(at, seq);
        }
        e.superseded = Some(switch);
        self.bump();
        true
    }

    /// Folds in what the master reports about itself. Returns whether anything changed.
    pub fn observe_master(&mut self, v: &MasterView) -> bool {
        let mut changed = self.see(&v.replid, v.offset);
        if v.replid2 != NO_REPLID && v.second_offset > 0 {
            changed |= self.supersede(&v.replid2, &v.replid, v.second_offset as u64);
        }
        changed
    }

    /// Whether the master's id is a brand-new lineage as far as the replicas this link fed are
    /// concerned: none of their ids is related to it, and it has no previous id they know.
    /// (A master that never fed a replica through this link is never "unrelated": Redis itself
    /// takes a fresh id when its first replica attaches.)
    pub fn is_unrelated(&self, v: &MasterView) -> bool {
        let fed: Vec<&str> = self.replicas.values().map(|r| r.replid.as_str()).collect();
        !fed.is_empty()
            && fed.iter().all(|id| {
                !self.same_lineage(id, &v.replid)
                    && (v.replid2 == NO_REPLID || !self.same_lineage(id, &v.replid2))
            })
    }

    /// Notes that `replid` reached at least `offset`, as relayed (never a fork: deliveries and
    /// handshake replies may arrive after a newer view of the master).
    pub fn extend(&mut self, replid: &str, offset: u64) {
        match self.epoch_mut(replid) {
            Some(e) => e.last_offset = e.last_offset.max(offset),
            None => {
                self.see(replid, offset);
            }
        }
    }

    /// Records what a replica was delivered. `open` says a session is still delivering.
    pub fn deliver(&mut self, replica: &str, replid: &str, offset: u64, open: bool) {
        self.extend(replid, offset);
        let seq = self.bump();
        self.replicas.insert(
            replica.to_string(),
            ReplicaRecord {
                replid: replid.to_string(),
                offset,
                seq,
                updated_unix: now_unix(),
                open,
                peer: None,
            },
        );
    }

    /// Prunes replica records, oldest first (by last update), until at most `max` are left in
    /// each book; returns the identities pruned with the records they had.
    pub fn prune_replicas(&mut self, max: usize) -> Vec<(String, Pruned)> {
        let mut out = Vec::new();
        if self.replicas.len() > max {
            let mut by_age: Vec<(u64, u64, String)> = self
                .replicas
                .iter()
                .map(|(k, r)| (r.updated_unix, r.seq, k.clone()))
                .collect();
            by_age.sort();
            let excess = self.replicas.len() - max;
            for (_, _, k) in by_age.into_iter().take(excess) {
                if let Some(r) = self.replicas.remove(&k) {
                    out.push((k, Pruned::Redis(r)));
                }
            }
        }
        let kv = &mut self.kvrocks.replicas;
        if kv.len() > max {
            let mut by_age: Vec<(u64, String)> = kv
                .iter()
                .map(|(k, r)| (r.updated_unix, k.clone()))
                .collect();
            by_age.sort();
            let excess = kv.len() - max;
            for (_, k) in by_age.into_iter().take(excess) {
                if let Some(r) = kv.remove(&k) {
                    out.push((k, Pruned::Kvrocks(r)));
                }
            }
        }
        out
    }

    /// The epoch of `replid` followed by the epochs it handed over to, in order.
    pub fn chain(&self, replid: &str) -> Vec<&Epoch> {
        let mut out: Vec<&Epoch> = Vec::new();
        let mut cur = self.epoch(replid);
        while let Some(e) = cur {
            if out.iter().any(|o| o.replid == e.replid) {
                break;
            }
            out.push(e);
            cur = e.superseded.as_ref().and_then(|s| self.epoch(&s.by));
        }
        out
    }

    /// Whether `a` and `b` are the same id or one handed over to the other, directly or through
    /// a chain of switches: offsets are then comparable across them.
    pub fn same_lineage(&self, a: &str, b: &str) -> bool {
        let reaches =
            |from: &str, to: &str| from == to || self.chain(from).iter().any(|e| e.replid == to);
        reaches(a, b) || reaches(b, a)
    }
}

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const C: &str = "cccccccccccccccccccccccccccccccccccccccc";

    #[test]
    fn a_ledger_at_the_end_of_its_numbers_takes_updates() {
        // A loaded file may hold any number (found by the ledger fuzz target:
        // fuzz/corpus/ledger/crash-*): the change counter and the next offset overflowed.
        let mut l = LedgerData::new();
        l.see(A, 100);
        l.seq = u64::MAX;
        assert!(l.see(A, 50), "a fork");
        assert_eq!(l.seq, u64::MAX);
        l.epochs[0].last_offset = u64::MAX;
        assert!(l.supersede(A, B, 1000));
        let forks: Vec<u64> = l.epochs[0].forks.iter().map(|f| f.at).collect();
        assert_eq!(forks, [51, 1000]);
        assert_eq!(l.seq, u64::MAX);
    }

    fn view(replid: &str, replid2: &str, second: i64, offset: u64) -> MasterView {
        MasterView {
            replid: replid.into(),
            replid2: replid2.into(),
            second_offset: second,
            offset,
            empty: false,
        }
    }

    #[test]
    fn promotion_supersedes_without_fork() {
        let mut l = LedgerData::new();
        l.observe_master(&view(A, NO_REPLID, -1, 100));
        l.observe_master(&view(B, A, 101, 150));
        let a = l.epoch(A).unwrap();
        assert_eq!(
            a.superseded,
            Some(Switch {
                by: B.into(),
                at: 101
            })
        );
        assert_eq!(a.first_fork(), None);
        assert!(l.same_lineage(A, B));
        assert!(!l.same_lineage(A, C));
    }

    #[test]
    fn restart_from_an_older_rdb_is_a_fork() {
        let mut l = LedgerData::new();
        l.observe_master(&view(A, NO_REPLID, -1, 500));
        // Restarted from an RDB taken at offset 300: new id, replid2 = A from 301.
        l.observe_master(&view(C, A, 301, 300));
        let a = l.epoch(A).unwrap();
        assert_eq!(a.first_fork(), Some(301));
        assert_eq!(a.superseded.as_ref().unwrap().at, 301);
    }

    #[test]
    fn same_id_at_a_lower_offset_is_a_fork() {
        let mut l = LedgerData::new();
        l.see(A, 500);
        l.see(A, 200);
        assert_eq!(l.epoch(A).unwrap().first_fork(), Some(201));
    }

    #[test]
    fn unrelated_lineage_is_recognised() {
        let mut l = LedgerData::new();
        assert!(
            !l.is_unrelated(&view(C, NO_REPLID, -1, 0)),
            "no knowledge is not unrelated"
        );
        l.see(A, 10);
        assert!(
            !l.is_unrelated(&view(C, NO_REPLID, -1, 0)),
            "an id no replica was fed from does not count"
        );
        l.deliver("r:1", A, 10, false);
        assert!(l.is_unrelated(&view(C, NO_REPLID, -1, 0)));
        assert!(!l.is_unrelated(&view(C, A, 11, 0)));
        assert!(!l.is_unrelated(&view(A, NO_REPLID, -1, 10)));
    }

    #[test]
    fn replica_records_beyond_the_cap_are_pruned_oldest_first() {
        let mut l = LedgerData::new();
        for i in 0..5u64 {
            l.deliver(&format!("10.0.0.{i}:6379"), A, 10 + i, false);
            l.replicas
                .get_mut(&format!("10.0.0.{i}:6379"))
                .unwrap()
                .updated_unix = 100 - i;
        }
        // Same age: the one written first (lower sequence) goes first.
        l.replicas.get_mut("10.0.0.0:6379").unwrap().updated_unix = 96;
        let pruned: Vec<String> = l.prune_replicas(3).into_iter().map(|(k, _)| k).collect();
        assert_eq!(pruned, ["10.0.0.0:6379", "10.0.0.4:6379"]);
        assert_eq!(l.replicas.len(), 3);
        assert!(l.prune_replicas(3).is_empty());

        for i in 0..5u64 {
            l.kvrocks
                .update(&format!("10.0.1.{i}:6666"), |r| r.next_seq = i);
            l.kvrocks
                .replicas
                .get_mut(&format!("10.0.1.{i}:6666"))
                .unwrap()
                .updated_unix = i;
        }
        let pruned = l.prune_replicas(3);
        let keys: Vec<&str> = pruned.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["10.0.1.0:6666", "10.0.1.1:6666"]);
        assert_eq!(pruned[1].1.updated_unix(), 1);
        assert_eq!(l.kvrocks.replicas.len(), 3);
        assert_eq!(l.replicas.len(), 3);
    }

    #[test]
    fn records_without_a_peer_still_load_and_new_ones_keep_it() {
        let old = r#"{"version":1,"seq":3,"epochs":[],"replicas":{"127.0.0.1:6380":{"replid":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","offset":42,"seq":3,"updated_unix":1,"open":false}},"kvrocks":{"master_replids":[],"replicas":{"127.0.0.1:6666":{"next_seq":5,"replid":null,"gap":null,"full_sync_pending":false,"updated_unix":1,"open":false}}}}"#;
        let mut l: LedgerData = serde_json::from_str(old).unwrap();
        assert_eq!(l.replicas["127.0.0.1:6380"].peer, None);
        assert_eq!(l.kvrocks.replicas["127.0.0.1:6666"].peer, None);
        l.replicas.get_mut("127.0.0.1:6380").unwrap().peer = Some("127.0.0.1:50000".into());
        let text = serde_json::to_string(&l).unwrap();
        assert!(text.contains(r#""peer":"127.0.0.1:50000""#), "{text}");
        let back: LedgerData = serde_json::from_str(&text).unwrap();
        assert_eq!(back, l);
    }
}
