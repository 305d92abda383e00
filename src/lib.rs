//! replguard: a RESP-aware proxy between replicas and their master that keeps its own books of
//! what it delivered, so a replica never resumes from a point that does not add up.
//!
//! # Map
//!
//! | module      | owns                                                                     |
//! |-------------|--------------------------------------------------------------------------|
//! | [`config`]  | the YAML schema, defaults; every problem by path (schema walk, validate) |
//! | [`server`]  | binding every listener, then shutdown in a written-down order            |
//! | [`link`]    | one listener per configured link, its bounded sessions and counters      |
//! | [`session`] | one replica connection: dial, handshake command by command, relay        |
//! | [`resp`]    | handshake framing: commands in (redis-protocol), single replies out      |
//! | [`psync`]   | the one place a PSYNC is routed: forwarded, forced full, or held         |
//! | [`verdict`] | pure: (ledger facts, PSYNC request) -> Pass / ForceFull / Hold, reasons  |
//! | [`ledger`]  | lineage of each master id and what each replica was delivered; on disk   |
//! | [`guard`]   | a link's ledger at runtime: judge, record, observe the master, persist   |
//! | [`kvsession`]  | one Kvrocks connection: handshake, guarded PSYNC, stream, checkpoints |
//! | [`kvrocks`]    | Kvrocks wire: PSYNC forms, WAL-batch scanner, `_fetch_file` framing |
//! | [`checkpoint`] | the last sequence of a Kvrocks checkpoint, read from its files      |
//! | [`watch`]   | reading the master's own INFO replication / keyspace                     |
//! | [`stream`]  | watching the sync as it passes: RDB framing, command-stream boundaries   |
//! | [`stats`]   | offset books per session (delivered, acknowledged, lag), link counters   |
//! | [`admin`]   | `GET /status` (JSON) and `GET /metrics` (Prometheus)                     |
//! | [`status`]  | `replguard status`: a running replguard's `/status` as a table           |
//!
//! # A replica's bytes
//!
//! ```text
//! replica ──TCP──▶ link::serve ──spawn──▶ session::run ──TCP──▶ master
//!                                           │
//!   handshake:  resp::parse_command ─▶ forward ─▶ resp::reply_len ─▶ back to replica
//!   PSYNC:      link.refresh_master (watch) ─▶ guard.judge (verdict over ledger)
//!               ─▶ psync::route ─▶ as sent | PSYNC ? -1 | -LOADING to the replica
//!               ─▶ master ─▶ +FULLRESYNC | +CONTINUE | -ERR ─▶ one decision log line
//!   relay  ◀──  stream::Downstream (payload framing, StreamScanner boundaries) ─▶ stats
//!                  stats ─▶ guard.delivered (every 200 ms and at session end) ─▶ ledger file
//!   relay  ──▶  REPLCONF ACK scanned on the way up ─▶ stats
//!                                           │
//!                 admin /status, /metrics read stats and the guard;
//!                 POST /links/<name>/master re-points, /allow-empty-master releases
//! ```
//!
//! A Kvrocks link (`flavor: kvrocks`) takes its own path after the dial:
//!
//! ```text
//! replica ──▶ session::run ──▶ kvsession::run ──▶ master
//!   handshake:  AUTH, _db_name (raw-line reply), replconf ─▶ forwarded one by one
//!   PSYNC [id] <seq>: guard.judge_kvrocks (verdict over the Kvrocks books)
//!               ─▶ psync::route_kvrocks ─▶ as sent | "-ERR ... please use fullsync" to the replica
//!   relay  ◀──  kvrocks::WalScanner (batch headers, r records, gaps) ─▶ stats ─▶ guard.kv_delivered
//!   _fetch_meta / _fetch_file ─▶ unchanged both ways; kvrocks::FetchScanner + checkpoint
//!               (the checkpoint's last sequence) ─▶ guard.kv_fetch_complete
//! ```
//!
//! Bytes are forwarded exactly as received; replguard only adds commands of its own during the
//! handshake (its `AUTH`, `REPLCONF ip-address`) and swallows their replies.

#![forbid(unsafe_code)]

pub mod config;
pub mod conn;
pub mod guard;
pub mod kvrocks;
pub mod link;
pub mod ops;
pub mod redis;
pub mod server;
pub mod wire;
