//! TLS test material: a throw-away CA with a server certificate (for 127.0.0.1) and a client
//! certificate, made with the openssl command line; a Redis master that speaks only TLS on
//! TCP (the test reaches it through a unix socket); a blocking TLS client.

use super::{wait_for, Client, Kind};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

/// PEM files in a temporary directory.
pub struct Certs {
    pub dir: tempfile::TempDir,
}

impl Certs {
    /// A CA, a server certificate for 127.0.0.1 and localhost, and a client certificate, all
    /// signed by the CA.
    pub fn new() -> Certs {
        let dir = tempfile::Builder::new()
            .prefix("replguard-tls-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        openssl(
            d,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "2",
                "-subj",
                "/CN=replguard test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        for (name, cn) in [("server", "127.0.0.1"), ("client", "replguard test client")] {
            std::fs::write(
                d.join(format!("{name}.ext")),
                "subjectAltName=IP:127.0.0.1,DNS:localhost\n\
                 extendedKeyUsage=serverAuth,clientAuth\n\
                 basicConstraints=CA:FALSE\n\
                 keyUsage=critical,digitalSignature\n",
            )
            .unwrap();
            openssl(
                d,
                &[
                    "req",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:prime256v1",
                    "-nodes",
                    "-keyout",
                    &format!("{name}.key"),
                    "-out",
                    &format!("{name}.csr"),
                    "-subj",
                    &format!("/CN={cn}"),
                ],
            );
            openssl(
                d,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &format!("{name}.csr"),
                    "-CA",
                    "ca.crt",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-out",
                    &format!("{name}.crt"),
                    "-days",
                    "2",
                    "-extfile",
                    &format!("{name}.ext"),
                ],
            );
        }
        Certs { dir }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// `--tls-*` arguments for a Redis server using `name`'s certificate.
    pub fn redis_args(&self, name: &str) -> Vec<String> {
        vec![
            "--tls-cert-file".into(),
            self.path(&format!("{name}.crt")).display().to_string(),
            "--tls-key-file".into(),
            self.path(&format!("{name}.key")).display().to_string(),
            "--tls-ca-cert-file".into(),
            self.path("ca.crt").display().to_string(),
        ]
    }

    /// A rustls client trusting the CA, with the client certificate when `with_cert`.
    pub fn client_config(&self, with_cert: bool) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(self.path("ca.crt")).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let b =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots);
        Arc::new(if with_cert {
            let chain = CertificateDer::pem_file_iter(self.path("client.crt"))
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_file(self.path("client.key")).unwrap();
            b.with_client_auth_cert(chain, key).unwrap()
        } else {
            b.with_no_client_auth()
        })
    }

    /// A RESP client over TLS to 127.0.0.1:`port`.
    pub fn client(&self, port: u16, with_cert: bool) -> std::io::Result<Client> {
        let sock = std::net::TcpStream::connect(("127.0.0.1", port))?;
        sock.set_read_timeout(Some(Duration::from_secs(10)))?;
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let conn = rustls::ClientConnection::new(self.client_config(with_cert), name)
            .map_err(std::io::Error::other)?;
        Ok(Client::over(rustls::StreamOwned::new(conn, sock)))
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A Redis server that accepts TCP connections only over TLS, with client certificates
/// required; the test itself talks to it over a unix socket.
pub struct TlsServer {
    pub tls_port: u16,
    pub dir: tempfile::TempDir,
    child: Child,
}

impl TlsServer {
    pub fn start(kind: Kind, certs: &Certs, extra: &[&str]) -> TlsServer {
        let dir = tempfile::Builder::new()
            .prefix("replguard-test-")
            .tempdir()
            .unwrap();
        let tls_port = super::free_port();
        let child = Command::new(kind.binary())
            .args(["--port", "0", "--tls-port", &tls_port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--tls-auth-clients", "yes", "--tls-replication", "yes"])
            .args(["--enable-debug-command", "yes"])
            .args(certs.redis_args("server"))
            .arg("--unixsocket")
            .arg(dir.path().join("redis.sock"))
            .args(["--unixsocketperm", "700"])
            .arg("--dir")
            .arg(dir.path())
            .arg("--logfile")
            .arg(dir.path().join("server.log"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("server starts");
        let s = TlsServer {
            tls_port,
            dir,
            child,
        };
        wait_for(Duration::from_secs(20), "the TLS server to answer", || {
            let mut c = s.try_client()?;
            c.try_cmd(&["PING"]).ok().map(|_| ())
        });
        s
    }

    /// A client over the unix socket.
    pub fn client(&self) -> Client {
        self.try_client().expect("connect to the unix socket")
    }

    pub fn try_client(&self) -> Option<Client> {
        Client::unix(&self.dir.path().join("redis.sock")).ok()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
