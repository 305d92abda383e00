//! Who may hold a connection on a link, and on which budget: the source networks allowed, a cap
//! per source address, and two budgets of places, one for replicas (`max_sessions`) and one for
//! connections that have not sent a replication command (`max_clients`), so idle or slow clients
//! cannot take the replicas' places. A refusal is counted by reason and logged once per source
//! and reason a minute.
//!
//! A connection's places are held by its [`Pass`]: accepted on the clients' budget, moved to
//! the replicas' budget by [`Admission::promote`] at its first replication command, and given
//! back when the pass is dropped. The limits are the ones in force ([`Admission::reconfigure`]
//! on reload): raising one admits the next connection; lowering one closes nothing, new
//! connections are refused until enough have gone.

use crate::config::{Cidr, LinkConfig};
use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tracing::warn;

/// Least time between two log lines about refusals of one source for one reason.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(60);
/// Most (source, reason) pairs remembered for the log's rate limit; beyond it the ones logged
/// more than a minute ago are forgotten.
const REFUSAL_LOG_SOURCES: usize = 4096;
/// Longest part of a peer's bytes quoted back in a refusal.
const QUOTE_MAX: usize = 64;

/// Why a connection was refused or cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Its source address is not in the link's `allow_from`.
    AllowFrom { ip: IpAddr },
    /// Its source address already holds `max` connections on the link.
    PerIp { ip: IpAddr, max: usize },
    /// `max` connections that are not replicas are open already.
    MaxClients { max: usize },
    /// `max` replica sessions are open already.
    MaxSessions { max: usize },
    /// No complete first command within `ms`.
    FirstCommand { ms: u64 },
    /// The handshake was not done within `ms` of the accept.
    Handshake { ms: u64 },
    /// `REPLCONF ip-address` announced something that is not an IP address.
    IpAddress { announced: String },
}

/// Every reason, in the order the metric lists them.
const REASONS: [&str; 7] = [
    "allow_from",
    "max_connections_per_ip",
    "max_clients",
    "max_sessions",
    "first_command_timeout",
    "handshake_timeout",
    "ip_address",
];

impl Refusal {
    /// The reason's code, for logs and the metric's label.
    pub fn code(&self) -> &'static str {
        REASONS[self.index()]
    }

    fn index(&self) -> usize {
        match self {
            Refusal::AllowFrom { .. } => 0,
            Refusal::PerIp { .. } => 1,
            Refusal::MaxClients { .. } => 2,
            Refusal::MaxSessions { .. } => 3,
            Refusal::FirstCommand { .. } => 4,
            Refusal::Handshake { .. } => 5,
            Refusal::IpAddress { .. } => 6,
        }
    }

    /// The error line the peer gets.
    pub fn answer(&self) -> String {
        let text = self.to_string().replace(['\r', '\n'], " ");
        format!("-ERR replguard: {text}\r\n")
    }

    /// `announced`, quoted and cut short for an answer or a log line.
    pub fn ip_address(announced: &[u8]) -> Refusal {
        let mut text = String::from_utf8_lossy(announced).into_owned();
        if text.len() > QUOTE_MAX {
            let mut end = QUOTE_MAX;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            text.push_str("...");
        }
        Refusal::IpAddress { announced: text }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::AllowFrom { ip } => {
                write!(
                    f,
                    "connections from {ip} are not allowed on this link (allow_from)"
                )
            }
            Refusal::PerIp { ip, max } => write!(
                f,
                "{ip} already holds {max} connections to this link (max_connections_per_ip)"
            ),
            Refusal::MaxClients { max } => write!(
                f,
                "the link is at its limit of {max} connections that are not replicas (max_clients)"
            ),
            Refusal::MaxSessions { max } => write!(
                f,
                "the link is at its limit of {max} replica sessions (max_sessions)"
            ),
            Refusal::FirstCommand { ms } => write!(
                f,
                "no complete command within {ms} ms of connecting (timeouts.first_command_ms)"
            ),
            Refusal::Handshake { ms } => write!(
                f,
                "handshake not complete within {ms} ms of connecting (timeouts.handshake_ms)"
            ),
            Refusal::IpAddress { announced } => {
                write!(
                    f,
                    "REPLCONF ip-address {announced:?} is not an IP address or a host name"
                )
            }
        }
    }
}

/// The places of one link's connections.
pub struct Admission {
    link: String,
    state: Mutex<State>,
    /// Refusals by reason, in the order of [`REASONS`].
    refused: [AtomicU64; REASONS.len()],
}

/// A link's limits, from its configuration in force.
#[derive(Default)]
struct Limits {
    allow_from: Vec<Cidr>,
    per_ip: usize,
    max_clients: usize,
    max_sessions: usize,
}

impl Limits {
    /// Networks that do not parse are left out; `validate` reports them.
    fn of(cfg: &LinkConfig) -> Limits {
        Limits {
            allow_from: cfg
                .allow_from
                .iter()
                .filter_map(|n| Cidr::parse(n).ok())
                .collect(),
            per_ip: cfg.max_connections_per_ip,
            max_clients: cfg.max_clients,
            max_sessions: cfg.max_sessions,
        }
    }
}

#[derive(Default)]
struct State {
    limits: Limits,
    /// Open connections per source address.
    per_source: HashMap<IpAddr, usize>,
    /// The place each open connection holds, by session id.
    places: HashMap<u64, Place>,
    /// Places taken on each budget.
    clients: usize,
    replicas: usize,
    /// When a refusal of a source for a reason was last logged, and the ones since.
    logged: HashMap<(IpAddr, &'static str), (Instant, u64)>,
}

/// The place a connection holds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Place {
    Client,
    Replica,
}

impl Admission {
    /// The budgets of a link from its validated configuration.
    pub fn new(cfg: &LinkConfig) -> Admission {
        Admission {
            link: cfg.name.clone(),
            state: Mutex::new(State {
                limits: Limits::of(cfg),
                ..State::default()
            }),
            refused: Default::default(),
        }
    }

    /// Puts the limits of a reloaded configuration in force; open connections keep their
    /// places.
    pub fn reconfigure(&self, cfg: &LinkConfig) {
        self.state().limits = Limits::of(cfg);
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a new connection from `ip` as session `id`, on the clients' budget.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, id: u64) -> Result<Pass, Refusal> {
        let ip = ip.to_canonical();
        let mut st = self.state();
        let lim = &st.limits;
        if !lim.allow_from.is_empty() && !lim.allow_from.iter().any(|n| n.contains(ip)) {
            return Err(Refusal::AllowFrom { ip });
        }
        let open = st.per_source.get(&ip).copied().unwrap_or(0);
        if open >= lim.per_ip {
            return Err(Refusal::PerIp {
                ip,
                max: lim.per_ip,
            });
        }
        if st.clients >= lim.max_clients {
            return Err(Refusal::MaxClients {
                max: lim.max_clients,
            });
        }
        st.clients += 1;
        *st.per_source.entry(ip).or_default() += 1;
        st.places.insert(id, Place::Client);
        Ok(Pass {
            admission: self.clone(),
            ip,
            id,
        })
    }

    /// Session `id` sent a replication command: it takes a replica's place and gives back its
    /// client's. Refused when every replica's place is taken.
    pub fn promote(&self, id: u64) -> Result<(), Refusal> {
        let mut st = self.state();
        let held = st.places.get(&id).copied();
        if held == Some(Place::Replica) {
            return Ok(());
        }
        if st.replicas >= st.limits.max_sessions {
            return Err(Refusal::MaxSessions {
                max: st.limits.max_sessions,
            });
        }
        if held == Some(Place::Client) {
            st.clients = st.clients.saturating_sub(1);
        }
        st.replicas += 1;
        st.places.insert(id, Place::Replica);
        Ok(())
    }

    /// Counts a refusal of `peer` and logs it, once per source and reason a minute.
    pub fn refused(&self, peer: SocketAddr, r: &Refusal) {
        self.refused[r.index()].fetch_add(1, Relaxed);
        let key = (peer.ip().to_canonical(), r.code());
        let now = Instant::now();
        let mut st = self.state();
        if st.logged.len() >= REFUSAL_LOG_SOURCES {
            st.logged
                .retain(|_, (at, _)| now.duration_since(*at) < REFUSAL_LOG_EVERY);
            if st.logged.len() >= REFUSAL_LOG_SOURCES {
                st.logged.clear();
            }
        }
        let unlogged = match st.logged.get_mut(&key) {
            Some((at, n)) if now.duration_since(*at) < REFUSAL_LOG_EVERY => {
                *n += 1;
                return;
            }
            Some((at, n)) => {
                *at = now;
                std::mem::take(n)
            }
            None => {
                st.logged.insert(key, (now, 0));
                0
            }
        };
        drop(st);
        warn!(
            link = %self.link,
            %peer,
            reason_code = r.code(),
            refused_since_last_line = unlogged,
            "connection refused: {r}"
        );
    }

    /// Refusals so far by reason code, every reason listed.
    pub fn refusals(&self) -> Vec<(&'static str, u64)> {
        REASONS
            .iter()
            .zip(&self.refused)
            .map(|(r, n)| (*r, n.load(Relaxed)))
            .collect()
    }

    /// Open connections from `ip`.
    pub fn open_from(&self, ip: IpAddr) -> usize {
        self.state()
            .per_source
            .get(&ip.to_canonical())
            .copied()
            .unwrap_or(0)
    }
}

/// An admitted connection's places; given back when dropped.
pub struct Pass {
    admission: Arc<Admission>,
    ip: IpAddr,
    id: u64,
}

impl fmt::Debug for Pass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pass({} from {})", self.id, self.ip)
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        let mut st = self.admission.state();
        match st.places.remove(&self.id) {
            Some(Place::Client) => st.clients = st.clients.saturating_sub(1),
            Some(Place::Replica) => st.replicas = st.replicas.saturating_sub(1),
            None => {}
        }
        if let Some(n) = st.per_source.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                st.per_source.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(extra: &str) -> Arc<Admission> {
        let yaml = format!(
            "state_dir: s\nadmin: {{ listen: 127.0.0.1:1 }}\nlinks:\n  - {{ name: l, listen: 127.0.0.1:2, master: 127.0.0.1:3, flavor: redis, guard: enforce{extra} }}\n"
        );
        let cfg = crate::config::Config::from_yaml(&yaml, "t.yaml").unwrap();
        Arc::new(Admission::new(&cfg.links[0]))
    }

    #[test]
    fn budgets_are_apart_and_come_back() {
        let a = admission(", max_sessions: 1, max_clients: 2, max_connections_per_ip: 3");
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let p1 = a.admit(ip, 1).unwrap();
        let p2 = a.admit(ip, 2).unwrap();
        assert_eq!(a.admit(ip, 3).unwrap_err(), Refusal::MaxClients { max: 2 });
        // A replica moves to its own budget and frees its client's place.
        a.promote(1).unwrap();
        a.promote(1).unwrap();
        assert_eq!(a.promote(2).unwrap_err(), Refusal::MaxSessions { max: 1 });
        let p3 = a.admit(ip, 3).unwrap();
        assert_eq!(a.admit(ip, 4).unwrap_err(), Refusal::PerIp { ip, max: 3 });
        let other: IpAddr = "::ffff:10.0.0.2".parse().unwrap();
        assert_eq!(
            a.admit(other, 5).unwrap_err(),
            Refusal::MaxClients { max: 2 }
        );
        drop(p1);
        a.promote(2).unwrap();
        assert_eq!(a.open_from(ip), 2);
        drop((p2, p3));
        assert_eq!(a.open_from(ip), 0);
        let _p = a.admit(other, 6).unwrap();
        assert_eq!(a.open_from("10.0.0.2".parse().unwrap()), 1);
    }

    #[test]
    fn allow_from_admits_only_its_networks() {
        let a = admission(", allow_from: [10.0.0.0/8, '::1']");
        assert!(a.admit("10.1.2.3".parse().unwrap(), 1).is_ok());
        assert!(a.admit("::1".parse().unwrap(), 2).is_ok());
        let ip: IpAddr = "192.168.0.1".parse().unwrap();
        assert_eq!(a.admit(ip, 3).unwrap_err(), Refusal::AllowFrom { ip });
        a.refused("192.168.0.1:5".parse().unwrap(), &Refusal::AllowFrom { ip });
        assert!(a.refusals().contains(&("allow_from", 1)));
    }

    #[test]
    fn answers_are_one_line() {
        let r = Refusal::ip_address(b"evil\r\n+OK\r\n");
        let a = r.answer();
        assert!(a.starts_with("-ERR replguard: REPLCONF ip-address"), "{a}");
        assert_eq!(a.matches("\r\n").count(), 1, "{a}");
        assert!(a.ends_with("\r\n"));
        let long = Refusal::ip_address("é".repeat(100).as_bytes());
        assert!(long.to_string().len() < 140, "{long}");
    }
}
