//! A Kvrocks 2.7.0 **test double**: a master and a replica that speak Kvrocks replication as a
//! real 2.7.0 does on the wire. It is not Kvrocks (Kvrocks cannot be installed where these tests
//! run); `tests/it/kvrocks.rs` checks its bytes against recordings of a real 2.7.0 master and
//! replica (`tests/data/kvrocks-wire/`).
//!
//! What it reproduces:
//! - master: a WAL of real RocksDB WriteBatch payloads (12-byte header, kvrocks LogData, Put /
//!   Delete in the metadata column family with the cluster or standalone key encoding, the
//!   trailing `r <replid>` record when `use_rsid_psync` is on); `_db_name` (raw line),
//!   `replconf` (`+OK`), `PSYNC` with the 2.7.0 acceptance rule (replid of the batch at seq-1
//!   when rsid is on and the 3-argument form is used, then seq must be latest+1 or a batch
//!   start), the stream of bulks and `ping` heartbeats, and a checkpoint served by `_fetch_meta`
//!   and `_fetch_file` (`<size>\r\n<bytes>` per file). With rsid on it writes a fresh id of its
//!   own at start-up (its sequence 1), as the recordings show.
//! - replica: applies batches, persists its sequence, data and WAL ids in its directory, resumes
//!   with `PSYNC [replid] <latest+1>`, runs a full sync after any refusal, and, with rsid on and
//!   no `slaveof` in its configuration (cluster mode), writes a fresh replication id locally at
//!   every start-up before it connects: the apache/kvrocks#2214 start-up write.
//!
//! The checkpoint's MANIFEST and WAL are in RocksDB's formats (zero CRCs); the double's replica
//! restores from its own state, carried in the OPTIONS file.
#![allow(dead_code)]

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

/// The checkpoint file list a real 2.7.0 master served in the recordings.
const CHECKPOINT_FILES: [&str; 4] = ["OPTIONS-000013", "MANIFEST-000011", "CURRENT", "000010.log"];

/// Column families as kvrocks numbers them.
const CF_METADATA: u8 = 1;
const CF_PROPAGATE: u8 = 4;

/// CRC16/XMODEM, the cluster slot hash.
fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

fn put_varint(out: &mut Vec<u8>, mut v: usize) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_slice(out: &mut Vec<u8>, s: &[u8]) {
    put_varint(out, s.len());
    out.extend_from_slice(s);
}

/// The metadata-CF key of `key` in the default namespace.
fn meta_key(key: &str, cluster: bool) -> Vec<u8> {
    let mut k = vec![11];
    k.extend_from_slice(b"__namespace");
    if cluster {
        let slot = crc16(key.as_bytes()) & 0x3fff;
        k.extend_from_slice(&slot.to_be_bytes());
    }
    k.extend_from_slice(key.as_bytes());
    k
}

/// What one batch does, as the double writes and applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Set(String, String),
    Del(String),
    /// The node's replication id written into the propagate column family.
    ReplId(String),
}

/// Encodes a one-record batch as Kvrocks 2.7.0 does.
pub fn encode_batch(seq: u64, op: &Op, cluster: bool, replid: Option<&str>) -> Vec<u8> {
    let mut b = seq.to_le_bytes().to_vec();
    b.extend_from_slice(&1u32.to_le_bytes());
    match op {
        Op::Set(k, v) => {
            b.extend_from_slice(&[0x03, 0x01, b'1']);
            b.extend_from_slice(&[0x05, CF_METADATA]);
            put_slice(&mut b, &meta_key(k, cluster));
            let mut val = vec![0x01, 0, 0, 0, 0];
            val.extend_from_slice(v.as_bytes());
            put_slice(&mut b, &val);
        }
        Op::Del(k) => {
            b.extend_from_slice(&[0x03, 0x01, b'0']);
            b.extend_from_slice(&[0x04, CF_METADATA]);
            put_slice(&mut b, &meta_key(k, cluster));
        }
        Op::ReplId(id) => {
            b.extend_from_slice(&[0x05, CF_PROPAGATE]);
            put_slice(&mut b, b"replication_id_");
            put_slice(&mut b, id.as_bytes());
        }
    }
    if let Some(id) = replid {
        b.push(0x03);
        put_slice(&mut b, format!("r {id}").as_bytes());
    }
    b
}

/// Decodes a batch the double wrote: (seq, ops, trailing replid).
pub fn decode_batch(p: &[u8], cluster: bool) -> (u64, Vec<Op>, Option<String>) {
    let seq = u64::from_le_bytes(p[..8].try_into().unwrap());
    let mut i = 12;
    let mut ops = Vec::new();
    let mut replid = None;
    let varint = |i: &mut usize| -> usize {
        let mut v = 0usize;
        let mut shift = 0;
        loop {
            let b = p[*i];
            *i += 1;
            v |= usize::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return v;
            }
            shift += 7;
        }
    };
    let slice = |i: &mut usize| -> Vec<u8> {
        let n = varint(i);
        let s = p[*i..*i + n].to_vec();
        *i += n;
        s
    };
    let user_key = |k: &[u8]| -> String {
        let ns = k[0] as usize;
        let skip = 1 + ns + if cluster { 2 } else { 0 };
        String::from_utf8_lossy(&k[skip..]).into_owned()
    };
    while i < p.len() {
        let tag = p[i];
        i += 1;
        match tag {
            0x03 => {
                let d = slice(&mut i);
                if let Some(id) = d.strip_prefix(b"r ") {
                    replid = Some(String::from_utf8_lossy(id).into_owned());
                }
            }
            0x05 => {
                let cf = p[i];
                i += 1;
                let k = slice(&mut i);
                let v = slice(&mut i);
                if cf == CF_PROPAGATE {
                    ops.push(Op::ReplId(String::from_utf8_lossy(&v).into_owned()));
                } else {
                    ops.push(Op::Set(
                        user_key(&k),
                        String::from_utf8_lossy(&v[5..]).into_owned(),
                    ));
                }
            }
            0x04 => {
                i += 1;
                let k = slice(&mut i);
                ops.push(Op::Del(user_key(&k)));
            }
            t => panic!("the double cannot apply record type 0x{t:02x}"),
        }
    }
    (seq, ops, replid)
}

fn random_replid() -> String {
    use std::hash::{BuildHasher, Hasher};
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .elapsed()
            .map_or(0, |d| d.as_nanos() as u64),
    );
    let mut x = h.finish();
    (0..16)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            CHARS[(x >> 33) as usize % CHARS.len()] as char
        })
        .collect()
}

fn resp(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    out
}

/// Reads one RESP array command (the only form replicas send).
fn read_command(r: &mut BufReader<TcpStream>) -> Option<Vec<String>> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let n: usize = line.trim_end().strip_prefix('*')?.parse().ok()?;
    let mut args = Vec::with_capacity(n);
    for _ in 0..n {
        line.clear();
        r.read_line(&mut line).ok()?;
        let len: usize = line.trim_end().strip_prefix('$')?.parse().ok()?;
        let mut buf = vec![0; len + 2];
        r.read_exact(&mut buf).ok()?;
        buf.truncate(len);
        args.push(String::from_utf8_lossy(&buf).into_owned());
    }
    Some(args)
}

/// The state a checkpoint carries.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Snapshot {
    latest: u64,
    replid_key: Option<String>,
    kv: BTreeMap<String, String>,
}

// ---------------------------------------------------------------------------------------------
// Master
// ---------------------------------------------------------------------------------------------

/// How the master double is configured.
#[derive(Debug, Clone)]
pub struct MasterCfg {
    pub db_name: String,
    pub cluster: bool,
    pub use_rsid_psync: bool,
    /// The id it writes at start-up when `use_rsid_psync` is on (random if `None`).
    pub replid: Option<String>,
    pub requirepass: Option<String>,
    /// Idle time before a `ping` heartbeat (2 s on a real 2.7.0).
    pub ping_every: Duration,
    /// A checkpoint accessed within this long is served again instead of a new one (30 s on a
    /// real 2.7.0, whose cron removes it after that).
    pub checkpoint_keep: Duration,
}

impl Default for MasterCfg {
    fn default() -> Self {
        MasterCfg {
            db_name: "repro.db".into(),
            cluster: true,
            use_rsid_psync: false,
            replid: None,
            requirepass: None,
            ping_every: Duration::from_secs(2),
            checkpoint_keep: Duration::from_secs(30),
        }
    }
}

struct MasterState {
    /// (seq, payload), in order.
    wal: Vec<(u64, Vec<u8>)>,
    latest: u64,
    kv: BTreeMap<String, String>,
    replid: Option<String>,
    /// The checkpoint and when it was last used.
    checkpoint: Option<(Snapshot, std::time::Instant)>,
}

struct MasterShared {
    cfg: MasterCfg,
    state: Mutex<MasterState>,
    wrote: Condvar,
    stopped: AtomicBool,
    pings: AtomicU64,
    conns: Mutex<Vec<TcpStream>>,
}

/// A running master double.
pub struct KvrocksMasterDouble {
    pub port: u16,
    shared: Arc<MasterShared>,
}

impl KvrocksMasterDouble {
    pub fn start(cfg: MasterCfg) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let replid = cfg
            .use_rsid_psync
            .then(|| cfg.replid.clone().unwrap_or_else(random_replid));
        let shared = Arc::new(MasterShared {
            cfg,
            state: Mutex::new(MasterState {
                wal: Vec::new(),
                latest: 0,
                kv: BTreeMap::new(),
                replid: replid.clone(),
                checkpoint: None,
            }),
            wrote: Condvar::new(),
            stopped: AtomicBool::new(false),
            pings: AtomicU64::new(0),
            conns: Mutex::new(Vec::new()),
        });
        let m = KvrocksMasterDouble { port, shared };
        if let Some(id) = replid {
            m.write(Op::ReplId(id));
        }
        let shared = m.shared.clone();
        thread::spawn(move || {
            for conn in listener.incoming() {
                if shared.stopped.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let _ = conn.set_nodelay(true);
                shared.conns.lock().unwrap().push(conn.try_clone().unwrap());
                let s = shared.clone();
                thread::spawn(move || serve_master_conn(&s, conn));
            }
        });
        m
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn write(&self, op: Op) -> u64 {
        self.shared.write(op)
    }

    pub fn set(&self, k: &str, v: &str) -> u64 {
        self.write(Op::Set(k.into(), v.into()))
    }

    pub fn del(&self, k: &str) -> u64 {
        self.write(Op::Del(k.into()))
    }

    pub fn latest(&self) -> u64 {
        self.shared.state.lock().unwrap().latest
    }

    pub fn data(&self) -> BTreeMap<String, String> {
        self.shared.state.lock().unwrap().kv.clone()
    }

    /// Heartbeats sent so far, over all replicas.
    pub fn pings(&self) -> u64 {
        self.shared.pings.load(Ordering::SeqCst)
    }

    /// A write that takes a sequence but never reaches the WAL (as with RocksDB's
    /// `disableWAL`): replicas streaming from this master get a hole in the sequence.
    pub fn set_unlogged(&self, k: &str, v: &str) -> u64 {
        let mut st = self.shared.state.lock().unwrap();
        st.latest += 1;
        st.kv.insert(k.into(), v.into());
        st.latest
    }

    pub fn stop(&self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        self.shared.wrote.notify_all();
        for c in self.shared.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
        let _ = TcpStream::connect(self.addr());
    }
}

impl Drop for KvrocksMasterDouble {
    fn drop(&mut self) {
        self.stop();
    }
}

impl MasterShared {
    /// One write: a batch in the WAL, applied to the data; returns its sequence.
    fn write(&self, op: Op) -> u64 {
        let mut st = self.state.lock().unwrap();
        let seq = st.latest + 1;
        let payload = encode_batch(seq, &op, self.cfg.cluster, st.replid.as_deref());
        match op {
            Op::Set(k, v) => {
                st.kv.insert(k, v);
            }
            Op::Del(k) => {
                st.kv.remove(&k);
            }
            Op::ReplId(_) => {}
        }
        st.wal.push((seq, payload));
        st.latest = seq;
        self.wrote.notify_all();
        seq
    }
}

fn serve_master_conn(sh: &MasterShared, conn: TcpStream) {
    let mut w = conn.try_clone().unwrap();
    let mut r = BufReader::new(conn);
    let mut authed = sh.cfg.requirepass.is_none();
    while let Some(args) = read_command(&mut r) {
        let name = args[0].to_ascii_lowercase();
        if name == "auth" {
            let ok = args.get(1) == sh.cfg.requirepass.as_ref();
            authed |= ok;
            let _ = w.write_all(if ok {
                b"+OK\r\n"
            } else {
                b"-ERR invalid password\r\n"
            });
            continue;
        }
        if !authed {
            let _ = w.write_all(b"-NOAUTH Authentication required.\r\n");
            continue;
        }
        match name.as_str() {
            "_db_name" => {
                let _ = w.write_all(format!("{}\r\n", sh.cfg.db_name).as_bytes());
            }
            "replconf" => {
                let _ = w.write_all(b"+OK\r\n");
            }
            "psync" => {
                if let Some(seq) = psync_accepts(sh, &args, &mut w) {
                    // The replica never writes on this connection: a read returning means it
                    // is gone, and the stream stops (no heartbeat to a closed replica).
                    let gone = Arc::new(AtomicBool::new(false));
                    let g = gone.clone();
                    thread::spawn(move || {
                        let mut sink = [0u8; 64];
                        while matches!(r.read(&mut sink), Ok(n) if n > 0) {}
                        g.store(true, Ordering::SeqCst);
                    });
                    stream_batches(sh, w, seq, &gone);
                    return;
                }
            }
            "_fetch_meta" => {
                let st = &mut *sh.state.lock().unwrap();
                let fresh = st
                    .checkpoint
                    .as_ref()
                    .is_some_and(|(_, used)| used.elapsed() < sh.cfg.checkpoint_keep);
                if !fresh {
                    let snap = Snapshot {
                        latest: st.latest,
                        replid_key: st.replid.clone(),
                        kv: st.kv.clone(),
                    };
                    st.checkpoint = Some((snap, std::time::Instant::now()));
                } else if let Some((snap, _)) = &st.checkpoint {
                    // 2.7.0 reuses a checkpoint only while its sequence is inside the WAL
                    // (`InWALBoundary`): one made while the master was empty (sequence 0) is
                    // refused, with the 2.7.0 wording and no CRLF, until the cron drops it.
                    let first = st.wal.first().map(|(seq, _)| *seq);
                    if first.is_none_or(|f| snap.latest < f) {
                        let _ = w.write_all(b"-ERR can't create db checkpoint");
                        let _ = w.shutdown(Shutdown::Both);
                        return;
                    }
                }
                if let Some((_, used)) = st.checkpoint.as_mut() {
                    *used = std::time::Instant::now();
                }
                let _ = w.write_all(format!("{}\r\n", CHECKPOINT_FILES.join(",")).as_bytes());
                let _ = w.shutdown(Shutdown::Both);
                return;
            }
            "_fetch_file" => {
                let (snap, wal) = {
                    let mut st = sh.state.lock().unwrap();
                    let snap = match st.checkpoint.as_mut() {
                        Some((snap, used)) => {
                            *used = std::time::Instant::now();
                            snap.clone()
                        }
                        None => Snapshot::default(),
                    };
                    (snap, st.wal.clone())
                };
                for f in args.get(1).map_or("", String::as_str).split(',') {
                    let Some(bytes) = checkpoint_file(f, &snap, &wal) else {
                        break; // a missing file: the master closes
                    };
                    let _ = w.write_all(format!("{}\r\n", bytes.len()).as_bytes());
                    let _ = w.write_all(&bytes);
                }
                let _ = w.shutdown(Shutdown::Both);
                return;
            }
            // What clients send (in cluster mode they reach the master through replguard).
            "set" if args.len() == 3 => {
                sh.write(Op::Set(args[1].clone(), args[2].clone()));
                let _ = w.write_all(b"+OK\r\n");
            }
            "get" if args.len() == 2 => {
                let v = sh.state.lock().unwrap().kv.get(&args[1]).cloned();
                let reply = match v {
                    Some(v) => format!("${}\r\n{v}\r\n", v.len()),
                    None => "$-1\r\n".into(),
                };
                let _ = w.write_all(reply.as_bytes());
            }
            _ => {
                let _ = w.write_all(b"-ERR unknown command\r\n");
            }
        }
    }
}

/// The checkpoint's files: RocksDB-format MANIFEST (a VersionEdit with the last sequence) and
/// WAL (the master's batches up to the checkpoint, in log-format records with zero CRCs), plus
/// the double's own state in the OPTIONS file, which is what its replica restores from.
fn checkpoint_file(name: &str, snap: &Snapshot, wal: &[(u64, Vec<u8>)]) -> Option<Vec<u8>> {
    match name {
        "OPTIONS-000013" => Some(serde_json::to_vec(snap).unwrap()),
        "MANIFEST-000011" => {
            let mut edit = vec![1];
            put_slice(&mut edit, b"leveldb.BytewiseComparator");
            edit.extend_from_slice(&[2, 10, 3, 12, 4]);
            put_varint(&mut edit, snap.latest as usize);
            Some(log_records(&[edit]))
        }
        "CURRENT" => Some(b"MANIFEST-000011\n".to_vec()),
        "000010.log" => {
            let batches: Vec<Vec<u8>> = wal
                .iter()
                .filter(|(s, _)| *s <= snap.latest)
                .map(|(_, p)| p.clone())
                .collect();
            Some(log_records(&batches))
        }
        _ => None,
    }
}

/// RocksDB log format: 32 KiB blocks, 7-byte record headers (CRC left zero), fragments
/// split at block ends.
pub fn log_records(records: &[Vec<u8>]) -> Vec<u8> {
    const BLOCK: usize = 32 * 1024;
    let mut out = Vec::new();
    for r in records {
        let mut rest = &r[..];
        let mut first = true;
        loop {
            let room = BLOCK - out.len() % BLOCK;
            if room < 7 {
                out.extend(std::iter::repeat_n(0u8, room));
                continue;
            }
            let take = rest.len().min(room - 7);
            let last = take == rest.len();
            let t = match (first, last) {
                (true, true) => 1,
                (true, false) => 2,
                (false, false) => 3,
                (false, true) => 4,
            };
            out.extend_from_slice(&[0, 0, 0, 0]);
            out.extend_from_slice(&(take as u16).to_le_bytes());
            out.push(t);
            out.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            first = false;
            if last {
                break;
            }
        }
    }
    out
}

/// The 2.7.0 PSYNC rule. Answers a refusal itself; `Some(seq)` when the stream starts.
fn psync_accepts(sh: &MasterShared, args: &[String], w: &mut TcpStream) -> Option<u64> {
    let (replid, seq) = match args.len() {
        2 => (None, &args[1]),
        3 => (Some(&args[1]), &args[2]),
        _ => {
            let _ = w.write_all(b"-ERR wrong number of arguments\r\n");
            return None;
        }
    };
    let Ok(seq) = seq.parse::<u64>() else {
        let _ = w.write_all(b"-ERR value is not an unsigned long long or out of range\r\n");
        return None;
    };
    if replid.is_some_and(|r| r.len() != 16) {
        let _ = w.write_all(b"-ERR Wrong replication id length\r\n");
        return None;
    }
    let st = sh.state.lock().unwrap();
    if let (Some(rid), true) = (replid, sh.cfg.use_rsid_psync) {
        let in_wal = st
            .wal
            .iter()
            .find(|(s, _)| *s == seq.wrapping_sub(1))
            .and_then(|(_, p)| decode_batch(p, sh.cfg.cluster).2);
        if in_wal
            .as_ref()
            .is_some_and(|id| id.len() == 16 && id != rid)
        {
            let _ = w.write_all(b"-ERR wrong replication id of the last log\r\n");
            return None;
        }
    }
    let ok = seq == st.latest + 1 || (seq <= st.latest && st.wal.iter().any(|(s, _)| *s == seq));
    if !ok {
        let _ = w.write_all(b"-ERR sequence out of range, please use fullsync\r\n");
        return None;
    }
    Some(seq)
}

/// `+OK`, then every batch from `seq` on as it is written, and `ping` when idle.
fn stream_batches(sh: &MasterShared, mut w: TcpStream, seq: u64, gone: &AtomicBool) {
    let mut out = b"+OK\r\n".to_vec();
    let mut next = seq;
    loop {
        {
            let mut st = sh.state.lock().unwrap();
            if out.is_empty() && st.latest < next {
                let (g, t) = sh.wrote.wait_timeout(st, sh.cfg.ping_every).unwrap();
                st = g;
                if gone.load(Ordering::SeqCst) {
                    return;
                }
                if t.timed_out() && st.latest < next {
                    out.extend_from_slice(b"$4\r\nping\r\n");
                    sh.pings.fetch_add(1, Ordering::SeqCst);
                }
            }
            let from = next;
            for (s, p) in st.wal.iter().filter(|(s, _)| *s >= from) {
                out.extend_from_slice(format!("${}\r\n", p.len()).as_bytes());
                out.extend_from_slice(p);
                out.extend_from_slice(b"\r\n");
                next = s + 1;
            }
            // Sequences that never reached the WAL are skipped, as a WAL iterator skips them.
            next = next.max(st.latest + 1);
        }
        if sh.stopped.load(Ordering::SeqCst) {
            return;
        }
        if !out.is_empty() {
            if w.write_all(&out).is_err() {
                return;
            }
            out.clear();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Replica
// ---------------------------------------------------------------------------------------------

/// How the replica double is configured.
#[derive(Debug, Clone)]
pub struct ReplicaCfg {
    pub dir: PathBuf,
    pub db_name: String,
    pub cluster: bool,
    pub use_rsid_psync: bool,
    /// `slaveof` is in its configuration file (standalone, persisted by CONFIG REWRITE): then
    /// it knows it is a replica at start-up and writes no id of its own.
    pub slaveof_in_config: bool,
    pub listening_port: u16,
    pub masterauth: Option<String>,
    /// How many times AUTH is sent before `_db_name` (2.7.0 may repeat it).
    pub auth_times: usize,
    /// The ids its start-up writes use, in order (random once these run out).
    pub replids: Vec<String>,
}

impl ReplicaCfg {
    pub fn new(dir: PathBuf) -> Self {
        ReplicaCfg {
            dir,
            db_name: "repro.db".into(),
            cluster: true,
            use_rsid_psync: false,
            slaveof_in_config: false,
            listening_port: 31102,
            masterauth: None,
            auth_times: 1,
            replids: Vec::new(),
        }
    }
}

/// What the replica double keeps on disk.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct ReplicaDisk {
    latest: u64,
    replid_key: Option<String>,
    kv: BTreeMap<String, String>,
    /// Trailing `r` id of each batch it holds, by sequence.
    wal_ids: BTreeMap<u64, Option<String>>,
    /// Start-up id writes so far.
    shifts: usize,
    full_syncs: u64,
    /// Every PSYNC it sent, as `PSYNC [id] seq`.
    psyncs: Vec<String>,
}

struct ReplicaShared {
    cfg: ReplicaCfg,
    disk: Mutex<ReplicaDisk>,
    master: Mutex<Option<SocketAddr>>,
    stopped: AtomicBool,
    conn: Mutex<Option<TcpStream>>,
}

impl ReplicaShared {
    fn save(&self, d: &ReplicaDisk) {
        let tmp = self.cfg.dir.join("state.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(d).unwrap()).unwrap();
        std::fs::rename(tmp, self.cfg.dir.join("state.json")).unwrap();
    }

    fn apply_local(&self, d: &mut ReplicaDisk, op: Op) {
        d.latest += 1;
        let id = if self.cfg.use_rsid_psync {
            match &op {
                Op::ReplId(id) => Some(id.clone()),
                _ => d.replid_key.clone(),
            }
        } else {
            None
        };
        apply_op(d, &op);
        d.wal_ids.insert(d.latest, id);
    }

    /// The id its PSYNC presents: the `r` id of the batch at its latest sequence, else the
    /// stored key.
    fn psync_args(&self, d: &ReplicaDisk) -> Vec<String> {
        let next = (d.latest + 1).to_string();
        let id = d
            .wal_ids
            .get(&d.latest)
            .cloned()
            .flatten()
            .or_else(|| d.replid_key.clone());
        match id {
            Some(id) if self.cfg.use_rsid_psync && id.len() == 16 => {
                vec!["PSYNC".into(), id, next]
            }
            _ => vec!["PSYNC".into(), next],
        }
    }
}

fn apply_op(d: &mut ReplicaDisk, op: &Op) {
    match op {
        Op::Set(k, v) => {
            d.kv.insert(k.clone(), v.clone());
        }
        Op::Del(k) => {
            d.kv.remove(k);
        }
        Op::ReplId(id) => d.replid_key = Some(id.clone()),
    }
}

/// A running replica double.
pub struct KvrocksReplicaDouble {
    shared: Arc<ReplicaShared>,
    worker: Option<thread::JoinHandle<()>>,
}

impl KvrocksReplicaDouble {
    /// Starts (or restarts, with the same directory) a replica of `master`; `None` starts it
    /// detached (`SLAVEOF NO ONE`).
    pub fn start(cfg: ReplicaCfg, master: Option<SocketAddr>) -> Self {
        std::fs::create_dir_all(&cfg.dir).unwrap();
        let mut disk: ReplicaDisk = std::fs::read(cfg.dir.join("state.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let shared = Arc::new(ReplicaShared {
            cfg,
            disk: Mutex::new(ReplicaDisk::default()),
            master: Mutex::new(master),
            stopped: AtomicBool::new(false),
            conn: Mutex::new(None),
        });
        if shared.cfg.use_rsid_psync && !shared.cfg.slaveof_in_config {
            let id = shared
                .cfg
                .replids
                .get(disk.shifts)
                .cloned()
                .unwrap_or_else(random_replid);
            disk.shifts += 1;
            shared.apply_local(&mut disk, Op::ReplId(id));
        }
        shared.save(&disk);
        *shared.disk.lock().unwrap() = disk;
        let mut r = KvrocksReplicaDouble {
            shared,
            worker: None,
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let s = self.shared.clone();
        self.worker = Some(thread::spawn(move || replicate(&s)));
    }

    /// Stops replicating (SIGTERM): the connection closes, the state stays on disk.
    pub fn stop(&mut self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        if let Some(c) = self.shared.conn.lock().unwrap().take() {
            let _ = c.shutdown(Shutdown::Both);
        }
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }

    /// `SLAVEOF NO ONE`: stop replicating, keep the data, accept writes.
    pub fn detach(&mut self) {
        self.stop();
        *self.shared.master.lock().unwrap() = None;
        self.shared.stopped.store(false, Ordering::SeqCst);
    }

    /// `SLAVEOF <addr>` at runtime.
    pub fn attach(&mut self, master: SocketAddr) {
        self.stop();
        *self.shared.master.lock().unwrap() = Some(master);
        self.shared.stopped.store(false, Ordering::SeqCst);
        self.spawn();
    }

    /// A write made on the replica itself (only while detached).
    pub fn local_set(&self, k: &str, v: &str) {
        let mut d = self.shared.disk.lock().unwrap();
        self.shared.apply_local(&mut d, Op::Set(k.into(), v.into()));
        self.shared.save(&d);
    }

    pub fn latest(&self) -> u64 {
        self.shared.disk.lock().unwrap().latest
    }

    pub fn data(&self) -> BTreeMap<String, String> {
        self.shared.disk.lock().unwrap().kv.clone()
    }

    pub fn get(&self, k: &str) -> Option<String> {
        self.shared.disk.lock().unwrap().kv.get(k).cloned()
    }

    pub fn full_syncs(&self) -> u64 {
        self.shared.disk.lock().unwrap().full_syncs
    }

    pub fn psyncs(&self) -> Vec<String> {
        self.shared.disk.lock().unwrap().psyncs.clone()
    }
}

impl Drop for KvrocksReplicaDouble {
    fn drop(&mut self) {
        self.stop();
    }
}

fn replicate(s: &ReplicaShared) {
    while !s.stopped.load(Ordering::SeqCst) {
        let Some(master) = *s.master.lock().unwrap() else {
            return;
        };
        match sync_once(s, master) {
            Ok(true) => continue, // full sync done: resume at once
            Ok(false) | Err(_) => thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn connect(s: &ReplicaShared, master: SocketAddr) -> std::io::Result<BufReader<TcpStream>> {
    let c = TcpStream::connect(master)?;
    c.set_nodelay(true)?;
    *s.conn.lock().unwrap() = Some(c.try_clone()?);
    if s.stopped.load(Ordering::SeqCst) {
        let _ = c.shutdown(Shutdown::Both);
    }
    let mut r = BufReader::new(c);
    if let Some(pass) = &s.cfg.masterauth {
        for _ in 0..s.cfg.auth_times.max(1) {
            r.get_mut().write_all(&resp(&["AUTH", pass]))?;
            expect_line(&mut r, "+OK")?;
        }
    }
    Ok(r)
}

fn read_line(r: &mut BufReader<TcpStream>) -> std::io::Result<String> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

fn expect_line(r: &mut BufReader<TcpStream>, want: &str) -> std::io::Result<()> {
    let got = read_line(r)?;
    if got == want {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("expected {want}, got {got}")))
    }
}

/// One replication attempt: `Ok(true)` after a full sync, `Ok(false)`/`Err` to retry later.
fn sync_once(s: &ReplicaShared, master: SocketAddr) -> std::io::Result<bool> {
    let mut r = connect(s, master)?;
    r.get_mut().write_all(&resp(&["_db_name"]))?;
    if read_line(&mut r)? != s.cfg.db_name {
        return Ok(false);
    }
    let port = s.cfg.listening_port.to_string();
    r.get_mut()
        .write_all(&resp(&["replconf", "listening-port", &port]))?;
    expect_line(&mut r, "+OK")?;
    let args = {
        let mut d = s.disk.lock().unwrap();
        let args = s.psync_args(&d);
        d.psyncs.push(args.join(" "));
        s.save(&d);
        args
    };
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    r.get_mut().write_all(&resp(&refs))?;
    let answer = read_line(&mut r)?;
    if answer == "+OK" {
        apply_stream(s, &mut r)?;
        return Ok(false);
    }
    drop(r);
    full_sync(s, master)?;
    Ok(true)
}

fn apply_stream(s: &ReplicaShared, r: &mut BufReader<TcpStream>) -> std::io::Result<()> {
    loop {
        let header = read_line(r)?;
        let len: usize = header
            .strip_prefix('$')
            .and_then(|l| l.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad bulk {header:?}")))?;
        let mut payload = vec![0; len + 2];
        r.read_exact(&mut payload)?;
        payload.truncate(len);
        if payload == b"ping" {
            continue;
        }
        let (seq, ops, replid) = decode_batch(&payload, s.cfg.cluster);
        let mut d = s.disk.lock().unwrap();
        for op in &ops {
            apply_op(&mut d, op);
        }
        d.latest = seq;
        d.wal_ids.insert(seq, replid);
        s.save(&d);
    }
}

fn full_sync(s: &ReplicaShared, master: SocketAddr) -> std::io::Result<()> {
    let mut r = connect(s, master)?;
    r.get_mut().write_all(&resp(&["_fetch_meta"]))?;
    let list = read_line(&mut r)?;
    drop(r);
    let mut r = connect(s, master)?;
    r.get_mut().write_all(&resp(&["_fetch_file", &list]))?;
    let mut files = BTreeMap::new();
    for name in list.split(',') {
        let size: usize = read_line(&mut r)?
            .parse()
            .map_err(|_| std::io::Error::other("bad file size"))?;
        let mut bytes = vec![0; size];
        r.read_exact(&mut bytes)?;
        files.insert(name.to_string(), bytes);
    }
    let snap: Snapshot = serde_json::from_slice(
        files
            .get("OPTIONS-000013")
            .ok_or_else(|| std::io::Error::other("no OPTIONS file"))?,
    )
    .map_err(std::io::Error::other)?;
    let mut d = s.disk.lock().unwrap();
    d.latest = snap.latest;
    d.replid_key = snap.replid_key;
    d.kv = snap.kv;
    d.wal_ids.clear();
    d.full_syncs += 1;
    s.save(&d);
    Ok(())
}
