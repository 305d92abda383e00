//! The one relay pump: reads one direction of a session, shows each chunk to an [`Observer`]
//! and forwards exactly the bytes it lets through, unchanged.
//!
//! The observer decides per chunk: forward it all (the usual case), forward a prefix and keep
//! the rest until more bytes complete it, hold the rest until a gate opens (the first ACK after
//! a diskless payload), or forward a prefix and end the relay (a stream gap). Reads may carry a
//! deadline, and the source closing inside a frame is reported as a truncated frame.

use super::{Result, SessionEnd, Side};
use bytes::BytesMut;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::timeout;

/// Read size of a relay's master-to-replica direction; with [`UP_BUF`] it bounds a session's
/// relay memory whatever the size of the sync.
pub const DOWN_BUF: usize = 64 * 1024;
/// Read size of a relay's replica-to-master direction (ACKs are small).
pub const UP_BUF: usize = 8 * 1024;

/// What an observer makes of the bytes it was shown.
#[derive(Debug)]
pub enum Step {
    /// Forward this many of them; the rest waits, shown again with the next bytes.
    Forward(usize),
    /// Forward this many now and the rest once the gate opens.
    Hold(usize),
    /// Forward this many, then end the relay.
    Cut(usize, SessionEnd),
}

/// What the pump does when its source closes.
#[derive(Debug)]
pub enum AtEof {
    /// End the relay.
    End(SessionEnd),
    /// Close the destination's write side and end the relay without an error.
    Finish,
    /// Close the destination's write side and leave the end to the other direction.
    HalfClose,
}

/// Watches one direction of a relay.
pub trait Observer {
    /// Sees bytes before they are forwarded: those not forwarded by an earlier call followed
    /// by the newly read ones.
    fn observe(&mut self, bytes: &[u8]) -> Result<Step>;

    /// Called after each forward, to publish what was delivered.
    fn forwarded(&mut self) {}

    /// A deadline for the next read, and what replguard is waiting for.
    fn deadline(&self) -> Option<(Duration, &'static str)> {
        None
    }

    /// The source closed. By default the relay ends, naming a frame the close cut.
    fn at_eof(&mut self, from: Side) -> AtEof {
        AtEof::End(match self.open_frame() {
            Some(what) => SessionEnd::Truncated { side: from, what },
            None => SessionEnd::Closed(from),
        })
    }

    /// The frame the stream stands inside, if any.
    fn open_frame(&self) -> Option<&'static str> {
        None
    }
}

/// Forwards everything as it comes.
pub struct Plain;

impl Observer for Plain {
    fn observe(&mut self, bytes: &[u8]) -> Result<Step> {
        Ok(Step::Forward(bytes.len()))
    }
}

/// A gate a held chunk waits on, and the longest wait.
pub struct Gate<'a> {
    pub open: &'a mut watch::Receiver<bool>,
    pub within: Duration,
    pub waiting_for: &'static str,
}

/// One direction of a relay: `from` is the side `src` reads from. `first` holds bytes read
/// before the relay began; `cap` is the read size.
pub async fn pump<R, W, O>(
    src: &mut R,
    dst: &mut W,
    from: Side,
    first: &[u8],
    cap: usize,
    obs: &mut O,
    mut gate: Option<Gate<'_>>,
) -> Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    O: Observer,
{
    let to = from.other();
    let read_err = |err| SessionEnd::Io { side: from, err };
    let write_err = |err| SessionEnd::Io { side: to, err };
    let mut buf = vec![0u8; cap];
    // Bytes shown but not forwarded yet; empty in the usual case, where chunks go straight
    // from the read buffer.
    let mut pending = BytesMut::new();
    let mut n = first.len();
    let mut from_first = true;
    loop {
        if n > 0 {
            let chunk: &[u8] = if from_first {
                first
            } else if pending.is_empty() {
                &buf[..n]
            } else {
                pending.extend_from_slice(&buf[..n]);
                &pending
            };
            let step = obs.observe(chunk)?;
            let (now, rest_held, end) = match step {
                Step::Forward(k) => (k, false, None),
                Step::Hold(k) => (k, true, None),
                Step::Cut(k, e) => (k, false, Some(e)),
            };
            let now = now.min(chunk.len());
            dst.write_all(&chunk[..now]).await.map_err(write_err)?;
            if let Some(e) = end {
                obs.forwarded();
                return Err(e);
            }
            if rest_held && now < chunk.len() {
                if let Some(g) = gate.as_mut() {
                    match timeout(g.within, g.open.wait_for(|o| *o)).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(_)) => return Err(SessionEnd::Closed(to)),
                        Err(_) => {
                            return Err(SessionEnd::Timeout {
                                side: to,
                                step: g.waiting_for,
                                after: g.within,
                            })
                        }
                    }
                }
                dst.write_all(&chunk[now..]).await.map_err(write_err)?;
                pending.clear();
            } else if now < chunk.len() {
                let rest = BytesMut::from(&chunk[now..]);
                pending = rest;
            } else {
                pending.clear();
            }
            obs.forwarded();
        }
        let read = src.read(&mut buf);
        n = match obs.deadline() {
            Some((after, step)) => timeout(after, read)
                .await
                .map_err(|_| SessionEnd::Timeout {
                    side: from,
                    step,
                    after,
                })?,
            None => read.await,
        }
        .map_err(read_err)?;
        from_first = false;
        if n == 0 {
            match obs.at_eof(from) {
                AtEof::End(e) => return Err(e),
                AtEof::Finish => {
                    dst.shutdown().await.map_err(write_err)?;
                    return Ok(());
                }
                AtEof::HalfClose => {
                    let _ = dst.shutdown().await;
                    return std::future::pending().await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Forwards whole lines only, cuts at a `!`, holds after a `#`.
    struct Lines {
        open: bool,
    }

    impl Observer for Lines {
        fn observe(&mut self, bytes: &[u8]) -> Result<Step> {
            if let Some(i) = bytes.iter().position(|&b| b == b'!') {
                return Ok(Step::Cut(i, SessionEnd::Closed(Side::Master)));
            }
            if let Some(i) = bytes.iter().position(|&b| b == b'#') {
                return Ok(Step::Hold(i + 1));
            }
            let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            self.open = whole < bytes.len();
            Ok(Step::Forward(whole))
        }

        fn open_frame(&self) -> Option<&'static str> {
            self.open.then_some("a line")
        }
    }

    async fn run(input: &[&[u8]], first: &[u8]) -> (Vec<u8>, Result<()>) {
        let (mut tx, mut src) = tokio::io::duplex(64);
        let (mut dst, mut rx) = tokio::io::duplex(1 << 16);
        let input: Vec<Vec<u8>> = input.iter().map(|c| c.to_vec()).collect();
        let writer = tokio::spawn(async move {
            for c in input {
                tx.write_all(&c).await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        let (_gate_tx, mut gate_rx) = watch::channel(true);
        let gate = Gate {
            open: &mut gate_rx,
            within: Duration::from_secs(1),
            waiting_for: "a test gate",
        };
        let mut obs = Lines { open: false };
        let res = pump(
            &mut src,
            &mut dst,
            Side::Master,
            first,
            8,
            &mut obs,
            Some(gate),
        )
        .await;
        writer.await.unwrap();
        drop(dst);
        let mut out = Vec::new();
        rx.read_to_end(&mut out).await.unwrap();
        (out, res)
    }

    #[tokio::test]
    async fn whole_lines_only_in_any_chunking_and_a_cut_line_is_truncated() {
        let (out, res) = run(&[b"ab", b"c\nde", b"f\ng"], b"x\n").await;
        assert_eq!(out, b"x\nabc\ndef\n");
        assert!(
            matches!(
                res,
                Err(SessionEnd::Truncated {
                    side: Side::Master,
                    what: "a line"
                })
            ),
            "{res:?}"
        );
    }

    #[tokio::test]
    async fn a_close_between_frames_is_a_plain_close() {
        let (out, res) = run(&[b"abc\n"], b"").await;
        assert_eq!(out, b"abc\n");
        assert!(
            matches!(res, Err(SessionEnd::Closed(Side::Master))),
            "{res:?}"
        );
    }

    #[tokio::test]
    async fn a_cut_forwards_the_prefix_only() {
        let (out, res) = run(&[b"ab\ncd\nef!gh\n"], b"").await;
        assert_eq!(out, b"ab\ncd\nef");
        assert!(
            matches!(res, Err(SessionEnd::Closed(Side::Master))),
            "{res:?}"
        );
    }

    #[tokio::test]
    async fn a_hold_forwards_the_rest_once_the_gate_opens() {
        let (out, res) = run(&[b"ab\n#cd"], b"").await;
        assert_eq!(out, b"ab\n#cd");
        assert!(
            matches!(res, Err(SessionEnd::Closed(Side::Master))),
            "{res:?}"
        );
    }
}
