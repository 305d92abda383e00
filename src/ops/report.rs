//! `replguard status`: reads `GET /status` from a running replguard's admin listener and prints
//! its books, one line per session, with what needs attention: held replicas and replicas that
//! lag. Under the table go the held replicas, an empty master, and a ledger that cannot be saved
//! (when `/status` reports `ledger_last_save_error`).
//!
//! The request is a single HTTP/1.1 GET over one connection, bounded in time ([`TIMEOUT`]) and in
//! size ([`MAX_RESPONSE`]); the admin listener answers with `Connection: close`.

use serde_json::Value;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest `/status` answer read (it grows with sessions and ledger records).
pub const MAX_RESPONSE: usize = 64 << 20;
/// Time allowed to connect, send the request and read the whole answer.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// Length replication ids are shortened to in the table.
const REPLID_CHARS: usize = 8;

/// Why `/status` could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot reach replguard's admin listener at {addr}: {source}; is replguard running, and is that its admin.listen?")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{addr} did not answer GET /status within {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("reading the answer of {addr}: {source}")]
    Io {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{addr} answered more than {MAX_RESPONSE} bytes to GET /status")]
    TooLarge { addr: SocketAddr },
    #[error("{addr} did not answer like replguard's admin listener: {why}")]
    NotReplguard { addr: SocketAddr, why: String },
}

/// Where to connect for an admin listener configured at `listen`: its own address, or loopback
/// when it listens on every address (`0.0.0.0`, `[::]`).
pub fn connect_addr(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// `GET /status` from the admin listener at `addr`, parsed.
pub async fn fetch(addr: SocketAddr, timeout: Duration) -> Result<Value, FetchError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut sock = match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(source)) => return Err(FetchError::Connect { addr, source }),
        Err(_) => {
            return Err(FetchError::Connect {
                addr,
                source: std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no connection within {timeout:?}"),
                ),
            })
        }
    };
    let exchange = async {
        let req = format!("GET /status HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        sock.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        (&mut sock)
            .take(MAX_RESPONSE as u64 + 1)
            .read_to_end(&mut buf)
            .await?;
        Ok::<_, std::io::Error>(buf)
    };
    let buf = match tokio::time::timeout_at(deadline, exchange).await {
        Ok(Ok(buf)) => buf,
        Ok(Err(source)) => return Err(FetchError::Io { addr, source }),
        Err(_) => return Err(FetchError::Timeout { addr, timeout }),
    };
    if buf.len() > MAX_RESPONSE {
        return Err(FetchError::TooLarge { addr });
    }
    parse_response(&buf).map_err(|why| FetchError::NotReplguard { addr, why })
}

/// The JSON body of a complete `200 OK` answer.
fn parse_response(buf: &[u8]) -> Result<Value, String> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Err("no HTTP header".into());
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let (version, code) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if !version.starts_with("HTTP/1.") || code != "200" {
        return Err(format!("it answered {status_line:?}"));
    }
    let mut body = &buf[end + 4..];
    let length = lines.find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())
    });
    match length {
        Some(Some(n)) if n <= body.len() => body = &body[..n],
        Some(Some(n)) => {
            return Err(format!(
                "the answer was cut short ({} of {n} bytes)",
                body.len()
            ))
        }
        Some(None) => return Err("its Content-Length is not a number".into()),
        None => {}
    }
    serde_json::from_slice(body).map_err(|e| format!("the body is not JSON ({e})"))
}

/// What `replguard status` prints, and what needs attention (exit code 2 when not empty).
#[derive(Debug, Default)]
pub struct Report {
    /// The books: the links, one line per session, then the notes (held replicas, an empty
    /// master, a ledger that cannot be saved).
    pub text: String,
    /// One line per held or lagging replica.
    pub attention: Vec<String>,
}

/// Renders a `/status` document. A replica lags when its oldest unacknowledged byte is older than
/// `max_lag_seconds`; one is held when its last verdict's action was `held`.
pub fn report(status: &Value, max_lag_seconds: f64) -> Report {
    let mut r = Report::default();
    let out = &mut r.text;
    let _ = writeln!(
        out,
        "replguard {}, up {}",
        text(&status["version"]),
        uptime(status["uptime_seconds"].as_f64())
    );
    let links = status["links"].as_array().map_or(&[][..], Vec::as_slice);
    let mut rows = vec![[
        "LINK",
        "REPLICA",
        "STATE",
        "SYNC",
        "REPLID",
        "EXPECTED",
        "ACK",
        "LAG_BYTES",
        "LAG_S",
    ]
    .map(String::from)
    .to_vec()];
    let mut notes = Vec::new();
    for link in links {
        let name = text(&link["name"]);
        let sessions = link["sessions"].as_array().map_or(&[][..], Vec::as_slice);
        let _ = writeln!(
            out,
            "link {name}: {} -> {} ({}, guard {}), {} session{}",
            text(&link["listen"]),
            text(&link["master"]),
            text(&link["flavor"]),
            text(&link["guard"]),
            sessions.len(),
            if sessions.len() == 1 { "" } else { "s" }
        );
        for s in sessions {
            let lag = s["lag_seconds"].as_f64();
            rows.push(vec![
                name.clone(),
                text(&s["replica"]),
                text(&s["state"]),
                text(&s["sync"]),
                s["replid"]
                    .as_str()
                    .map_or("-".into(), |id| id.chars().take(REPLID_CHARS).collect()),
                text(&s["expected_offset"]),
                text(&s["ack_offset"]),
                text(&s["lag_bytes"]),
                lag.map_or("-".into(), |l| format!("{l:.1}")),
            ]);
            if let Some(l) = lag.filter(|l| *l > max_lag_seconds) {
                r.attention.push(format!(
                    "link {name}: replica {} has not acknowledged bytes sent {l:.1} s ago (more than --max-lag-seconds {max_lag_seconds})",
                    text(&s["replica"])
                ));
            }
        }
        let ledger = &link["ledger"];
        if let Some(id) = ledger["empty_master"].as_str() {
            notes.push(format!(
                "link {name}: the master came back empty with a new replication id ({id}); replicas this link filled are held (README, \"When a replica is held\")"
            ));
        }
        if let Some(e) = ledger["ledger_last_save_error"].as_str() {
            notes.push(format!(
                "link {name}: the ledger cannot be saved ({} failed saves): {e}",
                text(&ledger["ledger_save_failures"])
            ));
        }
        if let Some(last) = ledger["last_verdicts"].as_object() {
            for (replica, d) in last.iter().filter(|(_, d)| d["action"] == "held") {
                notes.push(format!(
                    "link {name}: replica {replica} is held ({}): {}",
                    text(&d["reason_code"]),
                    text(&d["reason"])
                ));
                r.attention
                    .push(format!("link {name}: replica {replica} is held"));
            }
        }
    }
    out.push('\n');
    if rows.len() == 1 {
        out.push_str("no sessions\n");
    } else {
        out.push_str(&table(&rows));
    }
    if !notes.is_empty() {
        out.push('\n');
        for n in notes {
            let _ = writeln!(out, "{n}");
        }
    }
    r
}

/// A JSON value as a table cell: strings bare, numbers as they are, absent or null as `-`.
fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn uptime(seconds: Option<f64>) -> String {
    let Some(s) = seconds else { return "-".into() };
    let s = s as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// Rows as columns padded to their widest cell, two spaces apart.
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let width: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            let _ = write!(line, "{cell:<w$}  ", w = width[c]);
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn session(replica: &str, lag_seconds: Option<f64>) -> Value {
        json!({
            "id": 4, "link": "main", "peer": "127.0.0.1:50000", "replica": replica,
            "state": "streaming", "connected_seconds": 12.0, "started_unix": 1,
            "psync_replid": "?", "psync_offset": -1, "sync": "full",
            "replid": "dadf359b7352d94a17e4344a7b61800a7fb66743", "start_offset": 0,
            "delivered_bytes": 137, "expected_offset": 137, "ack_offset": 130,
            "lag_bytes": 7, "lag_seconds": lag_seconds, "last_ack_seconds_ago": 0.5,
            "rdb_bytes": 200, "rdb_diskless": false
        })
    }

    fn status(sessions: Vec<Value>, last_verdicts: Value) -> Value {
        json!({
            "version": "0.1.0", "uptime_seconds": 192.5,
            "links": [{
                "name": "main", "listen": "127.0.0.1:7000", "master": "127.0.0.1:6379",
                "flavor": "redis", "guard": "enforce", "max_sessions": 64,
                "sessions_active": sessions.len(), "sessions": sessions,
                "ledger": { "empty_master": null, "last_verdicts": last_verdicts }
            }]
        })
    }

    #[test]
    fn one_line_per_session_and_nothing_to_attend_to() {
        let r = report(
            &status(vec![session("127.0.0.1:6380", Some(0.4))], json!({})),
            10.0,
        );
        assert_eq!(
            r.text,
            "replguard 0.1.0, up 3m12s
link main: 127.0.0.1:7000 -> 127.0.0.1:6379 (redis, guard enforce), 1 session

LINK  REPLICA         STATE      SYNC  REPLID    EXPECTED  ACK  LAG_BYTES  LAG_S
main  127.0.0.1:6380  streaming  full  dadf359b  137       130  7          0.4
"
        );
        assert!(r.attention.is_empty(), "{:?}", r.attention);
    }

    #[test]
    fn lagging_and_held_replicas_need_attention() {
        let mut handshake = session("127.0.0.1:6382", None);
        handshake["state"] = json!("handshake");
        handshake["sync"] = Value::Null;
        let st = status(
            vec![
                session("127.0.0.1:6380", Some(12.34)),
                session("127.0.0.1:6381", Some(10.0)),
                handshake,
            ],
            json!({
                "127.0.0.1:6383": { "verdict": "hold", "reason_code": "empty_master",
                    "reason": "the master came back empty", "action": "held", "answer": "-LOADING" },
                "127.0.0.1:6384": { "verdict": "hold", "reason_code": "empty_master",
                    "reason": "observed only", "action": "forwarded", "answer": "+FULLRESYNC" }
            }),
        );
        let r = report(&st, 10.0);
        assert_eq!(
            r.attention,
            [
                "link main: replica 127.0.0.1:6380 has not acknowledged bytes sent 12.3 s ago (more than --max-lag-seconds 10)",
                "link main: replica 127.0.0.1:6383 is held",
            ]
        );
        assert!(
            r.text
                .contains("main  127.0.0.1:6382  handshake  -     dadf359b"),
            "{}",
            r.text
        );
        assert!(
            r.text.ends_with("\nlink main: replica 127.0.0.1:6383 is held (empty_master): the master came back empty\n"),
            "{}",
            r.text
        );
        assert_eq!(report(&st, 20.0).attention.len(), 1);
    }

    #[test]
    fn an_empty_master_is_shown() {
        let mut st = status(vec![], json!({}));
        st["links"][0]["ledger"]["empty_master"] = json!("4f2a");
        let r = report(&st, 10.0);
        assert!(r.text.contains("no sessions\n"), "{}", r.text);
        assert!(
            r.text
                .contains("link main: the master came back empty with a new replication id (4f2a)"),
            "{}",
            r.text
        );
        assert!(r.attention.is_empty());
    }

    #[test]
    fn a_ledger_that_cannot_be_saved_is_shown() {
        let mut st = status(vec![], json!({}));
        st["links"][0]["ledger"]["ledger_save_failures"] = json!(3);
        st["links"][0]["ledger"]["ledger_last_save_error"] = json!("No space left on device");
        let r = report(&st, 10.0);
        assert!(
            r.text.ends_with("\nlink main: the ledger cannot be saved (3 failed saves): No space left on device\n"),
            "{}",
            r.text
        );
    }

    #[test]
    fn answers_other_than_a_complete_200_are_refused() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 8\r\nConnection: close\r\n\r\n{\"a\": 1}";
        assert_eq!(parse_response(ok).unwrap(), json!({"a": 1}));
        let cut = b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{\"a\": 1}";
        assert!(parse_response(cut).unwrap_err().contains("cut short"));
        let not_found = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
        assert!(parse_response(not_found).unwrap_err().contains("404"));
        assert!(parse_response(b"+OK\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n\r\n<html>")
            .unwrap_err()
            .contains("not JSON"));
    }

    #[test]
    fn a_wildcard_admin_address_is_reached_on_loopback() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(connect_addr(a("0.0.0.0:9121")), a("127.0.0.1:9121"));
        assert_eq!(connect_addr(a("[::]:9121")), a("[::1]:9121"));
        assert_eq!(connect_addr(a("10.0.0.5:9121")), a("10.0.0.5:9121"));
    }
}
