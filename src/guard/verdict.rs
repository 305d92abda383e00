//! The lineage verdict: a pure function from what the ledger knows and what a replica asks for
//! to Pass, ForceFull or Hold, with a reason that can be read out loud.
//!
//! PSYNC2 offsets: a replica at offset `o` asks `PSYNC <id> <o+1>`; the requested offset is the
//! first byte it wants. A request is consistent when every byte before it came from the same
//! history the master would continue, which replguard can vouch for only from its own record
//! of what it delivered.
//!
//! Kvrocks sequences: a replica that applied batches up to sequence `s` asks `PSYNC [id] <s+1>`;
//! the master accepts any sequence that is its latest plus one or the start of a batch it still
//! has, without looking at what the replica holds. replguard checks the request against the
//! sequence it delivered up to (see [`judge`] for the rules).

pub use crate::config::UnknownReplica;
use crate::guard::ledger::{KvRecord, LedgerData, ReplicaRecord};
use serde::Serialize;
use std::fmt;

/// The request being judged, as the replica sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'a> {
    /// Redis / Valkey `PSYNC <replid> <offset>`.
    Psync2 {
        replid: &'a str,
        /// First offset wanted; -1 with `?` for a full sync.
        offset: i64,
    },
    /// Kvrocks `PSYNC [replid] <seq>`.
    Kvrocks {
        replid: Option<&'a str>,
        /// First sequence wanted.
        seq: u64,
    },
}

/// Everything the verdict may look at.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub ledger: &'a LedgerData,
    /// The ledger's record of this replica, if any.
    pub replica: Option<&'a ReplicaRecord>,
    /// The record was written by a session that was still open when replguard last stopped
    /// without a clean shutdown: its offset is a lower bound only.
    pub unclean_stop: bool,
    /// The master now shows a brand-new, empty lineage (this id).
    pub empty_master: Option<&'a str>,
    /// The operator allowed replicas to sync from an empty master.
    pub allow_empty_master: bool,
    pub unknown_replica: UnknownReplica,
    /// Kvrocks: the ledger's record of this replica, if any.
    pub kv_replica: Option<&'a KvRecord>,
    /// Kvrocks: a complete full sync (`_fetch_file`) from this replica's address passed through
    /// the link since it was refused a resume.
    pub kv_full_sync_seen: bool,
    /// Kvrocks: the last sequence of the checkpoint that full sync shipped, when its files
    /// told it.
    pub kv_checkpoint_seq: Option<u64>,
}

/// Why a request was not passed (or, for `UnknownReplicaPassed`, why it was).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Reason {
    /// The id was never seen on this link.
    UnknownId { replid: String },
    /// The id handed over to another at `switch`; the replica asks for more of it.
    SupersededBeyondSwitch {
        replid: String,
        by: String,
        switch: u64,
        requested: u64,
    },
    /// The id's history diverged at `fork`; the replica asks for a point beyond it.
    BeyondFork {
        replid: String,
        fork: u64,
        requested: u64,
    },
    /// The replica claims data that never came through this link.
    BeyondDelivered {
        replid: String,
        delivered: u64,
        requested: u64,
    },
    /// The replica's record was being written when replguard stopped uncleanly, and it asks
    /// beyond what was recorded.
    UncleanStop {
        replid: String,
        recorded: u64,
        requested: u64,
    },
    /// The replica was never seen on this link (policy `unknown_replica: full`).
    UnknownReplica { replid: String },
    /// The replica's id is not the history this link delivered to it.
    NotDeliveredHistory { replid: String, delivered: String },
    /// The master restarted empty with a new lineage; syncing would wipe the replica.
    EmptyMaster { master_replid: String },
    /// Kvrocks: a replica with no history on this link presents an id the master's batches
    /// never carried through it.
    KvForeignId { replid: String, requested: u64 },
    /// Kvrocks: the replica asks for a sequence beyond the next one it was delivered.
    KvBeyondDelivered { next: u64, requested: u64 },
    /// Kvrocks: the replica presents an id the master's batches carried through this link, but
    /// not the one its batch at `seq` carried: it holds another part of the master's history.
    KvReplidChanged {
        replid: String,
        seq: u64,
        carried: Option<String>,
    },
    /// Kvrocks: the replica presents an id of its own for `seq`, the sequence before the one it
    /// asks for, where this link delivered it a master batch: that sequence is its own write.
    KvLocalWrite {
        replid: String,
        seq: u64,
        carried: Option<String>,
    },
    /// Kvrocks: batches were missing from the stream delivered to the replica.
    KvAfterGap { expected: u64, got: u64 },
    /// Kvrocks: replguard stopped uncleanly while delivering, and the replica asks beyond what
    /// was recorded.
    KvUncleanStop { recorded_next: u64, requested: u64 },
    /// Kvrocks: the replica was told to full-sync but no full sync of it passed the link.
    KvFullSyncNotSeen { requested: u64 },
    /// Kvrocks: after its full sync the replica asks past the checkpoint it was shipped.
    KvBeyondCheckpoint { checkpoint: u64, requested: u64 },
}

impl Reason {
    /// A short stable name, for metrics labels.
    pub fn code(&self) -> &'static str {
        match self {
            Reason::UnknownId { .. } => "unknown_id",
            Reason::SupersededBeyondSwitch { .. } => "superseded_beyond_switch",
            Reason::BeyondFork { .. } => "beyond_fork",
            Reason::BeyondDelivered { .. } => "beyond_delivered",
            Reason::UncleanStop { .. } => "unclean_stop",
            Reason::UnknownReplica { .. } => "unknown_replica",
            Reason::NotDeliveredHistory { .. } => "not_delivered_history",
            Reason::EmptyMaster { .. } => "empty_master",
            Reason::KvForeignId { .. } => "unknown_id",
            Reason::KvBeyondDelivered { .. } => "beyond_delivered",
            Reason::KvReplidChanged { .. } => "replid_changed",
            Reason::KvLocalWrite { .. } => "local_write",
            Reason::KvAfterGap { .. } => "after_gap",
            Reason::KvUncleanStop { .. } => "unclean_stop",
            Reason::KvFullSyncNotSeen { .. } => "full_sync_not_seen",
            Reason::KvBeyondCheckpoint { .. } => "beyond_checkpoint",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::UnknownId { replid } => {
                write!(f, "replication id {replid} was never seen on this link")
            }
            Reason::SupersededBeyondSwitch { replid, by, switch, requested } => write!(
                f,
                "id {replid} was superseded by {by} at offset {switch}; offset {requested} is beyond the switch point"
            ),
            Reason::BeyondFork { replid, fork, requested } => write!(
                f,
                "the history of id {replid} forked at offset {fork} (the master went back to an earlier point); offset {requested} is beyond the fork"
            ),
            Reason::BeyondDelivered { replid, delivered, requested } => write!(
                f,
                "this link delivered id {replid} to this replica up to offset {delivered}; it asks to resume at {requested}, claiming data that never came through the link"
            ),
            Reason::UncleanStop { replid, recorded, requested } => write!(
                f,
                "replguard stopped uncleanly while delivering id {replid} to this replica; it can vouch for offset {recorded} only, and the replica asks to resume at {requested}"
            ),
            Reason::UnknownReplica { replid } => write!(
                f,
                "this replica (asking for id {replid}) was never served by this link (unknown_replica: full)"
            ),
            Reason::NotDeliveredHistory { replid, delivered } => write!(
                f,
                "the replica asks for id {replid}, but this link delivered it {delivered}, an unrelated history"
            ),
            Reason::EmptyMaster { master_replid } => write!(
                f,
                "the master came back empty with a new, unrelated replication id {master_replid}; a sync would wipe this replica's data"
            ),
            Reason::KvForeignId { replid, requested } => write!(
                f,
                "this replica has no history on this link and presents replication id {replid}, which no batch from the master carried through it: the id is its own, so it wrote locally and asks for sequence {requested} past the master's batches it never received"
            ),
            Reason::KvBeyondDelivered { next, requested } => write!(
                f,
                "this link delivered this replica batches up to sequence {}; it asks to resume at {requested}, so the master's sequences {next}..={} would never reach it (apache/kvrocks#2214)",
                next.saturating_sub(1),
                requested.saturating_sub(1)
            ),
            Reason::KvReplidChanged { replid, seq, carried } => write!(
                f,
                "the replica presents replication id {replid}, an id of the master's, but the batch this link delivered it at sequence {seq} carried {}: it holds another part of the master's history than this link delivered",
                carried.as_deref().unwrap_or("no id")
            ),
            Reason::KvLocalWrite { replid, seq, carried } => write!(
                f,
                "the replica presents replication id {replid} for sequence {seq}, where this link delivered it a master batch that carried {}: the id is the replica's own, so sequence {seq} is a write of its own and the master's batch there never reached its data (likely cause: use-rsid-psync is yes on the replica and no on the master, or the replica was written to; apache/kvrocks#2214)",
                carried.as_deref().unwrap_or("no id")
            ),
            Reason::KvAfterGap { expected, got } => write!(
                f,
                "the stream this link delivered to this replica skipped sequences {expected}..={}",
                got.saturating_sub(1)
            ),
            Reason::KvUncleanStop { recorded_next, requested } => write!(
                f,
                "replguard stopped uncleanly while delivering to this replica; it can vouch for sequences below {recorded_next} only, and the replica asks to resume at {requested}"
            ),
            Reason::KvBeyondCheckpoint { checkpoint, requested } => write!(
                f,
                "the checkpoint this link shipped the replica in its full sync ends at sequence {checkpoint}; it asks to resume at {requested}, so it wrote locally since and the master's sequences {}..={} would never reach it",
                checkpoint.saturating_add(1),
                requested.saturating_sub(1)
            ),
            Reason::KvFullSyncNotSeen { requested } => write!(
                f,
                "the replica was refused a resume and must full-sync, but no complete full sync from its address passed this link since; it asks to resume at {requested} from data replguard did not see it receive"
            ),
        }
    }
}

/// The decision for one PSYNC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    ForceFull(Reason),
    Hold(Reason),
}

impl Verdict {
    pub fn name(&self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::ForceFull(_) => "force_full",
            Verdict::Hold(_) => "hold",
        }
    }

    pub fn reason(&self) -> Option<&Reason> {
        match self {
            Verdict::Pass => None,
            Verdict::ForceFull(r) | Verdict::Hold(r) => Some(r),
        }
    }
}

/// Judges one PSYNC request.
///
/// Kvrocks rules, in order (`next` is the sequence after the last batch delivered):
/// 1. No record of the replica on this link: asking for sequence 1 or less (it holds nothing)
///    passes; presenting an id no master batch carried through the link is forced full
///    whatever the policy (the id is the replica's own: the 2.7.0 start-up write, whose
///    sequence makes it skip the master's first batches); anything else follows
///    `unknown_replica`.
/// 2. Refused earlier and told to full-sync: forced full until a complete full sync from its
///    address passed the link; then forced full if it asks past the checkpoint's last
///    sequence plus one (when the checkpoint's files told it), else passed: new books.
/// 3. A gap in what it was delivered: forced full.
/// 4. A sequence beyond `next`: forced full (apache/kvrocks#2214, #462).
/// 5. An id other than the one the delivered batch at `seq - 1` carried (when that batch
///    carried none: an id the replica did not hold from the master's data): forced full. An id
///    of the master's is `replid_changed`; any other is the replica's own, so `seq - 1` is a
///    write of its own (`local_write`: apache/kvrocks#2214 after a crash, a replica written to).
/// 6. Anything else passes, a sequence below `next` included: a rewind the master checks
///    against its own WAL.
pub fn judge(facts: &Facts<'_>, req: &Request<'_>) -> Verdict {
    match *req {
        Request::Psync2 { replid, offset } => judge_psync2(facts, replid, offset),
        Request::Kvrocks { replid, seq } => judge_kvrocks(facts, replid, seq),
    }
}

fn judge_kvrocks(facts: &Facts<'_>, replid: Option<&str>, seq: u64) -> Verdict {
    let full = Verdict::ForceFull;
    let Some(rec) = facts.kv_replica else {
        if seq <= 1 {
            return Verdict::Pass;
        }
        if let Some(id) = replid {
            if !facts.ledger.kvrocks.knows_master_replid(id) {
                return full(Reason::KvForeignId {
                    replid: id.to_string(),
                    requested: seq,
                });
            }
        }
        return match facts.unknown_replica {
            UnknownReplica::Pass => Verdict::Pass,
            UnknownReplica::Full => full(Reason::UnknownReplica {
                replid: replid.unwrap_or("-").to_string(),
            }),
        };
    };
    if rec.full_sync_pending {
        if !facts.kv_full_sync_seen {
            return full(Reason::KvFullSyncNotSeen { requested: seq });
        }
        return match facts.kv_checkpoint_seq {
            Some(c) if c.checked_add(1).is_some_and(|next| seq > next) => {
                full(Reason::KvBeyondCheckpoint {
                    checkpoint: c,
                    requested: seq,
                })
            }
            _ => Verdict::Pass,
        };
    }
    if let Some(g) = rec.gap {
        return full(Reason::KvAfterGap {
            expected: g.expected,
            got: g.got,
        });
    }
    if seq > rec.next_seq {
        return full(if facts.unclean_stop && rec.open {
            Reason::KvUncleanStop {
                recorded_next: rec.next_seq,
                requested: seq,
            }
        } else {
            Reason::KvBeyondDelivered {
                next: rec.next_seq,
                requested: seq,
            }
        });
    }
    if let (Some(id), Some(last)) = (replid, seq.checked_sub(1)) {
        if let Some(carried) = rec.id_at(last) {
            let own = match carried {
                Some(c) => c != id,
                // No id in that batch: the replica presents the id in its database, which the
                // master's data put there unless a write of its own did.
                None => !rec.had_id_before(id, last),
            };
            if own {
                let (replid, carried) = (id.to_string(), carried.map(str::to_string));
                return full(if facts.ledger.kvrocks.knows_master_replid(id) {
                    Reason::KvReplidChanged {
                        replid,
                        seq: last,
                        carried,
                    }
                } else {
                    Reason::KvLocalWrite {
                        replid,
                        seq: last,
                        carried,
                    }
                });
            }
        }
    }
    Verdict::Pass
}

fn judge_psync2(facts: &Facts<'_>, replid: &str, offset: i64) -> Verdict {
    // 1. An empty master would wipe a replica this link filled.
    if let (Some(id), Some(rec)) = (facts.empty_master, facts.replica) {
        if !facts.allow_empty_master && !facts.ledger.same_lineage(&rec.replid, id) {
            return Verdict::Hold(Reason::EmptyMaster {
                master_replid: id.to_string(),
            });
        }
    }
    // 2. A replica asking for a full sync gets one.
    if replid == "?" || offset < 0 {
        return Verdict::Pass;
    }
    let requested = offset as u64;
    let id = replid;
    let replid = id.to_string();
    let full = Verdict::ForceFull;

    // 3. The id must belong to this link's lineage.
    let Some(epoch) = facts.ledger.epoch(id) else {
        return full(Reason::UnknownId { replid });
    };
    // 4. Not beyond a point where the history diverged: the id's own, or that of any id it
    //    handed over to, since the master serves the old id from its successors' history. A
    //    record written after the fork was found is of the new history and vouches for itself.
    for e in facts.ledger.chain(id) {
        for fork in &e.forks {
            let post_fork_record = facts.replica.is_some_and(|r| {
                r.seq > fork.seq && facts.ledger.same_lineage(&r.replid, &e.replid)
            });
            if requested > fork.at && !post_fork_record {
                return full(Reason::BeyondFork {
                    replid,
                    fork: fork.at,
                    requested,
                });
            }
        }
    }
    // 5. Not beyond the point where the id handed over to another.
    if let Some(sw) = &epoch.superseded {
        if requested > sw.at {
            return full(Reason::SupersededBeyondSwitch {
                replid,
                by: sw.by.clone(),
                switch: sw.at,
                requested,
            });
        }
    }
    // 6. Not beyond what this link delivered to this replica.
    let unknown = |reason| match facts.unknown_replica {
        UnknownReplica::Pass => Verdict::Pass,
        UnknownReplica::Full => full(reason),
    };
    let Some(rec) = facts.replica else {
        return unknown(Reason::UnknownReplica { replid });
    };
    if !facts.ledger.same_lineage(&rec.replid, id) {
        return unknown(Reason::NotDeliveredHistory {
            replid,
            delivered: rec.replid.clone(),
        });
    }
    if rec
        .offset
        .checked_add(1)
        .is_some_and(|next| requested > next)
    {
        return full(if facts.unclean_stop && rec.open {
            Reason::UncleanStop {
                replid,
                recorded: rec.offset,
                requested,
            }
        } else {
            Reason::BeyondDelivered {
                replid,
                delivered: rec.offset,
                requested,
            }
        });
    }
    Verdict::Pass
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::ledger::{MasterView, NO_REPLID};
    use proptest::prelude::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const R: &str = "127.0.0.1:6380";

    fn facts<'a>(l: &'a LedgerData) -> Facts<'a> {
        Facts {
            ledger: l,
            replica: l.replicas.get(R),
            unclean_stop: false,
            empty_master: None,
            allow_empty_master: false,
            unknown_replica: UnknownReplica::Full,
            kv_replica: None,
            kv_full_sync_seen: false,
            kv_checkpoint_seq: None,
        }
    }

    fn req(replid: &str, offset: i64) -> Request<'_> {
        Request::Psync2 { replid, offset }
    }

    #[test]
    fn honest_resume_passes_and_a_claim_beyond_delivery_is_forced_full() {
        let mut l = LedgerData::new();
        l.deliver(R, A, 100, false);
        assert_eq!(judge(&facts(&l), &req(A, 101)), Verdict::Pass);
        assert_eq!(judge(&facts(&l), &req(A, 50)), Verdict::Pass);
        let v = judge(&facts(&l), &req(A, 120));
        assert_eq!(
            v,
            Verdict::ForceFull(Reason::BeyondDelivered {
                replid: A.into(),
                delivered: 100,
                requested: 120
            })
        );
        assert!(v
            .reason()
            .unwrap()
            .to_string()
            .contains("never came through the link"));
    }

    #[test]
    fn a_record_at_the_last_offset_there_is_cannot_be_asked_past() {
        // A ledger file may hold any number (found by the ledger fuzz target: the next offset
        // of such a record overflowed).
        let mut l = LedgerData::new();
        l.deliver(R, A, 100, false);
        l.epochs[0].last_offset = u64::MAX;
        l.replicas.get_mut(R).unwrap().offset = u64::MAX;
        assert_eq!(judge(&facts(&l), &req(A, i64::MAX)), Verdict::Pass);
    }

    #[test]
    fn unknown_ids_and_unknown_replicas() {
        let mut l = LedgerData::new();
        l.see(A, 10);
        assert_eq!(
            judge(&facts(&l), &req(B, 5)).reason().unwrap().code(),
            "unknown_id"
        );
        assert_eq!(
            judge(&facts(&l), &req(A, 5)).reason().unwrap().code(),
            "unknown_replica"
        );
        let mut f = facts(&l);
        f.unknown_replica = UnknownReplica::Pass;
        assert_eq!(judge(&f, &req(A, 5)), Verdict::Pass);
        assert_eq!(judge(&facts(&l), &req("?", -1)), Verdict::Pass);
    }

    #[test]
    fn failover_through_replid2_passes_up_to_the_switch() {
        let mut l = LedgerData::new();
        l.deliver(R, A, 100, false);
        l.observe_master(&MasterView {
            replid: B.into(),
            replid2: A.into(),
            second_offset: 101,
            offset: 150,
            empty: false,
        });
        assert_eq!(judge(&facts(&l), &req(A, 101)), Verdict::Pass);
        l.deliver(R, A, 130, false); // a record beyond the switch cannot make it valid
        assert_eq!(
            judge(&facts(&l), &req(A, 131)).reason().unwrap().code(),
            "superseded_beyond_switch"
        );
    }

    #[test]
    fn empty_master_holds_known_replicas_until_allowed() {
        let mut l = LedgerData::new();
        l.deliver(R, A, 100, false);
        let mut f = facts(&l);
        f.empty_master = Some(B);
        assert_eq!(judge(&f, &req(A, 101)).name(), "hold");
        assert_eq!(judge(&f, &req("?", -1)).name(), "hold");
        f.allow_empty_master = true;
        assert_eq!(judge(&f, &req(A, 101)), Verdict::Pass);
    }

    fn kv(l: &LedgerData) -> Facts<'_> {
        Facts {
            kv_replica: l.kvrocks.replicas.get(R),
            ..facts(l)
        }
    }

    fn kvreq(replid: Option<&str>, seq: u64) -> Request<'_> {
        Request::Kvrocks { replid, seq }
    }

    fn kv_record(l: &mut LedgerData, next_seq: u64, replid: Option<&str>) {
        l.kvrocks.update(R, |r| {
            r.next_seq = next_seq;
            r.replid = replid.map(str::to_string);
        });
    }

    #[test]
    fn kvrocks_resume_beyond_delivered_is_forced_full_and_a_rewind_passes() {
        let mut l = LedgerData::new();
        kv_record(&mut l, 5, None); // delivered up to sequence 4
        assert_eq!(judge(&kv(&l), &kvreq(None, 5)), Verdict::Pass);
        assert_eq!(judge(&kv(&l), &kvreq(None, 3)), Verdict::Pass);
        // The apache/kvrocks#2214 restart: a local write took 5, the replica asks for 6.
        let v = judge(&kv(&l), &kvreq(Some("E1PZBV0DJ9JAP0TH"), 6));
        assert_eq!(
            v,
            Verdict::ForceFull(Reason::KvBeyondDelivered {
                next: 5,
                requested: 6
            })
        );
        assert!(v.reason().unwrap().to_string().contains("sequences 5..=5"));
        l.kvrocks.update(R, |r| r.open = true);
        let mut f = kv(&l);
        f.unclean_stop = true;
        assert_eq!(
            judge(&f, &kvreq(None, 9)).reason().unwrap().code(),
            "unclean_stop"
        );
    }

    #[test]
    fn kvrocks_first_attach_rules() {
        let mut l = LedgerData::new();
        // Nothing held: nothing to lose.
        assert_eq!(judge(&kv(&l), &kvreq(None, 1)), Verdict::Pass);
        assert_eq!(
            judge(&kv(&l), &kvreq(Some("PP3XNZHJZ3YGXJU9"), 1)),
            Verdict::Pass
        );
        // An id of its own, never seen from the master: forced full whatever the policy.
        let mut f = kv(&l);
        f.unknown_replica = UnknownReplica::Pass;
        assert_eq!(
            judge(&f, &kvreq(Some("XXP9LCB4ADZIPLXD"), 2))
                .reason()
                .unwrap()
                .code(),
            "unknown_id"
        );
        // A two-argument resume from an unknown replica follows the policy.
        assert_eq!(judge(&f, &kvreq(None, 7)), Verdict::Pass);
        assert_eq!(
            judge(&kv(&l), &kvreq(None, 7)).reason().unwrap().code(),
            "unknown_replica"
        );
        // An id the master's batches carried follows the policy too.
        l.kvrocks.saw_master_replid("C3EORR3YM0FAK7BG");
        let mut f = kv(&l);
        f.unknown_replica = UnknownReplica::Pass;
        assert_eq!(
            judge(&f, &kvreq(Some("C3EORR3YM0FAK7BG"), 6)),
            Verdict::Pass
        );
    }

    #[test]
    fn kvrocks_changed_id_gap_and_owed_full_sync() {
        let mut l = LedgerData::new();
        kv_record(&mut l, 6, Some("C3EORR3YM0FAK7BG"));
        assert_eq!(
            judge(&kv(&l), &kvreq(Some("C3EORR3YM0FAK7BG"), 6)),
            Verdict::Pass
        );
        // Books written before id ranges were kept: the last batch's id only.
        assert_eq!(
            judge(&kv(&l), &kvreq(Some("AGP4VQU347ZNLD0J"), 6))
                .reason()
                .unwrap()
                .code(),
            "local_write"
        );
        l.kvrocks.saw_master_replid("AGP4VQU347ZNLD0J");
        assert_eq!(
            judge(&kv(&l), &kvreq(Some("AGP4VQU347ZNLD0J"), 6))
                .reason()
                .unwrap()
                .code(),
            "replid_changed"
        );
        // Such books cannot tell the id of an earlier batch: the master checks the rewind.
        assert_eq!(
            judge(&kv(&l), &kvreq(Some("AGP4VQU347ZNLD0J"), 4)),
            Verdict::Pass
        );
        l.kvrocks.update(R, |r| {
            r.gap = Some(crate::guard::ledger::KvGap {
                expected: 6,
                got: 8,
            })
        });
        assert_eq!(
            judge(&kv(&l), &kvreq(Some("C3EORR3YM0FAK7BG"), 6))
                .reason()
                .unwrap()
                .code(),
            "after_gap"
        );
        l.kvrocks.update(R, |r| {
            r.gap = None;
            r.full_sync_pending = true;
        });
        assert_eq!(
            judge(&kv(&l), &kvreq(None, 6)).reason().unwrap().code(),
            "full_sync_not_seen"
        );
        let mut f = kv(&l);
        f.kv_full_sync_seen = true;
        assert_eq!(judge(&f, &kvreq(None, 42)), Verdict::Pass);
        // With the checkpoint's last sequence known, a local write after the restore shows.
        f.kv_checkpoint_seq = Some(40);
        assert_eq!(judge(&f, &kvreq(None, 41)), Verdict::Pass);
        assert_eq!(
            judge(&f, &kvreq(None, 42)).reason().unwrap().code(),
            "beyond_checkpoint"
        );
        // A checkpoint at the last sequence there is: nothing asks past it (found by the ledger
        // fuzz target, where its next sequence overflowed).
        f.kv_checkpoint_seq = Some(u64::MAX);
        assert_eq!(judge(&f, &kvreq(None, 42)), Verdict::Pass);
        assert_eq!(judge(&f, &kvreq(None, u64::MAX)), Verdict::Pass);
    }

    fn kv_ranges(l: &mut LedgerData, next_seq: u64, ranges: &[(u64, Option<&str>)]) {
        l.kvrocks.update(R, |r| {
            r.next_seq = next_seq;
            r.ids = ranges
                .iter()
                .map(|&(from, id)| crate::guard::ledger::KvIdRange {
                    from,
                    replid: id.map(str::to_string),
                })
                .collect();
            r.replid = r.ids.last().and_then(|x| x.replid.clone());
        });
    }

    fn code(f: &Facts<'_>, replid: Option<&str>, seq: u64) -> &'static str {
        judge(f, &kvreq(replid, seq))
            .reason()
            .map_or("pass", |r| r.code())
    }

    #[test]
    fn kvrocks_own_id_inside_the_delivered_range_is_a_local_write() {
        const OWN: &str = "X4N29DXBT7N4ZKU9";
        const M: &str = "C3EORR3YM0FAK7BG";
        const M2: &str = "AGP4VQU347ZNLD0J";
        // The seed setup after a crash: a master without rsid, batches delivered up to 14279;
        // the replica applied up to 14259, its start-up write took 14260.
        let mut l = LedgerData::new();
        kv_ranges(&mut l, 14280, &[(14000, None)]);
        let v = judge(&kv(&l), &kvreq(Some(OWN), 14261));
        assert_eq!(
            v,
            Verdict::ForceFull(Reason::KvLocalWrite {
                replid: OWN.into(),
                seq: 14260,
                carried: None
            })
        );
        let words = v.reason().unwrap().to_string();
        assert!(words.contains("use-rsid-psync is yes on the replica and no on the master"));
        assert!(words.contains("sequence 14260"));
        // The same request without an id cannot be told from an honest rewind.
        assert_eq!(code(&kv(&l), None, 14261), "pass");
        // Its id at the start of its books came from its full sync: it presents that one
        // while its batches carry none.
        kv_ranges(&mut l, 14280, &[(13999, Some(M)), (14000, None)]);
        assert_eq!(code(&kv(&l), Some(M), 14261), "pass");
        assert_eq!(code(&kv(&l), Some(M), 14280), "pass");
        assert_eq!(code(&kv(&l), Some(OWN), 14280), "local_write");
        // A master with rsid: the id of the batch at seq - 1 decides, for rewinds too.
        let mut l = LedgerData::new();
        l.kvrocks.saw_master_replid(M);
        l.kvrocks.saw_master_replid(M2);
        kv_ranges(&mut l, 300, &[(100, Some(M)), (200, Some(M2))]);
        assert_eq!(code(&kv(&l), Some(M), 150), "pass");
        assert_eq!(code(&kv(&l), Some(M), 200), "pass");
        assert_eq!(code(&kv(&l), Some(M2), 201), "pass");
        assert_eq!(code(&kv(&l), Some(M2), 300), "pass");
        assert_eq!(code(&kv(&l), Some(M2), 150), "replid_changed");
        assert_eq!(code(&kv(&l), Some(M), 250), "replid_changed");
        assert_eq!(code(&kv(&l), Some(OWN), 250), "local_write");
        assert_eq!(code(&kv(&l), Some(OWN), 300), "local_write");
        // Below the ranges kept the books cannot tell: the master checks the rewind.
        assert_eq!(code(&kv(&l), Some(OWN), 50), "pass");
        assert_eq!(code(&kv(&l), Some(OWN), 301), "beyond_delivered");
    }

    #[test]
    fn unclean_stop_is_named_as_such() {
        let mut l = LedgerData::new();
        l.deliver(R, A, 100, true);
        let mut f = facts(&l);
        f.unclean_stop = true;
        assert_eq!(judge(&f, &req(A, 101)), Verdict::Pass);
        assert_eq!(
            judge(&f, &req(A, 200)).reason().unwrap().code(),
            "unclean_stop"
        );
    }

    // ---- Property tests against a small reference model of PSYNC2 lineage. ----
    //
    // The model keeps the master's true history as a list of tokens (one per offset unit) and
    // each replica's true data as a list of tokens. A resume (id, o) is safe exactly when the
    // replica's data equals the first o-1 tokens of the master's current history: the master
    // then streams from o and the replica ends identical. The ledger learns only what
    // replguard would see; the verdict must never pass an unsafe resume, and must pass an
    // honest replica's resume when nothing happened that it cannot vouch for.

    #[derive(Debug, Clone)]
    enum Op {
        Write(u8),
        Deliver(usize),
        Promote,
        RestartFrom(prop::sample::Index),
        RestartSameId(prop::sample::Index),
        Lie(usize, u8),
        Resume(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (1u8..5).prop_map(Op::Write),
            3 => (0usize..2).prop_map(Op::Deliver),
            1 => Just(Op::Promote),
            1 => any::<prop::sample::Index>().prop_map(Op::RestartFrom),
            1 => any::<prop::sample::Index>().prop_map(Op::RestartSameId),
            1 => ((0usize..2), (1u8..4)).prop_map(|(r, d)| Op::Lie(r, d)),
            2 => (0usize..2).prop_map(Op::Resume),
        ]
    }

    struct Model {
        next_token: u64,
        next_id: u64,
        history: Vec<u64>,
        replid: String,
        /// (replid2, second_offset)
        prev: Option<(String, u64)>,
        /// Each replica: its data, and the (id, offset) it will claim.
        replicas: Vec<(Vec<u64>, String, u64)>,
        ledger: LedgerData,
    }

    fn id(n: u64) -> String {
        format!("{n:040x}")
    }

    impl Model {
        fn new() -> Self {
            let mut m = Model {
                next_token: 1,
                next_id: 2,
                history: vec![],
                replid: id(1),
                prev: None,
                replicas: vec![(vec![], String::new(), 0), (vec![], String::new(), 0)],
                ledger: LedgerData::new(),
            };
            m.observe();
            m
        }
        fn identity(r: usize) -> String {
            format!("127.0.0.1:{}", 7000 + r)
        }
        fn observe(&mut self) {
            let (replid2, second) = self.prev.clone().unwrap_or((NO_REPLID.into(), 0));
            self.ledger.observe_master(&MasterView {
                replid: self.replid.clone(),
                replid2,
                second_offset: second as i64,
                offset: self.history.len() as u64,
                empty: false,
            });
        }
        fn safe(&self, r: usize, o: u64) -> bool {
            let data = &self.replicas[r].0;
            o >= 1 && data.len() as u64 == o - 1 && self.history.starts_with(data)
        }
        /// Whether the master itself would accept (PSYNC2 rule, backlog unlimited).
        fn master_accepts(&self, rid: &str, o: u64) -> bool {
            let id_ok =
                rid == self.replid || self.prev.as_ref().is_some_and(|(p, s)| p == rid && o <= *s);
            id_ok && o <= self.history.len() as u64 + 1
        }
        fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
            match op {
                Op::Write(n) => {
                    for _ in 0..*n {
                        self.history.push(self.next_token);
                        self.next_token += 1;
                    }
                    self.observe();
                }
                Op::Deliver(r) => {
                    // A full or partial sync through replguard: the replica ends equal.
                    self.replicas[*r] = (
                        self.history.clone(),
                        self.replid.clone(),
                        self.history.len() as u64,
                    );
                    let off = self.history.len() as u64;
                    self.ledger
                        .deliver(&Self::identity(*r), &self.replid.clone(), off, false);
                }
                Op::Promote => {
                    // Failover to a replica holding the same history.
                    self.prev = Some((self.replid.clone(), self.history.len() as u64 + 1));
                    self.replid = id(self.next_id);
                    self.next_id += 1;
                    self.observe();
                }
                Op::RestartFrom(i) => {
                    // Master restarted from an older snapshot (Redis 7: new id, replid2 = old).
                    let keep = i.index(self.history.len() + 1);
                    self.history.truncate(keep);
                    self.prev = Some((self.replid.clone(), keep as u64 + 1));
                    self.replid = id(self.next_id);
                    self.next_id += 1;
                    self.observe();
                }
                Op::RestartSameId(i) => {
                    // A master back at an earlier point of the same id (no replid2 to tell).
                    let keep = i.index(self.history.len() + 1);
                    self.history.truncate(keep);
                    self.observe();
                }
                Op::Lie(r, d) => {
                    // The replica's own position moves without data (the #2214 shape).
                    self.replicas[*r].2 += u64::from(*d);
                    self.replicas[*r]
                        .0
                        .extend((0..*d).map(|k| 1_000_000 + u64::from(k)));
                }
                Op::Resume(r) => {
                    let (_, rid, off) = self.replicas[*r].clone();
                    if rid.is_empty() {
                        return Ok(());
                    }
                    let o = off + 1;
                    let f = Facts {
                        ledger: &self.ledger,
                        replica: self.ledger.replicas.get(&Self::identity(*r)),
                        unclean_stop: false,
                        empty_master: None,
                        allow_empty_master: false,
                        unknown_replica: UnknownReplica::Full,
                        kv_replica: None,
                        kv_full_sync_seen: false,
                        kv_checkpoint_seq: None,
                    };
                    let v = judge(
                        &f,
                        &Request::Psync2 {
                            replid: &rid,
                            offset: o as i64,
                        },
                    );
                    let safe = self.safe(*r, o);
                    if v == Verdict::Pass && self.master_accepts(&rid, o) {
                        prop_assert!(
                            safe,
                            "passed an unsafe resume {rid}:{o}: {:?}",
                            self.replicas[*r]
                        );
                    }
                    if safe && self.master_accepts(&rid, o) {
                        // Nothing happened that replguard cannot vouch for: it must not get
                        // in the way.
                        prop_assert_eq!(v, Verdict::Pass);
                    }
                }
            }
            Ok(())
        }
    }

    /// A Kvrocks 2.7.0 master and one replica, with `use-rsid-psync` on either side or both,
    /// in cluster mode or standalone. The master writes one sequence per batch (some writes
    /// never reach its WAL) and, with rsid, takes a new id when it restarts. The replica applies
    /// what it was delivered or loses an unapplied suffix when it crashes, makes its start-up
    /// writes in cluster mode, may be written to by a client or promoted and re-attached
    /// (apache/kvrocks#462), and asks to resume exactly as `tryPSyncWriteCB` does: the id the
    /// WAL batch at its latest sequence carried, else the id in its database.
    #[derive(Debug, Clone)]
    enum KvOp {
        Write(u8),
        Unlogged,
        MasterRestart,
        Attach(u8),
        Apply(u8),
        Crash,
        Restart,
        ClientWrite,
        Promote,
    }

    fn kv_op() -> impl Strategy<Value = KvOp> {
        prop_oneof![
            4 => (1u8..4).prop_map(KvOp::Write),
            1 => Just(KvOp::Unlogged),
            1 => Just(KvOp::MasterRestart),
            4 => (0u8..6).prop_map(KvOp::Attach),
            3 => (0u8..6).prop_map(KvOp::Apply),
            2 => Just(KvOp::Crash),
            1 => Just(KvOp::Restart),
            1 => Just(KvOp::ClientWrite),
            1 => Just(KvOp::Promote),
        ]
    }

    /// One master sequence.
    #[derive(Debug, Clone, Copy)]
    struct MEntry {
        /// In the WAL (a batch starts here), not a write that skipped it.
        logged: bool,
        /// The id in the batch's `r` record.
        id: Option<u32>,
        /// The batch writes the replication id key (the master's ShiftReplId).
        key: bool,
    }

    /// One replica sequence: a master batch (its index in the master's sequences) or a write of
    /// its own (`None`), and the id it carries.
    #[derive(Debug, Clone, Copy)]
    struct REntry {
        master: Option<usize>,
        id: Option<u32>,
    }

    #[derive(Debug, Clone, Copy)]
    struct KvSetup {
        master_rsid: bool,
        replica_rsid: bool,
        cluster: bool,
        /// `repl-namespace-enabled`: a cluster replica's start-up namespace write.
        namespaces: bool,
    }

    fn kv_setup() -> impl Strategy<Value = KvSetup> {
        (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
            |(master_rsid, replica_rsid, cluster, namespaces)| KvSetup {
                master_rsid,
                replica_rsid,
                cluster,
                namespaces,
            },
        )
    }

    struct KvModel {
        setup: KvSetup,
        ledger: LedgerData,
        master: Vec<MEntry>,
        master_id: Option<u32>,
        /// The replica's applied sequences.
        replica: Vec<REntry>,
        /// Batches delivered to it and not applied yet: master sequence indexes.
        pending: std::collections::VecDeque<usize>,
        /// The replication id key in its database.
        db_key: Option<u32>,
        /// The id its own writes carry (`replid_`, set by ShiftReplId).
        own: Option<u32>,
        fresh: u32,
        full_sync_seen: bool,
        checkpoint: Option<u64>,
        /// A resume that cannot be told from an honest one let the replica's data diverge;
        /// only a full sync mends it.
        diverged: bool,
    }

    impl KvModel {
        fn new(setup: KvSetup) -> Self {
            let mut m = KvModel {
                setup,
                ledger: LedgerData::new(),
                master: Vec::new(),
                master_id: None,
                replica: Vec::new(),
                pending: Default::default(),
                db_key: None,
                own: None,
                fresh: 100,
                full_sync_seen: false,
                checkpoint: None,
                diverged: false,
            };
            m.master_start();
            m.replica_start();
            m
        }

        fn fresh_id(&mut self) -> u32 {
            self.fresh += 1;
            self.fresh
        }

        fn name(id: Option<u32>) -> Option<String> {
            id.map(|n| format!("ID{n:014}"))
        }

        /// The master's start-up: with rsid, a new id written into its database.
        fn master_start(&mut self) {
            if self.setup.master_rsid {
                let id = self.fresh_id();
                self.master_id = Some(id);
                self.master.push(MEntry {
                    logged: true,
                    id: Some(id),
                    key: true,
                });
            }
        }

        /// A write of the replica's own.
        fn local_write(&mut self, id: Option<u32>) {
            self.replica.push(REntry { master: None, id });
        }

        /// ShiftReplId: with rsid, a new id of its own, written into its database.
        fn shift_replid(&mut self) {
            if self.setup.replica_rsid {
                let id = self.fresh_id();
                self.own = Some(id);
                self.local_write(Some(id));
                self.db_key = Some(id);
            }
        }

        /// The replica's start-up (2.7.0 `Server::Start`): a cluster node does not know it is a
        /// replica yet.
        fn replica_start(&mut self) {
            self.own = None;
            if self.setup.cluster {
                if self.setup.namespaces {
                    self.local_write(None);
                }
                self.shift_replid();
            }
        }

        /// Applies delivered batches. A replica writes a batch under its own next sequence: it
        /// holds the master's data there only if nothing of its own came in between.
        fn apply_pending(&mut self, n: usize) {
            for _ in 0..n {
                let Some(i) = self.pending.pop_front() else {
                    break;
                };
                let e = self.master[i];
                self.replica.push(REntry {
                    master: Some(i),
                    id: e.id,
                });
                if e.key {
                    self.db_key = e.id;
                }
            }
        }

        fn full_sync(&mut self) {
            self.replica = self
                .master
                .iter()
                .enumerate()
                .map(|(i, e)| REntry {
                    master: Some(i),
                    id: e.id.filter(|_| e.logged),
                })
                .collect();
            self.pending.clear();
            self.db_key = self.master_id;
            self.diverged = false;
            self.full_sync_seen = true;
            self.checkpoint = Some(self.master.len() as u64);
        }

        /// The PSYNC the replica sends: `tryPSyncWriteCB`.
        fn request(&self) -> (Option<String>, u64) {
            let cur = self.replica.len();
            let id = self
                .replica
                .last()
                .and_then(|e| e.id)
                .or(self.db_key)
                .filter(|_| self.setup.replica_rsid);
            (Self::name(id), cur as u64 + 1)
        }

        /// The 2.7.0 master: the id of its batch at seq - 1 when both use rsid, then latest + 1
        /// or the start of a batch in its WAL.
        fn master_accepts(&self, replid: Option<&str>, seq: u64) -> bool {
            let latest = self.master.len() as u64;
            if let (true, Some(id)) = (self.setup.master_rsid, replid) {
                let at = (seq as usize)
                    .checked_sub(2)
                    .and_then(|i| self.master.get(i));
                if let Some(carried) = at.filter(|e| e.logged).and_then(|e| e.id) {
                    if Self::name(Some(carried)).as_deref() != Some(id) {
                        return false;
                    }
                }
            }
            seq == latest + 1 || (seq >= 1 && seq <= latest && self.master[seq as usize - 1].logged)
        }

        fn attach(&mut self, stream: u8) -> Result<(), TestCaseError> {
            // A new connection: what the old one delivered and the replica did not apply is gone.
            self.pending.clear();
            let (replid, seq) = self.request();
            let rec = self.ledger.kvrocks.replicas.get(R).cloned();
            let f = Facts {
                kv_replica: rec.as_ref(),
                kv_full_sync_seen: self.full_sync_seen,
                kv_checkpoint_seq: self.checkpoint,
                ..facts(&self.ledger)
            };
            let v = judge(&f, &kvreq(replid.as_deref(), seq));
            // Its data is the master's, sequence for sequence.
            let safe = self
                .replica
                .iter()
                .enumerate()
                .all(|(i, e)| e.master == Some(i));
            let accepts = self.master_accepts(replid.as_deref(), seq);
            if v == Verdict::Pass && accepts && !safe {
                // What sequences and ids cannot show: writes of its own inside the range this
                // link delivered, the one at seq - 1 carrying no id of its own (or the replica
                // presenting no id at all).
                let inside = rec.as_ref().is_some_and(|r| {
                    (1..)
                        .zip(&self.replica)
                        .all(|(s, e)| e.master.is_some() || s < r.next_seq)
                });
                let own_id_last = self
                    .replica
                    .last()
                    .is_some_and(|e| e.master.is_none() && e.id.is_some());
                prop_assert!(
                    self.diverged || (inside && (replid.is_none() || !own_id_last)),
                    "passed an unsafe resume {:?} {seq}: {:?}",
                    replid,
                    self.replica
                );
                // Its data now differs from the master's in a way no later request shows.
                self.diverged = true;
            }
            let clean = rec
                .as_ref()
                .is_some_and(|r| !r.full_sync_pending && r.gap.is_none());
            if safe && accepts && clean {
                prop_assert_eq!(&v, &Verdict::Pass, "blocked an honest resume at {}", seq);
            }
            if v != Verdict::Pass || !accepts {
                // Refused by replguard or by the master: the replica owes a full sync and runs it;
                // its next PSYNC starts new books.
                self.ledger
                    .kvrocks
                    .update(R, |r| r.full_sync_pending = true);
                self.full_sync();
                return Ok(());
            }
            self.full_sync_seen = false;
            let mut ids = self.ledger.kvrocks.start(R, replid.as_deref(), seq);
            let mut next = seq;
            for _ in 0..stream {
                let Some(e) = self.master.get(next as usize - 1).copied() else {
                    break;
                };
                if !e.logged {
                    // The stream's next batch starts beyond `next`: a gap, cut under enforce.
                    let got = (next as usize..self.master.len())
                        .find(|&i| self.master[i].logged)
                        .map_or(next + 1, |i| i as u64 + 1);
                    self.ledger.kvrocks.update(R, |r| {
                        r.gap = Some(crate::guard::ledger::KvGap {
                            expected: next,
                            got,
                        })
                    });
                    break;
                }
                let name = Self::name(e.id);
                crate::guard::ledger::note_kv_id(&mut ids, next, name.as_deref());
                self.pending.push_back(next as usize - 1);
                next += 1;
            }
            self.ledger.kvrocks.deliver(R, next, &ids, false);
            Ok(())
        }

        fn apply(&mut self, op: &KvOp) -> Result<(), TestCaseError> {
            match op {
                KvOp::Write(n) => {
                    for _ in 0..*n {
                        self.master.push(MEntry {
                            logged: true,
                            id: self.master_id,
                            key: false,
                        });
                    }
                }
                KvOp::Unlogged => self.master.push(MEntry {
                    logged: false,
                    id: None,
                    key: false,
                }),
                KvOp::MasterRestart => self.master_start(),
                KvOp::Attach(n) => self.attach(*n)?,
                KvOp::Apply(n) => self.apply_pending(*n as usize),
                KvOp::Crash => {
                    self.pending.clear();
                    self.replica_start();
                }
                KvOp::Restart => {
                    self.apply_pending(usize::MAX);
                    self.replica_start();
                }
                KvOp::ClientWrite => self.local_write(self.own),
                KvOp::Promote => {
                    // SLAVEOF NO ONE (a new id with rsid), a client write, SLAVEOF again.
                    self.pending.clear();
                    self.shift_replid();
                    self.local_write(self.own);
                }
            }
            Ok(())
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn verdict_never_passes_an_unsafe_resume(ops in prop::collection::vec(op(), 1..40)) {
            let mut m = Model::new();
            for o in &ops {
                m.apply(o)?;
            }
        }

    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]
        #[test]
        fn kvrocks_verdict_never_passes_a_resume_that_skips_batches(
            setup in kv_setup(),
            ops in prop::collection::vec(kv_op(), 1..60)
        ) {
            let mut m = KvModel::new(setup);
            for o in &ops {
                m.apply(o)?;
            }
        }
    }
}
