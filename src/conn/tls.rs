//! TLS on either side of a link, with rustls: the link port as a TLS server (replicas with
//! `tls-replication yes`, client certificates required when a CA is configured) and the dial
//! to the master as a TLS client (with a client certificate for `tls-auth-clients yes`).
//!
//! A connection is a [`Stream`], plain TCP or TLS over it; the relay splits it into halves
//! like a TCP stream. The material is read from the configured files when the link starts and
//! again on reload; a link whose files do not load does not start, and a reload whose files do
//! not load keeps the material in force.

use crate::config::{ListenTls, MasterAddr, MasterTls};
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector, TlsStream};

/// One connection: plain TCP, or TLS over TCP.
pub enum Stream {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// The read half of a [`Stream`].
pub enum ReadHalf {
    Tcp(OwnedReadHalf),
    Tls(tokio::io::ReadHalf<Box<TlsStream<TcpStream>>>),
}

/// The write half of a [`Stream`].
pub enum WriteHalf {
    Tcp(OwnedWriteHalf),
    Tls(tokio::io::WriteHalf<Box<TlsStream<TcpStream>>>),
}

impl Stream {
    /// Splits into halves that can be used from two tasks or two branches of a select: TCP
    /// without a lock, TLS through tokio's split (one TLS state serves both directions).
    pub fn into_split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Stream::Tcp(s) => {
                let (r, w) = s.into_split();
                (ReadHalf::Tcp(r), WriteHalf::Tcp(w))
            }
            Stream::Tls(s) => {
                let (r, w) = tokio::io::split(s);
                (ReadHalf::Tls(r), WriteHalf::Tls(w))
            }
        }
    }

    /// Whether the connection is TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }
}

macro_rules! delegate_read {
    ($t:ty) => {
        impl AsyncRead for $t {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    Self::Tcp(s) => Pin::new(s).poll_read(cx, buf),
                    Self::Tls(s) => tls_eof(Pin::new(s).poll_read(cx, buf)),
                }
            }
        }
    };
}

/// A TLS peer that closes its TCP connection without a close_notify (Redis and Valkey do not
/// send one when a replica goes away) has closed the connection: RESP framing, not TLS, tells
/// whether it closed inside a frame.
fn tls_eof(p: Poll<io::Result<()>>) -> Poll<io::Result<()>> {
    match p {
        Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => Poll::Ready(Ok(())),
        other => other,
    }
}

macro_rules! delegate_write {
    ($t:ty, $($v:ident),+) => {
        impl AsyncWrite for $t {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $(Self::$v(s) => Pin::new(s).poll_write(cx, buf),)+
                }
            }
            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $(Self::$v(s) => Pin::new(s).poll_flush(cx),)+
                }
            }
            fn poll_shutdown(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $(Self::$v(s) => Pin::new(s).poll_shutdown(cx),)+
                }
            }
        }
    };
}

delegate_read!(Stream);
delegate_write!(Stream, Tcp, Tls);
delegate_read!(ReadHalf);
delegate_write!(WriteHalf, Tcp, Tls);

/// A link's TLS material, loaded: what the link port accepts and how the master is dialled.
#[derive(Clone, Default)]
pub struct LinkTls {
    server: Option<TlsAcceptor>,
    client: Option<(TlsConnector, ServerName<'static>)>,
}

impl LinkTls {
    /// Loads the configured files. The error names the field whose file failed and why.
    pub fn load(
        listen: Option<&ListenTls>,
        master: Option<&MasterTls>,
        master_addr: &MasterAddr,
    ) -> Result<LinkTls, TlsError> {
        let server = listen.map(server_config).transpose()?;
        let client = master.map(|m| client_config(m, master_addr)).transpose()?;
        Ok(LinkTls { server, client })
    }

    /// Whether the link port speaks TLS.
    pub fn serves_tls(&self) -> bool {
        self.server.is_some()
    }

    /// Whether the master is dialled with TLS.
    pub fn dials_tls(&self) -> bool {
        self.client.is_some()
    }

    /// Runs the server side of the handshake on an accepted connection, when the link port
    /// speaks TLS.
    pub async fn accept(&self, s: TcpStream) -> io::Result<Stream> {
        match &self.server {
            Some(acceptor) => {
                let tls = acceptor.accept(s).await?;
                Ok(Stream::Tls(Box::new(TlsStream::Server(tls))))
            }
            None => Ok(Stream::Tcp(s)),
        }
    }

    /// Runs the client side of the handshake towards the master, when it is dialled with TLS.
    pub async fn connect(&self, s: TcpStream) -> io::Result<Stream> {
        match &self.client {
            Some((connector, name)) => {
                let tls = connector.connect(name.clone(), s).await?;
                Ok(Stream::Tls(Box::new(TlsStream::Client(tls))))
            }
            None => Ok(Stream::Tcp(s)),
        }
    }
}

/// A TLS file that did not load: the field's path under the link and why.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {message}")]
pub struct TlsError {
    /// The field under the link, e.g. `tls.cert_file`.
    pub field: &'static str,
    pub message: String,
}

fn err(field: &'static str, message: impl Into<String>) -> TlsError {
    TlsError {
        field,
        message: message.into(),
    }
}

fn certs(field: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(field, format!("cannot read {}: {e}", path.display())))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(field, format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(err(
            field,
            format!("{} holds no PEM certificate", path.display()),
        ));
    }
    Ok(certs)
}

fn key(field: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        err(
            field,
            format!("no PEM private key read from {}: {e}", path.display()),
        )
    })
}

fn roots(field: &'static str, path: &Path) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for c in certs(field, path)? {
        store
            .add(c)
            .map_err(|e| err(field, format!("{}: {e}", path.display())))?;
    }
    Ok(store)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn server_config(t: &ListenTls) -> Result<TlsAcceptor, TlsError> {
    let chain = certs("tls.cert_file", &t.cert_file)?;
    let key = key("tls.key_file", &t.key_file)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| err("tls", e.to_string()))?;
    let builder = match &t.client_ca_file {
        Some(ca) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots("tls.client_ca_file", ca)?),
                provider(),
            )
            .build()
            .map_err(|e| err("tls.client_ca_file", e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(chain, key)
        .map_err(|e| err("tls.key_file", format!("does not match tls.cert_file: {e}")))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn client_config(
    t: &MasterTls,
    master: &MasterAddr,
) -> Result<(TlsConnector, ServerName<'static>), TlsError> {
    let roots = roots("master_tls.ca_file", &t.ca_file)?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| err("master_tls", e.to_string()))?
        .with_root_certificates(roots);
    let config = match (&t.cert_file, &t.key_file) {
        (Some(c), Some(k)) => builder
            .with_client_auth_cert(
                certs("master_tls.cert_file", c)?,
                key("master_tls.key_file", k)?,
            )
            .map_err(|e| {
                err(
                    "master_tls.key_file",
                    format!("does not match master_tls.cert_file: {e}"),
                )
            })?,
        (None, None) => builder.with_no_client_auth(),
        (Some(_), None) => return Err(err("master_tls.key_file", "required with cert_file")),
        (None, Some(_)) => return Err(err("master_tls.cert_file", "required with key_file")),
    };
    let name = match &t.server_name {
        Some(n) => ServerName::try_from(n.clone())
            .map_err(|e| err("master_tls.server_name", format!("{n:?}: {e}")))?,
        // By default the master's certificate is checked against the name the link dials by,
        // or its IP address.
        None => match master {
            MasterAddr::Ip(a) => ServerName::IpAddress(a.ip().into()),
            MasterAddr::Name { .. } => ServerName::try_from(master.tls_host()).map_err(|e| {
                err(
                    "master_tls.server_name",
                    format!(
                        "the master's host name {:?} cannot be checked: {e}",
                        master.tls_host()
                    ),
                )
            })?,
        },
    };
    Ok((TlsConnector::from(Arc::new(config)), name))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed CA certificate (its key thrown away): only read as a trust root here.
    const CA: &str = "-----BEGIN CERTIFICATE-----
MIIBmTCCAT+gAwIBAgIUd7nrC6FqFWnGI3GINkJRyK2LtoYwCgYIKoZIzj0EAwIw
ITEfMB0GA1UEAwwWcmVwbGd1YXJkIHVuaXQgdGVzdCBDQTAgFw0yNjExMjYwNjQ4
MzRaGA8yMTI2MTEwMjA2NDgzNFowITEfMB0GA1UEAwwWcmVwbGd1YXJkIHVuaXQg
dGVzdCBDQTBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABGEeAE3CK60SjnDsbBND
PFD2xILPCi80MQEWnKPX1kIUp/UpMBpY0Tl3xE9pbbAmbgenaO+Qf8toTgEI03FK
mi2jUzBRMB0GA1UdDgQWBBRlh2zJRGLVOXnwelVeqXJVkhQVnzAfBgNVHSMEGDAW
gBRlh2zJRGLVOXnwelVeqXJVkhQVnzAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49
BAMCA0gAMEUCIQCOYugAlYOYpSv2I740NTU2TPY5lUpAK3OiWglu/R4IpAIgROMy
cLwKpZP6Xzvd+Ok6CzWxnwYisJTz3zZuNCP40Bc=
-----END CERTIFICATE-----
";

    #[test]
    fn the_master_certificate_is_checked_against_the_name_dialled_by_default() {
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.crt");
        std::fs::write(&ca_file, CA).unwrap();
        let tls = |server_name: Option<&str>, master: &str| {
            let t = MasterTls {
                ca_file: ca_file.clone(),
                cert_file: None,
                key_file: None,
                server_name: server_name.map(str::to_string),
            };
            let master = MasterAddr::parse(master).unwrap();
            let loaded = LinkTls::load(None, Some(&t), &master).unwrap();
            loaded.client.unwrap().1
        };
        assert_eq!(
            tls(None, "Redis-0.Redis.db.svc.:6379"),
            ServerName::try_from("redis-0.redis.db.svc").unwrap()
        );
        assert_eq!(
            tls(None, "10.0.0.5:6379"),
            ServerName::try_from("10.0.0.5").unwrap()
        );
        assert_eq!(
            tls(Some("redis.example"), "redis-0.redis:6379"),
            ServerName::try_from("redis.example").unwrap()
        );
    }
}
