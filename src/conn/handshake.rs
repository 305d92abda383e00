//! The handshake steps every flavour shares: reading the next command, `PING`/`AUTH` relayed
//! with their one reply, what a `REPLCONF` says about the replica, and replguard's own `AUTH`
//! before the first replication command.

use super::stats::SessionStats;
use super::{Peer, Result, SessionEnd};
use crate::config::Credentials;
use crate::wire::resp::{encode_command, Command};
use bytes::BytesMut;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// What the handshake learned, used to decide what replguard adds on its own.
#[derive(Debug, Default)]
pub struct Handshake {
    /// The replica authenticated itself successfully.
    pub client_authed: bool,
    /// replguard already sent its own AUTH.
    pub proxy_authed: bool,
    /// The replica announced `REPLCONF ip-address` (or replguard did for it).
    pub ip_announced: bool,
    /// The client sent a replication-only command, so it is a replica.
    pub is_replica: bool,
}

/// Reads the next handshake command. A client that has not shown it is a replica may sit idle
/// like any client; a replica's steps are timed.
pub async fn next_command<S: AsyncRead + AsyncWrite + Unpin>(
    r: &mut Peer<S>,
    hs: &Handshake,
    step: Duration,
) -> Result<(Command, BytesMut)> {
    let limit = hs
        .is_replica
        .then_some((step, "the next handshake command"));
    r.command(limit).await
}

/// Forwards `PING` or `AUTH` and relays its one reply; notes a successful `AUTH`.
pub async fn exchange<S, T>(
    r: &mut Peer<S>,
    m: &mut Peer<T>,
    hs: &mut Handshake,
    name: &str,
    raw: &[u8],
    step: Duration,
) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    m.send(raw).await?;
    let reply = m.reply(step, "a handshake reply").await?;
    if name == "AUTH" && reply.starts_with(b"+") {
        hs.client_authed = true;
    }
    r.send(&reply).await
}

/// Notes what a `REPLCONF` says about the replica: its listening port and announced address.
pub fn replconf(cmd: &Command, stats: &SessionStats, hs: &mut Handshake) {
    for pair in cmd.args.get(1..).unwrap_or_default().chunks(2) {
        let opt = &pair[0];
        let val = pair.get(1).map(|v| v.as_slice()).unwrap_or_default();
        if opt.eq_ignore_ascii_case(b"listening-port") {
            if let Ok(p) = std::str::from_utf8(val).unwrap_or("").parse() {
                stats.set_replica_port(p);
            }
        } else if opt.eq_ignore_ascii_case(b"ip-address") {
            hs.ip_announced = true;
            stats.set_replica_ip(&String::from_utf8_lossy(val));
        }
    }
}

/// A replication command is about to be forwarded: the client is a replica from now on, and
/// replguard's own AUTH goes first if it is due.
pub async fn replication_command<S: AsyncRead + AsyncWrite + Unpin>(
    creds: Option<&Credentials>,
    m: &mut Peer<S>,
    hs: &mut Handshake,
    step: Duration,
) -> Result<()> {
    hs.is_replica = true;
    proxy_auth(creds, m, hs, step).await
}

/// Sends replguard's own AUTH once, before the first replication command, when the link has
/// credentials and the replica did not authenticate itself.
async fn proxy_auth<S: AsyncRead + AsyncWrite + Unpin>(
    creds: Option<&Credentials>,
    m: &mut Peer<S>,
    hs: &mut Handshake,
    step: Duration,
) -> Result<()> {
    let Some(creds) = creds else {
        return Ok(());
    };
    if hs.client_authed || hs.proxy_authed {
        return Ok(());
    }
    hs.proxy_authed = true;
    m.send(&auth_command(creds)).await?;
    let reply = m.reply(step, "the reply to replguard's AUTH").await?;
    if reply.starts_with(b"+") {
        Ok(())
    } else {
        Err(SessionEnd::UpstreamAuth(
            String::from_utf8_lossy(&reply).trim_end().to_string(),
        ))
    }
}

fn auth_command(c: &Credentials) -> Vec<u8> {
    match &c.user {
        Some(u) => encode_command(&["AUTH", u.as_str(), c.password.as_str()]),
        None => encode_command(&["AUTH", c.password.as_str()]),
    }
}
