//! Reading the master's own view of its lineage: `INFO replication` and `INFO keyspace` over a
//! short-lived connection of replguard's own (dialled as sessions dial, see
//! `LinkCtx::dial_master`), with the link's credentials.

use crate::config::Credentials;
use crate::conn::info::{read_sections, InfoError};
use crate::conn::Stream;
use crate::guard::ledger::MasterView;
use std::collections::HashMap;

/// Asks the master, on a connection dialled to it, for its replication state; the caller
/// bounds the time it takes.
pub async fn read_master(s: Stream, creds: Option<&Credentials>) -> Result<MasterView, InfoError> {
    let texts = read_sections(s, creds, &["replication", "keyspace"]).await?;
    parse_view(&texts[0], &texts[1])
}

/// Builds the master's view from the two INFO sections.
pub fn parse_view(replication: &str, keyspace: &str) -> Result<MasterView, InfoError> {
    let f: HashMap<&str, &str> = replication
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k, v.trim()))
        .collect();
    let get = |k: &str| {
        f.get(k)
            .copied()
            .ok_or_else(|| InfoError::Reply(format!("INFO replication has no {k}")))
    };
    let num = |k: &str| -> Result<i64, InfoError> {
        get(k)?
            .parse()
            .map_err(|_| InfoError::Reply(format!("INFO replication {k} is not a number")))
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
