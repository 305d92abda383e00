//! Redis and Valkey (PSYNC2): the session's handshake and guarded PSYNC, the observers of the
//! RDB payload and command stream, and the master's own INFO.

pub mod psync;
pub mod session;
pub mod stream;
pub mod watch;

use crate::config::LinkConfig;
use crate::conn::stats::{SessionSnapshot, SessionStats};
use crate::conn::Stream;
use crate::conn::{Peer, SessionEnd};
use crate::link::{BoxFuture, Flavour, LinkCtx};
use std::time::Duration;

/// The Redis / Valkey flavour of a link.
pub struct Redis;

impl Flavour for Redis {
    fn session<'a>(
        &'a self,
        link: &'a LinkCtx,
        cfg: &'a LinkConfig,
        replica: Peer<Stream>,
        master: Peer<Stream>,
        stats: &'a SessionStats,
    ) -> BoxFuture<'a, Result<(), SessionEnd>> {
        Box::pin(session::run(link, cfg, replica, master, stats))
    }

    /// Reads the master's INFO and folds it into the ledger.
    fn refresh_master<'a>(&'a self, link: &'a LinkCtx, limit: Duration) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            link.read_master_with(
                limit,
                "the master's INFO",
                |s, creds| async move { watch::read_master(s, creds.as_ref()).await },
                |view| link.guard.observe(&link.name, &view),
            )
            .await
        })
    }

    fn record_delivery(&self, link: &LinkCtx, s: &SessionSnapshot, open: bool) {
        if let (Some(replid), Some(off)) = (&s.replid, s.expected_offset) {
            link.guard.delivered(&s.replica, s.id, replid, off, open);
        }
    }
}
