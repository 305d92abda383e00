//! A connection with a buffer, bounded parsers that keep their place between reads, and reads
//! bounded by time.

use super::{Result, SessionEnd, Side};
use crate::wire::resp::{Command, CommandParser, LineScanner, ProtocolError, ReplyScanner};
use bytes::BytesMut;
use std::io;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{timeout, timeout_at, Instant};

/// Longest reply line read during a handshake.
const MAX_REPLY_LINE: usize = 1024;
/// How long a client refused for a protocol error gets to read replguard's answer.
const REFUSE_GRACE: Duration = Duration::from_secs(1);
/// Most bytes of a refused client's input discarded while it reads the answer.
const REFUSE_DRAIN: usize = 1024 * 1024;

/// A byte source with a buffer and a name, so reads can be bounded by time and errors say
/// which side failed.
pub struct Peer<S> {
    pub(crate) io: S,
    pub(crate) buf: BytesMut,
    side: Side,
    /// Its place in the command being read, kept between reads.
    commands: CommandParser,
    /// Its place in the reply being read, kept between reads.
    replies: ReplyScanner,
    /// Its place in the line being read, kept between reads.
    lines: LineScanner,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Peer<S> {
    pub fn new(io: S, side: Side) -> Self {
        Peer {
            io,
            buf: BytesMut::with_capacity(4096),
            side,
            commands: CommandParser::handshake(),
            replies: ReplyScanner::handshake(),
            lines: LineScanner::default(),
        }
    }

    /// Reads more bytes into the buffer; a clean close is `Closed`.
    async fn fill(&mut self, limit: Option<(Duration, &'static str)>) -> Result<()> {
        let deadline = limit.map(|(after, step)| (Instant::now() + after, after, step));
        self.fill_until(deadline).await
    }

    /// Reads more bytes into the buffer, giving up at a deadline (`after`: how long the wait
    /// was allowed, for the error).
    async fn fill_until(
        &mut self,
        deadline: Option<(Instant, Duration, &'static str)>,
    ) -> Result<()> {
        let read = self.io.read_buf(&mut self.buf);
        let n = match deadline {
            Some((at, after, step)) => {
                timeout_at(at, read)
                    .await
                    .map_err(|_| SessionEnd::Timeout {
                        side: self.side,
                        step,
                        after,
                    })?
            }
            None => read.await,
        }
        .map_err(|err| SessionEnd::Io {
            side: self.side,
            err,
        })?;
        if n == 0 {
            return Err(SessionEnd::Closed(self.side));
        }
        Ok(())
    }

    pub(crate) async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.io
            .write_all(bytes)
            .await
            .map_err(|err| SessionEnd::Io {
                side: self.side,
                err,
            })
    }

    pub(crate) fn protocol(&self, err: ProtocolError) -> SessionEnd {
        SessionEnd::Protocol {
            side: self.side,
            err,
        }
    }

    /// Reads one command from a client, whole and checked before any of it goes further (a
    /// command no handshake sends is read up to its name: see [`CommandParser::handshake`]).
    /// A client whose bytes break the protocol or a limit is answered `-ERR Protocol error`,
    /// as Redis answers it, before its session ends. The whole command must arrive before the
    /// deadline, however its bytes trickle in.
    pub(crate) async fn command(
        &mut self,
        deadline: Option<(Instant, &'static str)>,
    ) -> Result<(Command, BytesMut)> {
        let deadline =
            deadline.map(|(at, step)| (at, at.saturating_duration_since(Instant::now()), step));
        loop {
            match self.commands.parse(&self.buf) {
                Ok(Some((cmd, used))) => return Ok((cmd, self.buf.split_to(used))),
                Ok(None) => self.fill_until(deadline).await?,
                Err(err) => {
                    let text = err.to_string().replace(['\r', '\n'], " ");
                    self.refuse(&format!("-ERR Protocol error: {text}\r\n"))
                        .await;
                    return Err(self.protocol(err));
                }
            }
        }
    }

    /// Answers a client that is refused and lets it read the answer: the write side is shut
    /// and its further input discarded for a moment, since closing on unread input would
    /// reset the connection and could take the answer with it. Bounded in time and bytes.
    pub(crate) async fn refuse(&mut self, answer: &str) {
        let _ = timeout(REFUSE_GRACE, async {
            self.io.write_all(answer.as_bytes()).await?;
            self.io.shutdown().await?;
            let mut sink = [0u8; 4096];
            let mut left = REFUSE_DRAIN;
            while left > 0 {
                match self.io.read(&mut sink).await? {
                    0 => break,
                    n => left = left.saturating_sub(n),
                }
            }
            Ok::<_, io::Error>(())
        })
        .await;
    }

    /// Reads one complete reply from the master. A bare newline counts as a reply, as the
    /// replica itself would read it.
    pub(crate) async fn reply(&mut self, after: Duration, step: &'static str) -> Result<BytesMut> {
        loop {
            if self.buf.first() == Some(&b'\n') {
                return Ok(self.buf.split_to(1));
            }
            if let Some(used) = self.replies.scan(&self.buf).map_err(|e| self.protocol(e))? {
                return Ok(self.buf.split_to(used));
            }
            self.fill(Some((after, step))).await?;
        }
    }

    /// Reads one line (without its CRLF) and the exact bytes it took.
    pub(crate) async fn line(
        &mut self,
        after: Duration,
        step: &'static str,
    ) -> Result<(String, BytesMut)> {
        loop {
            if let Some((text, used)) = self
                .lines
                .scan(&self.buf, MAX_REPLY_LINE)
                .map_err(|e| self.protocol(e))?
            {
                let text = String::from_utf8_lossy(text).into_owned();
                return Ok((text, self.buf.split_to(used)));
            }
            self.fill(Some((after, step))).await?;
        }
    }
}
