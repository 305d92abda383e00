//! Kvrocks: the session's handshake and guarded PSYNC, the WAL-batch stream observer, the
//! `_fetch_meta` / `_fetch_file` connections of a full sync, and the checkpoint reader.

pub mod checkpoint;
pub mod session;
pub mod watch;
pub mod wire;

use crate::config::LinkConfig;
use crate::conn::stats::{SessionSnapshot, SessionStats};
use crate::conn::Stream;
use crate::conn::{Peer, SessionEnd};
use crate::link::{BoxFuture, Flavour, LinkCtx};
use std::time::Duration;

/// The Kvrocks flavour of a link.
pub struct Kvrocks;

impl Flavour for Kvrocks {
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

    /// A Kvrocks master is not read: its books come from the stream alone.
    fn refresh_master<'a>(&'a self, _: &'a LinkCtx, _: Duration) -> BoxFuture<'a, bool> {
        Box::pin(async { false })
    }

    fn record_delivery(&self, link: &LinkCtx, s: &SessionSnapshot, open: bool) {
        if let Some(kv) = &s.kvrocks {
            link.guard
                .kv_delivered(&s.replica, s.id, kv.next_seq, &kv.id_ranges, open);
        }
    }
}
