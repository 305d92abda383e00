//! The handshake steps every flavour shares: reading the next command within its deadline,
//! `PING`/`AUTH` relayed with their one reply, what a `REPLCONF` says about the replica, and the
//! move to a replica's place at the first replication command.
//!
//! replguard sends no credentials of its own on a connection from a link port: a replica
//! authenticates with its own `masterauth` (its `AUTH` is forwarded and the master decides),
//! and a client that did not authenticate gets what the master answers it.
//!
//! Deadlines, counted from the accept: the first complete command within
//! `timeouts.first_command_ms`, every command of the handshake within `timeouts.handshake_ms`,
//! and a replica's each next command within `timeouts.handshake_step_ms`. A command's bytes
//! count as they arrive: a client that trickles them is cut at the same deadline.

use super::admission::{Admission, Refusal};
use super::stats::SessionStats;
use super::{Peer, Result, SessionEnd};
use crate::config::TimeoutsConfig;
use crate::wire::resp::{encode_command, Command};
use bytes::BytesMut;
use std::net::IpAddr;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

/// What the handshake learned, and its deadlines.
#[derive(Debug)]
pub struct Handshake {
    /// The replica authenticated itself successfully.
    pub client_authed: bool,
    /// The master answered one of this connection's commands `-NOAUTH` (and no `AUTH`
    /// succeeded since): its `PSYNC` goes to the master as sent, unjudged.
    pub unauthenticated: bool,
    /// The replica announced `REPLCONF ip-address` (or replguard did for it).
    pub ip_announced: bool,
    /// The client sent a replication-only command, so it is a replica.
    pub is_replica: bool,
    /// Whether the master serves this connection is known: it answered one of its commands
    /// with something other than an error, or replguard asked ([`probe_auth`]).
    probed: bool,
    /// Commands read so far.
    commands: u64,
    /// When the connection was accepted.
    started: Instant,
    first_command: Duration,
    whole: Duration,
}

impl Default for Handshake {
    fn default() -> Self {
        Handshake::new(std::time::Instant::now(), &TimeoutsConfig::default())
    }
}

impl Handshake {
    /// A handshake of a connection accepted at `started`, with the link's deadlines.
    pub fn new(started: std::time::Instant, t: &TimeoutsConfig) -> Self {
        Handshake {
            client_authed: false,
            unauthenticated: false,
            ip_announced: false,
            is_replica: false,
            probed: false,
            commands: 0,
            started: Instant::from_std(started),
            first_command: t.first_command(),
            whole: t.handshake(),
        }
    }

    /// When the next command must be complete, and what a miss is: a refusal (the first
    /// command's or the handshake's deadline) or, for a replica's step, `None` (a timeout).
    fn next_deadline(&self, step: Duration) -> (Instant, &'static str, Option<Refusal>) {
        let whole = self.started + self.whole;
        let handshake = Refusal::Handshake {
            ms: millis(self.whole),
        };
        if self.commands == 0 {
            let first = self.started + self.first_command;
            if first < whole {
                let r = Refusal::FirstCommand {
                    ms: millis(self.first_command),
                };
                return (first, "the first command", Some(r));
            }
            return (whole, "the first command", Some(handshake));
        }
        if self.is_replica {
            let next = Instant::now() + step;
            if next < whole {
                return (next, "the next handshake command", None);
            }
        }
        (whole, "the next handshake command", Some(handshake))
    }

    /// Notes a master's reply to one of this connection's commands: `-NOAUTH` says the master
    /// does not serve it; any answer that is not an error says it does (an error other than
    /// `-NOAUTH`, such as an unknown command, can come before the master's own check).
    pub fn master_replied(&mut self, reply: &[u8]) {
        if reply.starts_with(b"-NOAUTH") {
            self.unauthenticated = true;
        } else if !reply.starts_with(b"-") {
            self.probed = true;
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Reads the next handshake command within its deadline; a client that misses the first
/// command's or the handshake's deadline is told which and its session ends.
pub async fn next_command<S: AsyncRead + AsyncWrite + Unpin>(
    r: &mut Peer<S>,
    hs: &mut Handshake,
    step: Duration,
) -> Result<(Command, BytesMut)> {
    let (at, what, refusal) = hs.next_deadline(step);
    match r.command(Some((at, what))).await {
        Ok(x) => {
            hs.commands = hs.commands.saturating_add(1);
            Ok(x)
        }
        Err(SessionEnd::Timeout { .. }) if refusal.is_some() => {
            let refusal = refusal.unwrap_or(Refusal::Handshake { ms: 0 });
            Err(refuse(r, refusal).await)
        }
        Err(e) => Err(e),
    }
}

/// Tells the client why it is refused, lets it read that, and says how its session ends.
pub async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(
    r: &mut Peer<S>,
    refusal: Refusal,
) -> SessionEnd {
    r.refuse(&refusal.answer()).await;
    SessionEnd::Refused(refusal)
}

/// Forwards `PING` or `AUTH` and relays its one reply; notes how the master took it.
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
        hs.unauthenticated = false;
    }
    hs.master_replied(&reply);
    r.send(&reply).await
}

/// Before a `PSYNC` or `SYNC` is judged: whether the master answers this connection at all. A
/// connection that did not authenticate itself, and whose commands the master has not answered
/// yet (a client whose first command is `PSYNC`), gets one `PING` sent on it to the master; a
/// `-NOAUTH` answer means its `PSYNC` goes as sent, unjudged and without touching the books,
/// and the client gets the master's own answer. Otherwise the verdict (and an answer of
/// replguard's own, such as a hold) could reach a client the master would not serve.
pub async fn probe_auth<T: AsyncRead + AsyncWrite + Unpin>(
    m: &mut Peer<T>,
    hs: &mut Handshake,
    step: Duration,
) -> Result<()> {
    if hs.client_authed || hs.unauthenticated || hs.probed {
        return Ok(());
    }
    hs.probed = true;
    m.send(&encode_command(&["PING"])).await?;
    let reply = m
        .reply(step, "the master's answer to replguard's PING")
        .await?;
    hs.master_replied(&reply);
    Ok(())
}

/// A `PSYNC` or `SYNC` on a connection the master does not serve (`hs.unauthenticated`): it
/// goes as sent and the client gets the master's answer, with no verdict, no decision and no
/// books. After an error answer the handshake goes on (the client may `AUTH` and ask again);
/// any other answer ends the session.
pub async fn forward_unserved<S, T>(
    r: &mut Peer<S>,
    m: &mut Peer<T>,
    hs: &mut Handshake,
    raw: &[u8],
    step: Duration,
) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    m.send(raw).await?;
    let reply = m.reply(step, "the master's answer to the PSYNC").await?;
    hs.master_replied(&reply);
    r.send(&reply).await?;
    if reply.starts_with(b"-") {
        Ok(())
    } else {
        Err(SessionEnd::Unsupported(
            String::from_utf8_lossy(&reply).trim_end().to_string(),
        ))
    }
}

/// Notes what a `REPLCONF` says about the replica: its listening port and announced address.
/// An announced address must be an IP address or a host name (`replica-announce-ip` may be a
/// DNS name, as under Sentinel's `resolve-hostnames`): it names the replica's books.
pub fn replconf(
    cmd: &Command,
    stats: &SessionStats,
    hs: &mut Handshake,
) -> std::result::Result<(), Refusal> {
    for pair in cmd.args.get(1..).unwrap_or_default().chunks(2) {
        let opt = &pair[0];
        let val = pair.get(1).map(|v| v.as_slice()).unwrap_or_default();
        if opt.eq_ignore_ascii_case(b"listening-port") {
            if let Ok(p) = std::str::from_utf8(val).unwrap_or("").parse() {
                stats.set_replica_port(p);
            }
        } else if opt.eq_ignore_ascii_case(b"ip-address") {
            let text = std::str::from_utf8(val).map_err(|_| Refusal::ip_address(val))?;
            let announced = match text.parse::<IpAddr>() {
                Ok(ip) => ip.to_string(),
                Err(_) if is_host_name(text) => text.to_ascii_lowercase(),
                Err(_) => return Err(Refusal::ip_address(val)),
            };
            hs.ip_announced = true;
            stats.set_replica_ip(&announced);
        }
    }
    Ok(())
}

/// Whether `s` is a DNS host name, by the rule a master's name follows in the configuration.
pub fn is_host_name(s: &str) -> bool {
    crate::config::check_host_name(s).is_ok()
}

/// A replication command is about to be forwarded: the client is a replica from now on and
/// takes a replica's place on the link; refused (and told why) when there is none.
pub async fn replication_command<S: AsyncRead + AsyncWrite + Unpin>(
    admission: &Admission,
    stats: &SessionStats,
    r: &mut Peer<S>,
    hs: &mut Handshake,
) -> Result<()> {
    hs.is_replica = true;
    match admission.promote(stats.id) {
        Ok(()) => Ok(()),
        Err(refusal) => Err(refuse(r, refusal).await),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::Side;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn timeouts(first: u64, whole: u64) -> TimeoutsConfig {
        TimeoutsConfig {
            first_command_ms: first,
            handshake_ms: whole,
            ..TimeoutsConfig::default()
        }
    }

    #[test]
    fn host_names_are_told_from_anything_else() {
        for ok in [
            "replica-0.db.svc",
            "a",
            "node7.",
            "10.1.2.x",
            &"a".repeat(63),
        ] {
            assert!(is_host_name(ok), "{ok}");
        }
        let long = ["a"; 130].join(".");
        for bad in [
            "",
            ".",
            "-a",
            "a-",
            "a..b",
            "a b",
            "a_b",
            "é.example",
            &"a".repeat(64),
            &long,
        ] {
            assert!(!is_host_name(bad), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_trickled_first_command_is_cut_at_its_deadline() {
        let (client, server) = tokio::io::duplex(4096);
        let mut peer = Peer::new(server, Side::Replica);
        let mut hs = Handshake::new(std::time::Instant::now(), &timeouts(300, 60_000));
        let trickle = tokio::spawn(async move {
            let mut client = client;
            // Long enough that a deadline restarted by every byte would let it through.
            let long = format!("*2\r\n$4\r\nECHO\r\n$40\r\n{}\r\n", "x".repeat(40));
            for b in long.as_bytes() {
                if client.write_all(&[*b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let mut answer = String::new();
            let _ = client.read_to_string(&mut answer).await;
            answer
        });
        let end = next_command(&mut peer, &mut hs, Duration::from_secs(10))
            .await
            .unwrap_err();
        assert!(
            matches!(end, SessionEnd::Refused(Refusal::FirstCommand { ms: 300 })),
            "{end}"
        );
        drop(peer);
        assert_eq!(
            trickle.await.unwrap(),
            "-ERR replguard: no complete command within 300 ms of connecting (timeouts.first_command_ms)\r\n"
        );
    }

    #[tokio::test]
    async fn the_whole_handshake_has_a_deadline_even_for_quick_commands() {
        let (client, server) = tokio::io::duplex(1024);
        let mut peer = Peer::new(server, Side::Replica);
        let mut hs = Handshake::new(std::time::Instant::now(), &timeouts(200, 500));
        let _pinger = tokio::spawn(async move {
            let mut client = client;
            for _ in 0..100 {
                if client.write_all(b"PING\r\n").await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let mut read = 0;
        let end = loop {
            match next_command(&mut peer, &mut hs, Duration::from_secs(10)).await {
                Ok(_) => read += 1,
                Err(e) => break e,
            }
        };
        assert!(
            matches!(end, SessionEnd::Refused(Refusal::Handshake { ms: 500 })),
            "{end}"
        );
        assert!(read >= 1, "{read}");
    }

    #[test]
    fn an_announced_address_must_be_an_ip_address() {
        let stats = SessionStats::new(1, "t", "127.0.0.1:1".parse().unwrap());
        let cmd = |line: &str| {
            crate::wire::resp::parse_command(line.as_bytes())
                .unwrap()
                .unwrap()
                .0
        };
        let mut hs = Handshake::default();
        assert!(replconf(&cmd("REPLCONF ip-address 10.1.2.3\r\n"), &stats, &mut hs).is_ok());
        assert!(replconf(&cmd("REPLCONF ip-address ::1\r\n"), &stats, &mut hs).is_ok());
        assert!(replconf(&cmd("REPLCONF ip-address db.example\r\n"), &stats, &mut hs).is_ok());
        for bad in ["db example", "10.1.2.3:6379", "", "10.1.2"] {
            let c = cmd(&format!(
                "*3\r\n$8\r\nREPLCONF\r\n$10\r\nip-address\r\n${}\r\n{bad}\r\n",
                bad.len()
            ));
            assert_eq!(
                replconf(&c, &stats, &mut hs).unwrap_err().code(),
                "ip_address",
                "{bad}"
            );
        }
    }
}
