//! The lineage guard of one link: its ledger (in memory and on disk), what it learned from the
//! master, the verdicts it gave and how the master answered them.
//!
//! Sessions ask [`Guard::judge`] before forwarding a PSYNC, and report deliveries; the link's
//! keeper task folds in the master's INFO and saves the ledger when it changed.

pub mod decision;
pub mod ledger;
pub mod route;
pub mod store;
pub mod verdict;

use crate::guard::ledger::{
    KvGap, KvIdRange, KvNodeView, KvRecord, LedgerData, MasterView, Pruned, ReplicaRecord,
    StaleMaster,
};
use crate::guard::store::{Identity, Store};
use crate::guard::verdict::{kvrocks, psync2, UnknownReplica, Verdict};
use dashmap::DashMap;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Least time between two log lines about one held replica.
const HOLD_LOG_EVERY: Duration = Duration::from_secs(60);
use tracing::{debug, error, info, warn};

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

/// The guard of one link. The books (ledger, ownership, Kvrocks full-sync books) are
/// [`Books`], shared by every link of a group; what concerns the node behind this link (an
/// empty or stale master, the operator's release, the policy, the counters) is its own.
/// Locks are taken briefly, never across an await, and never two at once; the counters are
/// atomics, and `last` (decisions for /status) is written after the books' lock is released.
pub struct Guard {
    books: Arc<Books>,
    /// In a group, the link's name: the Kvrocks books of a group are kept per link (see
    /// [`Guard::kv_key`]).
    kv_scope: Option<String>,
    /// What the link's keeper learned about the node behind it.
    node: Mutex<Node>,
    /// The identities the node behind this link presents when it is itself a replica: the
    /// link's listener and the node's own address (`ip:port`).
    node_identities: Mutex<Vec<String>>,
    /// Verdicts given on this link, by (verdict, reason code, action).
    counts: Mutex<BTreeMap<(&'static str, &'static str, &'static str), u64>>,
    allow_empty: AtomicBool,
    /// `allow_empty_master` from the configuration: allowed whatever the operator did at runtime.
    allow_empty_config: AtomicBool,
    /// `unknown_replica` in force: `true` for `pass`.
    unknown_pass: AtomicBool,
    /// Resumes the master accepted although the verdict was ForceFull (observe mode).
    pub unsafe_accepted: AtomicU64,
    pub holds: AtomicU64,
    pub last: DashMap<String, Decision>,
    /// Kvrocks: gaps seen in streams relayed from the master.
    pub kv_gaps: AtomicU64,
}

/// What a link knows about the node behind it, from its keeper.
#[derive(Debug, Default)]
struct Node {
    /// The master's current id when it showed a brand-new, empty lineage.
    empty_master: Option<String>,
    /// The master serves a lineage the ledger knows was handed over to another.
    stale: Option<StaleMaster>,
}

/// The books of a link, or of every link of a group: the ledger and its file, and who writes
/// which replica's records.
pub struct Books {
    /// The link whose books these are, when they are one link's.
    link: Option<String>,
    /// The group, when the books are a group's.
    group: Option<String>,
    /// Most replica records the ledger keeps (`max_replica_records`).
    max_records: std::sync::atomic::AtomicUsize,
    store: Arc<Store>,
    state: Mutex<State>,
    dirty: AtomicBool,
}

/// The part of a guard behind its lock.
#[derive(Default)]
struct State {
    data: LedgerData,
    /// Replicas whose record was open when replguard last stopped without a clean shutdown.
    uncertain: HashSet<String>,
    /// Kvrocks: full syncs relayed per replica address.
    kv_fetches: HashMap<IpAddr, FetchBook>,
    /// Kvrocks: replicas refused a resume, with their address and its full-sync count then.
    kv_refused: HashMap<String, (IpAddr, u64)>,
    /// The session whose sync the master accepted last, per replica, and the address it came
    /// from: only it writes the replica's books, so a previous session that ends late never
    /// overwrites them.
    owners: HashMap<String, (u64, String)>,
    /// Held replicas: when their hold was last logged, and the holds since.
    holds_logged: HashMap<String, (Instant, u64)>,
}

impl State {
    /// The other link of the group streaming to the node known by `identities` now: the
    /// newest of its open records there.
    fn kv_feeding_link(&self, link: &str, identities: &[String]) -> Option<String> {
        self.data
            .kvrocks
            .replicas
            .iter()
            .filter(|(k, r)| r.open && !r.source && !self.uncertain.contains(*k))
            .filter_map(|(k, r)| {
                let (from, id) = ledger::split_link_key(k)?;
                (from != link && identities.iter().any(|i| i == id)).then_some((from, r))
            })
            .max_by_key(|(_, r)| r.updated_unix)
            .map(|(from, _)| from.to_string())
    }

    /// What the group holds for `replica` (at this link, `link`, it has no record) at the link
    /// that fed this link's node before its promotion, if it was promoted so.
    fn kv_vouch<'a>(
        &'a self,
        link: &str,
        identities: &[String],
        replica: &str,
    ) -> Option<kvrocks::Vouch<'a>> {
        let books = &self.data.kvrocks;
        let node = books.nodes.get(link).filter(|n| n.master)?;
        let sw = node.switch.as_ref()?;
        let from = sw.from.as_str();
        let node_rec = identities
            .iter()
            .filter_map(|id| books.replicas.get(&ledger::link_key(from, id)))
            .filter(|r| !r.source)
            .max_by_key(|r| r.updated_unix);
        let key = ledger::link_key(from, replica);
        let rec = books.replicas.get(&key);
        // The replica's newest record in the group is the one that speaks for its data.
        let newer_at = rec.and_then(|r| {
            books
                .replicas
                .iter()
                .filter(|(k, o)| !o.source && o.updated_unix >= r.updated_unix && *k != &key)
                .find_map(|(k, _)| {
                    let (l, id) = ledger::split_link_key(k)?;
                    (id == replica).then_some(l)
                })
        });
        // `from`'s node, by the identities its link vouched for it under, fed here now.
        let chain = books
            .replicas
            .iter()
            .filter(|(_, r)| r.source)
            .filter_map(|(k, _)| match ledger::split_link_key(k)? {
                (l, id) if l == from => books.replicas.get(&ledger::link_key(link, id)),
                _ => None,
            })
            .filter(|r| !r.source)
            .max_by_key(|r| r.updated_unix);
        Some(kvrocks::Vouch {
            from,
            switch: sw.next,
            node: node_rec,
            replica: rec,
            unclean_stop: self.uncertain.contains(&key),
            epoch: node.epoch,
            chain,
            newer_at,
        })
    }

    /// Whether `session` may write `replica`'s books.
    fn owns(&self, replica: &str, session: u64) -> bool {
        self.owners.get(replica).is_none_or(|o| o.0 == session)
    }

    /// The address of the session that owns `replica`'s books.
    fn owner_peer(&self, replica: &str) -> Option<String> {
        self.owners.get(replica).map(|o| o.1.clone())
    }
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

impl State {
    /// Whether a complete full sync from `ip` passed since `replica` was refused, and then the
    /// last sequence of its checkpoint when known.
    fn kv_full_sync(&self, replica: &str, ip: IpAddr) -> Option<Option<u64>> {
        let (at_ip, before) = self.kv_refused.get(replica).copied()?;
        let book = self.kv_fetches.get(&ip).copied().unwrap_or_default();
        (at_ip == ip && book.complete > before)
            .then(|| book.checkpoint_seq.filter(|_| !book.checkpoint_unknown))
    }
}

impl Books {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Loads the ledger of link `link` (whose configuration names `master`); a missing,
    /// corrupt or foreign file is reported and means no knowledge.
    pub fn open_link(
        state_dir: &std::path::Path,
        link: &str,
        master: &str,
        max_records: usize,
    ) -> Arc<Books> {
        let store = Store::new(state_dir, Identity::link(link, master));
        Self::open(Some(link), None, store, max_records)
    }

    /// Loads the ledger of group `group`, shared by the links that name it.
    pub fn open_group(state_dir: &std::path::Path, group: &str, max_records: usize) -> Arc<Books> {
        let store = Store::for_group(state_dir, group);
        Self::open(None, Some(group), store, max_records)
    }

    fn open(
        link: Option<&str>,
        group: Option<&str>,
        store: Store,
        max_records: usize,
    ) -> Arc<Books> {
        let data = match store.load() {
            Ok(Some(d)) => d,
            Ok(None) => {
                info!(link, group, path = %store.path().display(), "no ledger yet: starting with no knowledge");
                LedgerData::new()
            }
            Err(e) => {
                error!(link, group, "{e}");
                LedgerData::new()
            }
        };
        let books = Books {
            link: link.map(str::to_string),
            group: group.map(str::to_string),
            max_records: std::sync::atomic::AtomicUsize::new(max_records),
            store: Arc::new(store),
            state: Mutex::new(State::default()),
            dirty: AtomicBool::new(false),
        };
        books.take_in(data, None);
        Arc::new(books)
    }

    /// Folds `data` (a ledger file's content) into the books: lineage merged, the newer record
    /// of each replica kept; `from` names where it came from, for the log.
    fn take_in(&self, mut data: LedgerData, from: Option<&std::path::Path>) {
        let (link, group) = (self.link.as_deref(), self.group.as_deref());
        let max = self.max_records.load(Relaxed);
        self.log_pruned(max, data.prune_replicas(max));
        let open: Vec<String> = data
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
        if !open.is_empty() {
            warn!(
                link,
                group,
                replicas = %open.join(", "),
                "replguard did not stop cleanly last time: these replicas' sessions were open, so their recorded offsets are lower bounds; a resume beyond them is forced to a full sync"
            );
        }
        let mut st = self.state();
        st.uncertain.extend(open);
        if let Some(path) = from {
            st.data.absorb(data);
            self.dirty.store(true, Relaxed);
            info!(link, group, from = %path.display(), epochs = st.data.epochs.len(),
                  replicas = st.data.replicas.len(), "a link's own ledger joined the group's");
        } else {
            st.data = data;
            info!(
                link,
                group,
                epochs = st.data.epochs.len(),
                replicas = st.data.replicas.len(),
                "ledger loaded"
            );
        }
        self.prune(&mut st);
    }

    /// Link `link` (whose configuration names `master`) joins these group books: a ledger it
    /// kept on its own is folded in and moved aside, so its replicas stay known.
    pub fn join(&self, state_dir: &std::path::Path, link: &str, master: &str) {
        let Some(group) = self.group.as_deref() else {
            return;
        };
        let own = Store::new(state_dir, Identity::link(link, master));
        match own.load() {
            Ok(Some(data)) => {
                self.take_in(data, Some(own.path()));
                let aside = own.path().with_extension(format!("json.joined-{group}"));
                if let Err(e) = std::fs::rename(own.path(), &aside) {
                    warn!(link, error = %e, "cannot move the link's own ledger aside");
                }
            }
            Ok(None) => {}
            Err(e) => error!(link, "{e}"),
        }
    }

    /// One log line per replica record pruned.
    fn log_pruned(&self, max: usize, pruned: Vec<(String, Pruned)>) {
        for (replica, rec) in pruned {
            warn!(
                link = self.link.as_deref(),
                group = self.group.as_deref(),
                replica = replica.as_str(),
                peer = rec.peer().unwrap_or("-"),
                updated_unix = rec.updated_unix(),
                max_replica_records = max,
                "ledger holds too many replica records: pruned the oldest (that replica is unknown from now on)"
            );
        }
    }

    /// The group these books belong to, if any.
    pub fn group(&self) -> Option<&str> {
        self.group.as_deref()
    }

    /// Prunes the oldest replica records beyond `max_replica_records`, with what they owned.
    fn prune(&self, st: &mut State) {
        let max = self.max_records.load(Relaxed);
        let pruned = st.data.prune_replicas(max);
        for (k, _) in &pruned {
            st.owners.remove(k);
            st.uncertain.remove(k);
            st.kv_refused.remove(k);
            st.holds_logged.remove(k);
        }
        self.log_pruned(max, pruned);
    }

    /// Saves the ledger if it changed since the last save (on the blocking pool, through the
    /// file's one writer); a failed save leaves it due.
    pub async fn save_if_dirty(&self) {
        if self.dirty.swap(false, Relaxed) {
            let (gen, snapshot) = {
                let st = self.state();
                (self.store.generation(), st.data.clone())
            };
            if !self.store.save(gen, snapshot).await {
                self.dirty.store(true, Relaxed);
            }
        }
    }
}

impl Guard {
    fn state(&self) -> MutexGuard<'_, State> {
        self.books.state()
    }

    fn node(&self) -> MutexGuard<'_, Node> {
        self.node.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn mark_dirty(&self) {
        self.books.dirty.store(true, Relaxed);
    }

    /// Loads the ledger of a link on its own (no group): see [`Books::open_link`].
    pub fn open(
        state_dir: &std::path::Path,
        link: &str,
        master: &str,
        policy: UnknownReplica,
        allow_empty: bool,
        max_records: usize,
    ) -> Guard {
        let books = Books::open_link(state_dir, link, master, max_records);
        Guard::new(link, books, policy, allow_empty)
    }

    /// The guard of link `link` over `books` (its own, or its group's).
    pub fn new(link: &str, books: Arc<Books>, policy: UnknownReplica, allow_empty: bool) -> Guard {
        Guard {
            kv_scope: books.group.is_some().then(|| link.to_string()),
            books,
            node: Mutex::new(Node::default()),
            node_identities: Mutex::new(Vec::new()),
            counts: Mutex::new(BTreeMap::new()),
            allow_empty: AtomicBool::new(allow_empty),
            allow_empty_config: AtomicBool::new(allow_empty),
            unknown_pass: AtomicBool::new(policy == UnknownReplica::Pass),
            unsafe_accepted: AtomicU64::new(0),
            holds: AtomicU64::new(0),
            last: DashMap::new(),
            kv_gaps: AtomicU64::new(0),
        }
    }

    /// The key of a Kvrocks replica's books. A Kvrocks node's sequences are its own: a
    /// replica's record from one node's link says nothing of another node's history at the
    /// same sequence (Kvrocks without `use-rsid-psync` carries no id to tell them apart), so in
    /// a group each link keeps its own Kvrocks records, under `<link>/<replica>`.
    fn kv_key<'a>(&self, replica: &'a str) -> std::borrow::Cow<'a, str> {
        match &self.kv_scope {
            Some(link) => ledger::link_key(link, replica).into(),
            None => replica.into(),
        }
    }

    /// The books this guard keeps (shared by its group's links).
    pub fn books(&self) -> &Arc<Books> {
        &self.books
    }

    /// Judges a PSYNC; also returns the ledger facts used, in words for the log.
    pub fn judge(&self, replica: &str, replid: &str, offset: i64) -> (Verdict, String) {
        let (empty, stale) = {
            let node = self.node();
            (node.empty_master.clone(), node.stale.clone())
        };
        let st = self.state();
        let data = &st.data;
        let uncertain = st.uncertain.contains(replica);
        let rec = data.replicas.get(replica);
        let facts = psync2::Facts {
            ledger: data,
            replica: rec,
            unclean_stop: uncertain,
            empty_master: empty.as_deref(),
            stale_master: stale.as_ref(),
            allow_empty_master: self.allow_empty.load(Relaxed),
            unknown_replica: self.unknown_replica(),
        };
        let v = psync2::judge(&facts, replid, offset);
        (v, describe(data, rec, replid, uncertain, empty.as_deref()))
    }

    /// Judges a Kvrocks PSYNC from `replica` (connected from `ip`); also returns the facts used.
    /// `fresh`: the link read its node just now (in a group, the vouch needs it).
    pub fn judge_kvrocks(
        &self,
        replica: &str,
        ip: IpAddr,
        replid: Option<&str>,
        seq: u64,
        fresh: bool,
    ) -> (Verdict, String) {
        let raw = replica;
        let key = self.kv_key(replica);
        let replica: &str = &key;
        let st = self.state();
        let data = &st.data;
        let uncertain = st.uncertain.contains(replica);
        let rec = data.kvrocks.replicas.get(replica);
        let full_sync = st.kv_full_sync(replica, ip);
        let seen = full_sync.is_some();
        let identities = self.node_identities();
        let vouch = match (&self.kv_scope, rec) {
            (Some(link), None) if fresh => st.kv_vouch(link, &identities, raw),
            _ => None,
        };
        let facts = kvrocks::Facts {
            books: &data.kvrocks,
            replica: rec,
            unclean_stop: uncertain,
            unknown_replica: self.unknown_replica(),
            full_sync_seen: seen,
            checkpoint_seq: full_sync.flatten(),
            vouch,
        };
        let v = kvrocks::judge(&facts, replid, seq);
        (
            v,
            describe_kvrocks(data, rec, uncertain, full_sync, vouch.as_ref()),
        )
    }

    /// Folds in what the link read of its Kvrocks node. Only a group's links read their
    /// nodes: a promoted node's switch (see [`ledger::KvNode`]) lets the group vouch for the
    /// replicas fed by the link that fed it.
    pub fn kv_observe_node(&self, v: &KvNodeView) {
        let Some(link) = &self.kv_scope else {
            return;
        };
        let identities = self.node_identities();
        let mut st = self.state();
        let fed_by = (!v.master)
            .then(|| st.kv_feeding_link(link, &identities))
            .flatten();
        debug!(link = %link, master = v.master, latest = v.latest, fed_by = ?fed_by, "node read");
        let before = st.data.kvrocks.nodes.get(link).cloned();
        let mut changed =
            st.data
                .kvrocks
                .observe_node(link, v, fed_by.as_deref(), ledger::now_unix());
        if let Some(epoch) = st.data.kvrocks.master_epoch(link) {
            changed |= st
                .data
                .kvrocks
                .vouch_sources(link, &identities, epoch, v.latest);
        }
        let now = st.data.kvrocks.nodes.get(link).cloned();
        if changed {
            self.books.prune(&mut st);
        }
        drop(st);
        if changed {
            self.mark_dirty();
        }
        let (Some(now), was) = (now, before) else {
            return;
        };
        if now.epoch != was.as_ref().map_or(0, |w| w.epoch) {
            match &now.switch {
                Some(sw) => info!(
                    link = %link,
                    epoch = now.epoch,
                    fed_by = %sw.from,
                    held = sw.next.saturating_sub(1),
                    "the node is master: promoted from a replica fed by link {}, holding its sequences up to {}; replicas fed there resume here up to sequence {}",
                    sw.from,
                    sw.next.saturating_sub(1),
                    sw.next
                ),
                None => info!(
                    link = %link,
                    epoch = now.epoch,
                    latest = now.latest,
                    "the node is master (a new epoch: not read as a replica fed in the group just before); replicas of other links resume here only after a full sync"
                ),
            }
        }
    }

    /// A Kvrocks replica was refused a resume (by the master or by replguard): it must full-sync.
    pub fn kv_refused(&self, replica: &str, ip: IpAddr) {
        let key = self.kv_key(replica);
        let replica: &str = &key;
        let mut st = self.state();
        let count = st.kv_fetches.get(&ip).map_or(0, |b| b.complete);
        st.kv_refused.insert(replica.to_string(), (ip, count));
        st.data.kvrocks.update(replica, |r| {
            r.full_sync_pending = true;
            r.open = false;
        });
        self.books.prune(&mut st);
        self.mark_dirty();
    }

    /// A `_fetch_meta` from `ip`: a full sync (with a checkpoint of its own) begins.
    pub fn kv_fetch_meta(&self, ip: IpAddr) {
        let mut st = self.state();
        let book = st.kv_fetches.entry(ip).or_default();
        book.checkpoint_seq = None;
        book.checkpoint_unknown = false;
    }

    /// A `_fetch_file` answer was relayed whole to `ip`; its files told the checkpoint's last
    /// sequence (`seq`), or could not be read (`unreadable`).
    pub fn kv_fetch_complete(&self, ip: IpAddr, seq: Option<u64>, unreadable: bool) {
        let mut st = self.state();
        let book = st.kv_fetches.entry(ip).or_default();
        book.complete += 1;
        book.checkpoint_unknown |= unreadable;
        book.checkpoint_seq = book.checkpoint_seq.max(seq);
    }

    /// The master accepted a Kvrocks PSYNC the guard passed: see [`ledger::KvBooks::start`].
    /// The record notes its node's epoch only when the PSYNC was judged on a `fresh` reading.
    pub fn kv_started(
        &self,
        replica: &str,
        session: u64,
        peer: SocketAddr,
        replid: Option<&str>,
        seq: u64,
        fresh: bool,
    ) -> Vec<KvIdRange> {
        let key = self.kv_key(replica);
        let replica: &str = &key;
        let mut st = self.state();
        st.owners
            .insert(replica.to_string(), (session, peer.to_string()));
        st.kv_refused.remove(replica);
        st.uncertain.remove(replica);
        let ids = st.data.kvrocks.start(replica, replid, seq);
        let epoch = self
            .kv_scope
            .as_deref()
            .filter(|_| fresh)
            .and_then(|l| st.data.kvrocks.master_epoch(l));
        st.data.kvrocks.update(replica, |r| {
            r.peer = Some(peer.to_string());
            r.epoch = epoch;
        });
        self.books.prune(&mut st);
        drop(st);
        self.mark_dirty();
        ids
    }

    /// Records what `session` delivered to a Kvrocks replica: batches up to `next_seq`, their
    /// ids by range. `open` while it goes on. Ignored unless it owns the replica's books.
    pub fn kv_delivered(
        &self,
        replica: &str,
        session: u64,
        next_seq: u64,
        ids: &[KvIdRange],
        open: bool,
    ) {
        let key = self.kv_key(replica);
        let replica: &str = &key;
        let mut st = self.state();
        if st.owns(replica, session) && st.data.kvrocks.deliver(replica, next_seq, ids, open) {
            self.mark_dirty();
        }
    }

    /// The master accepted `session`'s sync of `replica` (connected from `peer`): from now on
    /// it writes its books.
    pub fn claim(&self, replica: &str, session: u64, peer: SocketAddr) {
        self.state()
            .owners
            .insert(replica.to_string(), (session, peer.to_string()));
    }

    /// A batch from the master carried `replid`.
    pub fn kv_master_id(&self, replid: &str) {
        if self.state().data.kvrocks.saw_master_replid(replid) {
            self.mark_dirty();
        }
    }

    /// Records a gap in the stream delivered to a Kvrocks replica.
    pub fn kv_gap(&self, replica: &str, gap: KvGap) {
        let key = self.kv_key(replica);
        let replica: &str = &key;
        self.kv_gaps.fetch_add(1, Relaxed);
        let mut st = self.state();
        st.data.kvrocks.update(replica, |r| {
            r.gap.get_or_insert(gap);
        });
        self.books.prune(&mut st);
        drop(st);
        self.mark_dirty();
    }

    /// Counts a decision and keeps it as the replica's last.
    pub fn record(&self, replica: &str, verdict: &Verdict, d: Decision) {
        let code = verdict.reason().map_or("none", |r| r.code());
        *self
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((verdict.name(), code, d.action))
            .or_default() += 1;
        if !matches!(verdict, Verdict::Hold(_)) {
            self.state().holds_logged.remove(replica);
        }
        self.last.insert(replica.to_string(), d);
    }

    /// Whether a hold of `replica` is logged now: the first of a run, then one a minute.
    /// `Some(n)`: log it, `n` holds having gone unlogged since the last line.
    pub fn hold_log_due(&self, replica: &str) -> Option<u64> {
        let mut st = self.state();
        let now = Instant::now();
        match st.holds_logged.get_mut(replica) {
            Some((at, unlogged)) if now.duration_since(*at) < HOLD_LOG_EVERY => {
                *unlogged += 1;
                None
            }
            Some((at, unlogged)) => {
                *at = now;
                Some(std::mem::take(unlogged))
            }
            None => {
                st.holds_logged.insert(replica.to_string(), (now, 0));
                Some(0)
            }
        }
    }

    /// Folds in the master's own view; detects a brand-new empty lineage, and a master that
    /// serves a lineage the ledger knows was handed over to another.
    ///
    /// In a group, only a node that is master speaks for the lineage: a replica node's view
    /// trails its master's and is left out, and a master node's data is vouched for as its
    /// own, for the day it rejoins as a replica.
    pub fn observe(&self, link: &str, v: &MasterView) {
        let grouped = self.books.group.is_some();
        if grouped && v.replica {
            let mut node = self.node();
            if node.empty_master.take().is_some() | node.stale.take().is_some() {
                info!(link, "hold lifted: the node is a replica now");
                self.allow_empty
                    .store(self.allow_empty_config.load(Relaxed), Relaxed);
            }
            return;
        }
        let identities = self.node_identities();
        let (unrelated, stale, changed) = {
            let mut st = self.state();
            let unrelated = if grouped {
                st.data.is_unrelated_node(v, &identities)
            } else {
                st.data.is_unrelated(v)
            };
            let stale = (!v.replica).then(|| st.data.stale_master(v)).flatten();
            let mut changed = st.data.observe_master(v);
            // A node that came back empty is not vouched for under its new id: its record
            // keeps the lineage it left, which is what makes it unrelated.
            if grouped && !(unrelated && v.empty) {
                for id in &identities {
                    changed |= st.data.vouch_source(id, &v.replid, v.offset);
                }
            }
            (unrelated, stale, changed)
        };
        if changed {
            self.mark_dirty();
        }
        let mut node = self.node();
        let was_held = node.empty_master.is_some() || node.stale.is_some();
        let em = &mut node.empty_master;
        // Once held, the hold stays while the master's lineage is unrelated to what the
        // replicas hold, whether or not it has taken writes since: a single write must not let
        // its full sync wipe them. It lifts when the lineage is one they know (a promoted
        // replica, data restored with its id), or their records move on after a release.
        if em.is_some() && unrelated {
            *em = Some(v.replid.clone());
        } else if unrelated && v.empty {
            error!(
                link,
                master_replid = %v.replid,
                "the master came back EMPTY with a new replication id unrelated to this link's history: replicas this link filled are HELD (answered -LOADING) so a full sync cannot wipe them; allow with POST /links/{link}/allow-empty-master or allow_empty_master: true"
            );
            *em = Some(v.replid.clone());
        } else if let Some(old) = em.take() {
            info!(link, master_replid = %old, new_replid = %v.replid, "empty-master hold lifted: the master serves a lineage the replicas know");
        }
        if node.stale != stale {
            match &stale {
                Some(s) => error!(
                    link,
                    master_replid = %v.replid,
                    superseded = %s.replid,
                    switch = s.switch,
                    newer = %s.newer,
                    "the master serves a STALE lineage: its id {} handed over to another at offset {}, and the newer lineage (now {}) has data it lacks; replicas filled from the newer lineage are HELD (answered -LOADING) so a sync from it cannot roll them back; point the link at the newer master, or allow with POST /links/{link}/allow-empty-master or allow_empty_master: true",
                    s.replid, s.switch, s.newer
                ),
                None => {
                    info!(link, master_replid = %v.replid, "stale-master hold lifted: the master no longer serves a superseded lineage")
                }
            }
            node.stale = stale;
        }
        let held = node.empty_master.is_some() || node.stale.is_some();
        if was_held && !held {
            self.allow_empty
                .store(self.allow_empty_config.load(Relaxed), Relaxed);
        }
    }

    /// The identities the node behind this link presents as a replica.
    fn node_identities(&self) -> Vec<String> {
        self.node_identities
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Names the node behind this link: the addresses it may present as a replica (its
    /// link's listener when it announces that, and its own address).
    pub fn set_node_addresses(&self, addrs: &[SocketAddr]) {
        let ids = addrs
            .iter()
            .filter(|a| !a.ip().is_unspecified())
            .map(|a| format!("{}:{}", a.ip(), a.port()))
            .collect();
        *self
            .node_identities
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = ids;
    }

    /// Notes a `+FULLRESYNC <id> <offset>`: the master serves `id` at `offset`.
    pub fn saw_full_resync(&self, replid: &str, offset: u64) {
        self.state().data.extend(replid, offset);
        self.mark_dirty();
    }

    /// Records that `replica` has been delivered `replid` up to `offset`; `open` while its
    /// session goes on.
    /// Ignored unless `session` owns the replica's books.
    pub fn delivered(&self, replica: &str, session: u64, replid: &str, offset: u64, open: bool) {
        let mut st = self.state();
        if !st.owns(replica, session) {
            return;
        }
        let peer = st.owner_peer(replica);
        let data = &mut st.data;
        let same = data.replicas.get(replica).is_some_and(|r| {
            r.replid == replid && r.offset == offset && r.open == open && r.peer == peer
        });
        if !same {
            data.deliver(replica, replid, offset, open);
            if let Some(r) = data.replicas.get_mut(replica) {
                r.peer = peer;
            }
            self.books.prune(&mut st);
            self.mark_dirty();
        }
        st.uncertain.remove(replica);
    }

    /// The `unknown_replica` policy in force.
    pub fn unknown_replica(&self) -> UnknownReplica {
        if self.unknown_pass.load(Relaxed) {
            UnknownReplica::Pass
        } else {
            UnknownReplica::Full
        }
    }

    /// Puts a new `max_replica_records` in force; records beyond it are pruned (oldest first)
    /// when the next one is written.
    pub fn set_max_replica_records(&self, max: usize) {
        self.books.max_records.store(max, Relaxed);
    }

    /// The link was re-pointed at `master`: the ledger file names it from the next save on
    /// (which this makes due), so a restart whose configuration names it keeps the books.
    pub fn set_master(&self, master: &str) {
        self.books.store.set_master(master);
        self.mark_dirty();
    }

    /// The link now fronts another node: what was read of and vouched for the old one does not
    /// carry over (see [`ledger::KvBooks::node_replaced`]).
    pub fn node_replaced(&self) {
        if let Some(link) = &self.kv_scope {
            if self.state().data.kvrocks.node_replaced(link) {
                self.mark_dirty();
            }
        }
    }

    /// Puts a new `unknown_replica` policy in force for the verdicts to come.
    pub fn set_unknown_replica(&self, policy: UnknownReplica) {
        self.unknown_pass
            .store(policy == UnknownReplica::Pass, Relaxed);
    }

    /// Puts a new `allow_empty_master` from the configuration in force. `true` releases held
    /// replicas; `false` holds them again from the next PSYNC on, also after an operator's
    /// release (replicas that synced meanwhile keep what they got).
    pub fn set_allow_empty_master(&self, allow: bool) {
        self.allow_empty_config.store(allow, Relaxed);
        self.allow_empty.store(allow, Relaxed);
    }

    /// Lets held replicas sync from the empty master.
    pub fn allow_empty_master(&self) -> Option<String> {
        self.allow_empty.store(true, Relaxed);
        self.node().empty_master.clone()
    }

    pub fn empty_master(&self) -> Option<String> {
        self.node().empty_master.clone()
    }

    /// The superseded lineage the master serves, while it does.
    pub fn stale_master(&self) -> Option<StaleMaster> {
        self.node().stale.clone()
    }

    /// Saves the books if they changed since the last save.
    pub async fn save_if_dirty(&self) {
        self.books.save_if_dirty().await;
    }

    /// Failed ledger saves since start, and the last error while saves fail.
    pub fn save_failures(&self) -> (u64, Option<String>) {
        (
            self.books.store.failures.load(Relaxed),
            self.books.store.last_error(),
        )
    }

    pub fn counts(&self) -> Vec<((&'static str, &'static str, &'static str), u64)> {
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect()
    }

    /// What the guard knows now, for the `/status` document (shaped by [`crate::ops::status`]).
    pub fn snapshot(&self) -> GuardSnapshot {
        let (empty_master, stale_master) = {
            let node = self.node();
            (node.empty_master.clone(), node.stale.clone())
        };
        let data = self.state().data.clone();
        let last_verdicts = self
            .last
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        GuardSnapshot {
            unknown_replica: self.unknown_replica(),
            allow_empty_master: self.allow_empty.load(Relaxed),
            empty_master,
            unsafe_resumes_accepted: self.unsafe_accepted.load(Relaxed),
            holds: self.holds.load(Relaxed),
            data,
            kvrocks_stream_gaps: self.kv_gaps.load(Relaxed),
            last_verdicts,
            group: self.books.group.clone(),
            stale_master,
            ledger_file: self.books.store.path().to_path_buf(),
            ledger_save_failures: self.books.store.failures.load(Relaxed),
            ledger_last_save_error: self.books.store.last_error(),
        }
    }
}

/// A guard's state at one moment, as plain data.
#[derive(Debug, Clone)]
pub struct GuardSnapshot {
    /// The policy for replicas the ledger has never seen.
    pub unknown_replica: UnknownReplica,
    /// Whether replicas may sync from an empty master now (configuration or operator).
    pub allow_empty_master: bool,
    /// The master's id while it shows a brand-new empty lineage.
    pub empty_master: Option<String>,
    pub unsafe_resumes_accepted: u64,
    pub holds: u64,
    /// The ledger: lineage, replica records, Kvrocks books.
    pub data: LedgerData,
    pub kvrocks_stream_gaps: u64,
    /// Each replica's last decision, by replica.
    pub last_verdicts: BTreeMap<String, Decision>,
    /// The group whose ledger this is, if any.
    pub group: Option<String>,
    /// The master serves a lineage the ledger knows was handed over to another.
    pub stale_master: Option<StaleMaster>,
    pub ledger_file: std::path::PathBuf,
    pub ledger_save_failures: u64,
    pub ledger_last_save_error: Option<String>,
}

/// The Kvrocks facts a verdict used, in one line.
fn describe_kvrocks(
    data: &LedgerData,
    rec: Option<&KvRecord>,
    uncertain: bool,
    full_sync: Option<Option<u64>>,
    vouch: Option<&kvrocks::Vouch<'_>>,
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
    if let Some(v) = vouch {
        s.push_str(&format!(
            "; the node was promoted holding link {}'s history below sequence {}",
            v.from, v.switch
        ));
        let epoch = |r: &KvRecord| r.epoch.map_or("-".to_string(), |e| e.to_string());
        match v.node {
            Some(n) => s.push_str(&format!(
                ", fed there up to sequence {} (epoch {})",
                n.next_seq.saturating_sub(1),
                epoch(n)
            )),
            None => s.push_str(", no record of it there"),
        }
        match v.replica {
            Some(r) if r.source => s.push_str(&format!(
                "; the replica is that link's node (master in epoch {})",
                epoch(r)
            )),
            Some(r) => s.push_str(&format!(
                "; the replica was delivered there up to sequence {} (epoch {})",
                r.next_seq.saturating_sub(1),
                epoch(r)
            )),
            None => s.push_str("; the replica has no record there"),
        }
        if let Some(l) = v.newer_at {
            s.push_str(&format!("; its newest record is at link {l}"));
        }
        if let Some(c) = v.chain {
            s.push_str(&format!(
                "; that link's node is fed here since sequence {} (epoch {}), sent up to sequence {}",
                c.since.map_or("-".to_string(), |p| p.to_string()),
                epoch(c),
                c.next_seq.saturating_sub(1)
            ));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::ledger::NO_REPLID;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const C: &str = "cccccccccccccccccccccccccccccccccccccccc";

    fn view(replid: &str, replid2: &str, second: i64, offset: u64, replica: bool) -> MasterView {
        MasterView {
            replid: replid.into(),
            replid2: replid2.into(),
            second_offset: second,
            offset,
            empty: false,
            replica,
        }
    }

    #[test]
    fn the_links_of_a_group_judge_on_one_history() {
        let dir = tempfile::tempdir().unwrap();
        let books = Books::open_group(dir.path(), "g", 100);
        let la = Guard::new("l", books.clone(), UnknownReplica::Full, false);
        let lb = Guard::new("l", books.clone(), UnknownReplica::Full, false);
        la.set_node_addresses(&["127.0.0.1:7001".parse().unwrap()]);
        lb.set_node_addresses(&["127.0.0.1:7002".parse().unwrap()]);
        la.observe("la", &view(A, NO_REPLID, -1, 500, false));
        // A replica node's view trails its master's: it is no fork, and no source.
        lb.observe("lb", &view(A, NO_REPLID, -1, 10, true));
        assert!(books.state().data.epoch(A).unwrap().forks.is_empty());
        assert!(!books.state().data.replicas.contains_key("127.0.0.1:7002"));
        // A replica served through la ...
        la.claim("127.0.0.1:7003", 1, "127.0.0.1:40000".parse().unwrap());
        la.delivered("127.0.0.1:7003", 1, A, 500, false);
        // ... resumes through lb once lb's node took over: the shared record vouches.
        lb.observe("lb", &view(B, A, 501, 520, false));
        assert_eq!(lb.judge("127.0.0.1:7003", A, 501).0, Verdict::Pass);
        // The old master, seen serving A through la, rejoins through lb up to the switch.
        assert_eq!(lb.judge("127.0.0.1:7001", A, 501).0, Verdict::Pass);
        assert_eq!(lb.judge("127.0.0.1:7001", A, 530).0.name(), "force_full");
        // A link on its own still forces a full sync for a replica it never served.
        let alone = Guard::open(
            dir.path(),
            "alone",
            "127.0.0.1:7002",
            UnknownReplica::Full,
            false,
            100,
        );
        alone.observe("alone", &view(B, A, 501, 520, false));
        assert_eq!(alone.judge("127.0.0.1:7003", A, 501).0.name(), "force_full");
    }

    #[test]
    fn an_empty_master_of_another_lineage_in_the_group_holds_nobody() {
        let dir = tempfile::tempdir().unwrap();
        let books = Books::open_group(dir.path(), "g", 100);
        let la = Guard::new("la", books.clone(), UnknownReplica::Full, false);
        let lb = Guard::new("lb", books.clone(), UnknownReplica::Full, false);
        la.set_node_addresses(&["127.0.0.1:7001".parse().unwrap()]);
        lb.set_node_addresses(&["127.0.0.1:7002".parse().unwrap()]);
        let empty = |id: &str| MasterView {
            empty: true,
            ..view(id, NO_REPLID, -1, 0, false)
        };
        // Two shards of a cluster: la's node serves A and fed r; lb's node is a new master
        // with no data yet, as every node of a cluster being built.
        la.observe("la", &view(A, NO_REPLID, -1, 100, false));
        la.claim("r", 1, "127.0.0.1:40000".parse().unwrap());
        la.delivered("r", 1, A, 100, false);
        lb.observe("lb", &empty(B));
        assert_eq!(lb.snapshot().empty_master, None);
        assert_ne!(lb.judge("127.0.0.1:7005", C, 1).0.name(), "hold");
        // la's node coming back empty under a new id still holds the replica it fed, also
        // on a later look.
        la.observe("la", &empty(C));
        la.observe("la", &empty(C));
        assert_eq!(la.snapshot().empty_master.as_deref(), Some(C));
        assert_eq!(la.judge("r", A, 101).0.name(), "hold");
        // So does the link started afresh on the same books (replguard restarted): the node
        // was not vouched for under its empty id, its record still names the lineage it left.
        let again = Guard::new("la", books, UnknownReplica::Full, false);
        again.set_node_addresses(&["127.0.0.1:7001".parse().unwrap()]);
        again.observe("la", &empty(C));
        assert_eq!(again.snapshot().empty_master.as_deref(), Some(C));
    }

    #[test]
    fn a_stale_master_holds_until_released_or_gone() {
        let dir = tempfile::tempdir().unwrap();
        let books = Books::open_group(dir.path(), "g", 100);
        let la = Guard::new("l", books.clone(), UnknownReplica::Full, false);
        let lb = Guard::new("l", books, UnknownReplica::Full, false);
        la.observe("la", &view(A, NO_REPLID, -1, 500, false));
        lb.observe("lb", &view(B, A, 501, 600, false));
        lb.claim("r", 1, "127.0.0.1:40000".parse().unwrap());
        lb.delivered("r", 1, B, 600, false);
        // la's node still serves A: it would roll r back.
        la.observe("la", &view(A, NO_REPLID, -1, 500, false));
        assert_eq!(la.snapshot().stale_master.unwrap().newer, B);
        assert_eq!(la.judge("r", B, 601).0.name(), "hold");
        la.allow_empty_master();
        assert_ne!(la.judge("r", B, 601).0.name(), "hold");
        // Demoted, it no longer serves anything: the hold and the release end.
        la.observe("la", &view(B, A, 501, 590, true));
        assert!(la.snapshot().stale_master.is_none());
        assert!(!la.snapshot().allow_empty_master);
    }

    #[test]
    fn a_link_joining_a_group_brings_its_own_ledger() {
        let dir = tempfile::tempdir().unwrap();
        let own = Guard::open(
            dir.path(),
            "la",
            "127.0.0.1:7001",
            UnknownReplica::Full,
            false,
            100,
        );
        own.observe("la", &view(A, NO_REPLID, -1, 500, false));
        own.claim("r", 1, "127.0.0.1:40000".parse().unwrap());
        own.delivered("r", 1, A, 500, false);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(own.save_if_dirty());
        drop(own);
        let books = Books::open_group(dir.path(), "g", 100);
        books.join(dir.path(), "la", "127.0.0.1:7001");
        let lb = Guard::new("lb", books.clone(), UnknownReplica::Full, false);
        lb.observe("lb", &view(B, A, 501, 520, false));
        assert_eq!(lb.judge("r", A, 501).0, Verdict::Pass);
        assert!(!dir.path().join("la.ledger.json").exists());
        assert!(dir.path().join("la.ledger.json.joined-g").exists());
        rt.block_on(books.save_if_dirty());
        let back = Books::open_group(dir.path(), "g", 100);
        assert_eq!(back.state().data.replicas["r"].offset, 500);
        assert_eq!(back.state().data.group.as_deref(), Some("g"));
    }

    fn kv_reading(master: bool, latest: u64, pid: u64) -> KvNodeView {
        KvNodeView {
            master,
            latest,
            process_id: pid,
            uptime_secs: 10,
        }
    }

    #[test]
    fn a_kvrocks_group_carries_replicas_across_a_promotion() {
        const M: &str = "127.0.0.1:7000";
        const R: &str = "127.0.0.1:7001";
        const T: &str = "127.0.0.1:7002";
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let books = Books::open_group(dir.path(), "g", 100);
        let n0 = Guard::new("n0", books.clone(), UnknownReplica::Full, false);
        let n1 = Guard::new("n1", books.clone(), UnknownReplica::Full, false);
        let n2 = Guard::new("n2", books.clone(), UnknownReplica::Full, false);
        n0.set_node_addresses(&[M.parse().unwrap()]);
        n1.set_node_addresses(&[R.parse().unwrap()]);
        n0.kv_observe_node(&kv_reading(true, 0, 1));
        n1.kv_observe_node(&kv_reading(true, 0, 2));
        // R and T stream from M through n0, in n0's node's first epoch.
        for (i, r) in [(1, R), (2, T)] {
            n0.kv_started(r, i, peer, None, 1, true);
            n0.kv_delivered(r, i, 101, &[], true);
        }
        // n1 reads R fed by n0, holding 100; then R is master.
        n1.kv_observe_node(&kv_reading(false, 100, 2));
        n1.kv_observe_node(&kv_reading(true, 100, 2));
        for (i, r) in [(1, R), (2, T)] {
            n0.kv_delivered(r, i, 101, &[], false);
        }
        let judge = |g: &Guard, r: &str, seq: u64| {
            let (v, facts) = g.judge_kvrocks(r, ip, None, seq, true);
            (v.reason().map_or("pass", |x| x.code()), facts)
        };
        let (code, facts) = judge(&n1, T, 101);
        assert_eq!(code, "pass", "{facts}");
        // Not on a stale reading of the node.
        assert_eq!(
            n1.judge_kvrocks(T, ip, None, 101, false)
                .0
                .reason()
                .unwrap()
                .code(),
            "unknown_replica"
        );
        assert!(facts.contains("promoted holding link n0's history below sequence 101"));
        assert_eq!(judge(&n1, T, 102).0, "beyond_delivered");
        // M, n0's node, up to the switch.
        assert_eq!(judge(&n1, M, 101).0, "pass");
        assert_eq!(judge(&n1, M, 102).0, "superseded_beyond_switch");
        // Without a group, nothing is carried.
        let alone = Guard::open(dir.path(), "alone", R, UnknownReplica::Full, false, 100);
        alone.kv_observe_node(&kv_reading(true, 100, 2));
        assert_eq!(
            alone
                .judge_kvrocks(T, ip, None, 101, true)
                .0
                .reason()
                .unwrap()
                .code(),
            "unknown_replica"
        );
        // T served by n2 since: its record there speaks for it.
        n2.kv_started(T, 3, peer, None, 1, true);
        if let Some(r) = books
            .state()
            .data
            .kvrocks
            .replicas
            .get_mut(&format!("n2/{T}"))
        {
            r.updated_unix += 10;
        }
        let (code, facts) = judge(&n1, T, 61);
        assert_eq!(code, "unknown_replica", "{facts}");
        assert!(facts.contains("newest record is at link n2"), "{facts}");
        // M read restarted (as a replica, its sequence back): no longer vouched for.
        n0.kv_observe_node(&kv_reading(false, 97, 3));
        assert_eq!(judge(&n1, M, 99).0, "unknown_replica");
        // n1 re-pointed at another node: its promotion no longer vouches, until it is read
        // promoted from a fed reading of its own.
        assert_eq!(judge(&n1, R, 50).0, "pass");
        n1.node_replaced();
        let (code, facts) = judge(&n1, R, 50);
        assert_eq!(code, "unknown_replica", "{facts}");
        assert_eq!(books.state().data.kvrocks.master_epoch("n1"), None);
    }

    #[test]
    fn an_empty_master_stays_held_after_a_write() {
        let dir = tempfile::tempdir().unwrap();
        let g = Guard::open(
            dir.path(),
            "l",
            "127.0.0.1:7001",
            UnknownReplica::Full,
            false,
            100,
        );
        g.observe("l", &view(A, NO_REPLID, -1, 500, false));
        g.claim("r", 1, "127.0.0.1:40000".parse().unwrap());
        g.delivered("r", 1, A, 500, false);
        // Restarted without its data under a new id: held.
        let mut empty = view(B, NO_REPLID, -1, 0, false);
        empty.empty = true;
        g.observe("l", &empty);
        assert_eq!(g.judge("r", A, 501).0.name(), "hold");
        // One client write reaches it: still the unrelated lineage, still held.
        g.observe("l", &view(B, NO_REPLID, -1, 40, false));
        assert_eq!(g.empty_master().as_deref(), Some(B));
        assert_eq!(g.judge("r", A, 501).0.name(), "hold");
        // A lineage the replica knows (a promoted replica: A as its previous id) lifts it.
        g.observe("l", &view(B, A, 501, 600, false));
        assert_eq!(g.empty_master(), None);
        assert_ne!(g.judge("r", A, 501).0.name(), "hold");
    }
}
