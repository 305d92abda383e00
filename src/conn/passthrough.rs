//! A client that is not a replica: every byte both ways, untouched, until either side closes.

use super::pump::{pump, Plain};
use super::stats::{LinkCounters, SessionState, SessionStats};
use super::Stream;
use super::{Peer, Result, Side};
use bytes::BytesMut;
use std::sync::atomic::Ordering::Relaxed;

/// Read size of the plain pipe, each way.
const PIPE_BUF: usize = 16 * 1024;

/// Forwards `first` (the command that showed it is not a replica) and whatever either side
/// sent early, then both directions through the relay pump.
pub async fn passthrough(
    counters: &LinkCounters,
    r: Peer<Stream>,
    m: Peer<Stream>,
    stats: &SessionStats,
    first: BytesMut,
) -> Result<()> {
    stats.set_state(SessionState::Passthrough);
    counters.passthrough_total.fetch_add(1, Relaxed);
    let (mut rr, mut rw) = r.io.into_split();
    let (mut mr, mut mw) = m.io.into_split();
    let mut up_first = first;
    up_first.extend_from_slice(&r.buf);
    let down_first = m.buf;
    let (mut up, mut down) = (Plain, Plain);
    tokio::select! {
        r = pump(&mut rr, &mut mw, Side::Replica, &up_first, PIPE_BUF, &mut up, None) => r,
        r = pump(&mut mr, &mut rw, Side::Master, &down_first, PIPE_BUF, &mut down, None) => r,
    }
}
