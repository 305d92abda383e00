//! replguard: a RESP-aware proxy between replicas and their master that keeps its own books of
//! what it delivered, so a replica never resumes from a point that does not add up.
//!
//! # Map
//!
//! The tree follows a replica's bytes: a [`link`] accepts the connection and dials the master,
//! the flavour ([`redis`] or [`kvrocks`]) runs the handshake on the shared steps of [`conn`],
//! asks the [`guard`] about the PSYNC, and relays the stream through the one pump of
//! [`conn::pump`] with its own observer; [`ops`] shows the books. No module imports one that
//! imports it back, and the shared modules (`conn`, `wire`, `guard`, `link`) know no flavour.
//!
//! | module | owns |
//! |---|---|
//! | [`config`] | the YAML schema, defaults; every problem by path (schema walk, validate) |
//! | [`server`] | binding every listener, picking each link's flavour, shutdown in order |
//! | [`link`] | one link: its context, accept loop, the dial, the keeper |
//! | [`conn`] | one connection, no flavour: its admission (allow-list, per-IP cap, budgets), TLS on either side, how a session ends, timed peer reads, the shared handshake steps (`AUTH`, `PING`, `REPLCONF`, deadlines), the relay pump, the plain pipe, session books, bounded `INFO` reads on a connection of replguard's own |
//! | [`redis`] | Redis / Valkey: handshake and PSYNC, the RDB and stream observers, INFO lineage |
//! | [`kvrocks`] | Kvrocks: handshake and PSYNC, the WAL-batch observer, `_fetch_meta` / `_fetch_file`, the checkpoint reader, the node's INFO (role, latest sequence, process) |
//! | [`guard`] | a link's guard at runtime over its books ([`guard::Books`]: one link's, or shared by the links of a `group`); [`guard::verdict`] (pure, property-tested; one facts type and rule set per flavour), [`guard::route`], [`guard::decision`] (the log line), [`guard::ledger`] (data), [`guard::store`] (the file's one writer) |
//! | [`wire`] | pure codecs: bounded, resumable RESP handshake framing |
//! | [`ops`] | the admin listener (`/status` shaped by [`ops::status`], `/metrics`, token-guarded mutating routes) and `replguard status` |
//!
//! # A replica's bytes
//!
//! ```text
//! replica ──TCP──▶ link::serve ──▶ link: dial the master ──▶ flavour.session ──TCP──▶ master
//!                                           │
//!   handshake:  conn::Peer (wire::resp parsers) ─▶ conn::handshake steps ─▶ one reply back
//!   PSYNC:      flavour.refresh_master ─▶ guard.judge (verdict over ledger)
//!               ─▶ guard::route ─▶ as sent | full-sync request | answer to the replica
//!               ─▶ master's answer ─▶ guard::decision: one log line, counters
//!   relay:      conn::pump ◀─ observer: redis::stream (RDB framing, command boundaries)
//!                                       | kvrocks::wire (WAL batches, ids, gaps)
//!                  ─▶ conn::stats ─▶ flavour.record_delivery (every 200 ms, at session end)
//!                  ─▶ guard ─▶ guard::store (ledger file)
//!   up:         conn::pump ◀─ observer: whole commands only, REPLCONF ACK offsets ─▶ stats
//!                                           │
//!                 ops: /status, /metrics read stats and the guard;
//!                 POST /links/<name>/master re-points, /allow-empty-master releases
//!
//! The links of a `group` (one per node of a Sentinel set, a Redis Cluster or a Kvrocks
//! cluster) hold one `guard::Books`: a replica moved by a failover from one node's link to
//! another's is judged on its whole history (for Kvrocks, on its record at the link that fed
//! the promoted node, up to the promoted node's switch: `guard::ledger::KvNode`).
//! ```
//!
//! Kvrocks' full-sync connections (`_fetch_meta`, `_fetch_file`) pass through the same pump
//! unchanged; their observer counts a complete transfer and reads the checkpoint's last
//! sequence. Bytes are forwarded exactly as received; replguard only adds a command of its own
//! during the handshake (`REPLCONF ip-address`) and swallows its reply; it never sends
//! credentials on a connection from a link port.

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
