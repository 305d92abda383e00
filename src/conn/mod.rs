//! One connection, whatever the flavour: the places it may hold on its link, how a session ends
//! and which side it concerns, a peer with bounded, timed reads, the handshake steps every flavour shares, the one relay
//! pump, the plain pipe for clients that are not replicas, the session's books, and `INFO` reads on
//! a connection of replguard's own.

pub mod admission;
pub mod handshake;
pub mod info;
pub mod passthrough;
pub mod peer;
pub mod pump;
pub mod stats;
pub mod tls;

use crate::wire::resp::ProtocolError;
use std::fmt;
use std::io;
use std::time::Duration;

pub use peer::Peer;
pub use tls::Stream;

/// Which side of the session something concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Replica,
    Master,
}

impl Side {
    /// The side across the session.
    pub fn other(self) -> Side {
        match self {
            Side::Replica => Side::Master,
            Side::Master => Side::Replica,
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Replica => "replica",
            Side::Master => "master",
        })
    }
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionEnd {
    #[error("{0} closed the connection")]
    Closed(Side),
    #[error("replguard is shutting down")]
    Shutdown,
    #[error("cannot connect to master {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("{side} connection failed: {err}")]
    Io { side: Side, err: io::Error },
    #[error("{side} closed the connection inside {what}")]
    Truncated { side: Side, what: &'static str },
    #[error("{side} sent bytes that are not valid here: {err}")]
    Protocol { side: Side, err: ProtocolError },
    #[error("{side} sent nothing for {after:?} while replguard waited for {step}")]
    Timeout {
        side: Side,
        step: &'static str,
        after: Duration,
    },
    #[error("TLS handshake with the {side} failed: {reason}")]
    Tls { side: Side, reason: String },
    #[error("refused: {0}")]
    Refused(admission::Refusal),
    #[error("master answered PSYNC with {0:?}, which replguard does not relay")]
    Unsupported(String),
    #[error("held by the lineage guard (answered -LOADING)")]
    Held,
    #[error("master refused the sync with {0:?} (relayed to the replica)")]
    SyncRefused(String),
    #[error("the master's stream skipped sequences {expected}..={}; closed before the batch that starts at {got} (guard: enforce)", .got - 1)]
    StreamGap { expected: u64, got: u64 },
}

impl SessionEnd {
    /// Whether the end is routine (a peer went away, replguard stopped, or refused the peer
    /// by a limit) rather than a fault.
    pub fn is_routine(&self) -> bool {
        matches!(
            self,
            SessionEnd::Closed(_)
                | SessionEnd::Shutdown
                | SessionEnd::Held
                | SessionEnd::Refused(_)
        )
    }
}

pub(crate) type Result<T> = std::result::Result<T, SessionEnd>;

pub fn replica_io(err: io::Error) -> SessionEnd {
    SessionEnd::Io {
        side: Side::Replica,
        err,
    }
}

pub fn master_io(err: io::Error) -> SessionEnd {
    SessionEnd::Io {
        side: Side::Master,
        err,
    }
}
