//! Reading a Kvrocks node's own view of itself: `INFO replication` (its role and latest
//! sequence) and `INFO server` (which process it is and how long it has run) over a
//! short-lived connection of replguard's own, with the link's credentials.

use crate::config::Credentials;
use crate::conn::info::{read_sections, InfoError};
use crate::conn::Stream;
use crate::guard::ledger::KvNodeView;
use std::collections::HashMap;

/// Asks the node, on a connection dialled to it, for its role, latest sequence and process;
/// the caller bounds the time it takes.
pub async fn read_node(s: Stream, creds: Option<&Credentials>) -> Result<KvNodeView, InfoError> {
    let texts = read_sections(s, creds, &["replication", "server"]).await?;
    parse_node(&texts[0], &texts[1])
}

/// Builds the node's view from its two INFO sections.
///
/// The latest sequence is `master_repl_offset`, which Kvrocks prints in both roles (on a
/// replica it equals `slave_repl_offset`); `slave_repl_offset` stands in when it is absent.
pub fn parse_node(replication: &str, server: &str) -> Result<KvNodeView, InfoError> {
    let repl = Section::new("replication", replication);
    let srv = Section::new("server", server);
    let latest = match repl.get("master_repl_offset") {
        Ok(_) => repl.num("master_repl_offset")?,
        Err(_) => repl.num("slave_repl_offset").map_err(|_| {
            InfoError::Reply(
                "INFO replication has neither master_repl_offset nor slave_repl_offset".into(),
            )
        })?,
    };
    Ok(KvNodeView {
        master: repl.get("role")? == "master",
        latest,
        process_id: srv.num("process_id")?,
        uptime_secs: srv.num("uptime_in_seconds")?,
    })
}

/// One INFO section's `field:value` lines.
struct Section<'a> {
    name: &'static str,
    fields: HashMap<&'a str, &'a str>,
}

impl<'a> Section<'a> {
    fn new(name: &'static str, text: &'a str) -> Self {
        let fields = text
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k, v.trim()))
            .collect();
        Section { name, fields }
    }

    fn get(&self, k: &str) -> Result<&'a str, InfoError> {
        self.fields
            .get(k)
            .copied()
            .ok_or_else(|| InfoError::Reply(format!("INFO {} has no {k}", self.name)))
    }

    fn num(&self, k: &str) -> Result<u64, InfoError> {
        self.get(k)?
            .parse()
            .map_err(|_| InfoError::Reply(format!("INFO {} {k} is not a number", self.name)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Replies of a real Kvrocks 2.7.0, standalone: a master with one replica, and that replica
    // (`SLAVEOF 127.0.0.1 16901`), after two writes.
    const MASTER_REPLICATION: &str = "# Replication\r\nrole:master\r\nconnected_slaves:1\r\nslave0:ip=127.0.0.1,port=16902,offset=2,lag=0\r\nmaster_repl_offset:2\r\n";
    const MASTER_SERVER: &str = "# Server\r\nversion:2.7.0\r\nkvrocks_version:2.7.0\r\nredis_version:4.0.0\r\ngit_sha1:\r\nkvrocks_git_sha1:\r\nredis_mode:standalone\r\nkvrocks_mode:standalone\r\nos:Linux 6.18.44-fc-v669 x86_64\r\ngcc_version:12.2.0\r\narch_bits:64\r\nprocess_id:25834\r\ntcp_port:16901\r\nuptime_in_seconds:8\r\nuptime_in_days:0\r\n";
    const REPLICA_REPLICATION: &str = "# Replication\r\nrole:slave\r\nmaster_host:127.0.0.1\r\nmaster_port:16901\r\nmaster_link_status:up\r\nmaster_sync_unrecoverable_error:no\r\nmaster_sync_in_progress:0\r\nmaster_last_io_seconds_ago:1\r\nslave_repl_offset:2\r\nslave_priority:100\r\nconnected_slaves:0\r\nmaster_repl_offset:2\r\n";
    const REPLICA_SERVER: &str = "# Server\r\nversion:2.7.0\r\nkvrocks_version:2.7.0\r\nredis_version:4.0.0\r\ngit_sha1:\r\nkvrocks_git_sha1:\r\nredis_mode:standalone\r\nkvrocks_mode:standalone\r\nos:Linux 6.18.44-fc-v669 x86_64\r\ngcc_version:12.2.0\r\narch_bits:64\r\nprocess_id:25836\r\ntcp_port:16902\r\nuptime_in_seconds:8\r\nuptime_in_days:0\r\n";

    #[test]
    fn reads_a_real_master() {
        let v = parse_node(MASTER_REPLICATION, MASTER_SERVER).unwrap();
        assert_eq!(
            v,
            KvNodeView {
                master: true,
                latest: 2,
                process_id: 25834,
                uptime_secs: 8,
            }
        );
    }

    #[test]
    fn reads_a_real_replica() {
        let v = parse_node(REPLICA_REPLICATION, REPLICA_SERVER).unwrap();
        assert_eq!(
            v,
            KvNodeView {
                master: false,
                latest: 2,
                process_id: 25836,
                uptime_secs: 8,
            }
        );
    }

    #[test]
    fn the_latest_sequence_prefers_master_repl_offset_and_falls_back_to_slave_repl_offset() {
        let repl = REPLICA_REPLICATION.replace("master_repl_offset:2", "master_repl_offset:5");
        assert_eq!(parse_node(&repl, REPLICA_SERVER).unwrap().latest, 5);
        let repl = REPLICA_REPLICATION.replace("master_repl_offset:2\r\n", "");
        let repl = repl.replace("slave_repl_offset:2", "slave_repl_offset:3");
        assert_eq!(parse_node(&repl, REPLICA_SERVER).unwrap().latest, 3);
    }

    #[test]
    fn a_missing_or_broken_field_is_named() {
        let err = |repl: &str, srv: &str| match parse_node(repl, srv) {
            Err(InfoError::Reply(m)) => m,
            other => panic!("{other:?}"),
        };
        let no_pid = MASTER_SERVER.replace("process_id:25834\r\n", "");
        assert_eq!(
            err(MASTER_REPLICATION, &no_pid),
            "INFO server has no process_id"
        );
        let no_uptime = MASTER_SERVER.replace("uptime_in_seconds:8\r\n", "");
        assert_eq!(
            err(MASTER_REPLICATION, &no_uptime),
            "INFO server has no uptime_in_seconds"
        );
        let no_role = MASTER_REPLICATION.replace("role:master\r\n", "");
        assert_eq!(err(&no_role, MASTER_SERVER), "INFO replication has no role");
        let no_offset = MASTER_REPLICATION.replace("master_repl_offset:2\r\n", "");
        assert_eq!(
            err(&no_offset, MASTER_SERVER),
            "INFO replication has neither master_repl_offset nor slave_repl_offset"
        );
        let bad = MASTER_REPLICATION.replace("master_repl_offset:2", "master_repl_offset:x");
        assert_eq!(
            err(&bad, MASTER_SERVER),
            "INFO replication master_repl_offset is not a number"
        );
        let bad = MASTER_SERVER.replace("process_id:25834", "process_id:-1");
        assert_eq!(
            err(MASTER_REPLICATION, &bad),
            "INFO server process_id is not a number"
        );
        assert!(parse_node("", "").is_err());
    }
}
