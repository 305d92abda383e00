//! Redis and Valkey (PSYNC2): the session's handshake and guarded PSYNC, the observers of the
//! RDB payload and command stream, and the master's own INFO.

pub mod session;
pub mod stream;
pub mod watch;
