//! Kvrocks: sequences. A replica that applied batches up to sequence `s` asks
//! `PSYNC [id] <s+1>`; the master accepts any sequence that is its latest plus one or the start
//! of a batch it still has, without looking at what the replica holds. replguard checks the
//! request against the sequence it delivered up to (see [`judge`] for the rules).

use super::{Reason, UnknownReplica, Verdict};
use crate::guard::ledger::{KvBooks, KvRecord};

/// Everything the Kvrocks verdict may look at.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// The link's Kvrocks books: the master's ids seen and every replica's record.
    pub books: &'a KvBooks,
    /// The ledger's record of this replica, if any.
    pub replica: Option<&'a KvRecord>,
    /// The record was written by a session that was still open when replguard last stopped
    /// without a clean shutdown: its sequence is a lower bound only.
    pub unclean_stop: bool,
    pub unknown_replica: UnknownReplica,
    /// A complete full sync (`_fetch_file`) from this replica's address passed through the
    /// link since it was refused a resume.
    pub full_sync_seen: bool,
    /// The last sequence of the checkpoint that full sync shipped, when its files told it.
    pub checkpoint_seq: Option<u64>,
    /// In a group, for a replica this link has no record of: what the link that fed this
    /// link's node before its promotion holds.
    pub vouch: Option<Vouch<'a>>,
}

/// A promoted node's history is the history of the node that fed it (through link `from`),
/// below sequence `switch`. A replica fed by the same link in the same epoch of that node
/// (or that node itself) holds the same history below the sequence it was delivered up to.
#[derive(Debug, Clone, Copy)]
pub struct Vouch<'a> {
    pub from: &'a str,
    /// One past the latest sequence the node was read holding while `from` fed it.
    pub switch: u64,
    /// This link's node's record at `from`.
    pub node: Option<&'a KvRecord>,
    /// The replica's record at `from`: a `source` record when it is `from`'s node.
    pub replica: Option<&'a KvRecord>,
    /// The replica's record at `from` was being written when replguard last stopped
    /// without a clean shutdown.
    pub unclean_stop: bool,
    /// This link's node's epoch as master now.
    pub epoch: u64,
    /// `from`'s node's record at this link, when it is fed here now: a replica that went on
    /// streaming from it after it was demoted holds this node's batches past the switch.
    pub chain: Option<&'a KvRecord>,
    /// A link of the group with a newer record of the replica than `from`'s: its data is
    /// what that link saw, and `from`'s record no longer speaks for it.
    pub newer_at: Option<&'a str>,
}

/// Judges `PSYNC [replid] <seq>`; `seq` is the first sequence wanted.
///
/// Rules, in order (`next` is the sequence after the last batch delivered):
/// 1. No record of the replica on this link: asking for sequence 1 or less (it holds nothing)
///    passes. In a group, when the link that fed this link's node before its promotion vouches
///    for the replica (see [`Vouch`]: the node's and the replica's records there clean and of
///    one epoch of that link's node), it is judged on that record: forced full past what it
///    was delivered there or past the promotion's switch, then on the id rule (5) of that
///    record; else passed. Otherwise presenting an id no master batch carried through the link is forced full
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
pub fn judge(facts: &Facts<'_>, replid: Option<&str>, seq: u64) -> Verdict {
    let full = Verdict::ForceFull;
    let Some(rec) = facts.replica else {
        if seq <= 1 {
            return Verdict::Pass;
        }
        if let Some(v) = facts.vouch.and_then(|v| vouched(facts, &v, replid, seq)) {
            return v;
        }
        if let Some(id) = replid {
            if !facts.books.knows_master_replid(id) {
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
        if !facts.full_sync_seen {
            return full(Reason::KvFullSyncNotSeen { requested: seq });
        }
        return match facts.checkpoint_seq {
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
    id_rule(facts, rec, replid, seq).unwrap_or(Verdict::Pass)
}

/// The group's vouch for a replica this link has no record of; `None` when the records at the
/// feeding link cannot vouch (the ordinary rules apply then).
fn vouched(facts: &Facts<'_>, v: &Vouch<'_>, replid: Option<&str>, seq: u64) -> Option<Verdict> {
    if v.newer_at.is_some() {
        return None;
    }
    let clean = |r: &&KvRecord| r.gap.is_none() && !r.full_sync_pending;
    let node = v
        .node
        .filter(clean)
        .filter(|n| !n.source && n.next_seq >= v.switch)?;
    let epoch = node.epoch?;
    let rec = v
        .replica
        .filter(clean)
        .filter(|r| r.epoch == Some(epoch) && !(v.unclean_stop && r.open))?;
    let full = Verdict::ForceFull;
    if !rec.source && seq > rec.next_seq {
        return Some(full(Reason::KvBeyondDeliveredThere {
            link: v.from.to_string(),
            next: rec.next_seq,
            requested: seq,
        }));
    }
    // Past the switch, a replica of the old master holds this node's batches only when the
    // old master resumed here (within the history both share) in this epoch and sent it them.
    let chained = || {
        v.chain.filter(clean).is_some_and(|c| {
            c.epoch == Some(v.epoch)
                && !c.source
                && c.since.is_some_and(|p| p <= v.switch)
                && seq <= c.next_seq
        })
    };
    if seq > v.switch && (rec.source || !chained()) {
        return Some(full(Reason::KvBeyondSwitch {
            from: v.from.to_string(),
            next: v.switch,
            requested: seq,
        }));
    }
    if rec.source {
        // An id the master's batches never carried is the node's own: a write of its own
        // (the 2.7.0 start-up write after a restart) at the end of what it holds.
        if replid.is_some_and(|id| !facts.books.knows_master_replid(id)) {
            return None;
        }
        return Some(Verdict::Pass);
    }
    Some(id_rule(facts, rec, replid, seq).unwrap_or(Verdict::Pass))
}

/// Rule 5: the id presented for `seq - 1` against the one the batch delivered there carried.
fn id_rule(facts: &Facts<'_>, rec: &KvRecord, replid: Option<&str>, seq: u64) -> Option<Verdict> {
    let full = Verdict::ForceFull;
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
                return Some(full(if facts.books.knows_master_replid(id) {
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
                }));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::ledger::LedgerData;
    use proptest::prelude::*;

    const R: &str = "127.0.0.1:6380";

    fn kv(l: &LedgerData) -> Facts<'_> {
        Facts {
            books: &l.kvrocks,
            replica: l.kvrocks.replicas.get(R),
            unclean_stop: false,
            unknown_replica: UnknownReplica::Full,
            full_sync_seen: false,
            checkpoint_seq: None,
            vouch: None,
        }
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
        assert_eq!(judge(&kv(&l), None, 5), Verdict::Pass);
        assert_eq!(judge(&kv(&l), None, 3), Verdict::Pass);
        // The apache/kvrocks#2214 restart: a local write took 5, the replica asks for 6.
        let v = judge(&kv(&l), Some("E1PZBV0DJ9JAP0TH"), 6);
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
        assert_eq!(judge(&f, None, 9).reason().unwrap().code(), "unclean_stop");
    }

    #[test]
    fn kvrocks_first_attach_rules() {
        let mut l = LedgerData::new();
        // Nothing held: nothing to lose.
        assert_eq!(judge(&kv(&l), None, 1), Verdict::Pass);
        assert_eq!(judge(&kv(&l), Some("PP3XNZHJZ3YGXJU9"), 1), Verdict::Pass);
        // An id of its own, never seen from the master: forced full whatever the policy.
        let mut f = kv(&l);
        f.unknown_replica = UnknownReplica::Pass;
        assert_eq!(
            judge(&f, Some("XXP9LCB4ADZIPLXD"), 2)
                .reason()
                .unwrap()
                .code(),
            "unknown_id"
        );
        // A two-argument resume from an unknown replica follows the policy.
        assert_eq!(judge(&f, None, 7), Verdict::Pass);
        assert_eq!(
            judge(&kv(&l), None, 7).reason().unwrap().code(),
            "unknown_replica"
        );
        // An id the master's batches carried follows the policy too.
        l.kvrocks.saw_master_replid("C3EORR3YM0FAK7BG");
        let mut f = kv(&l);
        f.unknown_replica = UnknownReplica::Pass;
        assert_eq!(judge(&f, Some("C3EORR3YM0FAK7BG"), 6), Verdict::Pass);
    }

    #[test]
    fn kvrocks_changed_id_gap_and_owed_full_sync() {
        let mut l = LedgerData::new();
        kv_record(&mut l, 6, Some("C3EORR3YM0FAK7BG"));
        assert_eq!(judge(&kv(&l), Some("C3EORR3YM0FAK7BG"), 6), Verdict::Pass);
        // Books written before id ranges were kept: the last batch's id only.
        assert_eq!(
            judge(&kv(&l), Some("AGP4VQU347ZNLD0J"), 6)
                .reason()
                .unwrap()
                .code(),
            "local_write"
        );
        l.kvrocks.saw_master_replid("AGP4VQU347ZNLD0J");
        assert_eq!(
            judge(&kv(&l), Some("AGP4VQU347ZNLD0J"), 6)
                .reason()
                .unwrap()
                .code(),
            "replid_changed"
        );
        // Such books cannot tell the id of an earlier batch: the master checks the rewind.
        assert_eq!(judge(&kv(&l), Some("AGP4VQU347ZNLD0J"), 4), Verdict::Pass);
        l.kvrocks.update(R, |r| {
            r.gap = Some(crate::guard::ledger::KvGap {
                expected: 6,
                got: 8,
            })
        });
        assert_eq!(
            judge(&kv(&l), Some("C3EORR3YM0FAK7BG"), 6)
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
            judge(&kv(&l), None, 6).reason().unwrap().code(),
            "full_sync_not_seen"
        );
        let mut f = kv(&l);
        f.full_sync_seen = true;
        assert_eq!(judge(&f, None, 42), Verdict::Pass);
        // With the checkpoint's last sequence known, a local write after the restore shows.
        f.checkpoint_seq = Some(40);
        assert_eq!(judge(&f, None, 41), Verdict::Pass);
        assert_eq!(
            judge(&f, None, 42).reason().unwrap().code(),
            "beyond_checkpoint"
        );
        // A checkpoint at the last sequence there is: nothing asks past it (found by the ledger
        // fuzz target, where its next sequence overflowed).
        f.checkpoint_seq = Some(u64::MAX);
        assert_eq!(judge(&f, None, 42), Verdict::Pass);
        assert_eq!(judge(&f, None, u64::MAX), Verdict::Pass);
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
        judge(f, replid, seq).reason().map_or("pass", |r| r.code())
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
        let v = judge(&kv(&l), Some(OWN), 14261);
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

    /// A record at the feeding link `n0` of a group, in epoch `epoch` of its node.
    fn there(next_seq: u64, epoch: Option<u64>) -> KvRecord {
        KvRecord {
            next_seq,
            epoch,
            ..KvRecord::default()
        }
    }

    fn vouching<'a>(
        l: &'a LedgerData,
        switch: u64,
        node: Option<&'a KvRecord>,
        replica: Option<&'a KvRecord>,
    ) -> Facts<'a> {
        Facts {
            replica: None,
            vouch: Some(Vouch {
                from: "n0",
                switch,
                node,
                replica,
                unclean_stop: false,
                epoch: 4,
                chain: None,
                newer_at: None,
            }),
            ..kv(l)
        }
    }

    #[test]
    fn kvrocks_a_promoted_node_vouches_for_what_it_was_fed_with_the_replica() {
        let l = LedgerData::new();
        // The promoted node was fed up to 100 and read holding 100; T was fed up to 100.
        let node = there(101, Some(3));
        let t = there(101, Some(3));
        let f = vouching(&l, 101, Some(&node), Some(&t));
        assert_eq!(code(&f, None, 101), "pass");
        assert_eq!(code(&f, None, 40), "pass");
        assert_eq!(code(&f, None, 1), "pass");
        // T claims more than it was fed there.
        let v = judge(&f, None, 102);
        assert_eq!(
            v,
            Verdict::ForceFull(Reason::KvBeyondDeliveredThere {
                link: "n0".into(),
                next: 101,
                requested: 102
            })
        );
        assert!(v.reason().unwrap().to_string().contains("link n0"));
        // The old master's writes after the promotion reached T: the node never had them.
        let t_ahead = there(131, Some(3));
        let f = vouching(&l, 101, Some(&node), Some(&t_ahead));
        let v = judge(&f, None, 131);
        assert_eq!(
            v,
            Verdict::ForceFull(Reason::KvBeyondSwitch {
                from: "n0".into(),
                next: 101,
                requested: 131
            })
        );
        assert_eq!(v.reason().unwrap().code(), "superseded_beyond_switch");
        assert!(v.reason().unwrap().to_string().contains("101..=130"));
        // The old master itself: its history is its own, the switch bounds it.
        let m = KvRecord {
            source: true,
            ..there(90, Some(3))
        };
        let f = vouching(&l, 101, Some(&node), Some(&m));
        assert_eq!(code(&f, None, 101), "pass");
        assert_eq!(code(&f, None, 102), "superseded_beyond_switch");
    }

    #[test]
    fn kvrocks_a_replica_fed_on_by_the_demoted_master_is_vouched_past_the_switch() {
        let l = LedgerData::new();
        let node = there(101, Some(3));
        // T went on streaming from M after M resumed here at 101 (this node's epoch 4): its
        // batches past 100 are this node's.
        let t = there(141, Some(3));
        let m_here = KvRecord {
            since: Some(101),
            ..there(160, Some(4))
        };
        let mut f = vouching(&l, 101, Some(&node), Some(&t));
        assert_eq!(code(&f, None, 131), "superseded_beyond_switch");
        if let Some(v) = f.vouch.as_mut() {
            v.chain = Some(&m_here);
        }
        assert_eq!(code(&f, None, 131), "pass");
        assert_eq!(code(&f, None, 141), "pass");
        assert_eq!(code(&f, None, 142), "beyond_delivered");
        // M resumed past the switch, or after a full sync (its old batches may be what T
        // holds), or in another epoch of this node, or was sent less than T asks for.
        let bads = [
            KvRecord {
                since: Some(102),
                ..there(160, Some(4))
            },
            KvRecord {
                since: None,
                ..there(160, Some(4))
            },
            KvRecord {
                since: Some(101),
                ..there(160, Some(3))
            },
            KvRecord {
                since: Some(101),
                ..there(120, Some(4))
            },
        ];
        for bad in &bads {
            if let Some(v) = f.vouch.as_mut() {
                v.chain = Some(bad);
            }
            assert_eq!(code(&f, None, 131), "superseded_beyond_switch", "{bad:?}");
        }
        // M itself past the switch: its own writes.
        let m = KvRecord {
            source: true,
            ..there(131, Some(3))
        };
        let f = Facts {
            vouch: f.vouch.map(|v| Vouch {
                replica: Some(&m),
                chain: Some(&m_here),
                ..v
            }),
            ..f
        };
        assert_eq!(code(&f, None, 131), "superseded_beyond_switch");
    }

    #[test]
    fn kvrocks_no_vouch_across_epochs_gaps_or_an_unfed_node() {
        let l = LedgerData::new();
        let node = there(101, Some(3));
        // Fed by the same link in another epoch of its node: another history, maybe.
        let t = there(101, Some(2));
        assert_eq!(
            code(&vouching(&l, 101, Some(&node), Some(&t)), None, 101),
            "unknown_replica"
        );
        let t = there(101, None);
        assert_eq!(
            code(&vouching(&l, 101, Some(&node), Some(&t)), None, 101),
            "unknown_replica"
        );
        let t = there(101, Some(3));
        // The node holds sequences it was not fed there: writes of its own.
        let short = there(100, Some(3));
        assert_eq!(
            code(&vouching(&l, 101, Some(&short), Some(&t)), None, 101),
            "unknown_replica"
        );
        // No record of the node there, or of the replica.
        assert_eq!(
            code(&vouching(&l, 101, None, Some(&t)), None, 101),
            "unknown_replica"
        );
        assert_eq!(
            code(&vouching(&l, 101, Some(&node), None), None, 101),
            "unknown_replica"
        );
        // A gap or an owed full sync on either record.
        let gapped = KvRecord {
            gap: Some(crate::guard::ledger::KvGap {
                expected: 50,
                got: 52,
            }),
            ..there(101, Some(3))
        };
        let owing = KvRecord {
            full_sync_pending: true,
            ..there(101, Some(3))
        };
        for bad in [&gapped, &owing] {
            assert_eq!(
                code(&vouching(&l, 101, Some(bad), Some(&t)), None, 101),
                "unknown_replica"
            );
            assert_eq!(
                code(&vouching(&l, 101, Some(&node), Some(bad)), None, 101),
                "unknown_replica"
            );
        }
        // The replica's session there was open at an unclean stop.
        let open = KvRecord {
            open: true,
            ..there(101, Some(3))
        };
        let mut f = vouching(&l, 101, Some(&node), Some(&open));
        assert_eq!(code(&f, None, 101), "pass");
        if let Some(v) = f.vouch.as_mut() {
            v.unclean_stop = true;
        }
        assert_eq!(code(&f, None, 101), "unknown_replica");
    }

    #[test]
    fn kvrocks_a_newer_record_elsewhere_or_an_own_id_ends_the_vouch() {
        const M: &str = "C3EORR3YM0FAK7BG";
        let mut l = LedgerData::new();
        l.kvrocks.saw_master_replid(M);
        let node = there(101, Some(3));
        let t = there(101, Some(3));
        let mut f = vouching(&l, 101, Some(&node), Some(&t));
        assert_eq!(code(&f, None, 61), "pass");
        // T was served by another link since (moved to another shard, say).
        if let Some(v) = f.vouch.as_mut() {
            v.newer_at = Some("n7");
        }
        assert_eq!(code(&f, None, 61), "unknown_replica");
        // The old master presenting an id no batch carried: a write of its own at its end.
        let m = KvRecord {
            source: true,
            ..there(90, Some(3))
        };
        let f = vouching(&l, 101, Some(&node), Some(&m));
        assert_eq!(code(&f, Some(M), 101), "pass");
        assert_eq!(code(&f, Some("X4N29DXBT7N4ZKU9"), 99), "unknown_id");
    }

    #[test]
    fn kvrocks_a_vouched_replica_still_answers_for_its_id() {
        const M: &str = "C3EORR3YM0FAK7BG";
        const OWN: &str = "X4N29DXBT7N4ZKU9";
        let mut l = LedgerData::new();
        l.kvrocks.saw_master_replid(M);
        let node = there(101, Some(3));
        let t = KvRecord {
            ids: vec![crate::guard::ledger::KvIdRange {
                from: 1,
                replid: Some(M.into()),
            }],
            replid: Some(M.into()),
            ..there(101, Some(3))
        };
        let f = vouching(&l, 101, Some(&node), Some(&t));
        assert_eq!(code(&f, Some(M), 101), "pass");
        assert_eq!(code(&f, Some(OWN), 101), "local_write");
    }

    proptest! {
        /// A master writes sequences 1..; the promoted node applied `h` of them and was last
        /// read holding `x <= h` while fed; then it writes its own. It was delivered up to
        /// `d_node - 1`: when that is below `h`, its sequences from `d_node` on are writes of
        /// its own. A replica applied `t` sequences and asks for `t + 1`; it was delivered up to
        /// `d_t - 1`, and holds writes of its own from `d_t` on when that is below `t`. A pass
        /// means its data is the promoted node's below the sequence it asks for; an honest
        /// resume with clean records is passed.
        #[test]
        fn kvrocks_a_vouched_resume_never_crosses_the_promotion(
            h in 0u64..200,
            lag in 0u64..4,
            d_node_off in -3i64..5,
            t_off in -6i64..6,
            d_t_off in -3i64..5,
            same_epoch in prop::bool::weighted(0.8),
            source in prop::bool::weighted(0.2),
        ) {
            let x = h.saturating_sub(lag);
            let t = (h as i64 + t_off).max(0) as u64;
            let d_node = (h as i64 + 1 + d_node_off).max(1) as u64;
            let d_t = (t as i64 + 1 + d_t_off).max(1) as u64;
            let node = there(d_node, Some(7));
            let epoch = Some(if same_epoch { 7 } else { 6 });
            let rec = KvRecord { source, ..there(d_t, epoch) };
            let l = LedgerData::new();
            let f = vouching(&l, x + 1, Some(&node), Some(&rec));
            let v = judge(&f, None, t + 1);
            // The old master's history the node holds, and the replica's. Fed in another epoch
            // of the old master's link, the replica holds another history from some point on.
            let node_holds = h.min(d_node - 1);
            let mut replica_holds = if source { t } else { t.min(d_t - 1) };
            if !same_epoch {
                replica_holds = replica_holds.min(t / 2);
            }
            if v == Verdict::Pass && t > 0 {
                prop_assert!(
                    t <= node_holds && t <= replica_holds,
                    "passed {} with the node holding the old master's data up to {} and the replica up to {}",
                    t + 1, node_holds, replica_holds
                );
            }
            if same_epoch && t <= x && x < d_node && (source || t < d_t) {
                prop_assert_eq!(v, Verdict::Pass);
            }
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
        /// A PSYNC, then up to this many batches; whether a full sync it is told to run
        /// completes (a replica may crash or be stopped before its `_fetch_file`s are done).
        Attach(u8, bool),
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
            4 => ((0u8..6), prop::bool::weighted(0.8)).prop_map(|(n, c)| KvOp::Attach(n, c)),
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

        fn attach(&mut self, stream: u8, completes: bool) -> Result<(), TestCaseError> {
            // A new connection: what the old one delivered and the replica did not apply is gone.
            self.pending.clear();
            let (replid, seq) = self.request();
            let rec = self.ledger.kvrocks.replicas.get(R).cloned();
            let f = Facts {
                replica: rec.as_ref(),
                full_sync_seen: self.full_sync_seen,
                checkpoint_seq: self.checkpoint,
                ..kv(&self.ledger)
            };
            let v = judge(&f, replid.as_deref(), seq);
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
            if rec
                .as_ref()
                .is_some_and(|r| r.full_sync_pending && !self.full_sync_seen)
            {
                // Told to full-sync and no full sync since: nothing it asks can be vouched for.
                prop_assert!(v != Verdict::Pass, "passed {seq} before the owed full sync");
            }
            if v != Verdict::Pass || !accepts {
                // Refused by replguard or by the master: the replica owes a full sync and runs
                // it, or stops before it completes; its next PSYNC after a complete one starts
                // new books.
                self.ledger
                    .kvrocks
                    .update(R, |r| r.full_sync_pending = true);
                self.full_sync_seen = false;
                if completes {
                    self.full_sync();
                }
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
                KvOp::Attach(n, completes) => self.attach(*n, *completes)?,
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
