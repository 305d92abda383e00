//! Offset bookkeeping: what each replica session has been delivered and has acknowledged, shared
//! between the session's relay (writer) and the admin listener (reader).
//!
//! The relay's hot path only touches atomics; the mutex-guarded part changes a few times per
//! session (handshake facts) and at most ten times a second (lag samples).

use crate::guard::ledger::KvIdRange;
use serde::Serialize;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{
    AtomicU64, AtomicU8,
    Ordering::{Acquire, Relaxed, Release},
};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Where a session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionState {
    Handshake,
    Rdb,
    Streaming,
    /// Not a replica: bytes pass through untouched.
    Passthrough,
    /// A Kvrocks full-sync connection (`_fetch_meta`, `_fetch_file`): relayed unchanged.
    Checkpoint,
}

impl SessionState {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => SessionState::Rdb,
            2 => SessionState::Streaming,
            3 => SessionState::Passthrough,
            4 => SessionState::Checkpoint,
            _ => SessionState::Handshake,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Handshake => "handshake",
            SessionState::Rdb => "rdb",
            SessionState::Streaming => "streaming",
            SessionState::Passthrough => "passthrough",
            SessionState::Checkpoint => "checkpoint",
        }
    }
}

/// How the current sync began.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncKind {
    Full,
    Partial,
}

/// Handshake facts and lag samples.
#[derive(Debug, Default)]
struct Facts {
    replica_ip: Option<String>,
    replica_port: Option<u16>,
    psync_request: Option<(String, i64)>,
    replid: Option<String>,
    start_offset: Option<u64>,
    sync: Option<SyncKind>,
    rdb_diskless: Option<bool>,
    /// (replica offset reached, when the relay delivered it), oldest first; drained by ACKs.
    /// The newest sample stands for everything delivered since it was taken.
    samples: VecDeque<(u64, Instant)>,
    last_ack_at: Option<Instant>,
    /// Kvrocks: the ids of the batches delivered, by range.
    kv_ids: Vec<KvIdRange>,
}

/// Most lag samples kept; at one per [`SAMPLE_EVERY`] this covers a minute.
const MAX_SAMPLES: usize = 600;
/// Least time between two lag samples.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// Everything known about one replica session.
#[derive(Debug)]
pub struct SessionStats {
    /// Unique within the process, for logs and /status.
    pub id: u64,
    /// The link this session belongs to.
    pub link: String,
    /// The replica's TCP peer address.
    pub peer: SocketAddr,
    pub started: Instant,
    started_wall: SystemTime,
    state: AtomicU8,
    /// Command-stream bytes forwarded to the replica.
    stream_bytes: AtomicU64,
    /// Stream bytes up to the end of the last complete command forwarded.
    stream_boundary: AtomicU64,
    /// RDB payload bytes forwarded.
    rdb_bytes: AtomicU64,
    /// Last `REPLCONF ACK` offset, plus one (0 = none yet).
    ack_plus_one: AtomicU64,
    /// When the next lag sample is due, in nanoseconds since `started`: the relay takes the
    /// facts lock only then, not for every chunk.
    next_sample_ns: AtomicU64,
    /// Kvrocks: the sequence the next batch should start at, plus one (0 = not a stream).
    kv_next_plus_one: AtomicU64,
    kv_batches: AtomicU64,
    kv_pings: AtomicU64,
    kv_gaps: AtomicU64,
    /// Kvrocks: nanoseconds since `started` of the last heartbeat, plus one (0 = none).
    kv_last_ping_ns: AtomicU64,
    facts: Mutex<Facts>,
}

/// The Kvrocks part of a session snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct KvSnapshot {
    /// The sequence the next batch should start at.
    pub next_seq: u64,
    pub batches: u64,
    pub heartbeats: u64,
    pub gaps: u64,
    /// The ids the delivered batches carried, by range (the first may be the id the replica
    /// presented for the sequence before its first batch).
    pub id_ranges: Vec<KvIdRange>,
    pub last_heartbeat_seconds_ago: Option<f64>,
}

/// A snapshot of a session for /status, /metrics and the end-of-session log line.
#[derive(Debug, Clone, Serialize)]
pub struct SessionSnapshot {
    pub id: u64,
    pub link: String,
    pub peer: String,
    /// `ip:port` the replica is known by (announced, else its peer IP with its listening port).
    pub replica: String,
    pub state: SessionState,
    pub connected_seconds: f64,
    pub started_unix: u64,
    pub psync_replid: Option<String>,
    pub psync_offset: Option<i64>,
    pub sync: Option<SyncKind>,
    pub replid: Option<String>,
    /// Replication offset the stream started from (the FULLRESYNC offset, or PSYNC offset - 1).
    pub start_offset: Option<u64>,
    /// Command-stream bytes delivered.
    pub delivered_bytes: u64,
    /// Offset the replica should be at: start + complete commands delivered.
    pub expected_offset: Option<u64>,
    pub ack_offset: Option<u64>,
    pub lag_bytes: Option<u64>,
    pub lag_seconds: Option<f64>,
    pub last_ack_seconds_ago: Option<f64>,
    pub rdb_bytes: u64,
    pub rdb_diskless: Option<bool>,
    /// Kvrocks streams only; their offsets above are sequences (start = PSYNC sequence - 1,
    /// expected = last sequence delivered), `replid` is the id the last batch carried (the
    /// PSYNC's before any batch), and they have no ACKs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kvrocks: Option<KvSnapshot>,
}

impl SessionStats {
    pub fn new(id: u64, link: &str, peer: SocketAddr) -> Self {
        SessionStats {
            id,
            link: link.to_string(),
            peer,
            started: Instant::now(),
            started_wall: SystemTime::now(),
            state: AtomicU8::new(0),
            stream_bytes: AtomicU64::new(0),
            stream_boundary: AtomicU64::new(0),
            rdb_bytes: AtomicU64::new(0),
            ack_plus_one: AtomicU64::new(0),
            next_sample_ns: AtomicU64::new(0),
            kv_next_plus_one: AtomicU64::new(0),
            kv_batches: AtomicU64::new(0),
            kv_pings: AtomicU64::new(0),
            kv_gaps: AtomicU64::new(0),
            kv_last_ping_ns: AtomicU64::new(0),
            facts: Mutex::new(Facts::default()),
        }
    }

    fn facts(&self) -> std::sync::MutexGuard<'_, Facts> {
        self.facts.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_state(&self, s: SessionState) {
        self.state.store(s as u8, Relaxed);
    }

    pub fn state(&self) -> SessionState {
        SessionState::from_u8(self.state.load(Relaxed))
    }

    pub fn set_replica_ip(&self, ip: &str) {
        self.facts().replica_ip = Some(ip.to_string());
    }

    pub fn set_replica_port(&self, port: u16) {
        self.facts().replica_port = Some(port);
    }

    pub fn set_psync_request(&self, replid: &str, offset: i64) {
        self.facts().psync_request = Some((replid.to_string(), offset));
    }

    /// A full sync began: the stream will start at `offset` of `replid` (unknown for inline SYNC).
    pub fn begin_full(&self, replid: Option<&str>, offset: Option<u64>) {
        let mut f = self.facts();
        f.sync = Some(SyncKind::Full);
        f.replid = replid.map(str::to_string);
        f.start_offset = offset;
        f.samples.clear();
        drop(f);
        self.next_sample_ns.store(0, Relaxed);
        self.reset_counters();
        self.set_state(SessionState::Rdb);
    }

    /// A partial resync began: the stream continues after `offset`.
    pub fn begin_partial(&self, replid: Option<&str>, offset: u64) {
        let mut f = self.facts();
        f.sync = Some(SyncKind::Partial);
        f.replid = replid.map(str::to_string);
        f.start_offset = Some(offset);
        f.samples.clear();
        drop(f);
        self.next_sample_ns.store(0, Relaxed);
        self.reset_counters();
        self.set_state(SessionState::Streaming);
    }

    /// A Kvrocks replica was answered `+OK` to `PSYNC [replid] <seq>`: batches from `seq` follow.
    /// `ids` are the id ranges the replica's books start with.
    pub fn begin_kvrocks(&self, replid: Option<&str>, seq: u64, ids: &[KvIdRange]) {
        let mut f = self.facts();
        f.sync = Some(SyncKind::Partial);
        f.replid = replid.map(str::to_string);
        f.start_offset = Some(seq.saturating_sub(1));
        f.kv_ids = ids.to_vec();
        drop(f);
        self.reset_counters();
        self.kv_next_plus_one.store(seq.saturating_add(1), Release);
        self.set_state(SessionState::Streaming);
    }

    /// Called by a Kvrocks relay after each forwarded chunk: the sequence the next batch
    /// starts at, batches and heartbeats seen, stream bytes.
    pub fn record_kvrocks(&self, next_seq: u64, batches: u64, pings: u64, bytes: u64) {
        self.stream_bytes.store(bytes, Relaxed);
        // Release: a snapshot that reads this sequence also reads the id ranges set before it.
        self.kv_next_plus_one
            .store(next_seq.saturating_add(1), Release);
        self.kv_batches.store(batches, Relaxed);
        if self.kv_pings.swap(pings, Relaxed) != pings {
            let ns = Instant::now().duration_since(self.started).as_nanos() as u64;
            self.kv_last_ping_ns.store(ns + 1, Relaxed);
        }
    }

    /// The ids of the Kvrocks batches delivered changed: `ids` are all their ranges. Called
    /// before [`Self::record_kvrocks`] publishes the sequence they lead up to.
    pub fn set_kvrocks_ids(&self, ids: &[KvIdRange]) {
        let mut f = self.facts();
        f.replid = ids.last().and_then(|r| r.replid.clone());
        f.kv_ids = ids.to_vec();
    }

    pub fn count_kvrocks_gap(&self) {
        self.kv_gaps.fetch_add(1, Relaxed);
    }

    fn reset_counters(&self) {
        self.stream_bytes.store(0, Relaxed);
        self.stream_boundary.store(0, Relaxed);
        self.rdb_bytes.store(0, Relaxed);
    }

    pub fn set_rdb_mode(&self, diskless: bool) {
        self.facts().rdb_diskless = Some(diskless);
    }

    pub fn set_rdb_bytes(&self, n: u64) {
        self.rdb_bytes.store(n, Relaxed);
    }

    /// Called by the relay after each forwarded chunk of command stream.
    pub fn record_stream(&self, bytes: u64, boundary: u64) {
        self.stream_bytes.store(bytes, Relaxed);
        if self.stream_boundary.swap(boundary, Relaxed) == boundary {
            return;
        }
        let now = Instant::now();
        let since_start = now.duration_since(self.started).as_nanos() as u64;
        if since_start < self.next_sample_ns.load(Relaxed) {
            return;
        }
        self.next_sample_ns
            .store(since_start + SAMPLE_EVERY.as_nanos() as u64, Relaxed);
        let mut f = self.facts();
        if let Some(reached) = f.start_offset.and_then(|s| s.checked_add(boundary)) {
            if f.samples.len() == MAX_SAMPLES {
                f.samples.pop_front();
            }
            f.samples.push_back((reached, now));
        }
    }

    /// Called when the replica's `REPLCONF ACK <offset>` passes.
    pub fn record_ack(&self, offset: u64) {
        self.ack_plus_one.store(offset.saturating_add(1), Relaxed);
        let mut f = self.facts();
        f.last_ack_at = Some(Instant::now());
        // The newest sample also covers what was delivered after it was taken.
        let delivered = f
            .start_offset
            .and_then(|st| st.checked_add(self.stream_boundary.load(Relaxed)));
        while let Some(&(o, _)) = f.samples.front() {
            let covers = if f.samples.len() == 1 {
                delivered.map_or(o, |d| d.max(o))
            } else {
                o
            };
            if covers > offset {
                break;
            }
            f.samples.pop_front();
        }
        if f.samples.is_empty() {
            // Everything is acknowledged: the next delivery starts the lag clock at once, not
            // after the sampling interval (a replica that stalls right then still shows lag).
            self.next_sample_ns.store(0, Relaxed);
        }
    }

    pub fn snapshot(&self) -> SessionSnapshot {
        // Read before the facts: the id ranges then cover at least up to this sequence.
        let kv_next = self.kv_next_plus_one.load(Acquire).checked_sub(1);
        let f = self.facts();
        let now = Instant::now();
        let delivered = self.stream_bytes.load(Relaxed);
        let boundary = self.stream_boundary.load(Relaxed);
        let ack = self.ack_plus_one.load(Relaxed).checked_sub(1);
        // A Kvrocks stream counts in sequences.
        let expected = match kv_next {
            Some(next) => Some(next.saturating_sub(1)),
            None => f.start_offset.and_then(|s| s.checked_add(boundary)),
        };
        let kvrocks = kv_next.map(|next_seq| KvSnapshot {
            next_seq,
            batches: self.kv_batches.load(Relaxed),
            heartbeats: self.kv_pings.load(Relaxed),
            gaps: self.kv_gaps.load(Relaxed),
            id_ranges: f.kv_ids.clone(),
            last_heartbeat_seconds_ago: self
                .kv_last_ping_ns
                .load(Relaxed)
                .checked_sub(1)
                .map(|ns| now.duration_since(self.started).as_secs_f64() - ns as f64 / 1e9),
        });
        let lag_bytes = match (expected, ack) {
            (Some(e), Some(a)) => Some(e.saturating_sub(a)),
            _ => None,
        };
        let lag_seconds = ack.map(|_| {
            f.samples
                .front()
                .map_or(0.0, |(_, t)| now.duration_since(*t).as_secs_f64())
        });
        let ip = f
            .replica_ip
            .clone()
            .unwrap_or_else(|| self.peer.ip().to_string());
        let replica = match f.replica_port {
            Some(p) => format!("{ip}:{p}"),
            None => format!("{ip}:?"),
        };
        SessionSnapshot {
            id: self.id,
            link: self.link.clone(),
            peer: self.peer.to_string(),
            replica,
            state: self.state(),
            connected_seconds: now.duration_since(self.started).as_secs_f64(),
            started_unix: self
                .started_wall
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            psync_replid: f.psync_request.as_ref().map(|(r, _)| r.clone()),
            psync_offset: f.psync_request.as_ref().map(|(_, o)| *o),
            sync: f.sync,
            replid: f.replid.clone(),
            start_offset: f.start_offset,
            delivered_bytes: delivered,
            expected_offset: expected,
            ack_offset: ack,
            lag_bytes,
            lag_seconds,
            last_ack_seconds_ago: f.last_ack_at.map(|t| now.duration_since(t).as_secs_f64()),
            rdb_bytes: self.rdb_bytes.load(Relaxed),
            rdb_diskless: f.rdb_diskless,
            kvrocks,
        }
    }
}

/// Counters per link that outlive sessions.
#[derive(Debug, Default)]
pub struct LinkCounters {
    pub sessions_total: AtomicU64,
    pub sessions_refused: AtomicU64,
    pub passthrough_total: AtomicU64,
    pub full_syncs: AtomicU64,
    pub partial_syncs: AtomicU64,
    pub psync_rejected: AtomicU64,
    pub session_errors: AtomicU64,
    /// TLS handshakes that failed, on the link port or towards the master.
    pub tls_failures: AtomicU64,
    /// Bytes of sessions that have ended; live sessions are added at scrape time.
    pub ended_stream_bytes: AtomicU64,
    pub ended_rdb_bytes: AtomicU64,
}

impl LinkCounters {
    pub fn add_ended(&self, s: &SessionSnapshot) {
        self.ended_stream_bytes
            .fetch_add(s.delivered_bytes, Relaxed);
        self.ended_rdb_bytes.fetch_add(s.rdb_bytes, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_and_lag_follow_delivery_and_acks() {
        let s = SessionStats::new(1, "main", "127.0.0.1:5000".parse().unwrap());
        s.begin_full(Some("abc"), Some(100));
        s.record_stream(50, 40);
        let snap = s.snapshot();
        assert_eq!(snap.expected_offset, Some(140));
        assert_eq!(snap.delivered_bytes, 50);
        assert_eq!(snap.ack_offset, None);
        assert_eq!(snap.lag_seconds, None);
        s.record_ack(120);
        let snap = s.snapshot();
        assert_eq!(snap.lag_bytes, Some(20));
        assert!(snap.lag_seconds.unwrap() >= 0.0);
        // Delivered right after the last sample: an ACK short of it leaves lag pending.
        s.record_stream(80, 70);
        s.record_ack(150);
        assert!(s.snapshot().lag_seconds.unwrap() >= 0.0);
        assert_eq!(s.snapshot().lag_bytes, Some(20));
        assert!(!s.facts().samples.is_empty());
        s.record_ack(170);
        let snap = s.snapshot();
        assert_eq!(snap.lag_bytes, Some(0));
        assert_eq!(snap.lag_seconds, Some(0.0));
        // Everything acknowledged: a delivery right after starts the lag clock at once.
        s.record_stream(90, 80);
        std::thread::sleep(Duration::from_millis(5));
        assert!(s.snapshot().lag_seconds.unwrap() > 0.0);
    }

    #[test]
    fn offsets_that_would_overflow_are_not_wrapped() {
        let s = SessionStats::new(1, "main", "127.0.0.1:5000".parse().unwrap());
        s.begin_full(Some("abc"), Some(u64::MAX - 10));
        s.record_stream(14, 14);
        s.record_ack(5);
        let snap = s.snapshot();
        assert_eq!(snap.expected_offset, None);
        assert_eq!(snap.lag_bytes, None);
        assert!(s.facts().samples.is_empty());
    }

    #[test]
    fn replica_identity_prefers_announced_address() {
        let s = SessionStats::new(1, "main", "127.0.0.9:5000".parse().unwrap());
        assert_eq!(s.snapshot().replica, "127.0.0.9:?");
        s.set_replica_port(6380);
        assert_eq!(s.snapshot().replica, "127.0.0.9:6380");
        s.set_replica_ip("10.1.2.3");
        assert_eq!(s.snapshot().replica, "10.1.2.3:6380");
    }
}
