//! Reading `INFO` sections over a short-lived connection of replguard's own (dialled by the
//! caller, as sessions dial), with the link's credentials: `AUTH` when configured, then every
//! section asked for in one write, each reply read with a bounded buffer. The texts are
//! returned as the server printed them; what they mean is the flavour's business.

use crate::config::Credentials;
use crate::conn::Stream;
use crate::wire::resp::{encode_command, ReplyScanner, MAX_REPLY_DEPTH};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest reply accepted for one `INFO` section (or for `AUTH`).
pub const MAX_SECTION: usize = 1024 * 1024;

/// Why the server could not be read.
#[derive(Debug, thiserror::Error)]
pub enum InfoError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("server answered {0:?}")]
    Reply(String),
}

/// Sends `AUTH` when `creds` are given, then `INFO <section>` for each of `sections` in one
/// write, and returns the sections' texts in the order asked. The caller bounds the time it
/// takes.
pub async fn read_sections(
    s: Stream,
    creds: Option<&Credentials>,
    sections: &[&str],
) -> Result<Vec<String>, InfoError> {
    read_sections_on(s, creds, sections).await
}

async fn read_sections_on<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    creds: Option<&Credentials>,
    sections: &[&str],
) -> Result<Vec<String>, InfoError> {
    let mut r = Replies::new();
    if let Some(c) = creds {
        let auth = match &c.user {
            Some(u) => encode_command(&["AUTH", u.as_str(), c.password.as_str()]),
            None => encode_command(&["AUTH", c.password.as_str()]),
        };
        s.write_all(&auth).await?;
        let reply = r.next(&mut s).await?;
        if !reply.starts_with(b"+") {
            return Err(InfoError::Reply(
                String::from_utf8_lossy(&reply).trim().into(),
            ));
        }
    }
    let mut wire = Vec::new();
    for section in sections {
        wire.extend(encode_command(&["INFO", section]));
    }
    s.write_all(&wire).await?;
    let mut texts = Vec::with_capacity(sections.len());
    for _ in sections {
        texts.push(bulk_text(&r.next(&mut s).await?)?);
    }
    Ok(texts)
}

/// Whole replies off a connection, one at a time, never holding more than [`MAX_SECTION`]
/// bytes of an unfinished one.
struct Replies {
    buf: Vec<u8>,
    scanner: ReplyScanner,
}

impl Replies {
    fn new() -> Self {
        Replies {
            buf: Vec::with_capacity(4096),
            scanner: ReplyScanner::new(MAX_SECTION, MAX_REPLY_DEPTH),
        }
    }

    async fn next<S: AsyncRead + Unpin>(&mut self, s: &mut S) -> Result<Vec<u8>, InfoError> {
        loop {
            if let Some(n) = self.scanner.scan(&self.buf).map_err(|e| {
                InfoError::Reply(format!(
                    "a reply larger than {MAX_SECTION} bytes or malformed: {e}"
                ))
            })? {
                return Ok(self.buf.drain(..n).collect());
            }
            // The scanner refuses a frame past the cap; this keeps the buffer bounded whatever
            // it saw.
            if self.buf.len() > MAX_SECTION {
                return Err(InfoError::Reply(format!(
                    "a reply larger than {MAX_SECTION} bytes"
                )));
            }
            let mut tmp = [0u8; 8192];
            let n = s.read(&mut tmp).await?;
            if n == 0 {
                return Err(InfoError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            self.buf.extend_from_slice(&tmp[..n]);
        }
    }
}

/// The body of a bulk-string reply; any other reply (an error, say) is refused with its text.
fn bulk_text(reply: &[u8]) -> Result<String, InfoError> {
    if reply.first() != Some(&b'$') {
        return Err(InfoError::Reply(
            String::from_utf8_lossy(reply).trim().into(),
        ));
    }
    let start = reply.iter().position(|&b| b == b'\n').map_or(0, |p| p + 1);
    let end = reply.len().saturating_sub(2).max(start);
    Ok(String::from_utf8_lossy(&reply[start..end]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

    fn bulk(text: &str) -> Vec<u8> {
        format!("${}\r\n{text}\r\n", text.len()).into_bytes()
    }

    /// Runs `read_sections_on` against a scripted server that writes `answer` while it reads
    /// what the client sends, until the client hangs up; returns what it read.
    async fn against(
        creds: Option<&Credentials>,
        sections: &[&str],
        answer: Vec<u8>,
    ) -> (Result<Vec<String>, InfoError>, Vec<u8>) {
        let (client, server) = duplex(64 * 1024);
        let (mut rd, mut wr) = tokio::io::split(server);
        let srv = tokio::spawn(async move {
            let write = async {
                // Fails once the client hangs up, which the larger answers rely on.
                let _ = wr.write_all(&answer).await;
                let _ = wr.shutdown().await;
            };
            let read = async {
                let mut got = Vec::new();
                let mut tmp = [0u8; 4096];
                while let Ok(n @ 1..) = rd.read(&mut tmp).await {
                    got.extend_from_slice(&tmp[..n]);
                }
                got
            };
            tokio::join!(write, read).1
        });
        let r = read_sections_on(client, creds, sections).await;
        (r, srv.await.unwrap())
    }

    #[tokio::test]
    async fn pipelines_the_sections_and_returns_their_bodies_in_order() {
        let creds = Credentials {
            user: None,
            password: "pw".into(),
        };
        let mut expect = encode_command(&["AUTH", "pw"]);
        let info = [
            encode_command(&["INFO", "replication"]),
            encode_command(&["INFO", "server"]),
        ]
        .concat();
        expect.extend(&info);
        let mut answer = b"+OK\r\n".to_vec();
        answer.extend(bulk("# Replication\r\nrole:master\r\n"));
        answer.extend(bulk("# Server\r\nprocess_id:7\r\n"));
        let (r, sent) = against(Some(&creds), &["replication", "server"], answer).await;
        assert_eq!(
            r.unwrap(),
            vec![
                "# Replication\r\nrole:master\r\n".to_string(),
                "# Server\r\nprocess_id:7\r\n".to_string()
            ]
        );
        assert_eq!(sent, expect);
    }

    #[tokio::test]
    async fn sends_the_user_and_refuses_a_failed_auth() {
        let creds = Credentials {
            user: Some("u".into()),
            password: "pw".into(),
        };
        let expect = encode_command(&["AUTH", "u", "pw"]);
        let (r, sent) = against(
            Some(&creds),
            &["server"],
            b"-ERR invalid password\r\n".to_vec(),
        )
        .await;
        assert!(
            matches!(&r, Err(InfoError::Reply(m)) if m == "-ERR invalid password"),
            "{r:?}"
        );
        assert_eq!(sent, expect);
    }

    #[tokio::test]
    async fn an_error_reply_to_info_is_an_error() {
        let (r, _) = against(
            None,
            &["server"],
            b"-NOAUTH Authentication required.\r\n".to_vec(),
        )
        .await;
        assert!(
            matches!(&r, Err(InfoError::Reply(m)) if m.starts_with("-NOAUTH")),
            "{r:?}"
        );
    }

    #[tokio::test]
    async fn a_section_at_the_cap_is_read_and_one_past_it_is_refused() {
        // `$1048564\r\n` + body + `\r\n` is exactly MAX_SECTION bytes.
        let fits = MAX_SECTION - 12;
        assert_eq!(bulk(&"a".repeat(fits)).len(), MAX_SECTION);
        let (r, _) = against(None, &["server"], bulk(&"a".repeat(fits))).await;
        assert_eq!(r.unwrap(), vec!["a".repeat(fits)]);

        let (r, _) = against(None, &["server"], bulk(&"a".repeat(fits + 1))).await;
        assert!(
            matches!(&r, Err(InfoError::Reply(m)) if m.contains("larger than")),
            "{r:?}"
        );
    }

    #[tokio::test]
    async fn an_endless_line_is_refused_within_the_cap() {
        // A status line that never ends: the reader stops once it holds the cap.
        let answer = [b"+".to_vec(), vec![b'x'; 2 * MAX_SECTION]].concat();
        let (r, _) = against(None, &["server"], answer).await;
        assert!(
            matches!(&r, Err(InfoError::Reply(m)) if m.contains("larger than")),
            "{r:?}"
        );
    }

    #[tokio::test]
    async fn a_connection_closed_mid_reply_is_an_io_error() {
        let (r, _) = against(None, &["server"], b"$100\r\nshort".to_vec()).await;
        assert!(
            matches!(&r, Err(InfoError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof),
            "{r:?}"
        );
    }

    #[test]
    fn bulk_text_takes_the_body() {
        assert_eq!(bulk_text(b"$5\r\nab\r\nc\r\n").unwrap(), "ab\r\nc");
        assert_eq!(bulk_text(b"$0\r\n\r\n").unwrap(), "");
        assert!(matches!(bulk_text(b"+OK\r\n"), Err(InfoError::Reply(m)) if m == "+OK"));
    }
}
