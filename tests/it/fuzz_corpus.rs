//! Every input in `fuzz/corpus/<target>/` (the seeds, and every crash the fuzzers found) fed
//! through its fuzz target's body on stable: a crash found once stays a test without nightly.

#[path = "../../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod harness;

use std::path::Path;

/// Feeds each corpus file of `target` to `body`; names the file that panicked.
fn replay(target: &str, body: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a corpus entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} holds no input", dir.display());
    for f in files {
        let data = std::fs::read(&f).expect("a corpus file");
        if std::panic::catch_unwind(|| body(&data)).is_err() {
            panic!("{}: the {target} fuzz target panicked on it", f.display());
        }
    }
}

#[test]
fn fuzz_corpus_command() {
    replay("command", harness::command);
}

#[test]
fn fuzz_corpus_reply() {
    replay("reply", harness::reply);
}

#[test]
fn fuzz_corpus_psync_stream() {
    replay("psync_stream", harness::psync_stream);
}

#[test]
fn fuzz_corpus_kvrocks_wal() {
    replay("kvrocks_wal", harness::kvrocks_wal);
}

#[test]
fn fuzz_corpus_kvrocks_fetch() {
    replay("kvrocks_fetch", harness::kvrocks_fetch);
}

#[test]
fn fuzz_corpus_checkpoint() {
    replay("checkpoint", harness::checkpoint);
}

#[test]
fn fuzz_corpus_config() {
    replay("config", harness::config);
}

#[test]
fn fuzz_corpus_ledger() {
    replay("ledger", harness::ledger);
}
