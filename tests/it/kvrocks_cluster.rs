//! A Kvrocks 2.7.0 cluster (`KVROCKS_BIN`) with every node behind its own replguard link, all
//! links of one replguard in one group: the topology pushed with `CLUSTERX SETNODES` names every
//! node by its link address, so replicas dial their master's link. One shard: a master M and two
//! replicas R and T. A controller-style failover promotes R under a steady writer; the same
//! failover is run with the nodes' own addresses, without replguard, to compare the syncs.
//!
//! The failover, as done here: the writer is paused, the replicas are waited for until they
//! hold the master's latest sequence, the new topology version (R master, M and T its replicas)
//! is pushed to R, then M, then T, and the writer goes on at R. kvrocks-controller
//! (`storage/node.go` `PromoteNewMaster`) picks the replica with the highest `slave_repl_offset`
//! and pushes the next version to every node; it does not stop writes first, so writes the old
//! master acknowledges after that pick are lost with or without replguard
//! (`real_kvrocks_cluster_unpaused_failover_*` shows what each does with them).

use crate::common::kvrocks_cluster::{differences, dump, Cluster};
use crate::common::kvrocks_real::{kvrocks_bin, wrong_keys};
use crate::common::{logged, wait_for};
use std::path::Path;
use std::time::Duration;

/// The group every link is in.
const GROUP: Option<&str> = Some("kv-g");
/// The nodes: M, the master at first; R, promoted; T, a replica re-pointed from M to R.
const M: usize = 0;
const R: usize = 1;
const T: usize = 2;
const ALL: [usize; 3] = [M, R, T];
const LIMIT: Duration = Duration::from_secs(60);
/// How long the writer runs on each master.
const WRITING: Duration = Duration::from_millis(700);

/// The shard: M with some data, then R and T its replicas, every replica caught up. `guard`:
/// `None` without replguard, else the links' group.
fn shard(bin: &Path, rsid: bool, guard: Option<Option<&str>>) -> Cluster {
    let mut c = Cluster::start(bin, 3, rsid, guard);
    c.push(M, &[M], &[M]);
    // A master with data before its replicas attach (a 2.7.0 master cannot serve a full sync
    // from a checkpoint it made while empty).
    let mut m = c.nodes[M].client();
    for i in 0..100 {
        assert_eq!(m.text(&["SET", &format!("pre{i}"), "x"]), "OK");
    }
    c.push(M, &ALL, &ALL);
    c.wait_caught_up(&ALL, LIMIT);
    c.wait_read_fed(&ALL, LIMIT);
    c
}

/// What one failover cost and left behind.
#[derive(Debug)]
struct Figures {
    label: String,
    /// `INFO stats` on the promoted node, from just before the new topology to the end.
    sync_full: u64,
    sync_partial_ok: u64,
    sync_partial_err: u64,
    /// The PSYNCs the promoted node logged serving after the failover.
    psyncs: Vec<String>,
    /// replguard's forced full syncs (`link:reason`) and every verdict after the failover.
    forced: Vec<String>,
    verdicts: Vec<String>,
    /// replguard's decision lines on the PSYNCs of M and T at R's link (node, the line from
    /// `requested_replid` on).
    decisions: Vec<(usize, String)>,
    keys: u64,
    /// Per node, the writer's keys it does not hold as written, and keys differing from R.
    wrong: Vec<usize>,
    differing: Vec<usize>,
}

impl Figures {
    /// Whether replguard forced node `i` to a full sync at R's link.
    fn forced_at_new_master(&self, i: usize) -> bool {
        self.decisions
            .iter()
            .any(|(n, d)| *n == i && d.contains("verdict=\"force_full\""))
    }

    fn print(&self) {
        eprintln!(
            "figures: kvrocks cluster failover, {}: on the promoted node sync_full +{} \
             sync_partial_ok +{} sync_partial_err +{}; replguard forced full {:?}; keys {}; \
             wrong keys per node {:?}; keys differing from the new master per node {:?}\n  \
             PSYNCs served by the promoted node: {:?}\n  verdicts after the failover: {:?}\n  \
             decisions on M's (0) and T's (2) PSYNCs at R's link: {:#?}",
            self.label,
            self.sync_full,
            self.sync_partial_ok,
            self.sync_partial_err,
            self.forced,
            self.keys,
            self.wrong,
            self.differing,
            self.psyncs,
            self.verdicts,
            self.decisions
        );
    }
}

/// How the writes meet the new topology.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Writes {
    /// Paused, and the replicas waited for, before the new topology (as described at the top).
    Paused,
    /// As `Paused`, but M takes the new topology first and T only once it has streamed R's
    /// writes on from M (past the sequence R was promoted at).
    PausedMasterFirst,
    /// As kvrocks-controller leaves it: the writer goes on at M after R took the new topology,
    /// until M is about to take it too.
    Unpaused,
}

/// The failover under a writer; the data of every node is compared with the new master's key
/// by key at the end.
fn failover(bin: &Path, rsid: bool, guard: Option<Option<&str>>, writes: Writes) -> Figures {
    let mut c = shard(bin, rsid, guard);
    let w = c.writer(0);
    std::thread::sleep(WRITING);
    let served_before = c.psyncs_served(R).len();
    let stats = |c: &Cluster| {
        [
            c.stat(R, "sync_full"),
            c.stat(R, "sync_partial_ok"),
            c.stat(R, "sync_partial_err"),
        ]
    };
    let (n, before, verdicts_before) = match writes {
        Writes::Paused | Writes::PausedMasterFirst => {
            let n = w.pause();
            let held = c.wait_caught_up(&ALL, LIMIT);
            // A controller reads the replicas before it picks one; replguard's link reads its
            // node the same way, and vouches for what it read.
            c.wait_read_holding(R, held, LIMIT);
            let verdicts_before = c.links.as_ref().map(|l| l.verdicts()).unwrap_or_default();
            let before = stats(&c);
            c.push(R, &ALL, &[R]);
            (n, before, verdicts_before)
        }
        Writes::Unpaused => {
            let verdicts_before = c.links.as_ref().map(|l| l.verdicts()).unwrap_or_default();
            let before = stats(&c);
            c.push(R, &ALL, &[R]);
            // M has not been told: it acknowledges writes R will never have.
            let promoted = c.seq(R).expect("R's sequence");
            wait_for(LIMIT, "M to acknowledge writes after R's promotion", || {
                (c.seq(M)? > promoted + 100).then_some(())
            });
            (w.pause(), before, verdicts_before)
        }
    };
    drop(w);
    // The clients move to R, then M and T take the new version once R has written more than
    // M holds (a controller's next round comes later than that), so that a resume of M's
    // sequences finds batches of R's there.
    let w = c.writer(n);
    let held = c.seq(M).expect("M's sequence");
    wait_for(LIMIT, "R to write past M's sequence", || {
        (c.seq(R)? > held + 100).then_some(())
    });
    let version = c.version;
    if writes == Writes::PausedMasterFirst {
        c.push_version(version, R, &ALL, &[M]);
        wait_for(LIMIT, "T to stream R's writes on from M", || {
            (c.seq(T)? > held + 50).then_some(())
        });
        c.push_version(version, R, &ALL, &[T]);
    } else {
        c.push_version(version, R, &ALL, &[M, T]);
    }
    std::thread::sleep(WRITING);
    let n = w.pause();
    drop(w);
    c.wait_caught_up(&ALL, LIMIT);
    let after = stats(&c);
    let (forced, verdicts) = match &c.links {
        None => (Vec::new(), Vec::new()),
        Some(l) => {
            let now = l.verdicts();
            let new: Vec<_> = now
                .iter()
                .filter_map(|v| {
                    let was = verdicts_before
                        .iter()
                        .find(|b| (&b.0, &b.1, &b.2, &b.3) == (&v.0, &v.1, &v.2, &v.3))
                        .map_or(0, |b| b.4);
                    (v.4 > was).then(|| (v.clone(), v.4 - was))
                })
                .collect();
            let forced = new
                .iter()
                .filter(|(v, _)| v.1 == "force_full")
                .flat_map(|(v, k)| (0..*k).map(|_| format!("{}:{}", v.0, v.2)))
                .collect();
            let all = new
                .iter()
                .map(|(v, k)| format!("{} {} {} {} x{k}", v.0, v.1, v.2, v.3))
                .collect();
            (forced, all)
        }
    };
    let reference = dump(&c.nodes[R]);
    let decisions = [M, T]
        .iter()
        .flat_map(|&i| {
            logged(&[
                "link=n1 ",
                "guard: ",
                &format!("replica=\"127.0.0.1:{}\"", c.nodes[i].port),
            ])
            .into_iter()
            .map(move |l| {
                let from = l.find("requested_replid").unwrap_or(0);
                (i, l[from..].to_string())
            })
        })
        .collect();
    let figures = Figures {
        label: format!(
            "{}, {}, use-rsid-psync {}",
            match writes {
                Writes::Paused => "writes paused",
                Writes::PausedMasterFirst => "writes paused, M re-pointed first",
                Writes::Unpaused => "writes not paused",
            },
            match guard {
                None => "direct".to_string(),
                Some(None) => "through replguard, no group".to_string(),
                Some(Some(g)) => format!("through replguard, group {g}"),
            },
            if rsid { "yes" } else { "no" }
        ),
        sync_full: after[0] - before[0],
        sync_partial_ok: after[1] - before[1],
        sync_partial_err: after[2] - before[2],
        psyncs: c.psyncs_served(R)[served_before..].to_vec(),
        forced,
        verdicts,
        decisions,
        keys: n,
        wrong: ALL
            .iter()
            .map(|&i| wrong_keys(&c.nodes[i], n).len())
            .collect(),
        differing: ALL
            .iter()
            .map(|&i| differences(&reference, &dump(&c.nodes[i]), usize::MAX).len())
            .collect(),
    };
    figures.print();
    figures
}

#[test]
fn kvrocks_cluster_example_config_is_valid_with_every_link_in_one_group() {
    crate::common::example_group_is_valid(
        "config/kvrocks-cluster.yaml",
        3,
        replguard::config::Flavor::Kvrocks,
        "kv-g",
    );
}

#[test]
fn real_kvrocks_cluster_replicas_sync_through_their_masters_link() {
    let Some(bin) = kvrocks_bin("real_kvrocks_cluster_replicas_sync_through_their_masters_link")
    else {
        return;
    };
    let c = shard(&bin, false, Some(GROUP));
    let links = c.links.as_ref().unwrap();
    for i in [R, T] {
        let info = c.nodes[i].info("replication");
        assert_eq!(info["role"], "slave");
        assert_eq!(
            info["master_port"],
            links.addrs[M].port().to_string(),
            "node {i} dials M's link"
        );
    }
    // Both stream through M's link, and through no other.
    let st = links.status();
    let streaming = |link: usize| -> Vec<String> {
        st["links"][link]["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["state"] == "streaming")
            .map(|s| s["replica"].as_str().unwrap().to_string())
            .collect()
    };
    let on_m = streaming(M);
    for i in [R, T] {
        let port = format!(":{}", c.nodes[i].port);
        assert!(
            on_m.iter().any(|r| r.ends_with(&port)),
            "node {i} streams through M's link: {on_m:?}"
        );
    }
    assert!(streaming(R).is_empty() && streaming(T).is_empty());
    if GROUP.is_some() {
        for l in st["links"].as_array().unwrap() {
            assert_eq!(l["group"], GROUP.unwrap(), "{l:#}");
        }
    }
    let w = c.writer(0);
    std::thread::sleep(WRITING);
    let n = w.pause();
    drop(w);
    c.wait_caught_up(&ALL, LIMIT);
    let reference = dump(&c.nodes[M]);
    assert!(
        reference.len() as u64 >= n + 100,
        "{} keys",
        reference.len()
    );
    for i in [R, T] {
        assert_eq!(wrong_keys(&c.nodes[i], n), Vec::<String>::new(), "node {i}");
        let d = differences(&reference, &dump(&c.nodes[i]), 10);
        assert!(d.is_empty(), "node {i} differs from M: {d:?}");
    }
    // Their first attach asked for sequence 1 (they held nothing) and M's WAL still had it.
    assert_eq!(c.stat(M, "sync_full"), 0);
    assert_eq!(c.stat(M, "sync_partial_ok"), 2);
    assert_eq!(links.forced_full(), Vec::<String>::new());
}

/// The assertions every failover must pass: nothing lost, every node equal to the new master.
fn assert_no_loss(f: &Figures) {
    assert!(
        f.wrong.iter().all(|&w| w == 0),
        "{}: acknowledged writes missing {:?}",
        f.label,
        f.wrong
    );
    assert!(
        f.differing.iter().all(|&d| d == 0),
        "{}: nodes differ from the new master {:?}",
        f.label,
        f.differing
    );
}

/// The paused failover through grouped links: nothing lost, and as directly, M and T resume
/// partially at R's link: R's link read R holding M's sequences up to the last write while M's
/// link fed it, and M's link fed T (and was M's) in the same epoch of M.
fn failover_through_grouped_links(rsid: bool) {
    let Some(bin) = kvrocks_bin("real_kvrocks_cluster_failover_through_grouped_links") else {
        return;
    };
    let f = failover(&bin, rsid, Some(GROUP), Writes::Paused);
    assert_no_loss(&f);
    assert_eq!(f.forced, Vec::<String>::new(), "{}", f.label);
    assert!(
        !f.forced_at_new_master(M) && !f.forced_at_new_master(T),
        "{}: {:#?}",
        f.label,
        f.decisions
    );
    assert_eq!(
        (f.sync_full, f.sync_partial_ok, f.sync_partial_err),
        (0, 2, 0),
        "{}",
        f.label
    );
}

/// T streams on from M after M resumed at R's link, and so holds R's batches past the sequence
/// R was promoted at: it resumes partially there, as directly.
#[test]
fn real_kvrocks_cluster_failover_a_replica_streaming_on_from_the_demoted_master_resumes_partially()
{
    let Some(bin) = kvrocks_bin(
        "real_kvrocks_cluster_failover_a_replica_streaming_on_from_the_demoted_master_resumes_partially",
    ) else {
        return;
    };
    for (guard, rsid) in [None, Some(GROUP)]
        .into_iter()
        .flat_map(|g| [(g, false), (g, true)])
    {
        let f = failover(&bin, rsid, guard, Writes::PausedMasterFirst);
        assert_no_loss(&f);
        assert_eq!(f.forced, Vec::<String>::new(), "{}", f.label);
        assert_eq!(
            (f.sync_full, f.sync_partial_ok, f.sync_partial_err),
            (0, 2, 0),
            "{}",
            f.label
        );
        if guard.is_some() {
            assert!(
                f.decisions.iter().any(|(n, d)| *n == T
                    && d.contains("that link's node is fed here since")
                    && d.contains("verdict=\"pass\"")),
                "{}: T was not passed on the old master's feed: {:#?}",
                f.label,
                f.decisions
            );
        }
    }
}

#[test]
fn real_kvrocks_cluster_failover_through_grouped_links_resumes_partially() {
    failover_through_grouped_links(false);
}

#[test]
fn real_kvrocks_cluster_failover_through_grouped_links_with_rsid_resumes_partially() {
    failover_through_grouped_links(true);
}

#[test]
fn real_kvrocks_cluster_failover_through_ungrouped_links_costs_a_full_sync_per_node() {
    let Some(bin) = kvrocks_bin(
        "real_kvrocks_cluster_failover_through_ungrouped_links_costs_a_full_sync_per_node",
    ) else {
        return;
    };
    for rsid in [false, true] {
        let f = failover(&bin, rsid, Some(None), Writes::Paused);
        assert_no_loss(&f);
        assert!(f.forced_at_new_master(M) && f.forced_at_new_master(T));
        // Each link keeps its own ledger: the promoted node's link never served M or T. With
        // ids, theirs is one no batch carried through that link.
        let reason = if rsid {
            "n1:unknown_id"
        } else {
            "n1:unknown_replica"
        };
        assert_eq!(f.forced, vec![reason; 2], "{}", f.label);
        assert_eq!(f.sync_full, 2, "{}", f.label);
    }
}

#[test]
fn real_kvrocks_cluster_failover_directly_resumes_partially() {
    let Some(bin) = kvrocks_bin("real_kvrocks_cluster_failover_directly_resumes_partially") else {
        return;
    };
    for rsid in [false, true] {
        let f = failover(&bin, rsid, None, Writes::Paused);
        assert_no_loss(&f);
        assert_eq!(
            (f.sync_full, f.sync_partial_ok, f.sync_partial_err),
            (0, 2, 0),
            "{}",
            f.label
        );
    }
}

/// The writes M acknowledged after R took the new topology: R never had them, so they are lost
/// whatever happens next (the race kvrocks-controller leaves open). The writer's keys R lacks.
fn lost_on_the_new_master(f: &Figures) -> usize {
    f.wrong[R]
}

#[test]
fn real_kvrocks_cluster_unpaused_failover_directly_leaves_nodes_diverged_without_rsid() {
    let Some(bin) = kvrocks_bin(
        "real_kvrocks_cluster_unpaused_failover_directly_leaves_nodes_diverged_without_rsid",
    ) else {
        return;
    };
    let f = failover(&bin, false, None, Writes::Unpaused);
    assert!(lost_on_the_new_master(&f) > 0, "{}: no late write", f.label);
    // M and T ask R for the sequence after M's late writes; R has batches of its own there
    // and streams on: they keep M's late writes and miss R's first ones.
    assert!(
        f.differing[M] > 0 && f.differing[T] > 0,
        "{}: {:?}",
        f.label,
        f.differing
    );
    assert_eq!(f.sync_full, 0, "{}", f.label);
    // With replication ids R sees that their last batch is not its own, and refuses.
    let f = failover(&bin, true, None, Writes::Unpaused);
    assert!(lost_on_the_new_master(&f) > 0, "{}: no late write", f.label);
    assert!(
        f.differing.iter().all(|&d| d == 0),
        "{}: {:?}",
        f.label,
        f.differing
    );
    assert_eq!(f.sync_full, 2, "{}", f.label);
}

#[test]
fn real_kvrocks_cluster_unpaused_failover_through_ungrouped_links_leaves_no_node_diverged() {
    let Some(bin) = kvrocks_bin(
        "real_kvrocks_cluster_unpaused_failover_through_ungrouped_links_leaves_no_node_diverged",
    ) else {
        return;
    };
    let f = failover(&bin, false, Some(None), Writes::Unpaused);
    assert!(lost_on_the_new_master(&f) > 0, "{}: no late write", f.label);
    // R's link never served M or T: both are made to full-sync, which also drops the late
    // writes they held.
    assert!(
        f.differing.iter().all(|&d| d == 0),
        "{}: {:?}",
        f.label,
        f.differing
    );
    assert!(f.forced_at_new_master(M) && f.forced_at_new_master(T));
    assert_eq!(f.sync_full, 2, "{}", f.label);
}

/// Nobody keeps the late writes while resuming R's stream past them: M and T full-sync from R.
/// replguard forces both before R sees them: they ask past the sequence R was read holding
/// when it was promoted.
fn unpaused_failover_through_grouped_links(rsid: bool) {
    let Some(bin) = kvrocks_bin("real_kvrocks_cluster_unpaused_failover_through_grouped_links")
    else {
        return;
    };
    let f = failover(&bin, rsid, Some(GROUP), Writes::Unpaused);
    assert!(lost_on_the_new_master(&f) > 0, "{}: no late write", f.label);
    assert_eq!(
        f.forced,
        vec!["n1:superseded_beyond_switch"; 2],
        "{}: {:#?}",
        f.label,
        f.decisions
    );
    assert!(
        f.differing.iter().all(|&d| d == 0),
        "{}: {:?}",
        f.label,
        f.differing
    );
    assert_eq!(f.sync_full, 2, "{}", f.label);
}

#[test]
fn real_kvrocks_cluster_unpaused_failover_through_grouped_links_leaves_no_node_diverged() {
    unpaused_failover_through_grouped_links(false);
}

#[test]
fn real_kvrocks_cluster_unpaused_failover_through_grouped_links_with_rsid_leaves_no_node_diverged()
{
    unpaused_failover_through_grouped_links(true);
}
