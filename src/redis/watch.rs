//! Reading the master's own view of its lineage: `INFO replication` and `INFO keyspace` over a
//! short-lived connection of replguard's own (dialled as sessions dial, see
//! `LinkCtx::dial_master`), with the link's credentials.

use crate::config::Credentials;
use crate::conn::Stream;
use crate::guard::ledger::MasterView;
use crate::wire::resp::{encode_command, reply_len};
use std::collections::HashMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Why the master could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("master answered {0:?}")]
    Reply(String),
}

/// Asks the master, on a connection dialled to it, for its replication state; the caller
/// bounds the time it takes.
pub async fn read_master(
    mut s: Stream,
    creds: Option<&Credentials>,
) -> Result<MasterView, WatchError> {
    let mut buf = Vec::with_capacity(4096);
    if let Some(c) = creds {
        let auth = match &c.user {
            Some(u) => encode_command(&["AUTH", u.as_str(), c.password.as_str()]),
            None => encode_command(&["AUTH", c.password.as_str()]),
        };
        s.write_all(&auth).await?;
        let r = read_reply(&mut s, &mut buf).await?;
        if !r.starts_with(b"+") {
            return Err(WatchError::Reply(String::from_utf8_lossy(&r).trim().into()));
        }
    }
    let mut wire = encode_command(&["INFO", "replication"]);
    wire.extend(encode_command(&["INFO", "keyspace"]));
    s.write_all(&wire).await?;
    let repl = bulk_text(read_reply(&mut s, &mut buf).await?)?;
    let keys = bulk_text(read_reply(&mut s, &mut buf).await?)?;
    parse_view(&repl, &keys)
}

async fn read_reply(s: &mut Stream, buf: &mut Vec<u8>) -> Result<Vec<u8>, WatchError> {
    loop {
        if let Some(n) = reply_len(buf).map_err(|e| WatchError::Reply(e.to_string()))? {
            return Ok(buf.drain(..n).collect());
        }
        let mut tmp = [0u8; 8192];
        let n = s.read(&mut tmp).await?;
        if n == 0 {
            return Err(WatchError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

fn bulk_text(reply: Vec<u8>) -> Result<String, WatchError> {
    if reply.first() != Some(&b'$') {
        return Err(WatchError::Reply(
            String::from_utf8_lossy(&reply).trim().into(),
        ));
    }
    let start = reply.iter().position(|&b| b == b'\n').map_or(0, |p| p + 1);
    let end = reply.len().saturating_sub(2).max(start);
    Ok(String::from_utf8_lossy(&reply[start..end]).into_owned())
}

/// Builds the master's view from the two INFO sections.
pub fn parse_view(replication: &str, keyspace: &str) -> Result<MasterView, WatchError> {
    let f: HashMap<&str, &str> = replication
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k, v.trim()))
        .collect();
    let get = |k: &str| {
        f.get(k)
            .copied()
            .ok_or_else(|| WatchError::Reply(format!("INFO replication has no {k}")))
    };
    let num = |k: &str| -> Result<i64, WatchError> {
        get(k)?
            .parse()
            .map_err(|_| WatchError::Reply(format!("INFO replication {k} is not a number")))
    };
    Ok(MasterView {
        replid: get("master_replid")?.to_string(),
        replid2: get("master_replid2")?.to_string(),
        second_offset: num("second_repl_offset")?,
        offset: num("master_repl_offset")?.max(0) as u64,
        empty: !keyspace.lines().any(|l| l.starts_with("db")),
        replica: f.get("role").is_some_and(|r| *r != "master"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_real_info_reply() {
        let repl = "# Replication\r\nrole:master\r\nconnected_slaves:0\r\nmaster_failover_state:no-failover\r\nmaster_replid:8de1787ba490483314a4d30f1c628bc5025eb761\r\nmaster_replid2:0000000000000000000000000000000000000000\r\nmaster_repl_offset:1234\r\nsecond_repl_offset:-1\r\n";
        let v = parse_view(repl, "# Keyspace\r\n").unwrap();
        assert_eq!(v.offset, 1234);
        assert_eq!(v.second_offset, -1);
        assert!(v.empty);
        let v = parse_view(repl, "# Keyspace\r\ndb0:keys=1,expires=0,avg_ttl=0\r\n").unwrap();
        assert!(!v.empty);
        assert!(parse_view("role:master\r\n", "").is_err());
    }
}
