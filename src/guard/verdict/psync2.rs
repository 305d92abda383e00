//! PSYNC2 (Redis, Valkey): offsets. A replica at offset `o` asks `PSYNC <id> <o+1>`; the
//! requested offset is the first byte it wants. A request is consistent when every byte before
//! it came from the same history the master would continue, which replguard can vouch for only
//! from its own record of what it delivered.

use super::{Reason, UnknownReplica, Verdict};
use crate::guard::ledger::{LedgerData, ReplicaRecord, StaleMaster};

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
    /// The master serves a lineage the ledger knows was handed over to another.
    pub stale_master: Option<&'a StaleMaster>,
    /// The operator allowed replicas to sync from an empty or stale master.
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
    // 1b. A stale master would roll back a replica filled from the lineage that took over.
    if let (Some(s), Some(rec)) = (facts.stale_master, facts.replica) {
        if !facts.allow_empty_master && facts.ledger.past_stale(rec, s) {
            return Verdict::Hold(Reason::StaleMaster {
                master_replid: s.replid.clone(),
                newer: s.newer.clone(),
                switch: s.switch,
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
    // A node the group saw serve an id as master holds that id's own history, however far.
    let held = if rec.source { u64::MAX } else { rec.offset };
    let delivered = shared_delivery(facts.ledger, &rec.replid, held, id);
    if delivered
        .checked_add(1)
        .is_some_and(|next| requested > next)
    {
        return full(if facts.unclean_stop && rec.open {
            Reason::UncleanStop {
                replid,
                recorded: delivered,
                requested,
            }
        } else {
            Reason::BeyondDelivered {
                replid,
                delivered,
                requested,
            }
        });
    }
    Verdict::Pass
}

/// How much of what the record says was delivered lies on `id`'s history: all of it when `id`
/// is the record's id or an earlier one, else up to the first switch on the way from the
/// record's id to `id` (the bytes after a switch belong to the history that was left).
fn shared_delivery(ledger: &LedgerData, replid: &str, offset: u64, id: &str) -> u64 {
    let chain = ledger.chain(replid);
    let Some(pos) = chain.iter().position(|e| e.replid == id) else {
        return offset;
    };
    chain[..pos]
        .iter()
        .filter_map(|e| e.superseded.as_ref())
        .map(|sw| sw.at.saturating_sub(1))
        .fold(offset, u64::min)
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
            stale_master: None,
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
    fn a_record_at_the_last_offset_there_is_cannot_be_asked_past() {
        // A ledger file may hold any number (found by the ledger fuzz target: the next offset
        // of such a record overflowed).
        let mut l = LedgerData::new();
        l.deliver(R, A, 100, false);
        l.epochs[0].last_offset = u64::MAX;
        l.replicas.get_mut(R).unwrap().offset = u64::MAX;
        assert_eq!(judge(&facts(&l), A, i64::MAX), Verdict::Pass);
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
            replica: false,
        });
        assert_eq!(judge(&facts(&l), A, 101), Verdict::Pass);
        l.deliver(R, A, 130, false); // a record beyond the switch cannot make it valid
        assert_eq!(
            judge(&facts(&l), A, 131).reason().unwrap().code(),
            "superseded_beyond_switch"
        );
    }

    #[test]
    fn a_record_vouches_for_a_later_id_only_up_to_the_switch() {
        // Delivered A up to 100; the master then restarted from a snapshot at 50 and serves B.
        let mut l = LedgerData::new();
        l.deliver(R, A, 100, false);
        l.observe_master(&MasterView {
            replid: B.into(),
            replid2: A.into(),
            second_offset: 51,
            offset: 90,
            empty: false,
            replica: false,
        });
        // A replica that holds B's history to 50 came by it honestly through the link.
        assert_eq!(judge(&facts(&l), B, 51), Verdict::Pass);
        // Past 50 the link delivered A's abandoned bytes, not B's.
        assert_eq!(
            judge(&facts(&l), B, 80),
            Verdict::ForceFull(Reason::BeyondDelivered {
                replid: B.into(),
                delivered: 50,
                requested: 80
            })
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
    fn a_node_seen_serving_an_id_resumes_it_up_to_the_switch() {
        let mut l = LedgerData::new();
        l.observe_master(&MasterView {
            replid: A.into(),
            replid2: NO_REPLID.into(),
            second_offset: -1,
            offset: 100,
            empty: false,
            replica: false,
        });
        l.vouch_source(R, A, 100);
        // It took writes after it was last read: its data under A is still A's.
        assert_eq!(judge(&facts(&l), A, 151), Verdict::Pass);
        // Another node took over at 201: beyond it, the old master's writes are its own.
        l.supersede(A, B, 201);
        assert_eq!(judge(&facts(&l), A, 201), Verdict::Pass);
        assert_eq!(
            judge(&facts(&l), A, 202).reason().unwrap().code(),
            "superseded_beyond_switch"
        );
        // A delivered record claims no more than was delivered.
        l.deliver(R, A, 100, false);
        assert_eq!(
            judge(&facts(&l), A, 151).reason().unwrap().code(),
            "beyond_delivered"
        );
    }

    #[test]
    fn a_stale_master_holds_replicas_filled_past_it_until_allowed() {
        let mut l = LedgerData::new();
        l.see(A, 100);
        l.supersede(A, B, 101);
        l.deliver(R, B, 300, false);
        l.deliver("127.0.0.1:6390", A, 80, false);
        let stale = l
            .stale_master(&MasterView {
                replid: A.into(),
                replid2: NO_REPLID.into(),
                second_offset: -1,
                offset: 100,
                empty: false,
                replica: false,
            })
            .unwrap();
        let mut f = facts(&l);
        f.stale_master = Some(&stale);
        let v = judge(&f, B, 301);
        assert_eq!(v.reason().unwrap().code(), "stale_master", "{v:?}");
        assert_eq!(judge(&f, "?", -1).name(), "hold");
        // A replica that never went past the hand-over is not rolled back.
        f.replica = l.replicas.get("127.0.0.1:6390");
        assert_eq!(judge(&f, A, 81), Verdict::Pass);
        f.replica = l.replicas.get(R);
        f.allow_empty_master = true;
        assert_ne!(judge(&f, B, 301).name(), "hold");
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
    // replguard would see; the verdict must never pass an unsafe resume it could have told
    // apart, and must pass an honest replica's resume when nothing happened that it cannot
    // vouch for.
    //
    // Besides failovers and master restarts, the model has: sessions still streaming when
    // replguard is killed (their books lag and stay open: an unclean stop), a master that comes
    // back empty, replicas synced straight from the master or from another server (the ledger
    // never sees it), and both `unknown_replica` policies and `allow_empty_master` settings.

    #[derive(Debug, Clone)]
    enum Op {
        Write(u8),
        Deliver(usize),
        /// A session that streams and whose books the keeper wrote `lag` bytes behind.
        Stream(usize, u8),
        /// replguard is killed: streaming sessions' books stay open and behind.
        UncleanStop,
        /// replguard stops cleanly: each streaming session writes its exact books.
        CleanStop,
        Promote,
        RestartFrom(prop::sample::Index),
        RestartSameId(prop::sample::Index),
        /// The master restarts with no data (a new id, nothing before it).
        Wipe,
        /// A replica syncs straight from the master, around replguard.
        SyncElsewhere(usize),
        /// A replica syncs from another server altogether.
        SyncForeign(usize, u8),
        Lie(usize, u8),
        Resume(usize),
        FullSync(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (1u8..5).prop_map(Op::Write),
            3 => (0usize..2).prop_map(Op::Deliver),
            2 => ((0usize..2), (0u8..4)).prop_map(|(r, l)| Op::Stream(r, l)),
            1 => Just(Op::UncleanStop),
            1 => Just(Op::CleanStop),
            1 => Just(Op::Promote),
            1 => any::<prop::sample::Index>().prop_map(Op::RestartFrom),
            1 => any::<prop::sample::Index>().prop_map(Op::RestartSameId),
            1 => Just(Op::Wipe),
            1 => (0usize..2).prop_map(Op::SyncElsewhere),
            1 => ((0usize..2), (1u8..4)).prop_map(|(r, n)| Op::SyncForeign(r, n)),
            1 => ((0usize..2), (1u8..4)).prop_map(|(r, d)| Op::Lie(r, d)),
            3 => (0usize..2).prop_map(Op::Resume),
            1 => (0usize..2).prop_map(Op::FullSync),
        ]
    }

    /// What the model knows of one replica.
    #[derive(Debug, Clone, Default)]
    struct Replica {
        data: Vec<u64>,
        /// The (id, offset) it will claim.
        replid: String,
        offset: u64,
        /// Everything it holds came through replguard.
        vouched: bool,
        /// A session streaming to it whose exact books are not written yet: the offset.
        streaming: Option<u64>,
        /// Its books were left open by an unclean stop.
        uncertain: bool,
    }

    struct Model {
        next_token: u64,
        next_id: u64,
        history: Vec<u64>,
        replid: String,
        /// (replid2, second_offset)
        prev: Option<(String, u64)>,
        /// The master came back empty and nothing was written since.
        empty: bool,
        replicas: Vec<Replica>,
        ledger: LedgerData,
        policy: UnknownReplica,
        allow_empty: bool,
    }

    fn id(n: u64) -> String {
        format!("{n:040x}")
    }

    impl Model {
        fn new(policy: UnknownReplica, allow_empty: bool) -> Self {
            let mut m = Model {
                next_token: 1,
                next_id: 2,
                history: vec![],
                replid: id(1),
                prev: None,
                empty: false,
                replicas: vec![Replica::default(), Replica::default()],
                ledger: LedgerData::new(),
                policy,
                allow_empty,
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
                empty: self.empty,
                replica: false,
            });
        }
        fn safe(&self, r: usize, o: u64) -> bool {
            let data = &self.replicas[r].data;
            o >= 1 && data.len() as u64 == o - 1 && self.history.starts_with(data)
        }
        /// Whether the master itself would accept (PSYNC2 rule, backlog unlimited).
        fn master_accepts(&self, rid: &str, o: u64) -> bool {
            let id_ok =
                rid == self.replid || self.prev.as_ref().is_some_and(|(p, s)| p == rid && o <= *s);
            id_ok && o <= self.history.len() as u64 + 1
        }
        fn judge(&self, r: usize, rid: &str, o: i64) -> Verdict {
            let f = Facts {
                ledger: &self.ledger,
                replica: self.ledger.replicas.get(&Self::identity(r)),
                unclean_stop: self.replicas[r].uncertain,
                empty_master: self.empty.then_some(self.replid.as_str()),
                stale_master: None,
                allow_empty_master: self.allow_empty,
                unknown_replica: self.policy,
            };
            judge(&f, rid, o)
        }
        /// A sync through replguard: the replica ends equal to the master, its books exact.
        fn deliver(&mut self, r: usize, open: Option<u64>) {
            let off = self.history.len() as u64;
            let recorded = open.map_or(off, |lag| off.saturating_sub(lag));
            self.replicas[r] = Replica {
                data: self.history.clone(),
                replid: self.replid.clone(),
                offset: off,
                vouched: true,
                streaming: open.map(|_| off),
                uncertain: false,
            };
            let rid = self.replid.clone();
            self.ledger
                .deliver(&Self::identity(r), &rid, recorded, open.is_some());
        }
        /// A streaming session ends: its exact books are written.
        fn end_session(&mut self, r: usize) {
            if let Some(off) = self.replicas[r].streaming.take() {
                let rid = self.replicas[r].replid.clone();
                self.ledger.deliver(&Self::identity(r), &rid, off, false);
            }
        }
        /// The master's connections close (it stops, or replguard stops cleanly).
        fn end_sessions(&mut self) {
            for r in 0..self.replicas.len() {
                self.end_session(r);
            }
        }
        fn new_id(&mut self) -> String {
            self.next_id += 1;
            id(self.next_id - 1)
        }
        fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
            match op {
                Op::Write(n) => {
                    for _ in 0..*n {
                        self.history.push(self.next_token);
                        self.next_token += 1;
                    }
                    self.empty = false;
                    self.observe();
                }
                Op::Deliver(r) => {
                    self.end_session(*r);
                    self.deliver(*r, None);
                }
                Op::Stream(r, lag) => {
                    self.end_session(*r);
                    self.deliver(*r, Some(u64::from(*lag)));
                }
                Op::UncleanStop => {
                    for rep in &mut self.replicas {
                        if rep.streaming.take().is_some() {
                            rep.uncertain = true;
                        }
                    }
                }
                Op::CleanStop => self.end_sessions(),
                Op::Promote => {
                    // The old master's connections close with it.
                    self.end_sessions();
                    // Failover to a replica holding the same history.
                    self.prev = Some((self.replid.clone(), self.history.len() as u64 + 1));
                    self.replid = self.new_id();
                    self.observe();
                }
                Op::RestartFrom(i) => {
                    // Master restarted from an older snapshot (Redis 7: new id, replid2 = old).
                    self.end_sessions();
                    let keep = i.index(self.history.len() + 1);
                    self.history.truncate(keep);
                    self.prev = Some((self.replid.clone(), keep as u64 + 1));
                    self.replid = self.new_id();
                    self.observe();
                }
                Op::RestartSameId(i) => {
                    // A master back at an earlier point of the same id (no replid2 to tell).
                    self.end_sessions();
                    let keep = i.index(self.history.len() + 1);
                    self.history.truncate(keep);
                    self.observe();
                }
                Op::Wipe => {
                    self.end_sessions();
                    self.history.clear();
                    self.prev = None;
                    self.replid = self.new_id();
                    self.empty = true;
                    self.observe();
                }
                Op::SyncElsewhere(r) => {
                    let rep = &mut self.replicas[*r];
                    rep.data = self.history.clone();
                    rep.replid = self.replid.clone();
                    rep.offset = self.history.len() as u64;
                    rep.vouched = false;
                }
                Op::SyncForeign(r, n) => {
                    let foreign = self.new_id();
                    let rep = &mut self.replicas[*r];
                    rep.data = (0..u64::from(*n)).map(|k| 2_000_000 + k).collect();
                    rep.replid = foreign;
                    rep.offset = u64::from(*n);
                    rep.vouched = false;
                }
                Op::Lie(r, d) => {
                    // The replica's own position moves without data (the #2214 shape).
                    let rep = &mut self.replicas[*r];
                    rep.offset += u64::from(*d);
                    rep.data.extend((0..*d).map(|k| 1_000_000 + u64::from(k)));
                    rep.vouched = false;
                }
                Op::Resume(r) => self.resume(*r)?,
                Op::FullSync(r) => self.full_sync(*r)?,
            }
            Ok(())
        }
        /// A replica reconnects and asks to resume where it is.
        fn resume(&mut self, r: usize) -> Result<(), TestCaseError> {
            // Its previous session ends first; replguard writes those books before it judges.
            self.end_session(r);
            let rep = self.replicas[r].clone();
            if rep.replid.is_empty() {
                return Ok(());
            }
            let o = rep.offset + 1;
            let v = self.judge(r, &rep.replid, o as i64);
            let safe = self.safe(r, o);
            let accepts = self.master_accepts(&rep.replid, o);
            let rec = self.ledger.replicas.get(&Self::identity(r));
            if v == Verdict::Pass && accepts && !safe {
                // Only the operator's `unknown_replica: pass` may let through a replica the
                // link cannot vouch for.
                let unvouchable =
                    rec.is_none_or(|rec| !self.ledger.same_lineage(&rec.replid, &rep.replid));
                prop_assert!(
                    self.policy == UnknownReplica::Pass && unvouchable,
                    "passed an unsafe resume {}:{o}: {:?}",
                    rep.replid,
                    rep.data
                );
            }
            let behind = rec.filter(|rec| {
                rep.uncertain
                    && o > rec.offset + 1
                    && self.ledger.same_lineage(&rec.replid, &rep.replid)
            });
            if let Some(rec) = behind {
                // Books left behind by an unclean stop vouch for nothing past them, and the
                // log says why rather than blaming the replica.
                let code = v.reason().map(|x| x.code());
                prop_assert!(
                    v != Verdict::Pass && code != Some("beyond_delivered"),
                    "books at {} after an unclean stop, asked {}: {:?}",
                    rec.offset,
                    o,
                    v
                );
            }
            // What this link delivered before the master came back empty would be wiped.
            let filled = rep.vouched && !rep.data.is_empty() && rec.is_some();
            if self.empty && !self.allow_empty && filled {
                prop_assert_eq!(
                    v.name(),
                    "hold",
                    "an empty master would wipe {:?}",
                    rep.data
                );
            }
            if safe && accepts && rep.vouched && !rep.uncertain {
                // Nothing happened that replguard cannot vouch for: it must not get in the way.
                prop_assert_eq!(v, Verdict::Pass);
            }
            Ok(())
        }
        /// A replica asks for a full sync (`PSYNC ? -1`).
        fn full_sync(&mut self, r: usize) -> Result<(), TestCaseError> {
            self.end_session(r);
            let v = self.judge(r, "?", -1);
            let rep = &self.replicas[r];
            let filled = rep.vouched && !rep.data.is_empty();
            let wipes = self.empty && filled;
            if wipes && !self.allow_empty {
                // The data this link put there would be replaced by nothing.
                prop_assert_eq!(v.name(), "hold");
            } else if !self.empty || self.allow_empty {
                prop_assert_eq!(&v, &Verdict::Pass);
            }
            if v == Verdict::Pass {
                self.deliver(r, None);
            }
            Ok(())
        }
    }

    fn policy() -> impl Strategy<Value = UnknownReplica> {
        prop_oneof![Just(UnknownReplica::Full), Just(UnknownReplica::Pass)]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]
        #[test]
        fn verdict_never_passes_an_unsafe_resume(
            policy in policy(),
            allow_empty in any::<bool>(),
            ops in prop::collection::vec(op(), 1..50)
        ) {
            let mut m = Model::new(policy, allow_empty);
            for o in &ops {
                m.apply(o)?;
            }
        }
    }
}
