//! PSYNC2 (Redis, Valkey): offsets. A replica at offset `o` asks `PSYNC <id> <o+1>`; the
//! requested offset is the first byte it wants. A request is consistent when every byte before
//! it came from the same history the master would continue, which replguard can vouch for only
//! from its own record of what it delivered.

use super::{Reason, UnknownReplica, Verdict};
use crate::guard::ledger::{LedgerData, ReplicaRecord};

/// Everything the PSYNC2 verdict may look at.
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
}

/// Judges `PSYNC <replid> <offset>`; `offset` is the first byte wanted, -1 with `?` for a full
/// sync.
pub fn judge(facts: &Facts<'_>, replid: &str, offset: i64) -> Verdict {
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
    if requested > rec.offset + 1 {
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
        }
    }

    #[test]
    fn honest_resume_passes_and_a_claim_beyond_delivery_is_forced_full() {
        let mut l = LedgerData::new();
        l.deliver(R, A, 100, false);
        assert_eq!(judge(&facts(&l), A, 101), Verdict::Pass);
        assert_eq!(judge(&facts(&l), A, 50), Verdict::Pass);
        let v = judge(&facts(&l), A, 120);
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
    fn unknown_ids_and_unknown_replicas() {
        let mut l = LedgerData::new();
        l.see(A, 10);
        assert_eq!(
            judge(&facts(&l), B, 5).reason().unwrap().code(),
            "unknown_id"
        );
        assert_eq!(
            judge(&facts(&l), A, 5).reason().unwrap().code(),
            "unknown_replica"
        );
        let mut f = facts(&l);
        f.unknown_replica = UnknownReplica::Pass;
        assert_eq!(judge(&f, A, 5), Verdict::Pass);
        assert_eq!(judge(&facts(&l), "?", -1), Verdict::Pass);
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
        assert_eq!(judge(&facts(&l), A, 101), Verdict::Pass);
        l.deliver(R, A, 130, false); // a record beyond the switch cannot make it valid
        assert_eq!(
            judge(&facts(&l), A, 131).reason().unwrap().code(),
            "superseded_beyond_switch"
        );
    }

    #[test]
    fn empty_master_holds_known_replicas_until_allowed() {
        let mut l = LedgerData::new();
        l.deliver(R, A, 100, false);
        let mut f = facts(&l);
        f.empty_master = Some(B);
        assert_eq!(judge(&f, A, 101).name(), "hold");
        assert_eq!(judge(&f, "?", -1).name(), "hold");
        f.allow_empty_master = true;
        assert_eq!(judge(&f, A, 101), Verdict::Pass);
    }

    #[test]
    fn unclean_stop_is_named_as_such() {
        let mut l = LedgerData::new();
        l.deliver(R, A, 100, true);
        let mut f = facts(&l);
        f.unclean_stop = true;
        assert_eq!(judge(&f, A, 101), Verdict::Pass);
        assert_eq!(judge(&f, A, 200).reason().unwrap().code(), "unclean_stop");
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
                    };
                    let v = judge(&f, &rid, o as i64);
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
}
