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

    /// In a group, reads the node's INFO (role, latest sequence, process) into the guard: a
    /// promoted node's switch comes from it. A link on its own reads nothing: its books come
    /// from the stream alone.
    fn refresh_master<'a>(&'a self, link: &'a LinkCtx, limit: Duration) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            if link.guard.books().group().is_none() {
                return false;
            }
            link.read_master_with(
                limit,
                "the node's INFO",
                |s, creds| async move { watch::read_node(s, creds.as_ref()).await },
                |view| link.guard.kv_observe_node(&view),
            )
            .await
        })
    }

    fn record_delivery(&self, link: &LinkCtx, s: &SessionSnapshot, open: bool) {
        if let Some(kv) = &s.kvrocks {
            link.guard
                .kv_delivered(&s.replica, s.id, kv.next_seq, &kv.id_ranges, open);
        }
    }
}
