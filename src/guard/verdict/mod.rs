//! The lineage verdict: a pure function from what the ledger knows and what a replica asks for
//! to Pass, ForceFull or Hold, with a reason that can be read out loud. Each flavour has its
//! own rules and its own facts ([`psync2`] for Redis and Valkey, [`kvrocks`]); the verdict and
//! the reasons, whose codes the logs, metrics and README share, are common.

pub mod kvrocks;
pub mod psync2;

pub use crate::config::UnknownReplica;
use serde::Serialize;
use std::fmt;

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
    StaleMaster {
        master_replid: String,
        newer: String,
        switch: u64,
    },
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
    /// Kvrocks, in a group: the replica's record is at link `link`, which delivered it
    /// batches up to `next - 1`; it asks for more.
    KvBeyondDeliveredThere {
        link: String,
        next: u64,
        requested: u64,
    },
    /// Kvrocks, in a group: this link's node was promoted holding link `from`'s node's history
    /// below sequence `next` only; the replica asks past it.
    KvBeyondSwitch {
        from: String,
        next: u64,
        requested: u64,
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
            Reason::StaleMaster { .. } => "stale_master",
            Reason::KvForeignId { .. } => "unknown_id",
            Reason::KvBeyondDelivered { .. } => "beyond_delivered",
            Reason::KvReplidChanged { .. } => "replid_changed",
            Reason::KvLocalWrite { .. } => "local_write",
            Reason::KvBeyondDeliveredThere { .. } => "beyond_delivered",
            Reason::KvBeyondSwitch { .. } => "superseded_beyond_switch",
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
            Reason::StaleMaster { master_replid, newer, switch } => write!(
                f,
                "the master serves id {master_replid}, which handed over to another at offset {switch}; this replica was filled from the newer lineage (now {newer}), which a sync from this master would roll back"
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
            Reason::KvBeyondDeliveredThere { link, next, requested } => write!(
                f,
                "link {link} of the group delivered this replica batches up to sequence {}; it asks to resume at {requested}, so sequences {next}..={} would never reach it",
                next.saturating_sub(1),
                requested.saturating_sub(1)
            ),
            Reason::KvBeyondSwitch { from, next, requested } => write!(
                f,
                "the node behind this link was promoted holding the history of link {from}'s node up to sequence {} only; the replica asks to resume at {requested}, so what it holds at sequences {next}..={} is not this node's (writes the old master took after the promotion)",
                next.saturating_sub(1),
                requested.saturating_sub(1)
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
