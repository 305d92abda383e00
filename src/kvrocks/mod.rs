//! Kvrocks: the session's handshake and guarded PSYNC, the WAL-batch stream observer, the
//! `_fetch_meta` / `_fetch_file` connections of a full sync, and the checkpoint reader.

pub mod checkpoint;
pub mod session;
pub mod wire;
