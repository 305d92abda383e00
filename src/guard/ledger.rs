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
    /// Not a delivery: the group saw this node serve `replid` as its master (up to `offset`
    /// when last read). Its data under that id is the id's own history, to wherever it
    /// reached, so it may resume under it as a replica of the node that took over.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub source: bool,
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
    /// The group this ledger belongs to, when its links share it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Bumped on every change; orders forks against deliveries.
    pub seq: u64,
    pub epochs: Vec<Epoch>,
    /// Keyed by replica identity: `ip:port` (announced or peer IP, and listening port).
    pub replicas: BTreeMap<String, ReplicaRecord>,
    /// The books of a Kvrocks link (sequences instead of offsets).
    #[serde(default, skip_serializing_if = "KvBooks::is_empty")]
    pub kvrocks: KvBooks,
}

/// The key of a Kvrocks record kept per link in a group: `<link>/<identity>` (link names hold no
/// `/`: `config` allows letters, digits, `.`, `_` and `-`).
pub fn link_key(link: &str, identity: &str) -> String {
    format!("{link}/{identity}")
}

/// The link and identity of a key made by [`link_key`].
pub fn split_link_key(key: &str) -> Option<(&str, &str)> {
    key.split_once('/')
}

/// Seconds two readings of a Kvrocks node's start time (`now - uptime_in_seconds`, both whole
/// seconds) may differ by without a restart.
const START_JITTER_SECS: u64 = 2;

/// Most replication ids a Kvrocks link remembers having seen in its master's batches.
const KV_REPLIDS_KEPT: usize = 64;

/// What a Kvrocks link knows: the ids its master's batches carried, and per replica the
/// sequence it was delivered up to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvBooks {
    /// Ids seen in the trailing `r` record of batches relayed from the master, oldest first.
    pub master_replids: Vec<String>,
    /// Keyed like [`LedgerData::replicas`]; in a group, `<link>/<replica>`.
    pub replicas: BTreeMap<String, KvRecord>,
    /// The node behind each link, as the link last read it, by link name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub nodes: BTreeMap<String, KvNode>,
}

/// The node behind a Kvrocks link, from its `INFO` ([`KvNodeView`]) over time.
///
/// A node's sequences are its own: the same sequence on two nodes holds the same batch only up
/// to where one was fed by the other. An epoch is one stretch of the node being master without
/// a restart or a drop of its latest sequence; the records of the sessions its link served in
/// one epoch describe one history. A replica promoted to master keeps, as its `switch`, where
/// its history stops being the one it was fed: one past the latest sequence its link last read
/// it holding as a replica, while it streamed from another link of the group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct KvNode {
    /// Counts the node's stretches as master (0: never seen as master).
    pub epoch: u64,
    pub master: bool,
    pub latest: u64,
    pub process_id: u64,
    /// When the node's process started (`uptime_in_seconds` before the reading that first saw
    /// it).
    pub started_unix: u64,
    /// Last read as a replica holding sequences up to `held`, fed by link `from`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fed: Option<KvFed>,
    /// Promoted from such a replica (see [`KvNode`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switch: Option<KvSwitch>,
    pub updated_unix: u64,
}

/// A replica node read holding sequences up to `held` while link `from` streamed to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvFed {
    pub from: String,
    pub held: u64,
}

/// A node promoted after it was read as a replica fed by link `from`: its history is that
/// link's node's (of the epoch the feeding session's record names) below sequence `next`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvSwitch {
    pub from: String,
    pub next: u64,
}

/// A Kvrocks node as its own `INFO` shows it (read by the link in front of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvNodeView {
    /// `role:master`; else a replica.
    pub master: bool,
    /// Its latest sequence (`master_repl_offset`, or `slave_repl_offset` on a replica).
    pub latest: u64,
    /// `process_id` and `uptime_in_seconds`: a restart shows as a change of the one or a
    /// drop of the other.
    pub process_id: u64,
    pub uptime_secs: u64,
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
    /// The epoch of the link's node (see [`KvNode`]) when the session that writes it began;
    /// `None` when the node was not known to be master then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// Not a replica: the link's node itself, master in `epoch` and holding its own history
    /// up to `next_seq` when last read.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub source: bool,
    /// The sequence its books began at when they began with a resume (not after a full sync):
    /// below it, it held its own history; from it on, what this link's node sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
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
        self.master_replids.is_empty() && self.replicas.is_empty() && self.nodes.is_empty()
    }

    /// Folds in what link `link` read of its node at `now` (unix seconds); `fed_by`: the other
    /// link of the group streaming to the node at that moment, if any. `true` when the books
    /// changed.
    ///
    /// A restart (another process, another start time, or its latest sequence went back), in
    /// either role, begins a new epoch and withdraws what the link vouched for the node as
    /// master (its `source` records): a node that lost the tail of its WAL holds another
    /// history from there on. A node read as master after being read as a replica begins a new
    /// epoch too, and keeps a switch when it was read fed just before.
    pub fn observe_node(
        &mut self,
        link: &str,
        v: &KvNodeView,
        fed_by: Option<&str>,
        now: u64,
    ) -> bool {
        let prev = self.nodes.get(link).cloned();
        let started = now.saturating_sub(v.uptime_secs);
        let restarted = prev.as_ref().is_none_or(|p| {
            p.process_id != v.process_id
                || p.started_unix.abs_diff(started) > START_JITTER_SECS
                || v.latest < p.latest
        });
        let mut n = prev.clone().unwrap_or_default();
        let mut changed = false;
        if restarted {
            n.epoch = n.epoch.saturating_add(1);
            n.started_unix = started;
            n.switch = None;
            n.fed = None;
            changed |= self.withdraw_sources(link, &[]);
        }
        if v.master {
            if !restarted && !n.master {
                n.epoch = n.epoch.saturating_add(1);
                n.switch = n.fed.as_ref().and_then(|f| {
                    f.held.checked_add(1).map(|next| KvSwitch {
                        from: f.from.clone(),
                        next,
                    })
                });
            }
            n.fed = None;
        } else {
            n.switch = None;
            n.fed = fed_by.map(|from| KvFed {
                from: from.to_string(),
                held: v.latest,
            });
        }
        n.master = v.master;
        n.latest = v.latest;
        n.process_id = v.process_id;
        let node_changed = prev.as_ref().is_none_or(|p| {
            let mut q = n.clone();
            q.updated_unix = p.updated_unix;
            q != *p
        });
        if node_changed {
            n.updated_unix = now;
            self.nodes.insert(link.to_string(), n);
        }
        changed || node_changed
    }

    /// The node behind link `link` was replaced (the link was re-pointed): nothing read of the
    /// old one holds for it. Its epoch ends now (no switch, no `source` records, not master
    /// until read so), and its next reading counts as a restart.
    pub fn node_replaced(&mut self, link: &str) -> bool {
        let withdrawn = self.withdraw_sources(link, &[]);
        let Some(n) = self.nodes.get_mut(link) else {
            return withdrawn;
        };
        n.epoch = n.epoch.saturating_add(1);
        n.master = false;
        n.switch = None;
        n.fed = None;
        n.process_id = 0;
        n.started_unix = 0;
        true
    }

    /// Removes link `link`'s `source` records, except those of `keep` (identities).
    fn withdraw_sources(&mut self, link: &str, keep: &[String]) -> bool {
        let before = self.replicas.len();
        self.replicas.retain(|k, r| {
            !(r.source
                && split_link_key(k)
                    .is_some_and(|(l, id)| l == link && !keep.iter().any(|i| i == id)))
        });
        self.replicas.len() != before
    }

    /// The epoch of link `link`'s node while it is known to be master.
    pub fn master_epoch(&self, link: &str) -> Option<u64> {
        self.nodes
            .get(link)
            .filter(|n| n.master && n.epoch > 0)
            .map(|n| n.epoch)
    }

    /// Records that the node behind link `link`, known by `identities`, is master in `epoch`,
    /// holding its own history up to `latest` (a `source` record per identity, under
    /// `<link>/<identity>`; those of identities it no longer has are withdrawn). `true` when
    /// the books changed.
    pub fn vouch_sources(
        &mut self,
        link: &str,
        identities: &[String],
        epoch: u64,
        latest: u64,
    ) -> bool {
        let mut changed = self.withdraw_sources(link, identities);
        for id in identities {
            changed |= self.vouch_source(&link_key(link, id), epoch, latest);
        }
        changed
    }

    fn vouch_source(&mut self, key: &str, epoch: u64, latest: u64) -> bool {
        let next_seq = latest.saturating_add(1);
        let same = self.replicas.get(key).is_some_and(|r| {
            r.source && r.epoch == Some(epoch) && r.next_seq == next_seq && !r.open
        });
        if !same {
            self.update(key, |r| {
                *r = KvRecord {
                    next_seq,
                    epoch: Some(epoch),
                    source: true,
                    ..KvRecord::default()
                }
            });
        }
        !same
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
        let resumed = self
            .replicas
            .get(replica)
            .is_none_or(|r| !r.full_sync_pending);
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
                epoch: None,
                source: false,
                since: resumed.then_some(seq),
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

/// A master serving a superseded lineage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StaleMaster {
    /// The id it serves (or served before a restart) that handed over to another.
    pub replid: String,
    /// The newest id of the lineage that took over.
    pub newer: String,
    /// Where the hand-over happened.
    pub switch: u64,
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
    /// The node reports itself a replica (`role:slave`): its ids and offset are its master's,
    /// as far as it has them.
    pub replica: bool,
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
        if e.superseded.as_ref().is_some_and(|s| s.by != switch.by) {
            // Another id already took over from `old`: a second claim is a stale or split
            // branch (an old master restarted from its data), not the lineage's continuation.
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
        let fed = self.replicas.values().filter(|r| !r.source);
        self.unrelated_to_all(v, fed)
    }

    /// [`Self::is_unrelated`] for the node known as `node` (its identities as a replica) in a
    /// group's ledger, whose links may front nodes of several lineages (the shards of a Redis
    /// Cluster): only the replicas fed on the lineage the group last saw the node on count. A
    /// node the group never saw did not come back, and another shard's replicas say nothing
    /// about it.
    pub fn is_unrelated_node(&self, v: &MasterView, node: &[String]) -> bool {
        let Some(last) = node
            .iter()
            .filter_map(|n| self.replicas.get(n))
            .max_by_key(|r| r.seq)
        else {
            return false;
        };
        let fed = self
            .replicas
            .values()
            .filter(|r| !r.source && self.same_lineage(&r.replid, &last.replid));
        self.unrelated_to_all(v, fed)
    }

    /// Whether there are `fed` records and none of their ids is related to the master's id or
    /// to its previous one.
    fn unrelated_to_all<'a>(
        &self,
        v: &MasterView,
        fed: impl Iterator<Item = &'a ReplicaRecord>,
    ) -> bool {
        let mut any = false;
        for r in fed {
            any = true;
            if self.same_lineage(&r.replid, &v.replid)
                || (v.replid2 != NO_REPLID && self.same_lineage(&r.replid, &v.replid2))
            {
                return false;
            }
        }
        any
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
                source: false,
            },
        );
    }

    /// Notes that the node known as `node` (its identity as a replica) serves `replid` as
    /// master, at `offset` now; `false` when the record already said so.
    pub fn vouch_source(&mut self, node: &str, replid: &str, offset: u64) -> bool {
        let same = self
            .replicas
            .get(node)
            .is_some_and(|r| r.source && r.replid == replid && r.offset == offset);
        if same {
            return false;
        }
        let seq = self.bump();
        self.replicas.insert(
            node.to_string(),
            ReplicaRecord {
                replid: replid.to_string(),
                offset,
                seq,
                updated_unix: now_unix(),
                open: false,
                peer: None,
                source: true,
            },
        );
        true
    }

    /// Whether a master showing `v` serves a lineage this ledger knows was handed over to
    /// another: its id (or, restarted, its previous id) switched to a different id. Then
    /// replicas filled from the newer lineage would be rolled back by a sync from it.
    pub fn stale_master(&self, v: &MasterView) -> Option<StaleMaster> {
        let handed = |id: &str, continued_by: Option<&str>| {
            let e = self.epoch(id)?;
            let sw = e.superseded.as_ref()?;
            if Some(sw.by.as_str()) == continued_by {
                return None;
            }
            let newer = self.chain(id).last().map(|e| e.replid.clone())?;
            Some(StaleMaster {
                replid: id.to_string(),
                newer,
                switch: sw.at,
            })
        };
        handed(&v.replid, None).or_else(|| {
            (v.replid2 != NO_REPLID && v.second_offset > 0)
                .then(|| handed(&v.replid2, Some(&v.replid)))
                .flatten()
        })
    }

    /// Whether `rec` holds history past `stale`'s switch: it was delivered an id that took
    /// over from the stale master's (directly or further down the chain).
    pub fn past_stale(&self, rec: &ReplicaRecord, stale: &StaleMaster) -> bool {
        self.chain(&stale.replid)
            .iter()
            .skip(1)
            .any(|e| e.replid == rec.replid)
    }

    /// Folds in another ledger of the same nodes (a link's own, as the link joins a group):
    /// ids merged (offsets widened; a switch either side knew kept, this one's first), and of
    /// each replica the record updated last. Forks from either side are dated after every
    /// record, since the two ledgers' sequence numbers do not compare: a record then vouches
    /// past a fork only once it is written again.
    pub fn absorb(&mut self, other: LedgerData) {
        let seq = self.seq.max(other.seq).saturating_add(1);
        for e in other.epochs {
            match self.epoch_mut(&e.replid) {
                None => self.epochs.push(e),
                Some(mine) => {
                    mine.first_offset = mine.first_offset.min(e.first_offset);
                    mine.last_offset = mine.last_offset.max(e.last_offset);
                    if mine.superseded.is_none() {
                        mine.superseded = e.superseded;
                    }
                    for f in e.forks {
                        mine.add_fork(f.at, seq);
                    }
                }
            }
        }
        for e in &mut self.epochs {
            for f in &mut e.forks {
                f.seq = seq;
            }
        }
        self.seq = seq;
        for (k, r) in other.replicas {
            let newer = self
                .replicas
                .get(&k)
                .is_none_or(|mine| r.updated_unix > mine.updated_unix);
            if newer {
                self.replicas.insert(k, r);
            }
        }
        for id in other.kvrocks.master_replids {
            self.kvrocks.saw_master_replid(&id);
        }
        for (k, r) in other.kvrocks.replicas {
            let newer = self
                .kvrocks
                .replicas
                .get(&k)
                .is_none_or(|mine| r.updated_unix > mine.updated_unix);
            if newer {
                self.kvrocks.replicas.insert(k, r);
            }
        }
        for (k, n) in other.kvrocks.nodes {
            let newer = self
                .kvrocks
                .nodes
                .get(&k)
                .is_none_or(|mine| n.updated_unix > mine.updated_unix);
            if newer {
                self.kvrocks.nodes.insert(k, n);
            }
        }
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
            replica: false,
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

    #[test]
    fn a_second_claim_on_a_handed_over_id_is_a_stale_branch() {
        let mut l = LedgerData::new();
        l.observe_master(&view(A, NO_REPLID, -1, 500));
        // B promoted at 501; then the old master restarts from its data: new id C, A as its
        // previous id up to 451.
        l.observe_master(&view(B, A, 501, 600));
        let restarted = view(C, A, 451, 450);
        let s = l.stale_master(&restarted).expect("stale");
        assert_eq!((s.replid.as_str(), s.newer.as_str(), s.switch), (A, B, 501));
        assert!(!l.supersede(A, C, 451), "the first successor stays");
        assert_eq!(l.epoch(A).unwrap().superseded.as_ref().unwrap().by, B);
        // The old master that never restarted, still serving A.
        let s = l.stale_master(&view(A, NO_REPLID, -1, 500)).unwrap();
        assert_eq!(s.newer, B);
        // The promoted node and its successors are not stale.
        assert_eq!(l.stale_master(&view(B, A, 501, 700)), None);
        l.observe_master(&view(C, B, 701, 800));
        assert_eq!(l.stale_master(&view(B, A, 501, 700)).unwrap().newer, C);
        assert_eq!(l.stale_master(&view(C, B, 701, 900)), None);
        // Who is past the stale master: records on ids that took over from its id.
        let rec = |replid: &str| ReplicaRecord {
            replid: replid.into(),
            offset: 1,
            seq: 1,
            updated_unix: 0,
            open: false,
            peer: None,
            source: false,
        };
        let s = l.stale_master(&view(A, NO_REPLID, -1, 500)).unwrap();
        assert!(l.past_stale(&rec(B), &s) && l.past_stale(&rec(C), &s));
        assert!(!l.past_stale(&rec(A), &s));
    }

    #[test]
    fn a_master_node_is_vouched_for_and_never_counts_as_fed() {
        let mut l = LedgerData::new();
        assert!(l.vouch_source("127.0.0.1:7001", A, 100));
        assert!(!l.vouch_source("127.0.0.1:7001", A, 100));
        assert!(l.vouch_source("127.0.0.1:7001", A, 120));
        assert!(l.replicas["127.0.0.1:7001"].source);
        // A master that restarts empty fed no replica through the link: not "unrelated".
        let mut empty = view(B, NO_REPLID, -1, 0);
        empty.empty = true;
        assert!(!l.is_unrelated(&empty));
        l.deliver("127.0.0.1:7002", A, 100, false);
        assert!(l.is_unrelated(&empty));
        assert!(!l.replicas["127.0.0.1:7002"].source);
    }

    #[test]
    fn in_a_group_only_the_nodes_own_lineage_makes_an_empty_master_unrelated() {
        let mut l = LedgerData::new();
        let (m1, m2, r1) = ("127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7004");
        let node = |n: &str| vec![n.to_string()];
        let empty = |id: &str| {
            let mut v = view(id, NO_REPLID, -1, 0);
            v.empty = true;
            v
        };
        // Two shards: m1 serves A and fed r1; m2, never seen yet, is an empty master with B.
        l.vouch_source(m1, A, 100);
        l.deliver(r1, A, 100, false);
        assert!(
            l.is_unrelated(&empty(B)),
            "a link's own ledger counts every replica"
        );
        assert!(
            !l.is_unrelated_node(&empty(B), &node(m2)),
            "m2 never served A"
        );
        l.vouch_source(m2, B, 0);
        assert!(!l.is_unrelated_node(&empty(B), &node(m2)));
        // m1 comes back empty under a new id: r1, fed on m1's lineage, would be wiped.
        assert!(l.is_unrelated_node(&empty(C), &node(m1)));
        // m2 coming back empty again under a new id fed nobody.
        assert!(!l.is_unrelated_node(&empty(C), &node(m2)));
    }

    #[test]
    fn a_links_own_ledger_joins_a_groups() {
        let mut group = LedgerData::new();
        group.observe_master(&view(A, NO_REPLID, -1, 500));
        group.deliver("r1", A, 400, false);
        group.replicas.get_mut("r1").unwrap().updated_unix = 10;
        let mut own = LedgerData::new();
        own.observe_master(&view(A, NO_REPLID, -1, 300));
        own.see(A, 200); // a fork at 201, in the link's own numbering
        own.observe_master(&view(B, A, 301, 350));
        own.deliver("r1", A, 100, false);
        own.replicas.get_mut("r1").unwrap().updated_unix = 5;
        own.deliver("r2", B, 350, false);
        own.kvrocks.saw_master_replid(C);
        group.absorb(own);
        let a = group.epoch(A).unwrap();
        assert_eq!((a.first_offset, a.last_offset), (300, 500));
        assert_eq!(a.superseded.as_ref().unwrap().by, B);
        assert!(
            a.forks.iter().all(|f| f.seq == group.seq),
            "forks dated after every record"
        );
        assert_eq!(group.replicas["r1"].offset, 400, "the newer record wins");
        assert_eq!(group.replicas["r2"].replid, B);
        assert!(group.kvrocks.knows_master_replid(C));
    }

    fn node(master: bool, latest: u64, pid: u64, uptime: u64) -> KvNodeView {
        KvNodeView {
            master,
            latest,
            process_id: pid,
            uptime_secs: uptime,
        }
    }

    /// A reading at `now` of a node started at `started`.
    fn read(
        b: &mut KvBooks,
        fed: Option<&str>,
        master: bool,
        latest: u64,
        pid: u64,
        started: u64,
        now: u64,
    ) -> bool {
        b.observe_node("n1", &node(master, latest, pid, now - started), fed, now)
    }

    #[test]
    fn a_kvrocks_node_promoted_from_a_fed_replica_keeps_its_switch() {
        let mut b = KvBooks::default();
        assert_eq!(b.master_epoch("n1"), None);
        assert!(read(&mut b, Some("n0"), false, 90, 7, 1000, 1010));
        assert!(read(&mut b, Some("n0"), false, 100, 7, 1000, 1011));
        assert_eq!(b.master_epoch("n1"), None);
        // Promoted: it holds n0's node's history up to 100 at least.
        assert!(read(&mut b, None, true, 104, 7, 1000, 1012));
        let n = &b.nodes["n1"];
        assert_eq!((n.epoch, n.master), (2, true));
        assert_eq!(
            n.switch,
            Some(KvSwitch {
                from: "n0".into(),
                next: 101
            })
        );
        assert_eq!(b.master_epoch("n1"), Some(2));
        // Read again as master, with its start time off by the readings' rounding: the same
        // epoch and switch, and an idle node changes nothing.
        read(&mut b, None, true, 150, 7, 1001, 1013);
        assert!(!read(&mut b, None, true, 150, 7, 999, 1014));
        assert_eq!(b.nodes["n1"].epoch, 2);
        assert!(b.nodes["n1"].switch.is_some());
        // Restarted (another process, another start time, or its sequence back): a new epoch,
        // and no switch.
        for (i, (latest, pid, started)) in [(150, 8, 1000), (150, 8, 1100), (149, 8, 1100)]
            .into_iter()
            .enumerate()
        {
            read(&mut b, None, true, latest, pid, started, 1200);
            assert_eq!(b.nodes["n1"].epoch, 3 + i as u64);
            assert_eq!(b.nodes["n1"].switch, None);
        }
    }

    #[test]
    fn a_kvrocks_node_promoted_without_a_fed_reading_has_no_switch() {
        let mut b = KvBooks::default();
        // First read as master: an epoch, no switch.
        read(&mut b, None, true, 10, 7, 1000, 1010);
        assert_eq!(b.master_epoch("n1"), Some(1));
        assert_eq!(b.nodes["n1"].switch, None);
        // Demoted, read while nothing fed it, promoted again.
        read(&mut b, None, false, 10, 7, 1000, 1011);
        assert_eq!(b.master_epoch("n1"), None);
        read(&mut b, None, true, 12, 7, 1000, 1012);
        assert_eq!(b.nodes["n1"].epoch, 2);
        assert_eq!(b.nodes["n1"].switch, None);
        // Fed, then restarted before its promotion was read.
        read(&mut b, Some("n0"), false, 20, 7, 1000, 1013);
        read(&mut b, None, true, 25, 9, 1014, 1015);
        assert_eq!(b.nodes["n1"].switch, None);
    }

    #[test]
    fn a_kvrocks_node_restarted_in_either_role_is_no_longer_vouched_for() {
        let ids = ["127.0.0.1:7001".to_string(), "127.0.0.1:8001".to_string()];
        let mut b = KvBooks::default();
        read(&mut b, None, true, 100, 7, 1000, 1010);
        assert!(b.vouch_sources("n1", &ids, 1, 100));
        assert!(!b.vouch_sources("n1", &ids, 1, 100));
        let r = &b.replicas["n1/127.0.0.1:7001"];
        assert!(r.source && r.epoch == Some(1) && r.next_seq == 101);
        // An identity the node no longer has is withdrawn.
        assert!(b.vouch_sources("n1", &ids[..1], 1, 100));
        assert!(!b.replicas.contains_key("n1/127.0.0.1:8001"));
        // Demoted: its records stay while it is the same process.
        read(&mut b, Some("n2"), false, 100, 7, 1000, 1011);
        assert!(b.replicas.contains_key("n1/127.0.0.1:7001"));
        // Restarted as a replica (a power loss may have cut its WAL): withdrawn.
        assert!(read(&mut b, Some("n2"), false, 97, 7, 1011, 1012));
        assert!(!b.replicas.contains_key("n1/127.0.0.1:7001"));
        assert_eq!(b.nodes["n1"].epoch, 2);
        // The link re-pointed at another node: its next reading is a restart.
        read(&mut b, None, true, 120, 7, 1011, 1013);
        assert_eq!(b.nodes["n1"].epoch, 3);
        assert!(b.vouch_sources("n1", &ids, 3, 120));
        assert!(b.node_replaced("n1"));
        assert_eq!(b.master_epoch("n1"), None);
        assert!(!b.replicas.keys().any(|k| k.starts_with("n1/")));
        read(&mut b, None, true, 120, 7, 1011, 1014);
        assert_eq!(b.nodes["n1"].epoch, 5);
        assert_eq!(b.nodes["n1"].switch, None);
    }
}
