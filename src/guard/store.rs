//! A link's ledger file and its one writer, and the lock that keeps a `state_dir` to one
//! replguard process.
//!
//! Saves are serialised through one writer and run on the blocking pool (fsync never stalls an
//! async worker): a unique temporary file in the same folder, fsync, rename over the ledger,
//! fsync of the folder. A crash at any point leaves the old or the new file whole, and a save
//! of an older snapshot never replaces a newer one. The file names the link and master it
//! belongs to; a file of another link or master is refused like a corrupt one.

use crate::guard::ledger::{now_unix, LedgerData, LEDGER_VERSION};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::error;

/// Least time between two log lines about failing saves of one ledger.
const SAVE_ERROR_LOG_EVERY: Duration = Duration::from_secs(60);

/// Why a ledger file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {err}")]
    Read { path: PathBuf, err: std::io::Error },
    #[error("{path} is not a valid ledger for this link ({err}); it was moved to {moved} and replguard starts with no knowledge")]
    Refused {
        path: PathBuf,
        err: String,
        moved: PathBuf,
    },
}

/// The ledger file of a link.
pub fn ledger_path(state_dir: &Path, link: &str) -> PathBuf {
    state_dir.join(format!("{link}.ledger.json"))
}

/// The ledger file of a group, shared by its links (in a folder of its own, so no link name
/// can collide with it).
pub fn group_ledger_path(state_dir: &Path, group: &str) -> PathBuf {
    state_dir
        .join("groups")
        .join(format!("{group}.ledger.json"))
}

/// Whose ledger a file is: one link's (and the master its configuration names), or a group's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub link: Option<String>,
    /// The master as the link's configuration names it (a link's ledger only).
    pub master: Option<String>,
    pub group: Option<String>,
}

impl Identity {
    pub fn link(link: &str, master: &str) -> Identity {
        Identity {
            link: Some(link.to_string()),
            master: Some(master.to_string()),
            group: None,
        }
    }

    pub fn group(group: &str) -> Identity {
        Identity {
            link: None,
            master: None,
            group: Some(group.to_string()),
        }
    }
}

/// Loads a ledger. `Ok(None)`: no file (no knowledge). A corrupt file, or one that names
/// another link or master, is moved aside and reported; the caller starts empty. A file that
/// names no link (written before files named theirs) is taken as this link's.
pub fn load(path: &Path, id: &Identity) -> Result<Option<LedgerData>, LoadError> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => {
            return Err(LoadError::Read {
                path: path.into(),
                err,
            })
        }
    };
    match parse(&text, id) {
        Ok(d) => Ok(Some(d)),
        Err(err) => {
            let moved = path.with_extension(format!("corrupt-{}", now_unix()));
            let _ = std::fs::rename(path, &moved);
            Err(LoadError::Refused {
                path: path.into(),
                err,
                moved,
            })
        }
    }
}

/// Reads a ledger file's bytes: `Err` says why they are not a ledger of this link.
pub fn parse(text: &[u8], id: &Identity) -> Result<LedgerData, String> {
    let d = serde_json::from_slice::<LedgerData>(text).map_err(|e| e.to_string())?;
    if d.version != LEDGER_VERSION {
        return Err(format!("unsupported version {}", d.version));
    }
    match (&d.group, &id.group) {
        (Some(g), Some(want)) if g != want => return Err(format!("it belongs to group {g}")),
        (Some(g), None) => return Err(format!("it belongs to group {g}")),
        _ => {}
    }
    if let Some(l) = d.link.as_deref() {
        match id.link.as_deref() {
            Some(want) if want == l => {}
            _ => return Err(format!("it belongs to link {l}")),
        }
    }
    if let (Some(m), Some(want)) = (d.master.as_deref(), id.master.as_deref()) {
        if m != want {
            return Err(format!(
                "it was kept for master {m}, and this link's master is {want}"
            ));
        }
    }
    Ok(d)
}

/// Writes `bytes` over `path` by atomic replace.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".ledger-")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    File::open(dir)?.sync_all()
}

/// The one writer of a ledger file.
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    /// Whose ledger this is; its master follows a re-point.
    id: Mutex<Identity>,
    /// The generation of the newest snapshot on disk; held while writing.
    written: Mutex<u64>,
    /// The generation the next snapshot takes.
    next_gen: AtomicU64,
    /// Saves that failed, since start.
    pub failures: AtomicU64,
    last_error: Mutex<Option<String>>,
    last_logged: Mutex<Option<Instant>>,
}

impl Store {
    /// The store of a link's own ledger.
    pub fn new(state_dir: &Path, id: Identity) -> Store {
        let path = ledger_path(state_dir, id.link.as_deref().unwrap_or_default());
        Self::at(path, id)
    }

    /// The store of a group's ledger.
    pub fn for_group(state_dir: &Path, group: &str) -> Store {
        let path = group_ledger_path(state_dir, group);
        if let Some(dir) = path.parent() {
            // A failure shows at the first save, counted and logged like any other.
            let _ = std::fs::create_dir_all(dir);
        }
        Self::at(path, Identity::group(group))
    }

    fn at(path: PathBuf, id: Identity) -> Store {
        Store {
            path,
            id: Mutex::new(id),
            written: Mutex::new(0),
            next_gen: AtomicU64::new(1),
            failures: AtomicU64::new(0),
            last_error: Mutex::new(None),
            last_logged: Mutex::new(None),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn load(&self) -> Result<Option<LedgerData>, LoadError> {
        load(&self.path, &self.identity())
    }

    fn identity(&self) -> Identity {
        self.id.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The link now dials `master`: the file names it from the next save on, so a restart
    /// with the configuration that names it keeps the ledger.
    /// A group's ledger names no master: it is left as it is.
    pub fn set_master(&self, master: &str) {
        let mut id = self.id.lock().unwrap_or_else(|p| p.into_inner());
        if id.group.is_none() {
            id.master = Some(master.to_string());
        }
    }

    /// Takes the generation for a snapshot about to be made; call it while the data cannot
    /// change, so generations follow the order of the snapshots.
    pub fn generation(&self) -> u64 {
        self.next_gen.fetch_add(1, Relaxed)
    }

    /// Writes the snapshot of generation `gen` unless a newer one is already on disk.
    pub fn write(&self, gen: u64, data: &LedgerData) -> std::io::Result<()> {
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        if gen <= *written {
            return Ok(());
        }
        let mut data = data.clone();
        let id = self.identity();
        data.link = id.link;
        data.master = id.master;
        data.group = id.group;
        let bytes = serde_json::to_vec_pretty(&data).map_err(std::io::Error::other)?;
        write_atomic(&self.path, &bytes)?;
        *written = gen;
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
        Ok(())
    }

    /// [`Self::write`] on the blocking pool. A failure is counted, kept for /status and logged
    /// at most once a minute; `false` then.
    pub async fn save(self: &Arc<Self>, gen: u64, data: LedgerData) -> bool {
        let me = self.clone();
        let res = tokio::task::spawn_blocking(move || me.write(gen, &data))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        match res {
            Ok(()) => true,
            Err(e) => {
                self.failed(&e);
                false
            }
        }
    }

    fn failed(&self, e: &std::io::Error) {
        let n = self.failures.fetch_add(1, Relaxed) + 1;
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
        let mut last = self.last_logged.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| t.elapsed() >= SAVE_ERROR_LOG_EVERY) {
            *last = Some(Instant::now());
            let id = self.identity();
            error!(
                link = id.link,
                group = id.group,
                path = %self.path.display(),
                error = %e,
                failures = n,
                "cannot save the ledger; replguard keeps it in memory and retries (logged at most once a minute)"
            );
        }
    }

    /// The last save's error, while saves fail.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Holds `state_dir` for this process: two replguard processes never share one.
#[derive(Debug)]
pub struct StateDirLock {
    _file: File,
}

impl StateDirLock {
    /// Locks `<state_dir>/replguard.lock` and writes this process's id into it.
    pub fn acquire(state_dir: &Path) -> anyhow::Result<StateDirLock> {
        let path = state_dir.join("replguard.lock");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                anyhow::bail!(
                    "state_dir {} is in use by another replguard process (pid {}): two processes must never share a ledger",
                    state_dir.display(),
                    holder.trim()
                );
            }
            Err(std::fs::TryLockError::Error(e)) => {
                anyhow::bail!("cannot lock {}: {e}", path.display())
            }
        }
        file.set_len(0)?;
        writeln!(file, "{}", std::process::id())?;
        Ok(StateDirLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    fn id(link: &str, master: &str) -> Identity {
        Identity::link(link, master)
    }

    #[test]
    fn save_and_load_round_trip_and_corruption_means_no_knowledge() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::new(dir.path(), id("main", "127.0.0.1:6379"));
        assert_eq!(s.load().unwrap(), None);
        let mut l = LedgerData::new();
        l.deliver("127.0.0.1:6380", A, 42, true);
        s.write(s.generation(), &l).unwrap();
        let back = s.load().unwrap().unwrap();
        assert_eq!(back.replicas, l.replicas);
        assert_eq!(back.link.as_deref(), Some("main"));
        std::fs::write(s.path(), b"{ not json").unwrap();
        match s.load() {
            Err(LoadError::Refused { moved, .. }) => assert!(moved.exists()),
            other => panic!("{other:?}"),
        }
        assert!(!s.path().exists());
        assert_eq!(s.load().unwrap(), None);
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    }

    #[test]
    fn a_ledger_of_another_link_or_master_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = LedgerData::new();
        l.deliver("127.0.0.1:6380", A, 42, false);
        let s = Store::new(dir.path(), id("main", "127.0.0.1:6379"));
        s.write(s.generation(), &l).unwrap();
        let other_master = Store::new(dir.path(), id("main", "127.0.0.1:7000"));
        let e = other_master.load().unwrap_err().to_string();
        assert!(e.contains("kept for master 127.0.0.1:6379"), "{e}");
        s.write(s.generation(), &l).unwrap();
        std::fs::rename(s.path(), ledger_path(dir.path(), "other")).unwrap();
        let other_link = Store::new(dir.path(), id("other", "127.0.0.1:6379"));
        let e = other_link.load().unwrap_err().to_string();
        assert!(e.contains("belongs to link main"), "{e}");
        // A file that names no link is taken as this link's.
        std::fs::write(
            ledger_path(dir.path(), "main"),
            serde_json::to_vec(&l).unwrap(),
        )
        .unwrap();
        assert!(s.load().unwrap().is_some());
    }

    #[test]
    fn an_older_snapshot_never_replaces_a_newer_one() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::new(dir.path(), id("main", "127.0.0.1:6379"));
        let (g1, g2) = (s.generation(), s.generation());
        let mut newer = LedgerData::new();
        newer.deliver("127.0.0.1:6380", A, 99, false);
        s.write(g2, &newer).unwrap();
        s.write(g1, &LedgerData::new()).unwrap();
        assert_eq!(s.load().unwrap().unwrap().replicas, newer.replicas);
    }

    #[test]
    fn writers_in_parallel_leave_one_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(Store::new(dir.path(), id("main", "127.0.0.1:6379")));
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for n in 0..20u64 {
                        let mut l = LedgerData::new();
                        l.deliver("127.0.0.1:6380", A, i * 100 + n, false);
                        s.write(s.generation(), &l).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(s.load().unwrap().is_some());
    }

    #[test]
    fn a_state_dir_is_held_by_one_process() {
        let dir = tempfile::tempdir().unwrap();
        let first = StateDirLock::acquire(dir.path()).unwrap();
        let e = StateDirLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(e.contains("in use by another replguard process"), "{e}");
        assert!(e.contains(&std::process::id().to_string()), "{e}");
        drop(first);
        StateDirLock::acquire(dir.path()).unwrap();
    }

    #[test]
    fn a_failed_save_is_counted_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::new(&dir.path().join("missing"), id("main", "127.0.0.1:6379"));
        assert!(s.write(s.generation(), &LedgerData::new()).is_err());
        s.failed(&std::io::Error::other("disk full"));
        assert_eq!(s.failures.load(Relaxed), 1);
        assert_eq!(s.last_error().as_deref(), Some("disk full"));
    }
}
