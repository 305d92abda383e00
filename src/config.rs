//! The YAML configuration: schema, defaults, and checks that report every problem with its YAML
//! path in one go.
//!
//! Loading goes `load_file` -> `from_yaml_in`:
//! 1. the text is parsed as a YAML document (a syntax error is the one problem, with its line);
//! 2. the document is walked against [`SCHEMA`]: every unknown field, missing required field and
//!    value of the wrong type is a problem at its path;
//! 3. serde builds the [`Config`], relative paths are taken from the file's folder, and
//!    `validate` adds the semantic problems (addresses, names, limits, credentials). When step 2
//!    found problems, step 3 runs on the document with stand-ins where values are missing or
//!    unusable, and keeps only the problems that do not touch those places.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Replica sessions one link accepts at once unless `max_sessions` says otherwise.
pub const DEFAULT_MAX_SESSIONS: usize = 64;
/// Time allowed to open the TCP connection to the master.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Time allowed for the master to answer one handshake command (keepalive newlines restart it).
pub const DEFAULT_HANDSHAKE_STEP_TIMEOUT_MS: u64 = 10_000;
/// Time a full sync may go without a single byte from the master before the session is ended.
pub const DEFAULT_SYNC_IDLE_TIMEOUT_MS: u64 = 60_000;
/// How often the master's INFO replication is read for lineage facts.
pub const DEFAULT_LINEAGE_POLL_MS: u64 = 1_000;
/// Grace period for sessions to close and report when replguard shuts down.
pub const DEFAULT_SHUTDOWN_GRACE_MS: u64 = 5_000;
/// Connections one link holds at once that have not sent a replication command (ordinary
/// clients, and replicas before their first `REPLCONF`/`PSYNC`).
pub const DEFAULT_MAX_CLIENTS: usize = 64;
/// Connections one source IP address may hold on one link at once.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 32;
/// Time a new connection has to send its first complete command.
pub const DEFAULT_FIRST_COMMAND_TIMEOUT_MS: u64 = 10_000;
/// Time a connection has, from its accept, to send the commands of its handshake.
pub const DEFAULT_HANDSHAKE_TIMEOUT_MS: u64 = 60_000;
/// Replica records one ledger keeps; beyond it the oldest are pruned.
pub const DEFAULT_MAX_REPLICA_RECORDS: usize = 1024;

/// One problem found in a configuration, with the YAML path it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// YAML path, e.g. `links[0].listen`.
    pub path: String,
    /// What is wrong, in words an operator can act on.
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem found in a configuration file.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    /// The file the problems were found in, when it came from a file.
    pub source_name: String,
    /// The problems, in document order.
    pub problems: Vec<ConfigProblem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        writeln!(
            f,
            "{}: {} problem{}",
            self.source_name,
            n,
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            writeln!(f, "  {p}")?;
        }
        Ok(())
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where replguard keeps what must survive a restart.
    pub state_dir: PathBuf,
    /// The HTTP listener for `/status` and `/metrics`.
    pub admin: AdminConfig,
    /// One entry per master that replicas reach through replguard.
    pub links: Vec<LinkConfig>,
    /// How long sessions get to close and report at shutdown, in milliseconds.
    #[serde(default = "default_shutdown_grace_ms")]
    pub shutdown_grace_ms: u64,
}

/// The admin HTTP listener.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the listener, `host:port`.
    pub listen: String,
    /// Path of a file holding the bearer token the mutating routes require (surrounding
    /// whitespace ignored). Without a token they are refused.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Name of an environment variable holding that token, instead of `token_file`.
    #[serde(default)]
    pub token_env: Option<String>,
}

/// Shortest admin token that is not warned about.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;

/// The admin bearer token, resolved from its reference and kept out of Debug output.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

impl AdminToken {
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

impl AdminConfig {
    /// Reads the token `token_file` or `token_env` refers to; `None` when neither is set. The
    /// error names the field it concerns.
    pub fn token(&self) -> Result<Option<AdminToken>, ConfigProblem> {
        let problem = |field: &str, message: String| ConfigProblem {
            path: format!("admin.{field}"),
            message,
        };
        let (field, raw) = match (&self.token_file, &self.token_env) {
            (None, None) => return Ok(None),
            (Some(_), Some(_)) => {
                return Err(problem(
                    "token_env",
                    "give either token_file or token_env, not both".into(),
                ))
            }
            (Some(path), None) => (
                "token_file",
                std::fs::read_to_string(path).map_err(|e| {
                    problem(
                        "token_file",
                        format!("cannot read token file {}: {e}", path.display()),
                    )
                })?,
            ),
            (None, Some(var)) => (
                "token_env",
                std::env::var(var).map_err(|_| {
                    problem(
                        "token_env",
                        format!("environment variable {var} is not set or not UTF-8"),
                    )
                })?,
            ),
        };
        let token = raw.trim();
        if token.is_empty() {
            return Err(problem(field, "the token it refers to is empty".into()));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(problem(
                field,
                "the token must be printable ASCII without spaces (it is sent in an HTTP header)"
                    .into(),
            ));
        }
        Ok(Some(AdminToken(token.to_string())))
    }
}

/// The server family behind a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Flavor {
    Redis,
    Valkey,
    Kvrocks,
}

impl Flavor {
    /// The replication protocol: Redis and Valkey share PSYNC2, Kvrocks has its own.
    pub fn family(self) -> &'static str {
        match self {
            Flavor::Redis | Flavor::Valkey => "psync2",
            Flavor::Kvrocks => "kvrocks",
        }
    }
}

impl fmt::Display for Flavor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Flavor::Redis => "redis",
            Flavor::Valkey => "valkey",
            Flavor::Kvrocks => "kvrocks",
        })
    }
}

/// What to do with replicas the ledger has never seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UnknownReplica {
    /// Let the master decide, as without replguard.
    Pass,
    /// Force a full sync: replguard cannot vouch for a history it did not deliver.
    #[default]
    Full,
}

/// What the lineage guard does with a verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GuardMode {
    /// Act on the verdict.
    Enforce,
    /// Forward unchanged; log and count what would have been done.
    Observe,
}

impl fmt::Display for GuardMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GuardMode::Enforce => "enforce",
            GuardMode::Observe => "observe",
        })
    }
}

/// What is wrong with `links[i]`'s group `g`, if anything: its name, or a setting the links
/// of one group must share because they share one ledger.
fn group_problem(links: &[LinkConfig], i: usize, g: &str) -> Option<String> {
    let ok = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.';
    if g.is_empty() || g.len() > 64 || !g.chars().all(ok) || g.starts_with('.') {
        return Some(format!(
            "{g:?}: a group name is 1 to 64 ASCII letters, digits, '-', '_' and '.', not starting with '.' (it names the group's ledger file and a metric label)"
        ));
    }
    let link = &links[i];
    let (j, first) = links
        .iter()
        .enumerate()
        .find(|(_, l)| l.group.as_deref() == Some(g))?;
    if j == i {
        return None;
    }
    if first.flavor.family() != link.flavor.family() {
        return Some(format!(
            "group {g} has a {} link (links[{j}], {}): the links of a group front nodes of one server family",
            first.flavor, first.name
        ));
    }
    if first.max_replica_records != link.max_replica_records {
        return Some(format!(
            "max_replica_records is {} here and {} on links[{j}] ({}), of the same group {g}: the group's links share one ledger, so they must agree",
            link.max_replica_records, first.max_replica_records, first.name
        ));
    }
    None
}

/// One link: a listener for replicas and the master it leads to.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LinkConfig {
    /// Short name used in logs, metrics and state files.
    pub name: String,
    /// Where replicas connect, `host:port`.
    pub listen: String,
    /// The real master, `host:port`.
    pub master: String,
    /// The server family of the master.
    pub flavor: Flavor,
    /// The replication group whose nodes this link fronts with others (a Sentinel master set,
    /// a Redis Cluster, a Kvrocks cluster): the links of a group share one ledger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Lineage guard mode.
    pub guard: GuardMode,
    /// Most replica sessions (connections that sent a replication command) open at once.
    #[serde(default = "default_max_sessions")]
    pub max_sessions: usize,
    /// Most connections open at once that have not sent a replication command: a budget apart
    /// from `max_sessions`, so idle clients cannot take the replicas' places.
    #[serde(default = "default_max_clients")]
    pub max_clients: usize,
    /// Most connections one source IP address may hold on this link at once.
    #[serde(default = "default_max_connections_per_ip")]
    pub max_connections_per_ip: usize,
    /// Source networks (CIDR, or a single address) allowed to connect; empty allows any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_from: Vec<String>,
    /// Replica records the link's ledger keeps; the oldest are pruned beyond it.
    #[serde(default = "default_max_replica_records")]
    pub max_replica_records: usize,
    /// Add `REPLCONF ip-address <replica address>` when the replica did not announce one, so the
    /// master's INFO and ROLE name the real replica instead of replguard.
    #[serde(default = "default_true")]
    pub announce_replica_ip: bool,
    /// Credentials for replguard's own connections to the master (INFO reads, lineage polls);
    /// never sent on a replica's or a client's behalf.
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// Timeouts, in milliseconds.
    #[serde(default)]
    pub timeouts: TimeoutsConfig,
    /// What the guard does with replicas its ledger has never seen.
    #[serde(default)]
    pub unknown_replica: UnknownReplica,
    /// Let replicas sync from a master that came back empty with a new lineage.
    #[serde(default)]
    pub allow_empty_master: bool,
    /// How often the master's INFO replication is read, in milliseconds.
    #[serde(default = "default_lineage_poll_ms")]
    pub lineage_poll_ms: u64,
    /// The link port speaks TLS (replicas with `tls-replication yes`).
    #[serde(default)]
    pub tls: Option<ListenTls>,
    /// replguard dials the master with TLS.
    #[serde(default)]
    pub master_tls: Option<MasterTls>,
}

/// TLS on the link port: the server certificate replicas check, and the CA their client
/// certificates must chain to (when given, a replica without one is refused).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

/// TLS towards the master: the CA its certificate must chain to, a client certificate for a
/// master with `tls-auth-clients yes`, and the name to check its certificate against (the
/// master's IP address when absent).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MasterTls {
    pub ca_file: PathBuf,
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    #[serde(default)]
    pub server_name: Option<String>,
}

/// Credentials by reference: the secret itself never has to sit in the YAML.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// ACL user name; absent means the legacy `AUTH <password>` (masterauth).
    #[serde(default)]
    pub user: Option<String>,
    /// Name of an environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// Path of a file holding the password (one trailing newline is ignored).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}

/// Per-link timeouts in milliseconds.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsConfig {
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_ms: u64,
    #[serde(default = "default_handshake_step_timeout_ms")]
    pub handshake_step_ms: u64,
    #[serde(default = "default_sync_idle_timeout_ms")]
    pub sync_idle_ms: u64,
    /// Time a new connection has to send its first complete command.
    #[serde(default = "default_first_command_timeout_ms")]
    pub first_command_ms: u64,
    /// Time a connection has, from its accept, to send its whole handshake (up to its `PSYNC`,
    /// or the first command that makes it an ordinary client).
    #[serde(default = "default_handshake_timeout_ms")]
    pub handshake_ms: u64,
}

impl Default for TimeoutsConfig {
    fn default() -> Self {
        TimeoutsConfig {
            connect_ms: DEFAULT_CONNECT_TIMEOUT_MS,
            handshake_step_ms: DEFAULT_HANDSHAKE_STEP_TIMEOUT_MS,
            sync_idle_ms: DEFAULT_SYNC_IDLE_TIMEOUT_MS,
            first_command_ms: DEFAULT_FIRST_COMMAND_TIMEOUT_MS,
            handshake_ms: DEFAULT_HANDSHAKE_TIMEOUT_MS,
        }
    }
}

impl TimeoutsConfig {
    pub fn connect(&self) -> Duration {
        Duration::from_millis(self.connect_ms)
    }
    pub fn handshake_step(&self) -> Duration {
        Duration::from_millis(self.handshake_step_ms)
    }
    pub fn sync_idle(&self) -> Duration {
        Duration::from_millis(self.sync_idle_ms)
    }
    pub fn first_command(&self) -> Duration {
        Duration::from_millis(self.first_command_ms)
    }
    pub fn handshake(&self) -> Duration {
        Duration::from_millis(self.handshake_ms)
    }
}

fn default_true() -> bool {
    true
}
fn default_max_sessions() -> usize {
    DEFAULT_MAX_SESSIONS
}
fn default_max_clients() -> usize {
    DEFAULT_MAX_CLIENTS
}
fn default_max_connections_per_ip() -> usize {
    DEFAULT_MAX_CONNECTIONS_PER_IP
}
fn default_max_replica_records() -> usize {
    DEFAULT_MAX_REPLICA_RECORDS
}
fn default_first_command_timeout_ms() -> u64 {
    DEFAULT_FIRST_COMMAND_TIMEOUT_MS
}
fn default_handshake_timeout_ms() -> u64 {
    DEFAULT_HANDSHAKE_TIMEOUT_MS
}
fn default_connect_timeout_ms() -> u64 {
    DEFAULT_CONNECT_TIMEOUT_MS
}
fn default_handshake_step_timeout_ms() -> u64 {
    DEFAULT_HANDSHAKE_STEP_TIMEOUT_MS
}
fn default_sync_idle_timeout_ms() -> u64 {
    DEFAULT_SYNC_IDLE_TIMEOUT_MS
}
fn default_lineage_poll_ms() -> u64 {
    DEFAULT_LINEAGE_POLL_MS
}
fn default_shutdown_grace_ms() -> u64 {
    DEFAULT_SHUTDOWN_GRACE_MS
}

/// A password resolved from its reference, kept out of Debug output.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: Option<String>,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl AuthConfig {
    /// Reads the secret the reference points at.
    pub fn resolve(&self) -> Result<Credentials, String> {
        let password = match (&self.password_env, &self.password_file) {
            (Some(var), None) => std::env::var(var)
                .map_err(|_| format!("environment variable {var} is not set or not UTF-8"))?,
            (None, Some(path)) => {
                let mut s = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read password file {}: {e}", path.display()))?;
                if s.ends_with('\n') {
                    s.pop();
                    if s.ends_with('\r') {
                        s.pop();
                    }
                }
                s
            }
            (Some(_), Some(_)) => {
                return Err("give either password_env or password_file, not both".into())
            }
            (None, None) => return Err("one of password_env or password_file is required".into()),
        };
        if password.is_empty() {
            return Err("the password it refers to is empty".into());
        }
        Ok(Credentials {
            user: self.user.clone(),
            password,
        })
    }
}

impl Config {
    /// Reads, parses and validates a configuration file. Relative paths in it (`state_dir`,
    /// `auth.password_file`) are taken from the file's folder, whatever the working directory.
    pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
        let (name, text) = read_file(path)?;
        Self::from_yaml_in(&text, &name, Some(&base_dir(path)))
    }

    /// Parses and validates YAML text; `source_name` names it in errors. Relative paths stay
    /// relative to the working directory.
    pub fn from_yaml(text: &str, source_name: &str) -> Result<Config, ConfigError> {
        Self::from_yaml_in(text, source_name, None)
    }

    /// Parses and validates YAML text, taking relative paths from `base_dir` when given.
    pub fn from_yaml_in(
        text: &str,
        source_name: &str,
        base_dir: Option<&Path>,
    ) -> Result<Config, ConfigError> {
        let fail = |problems| ConfigError {
            source_name: source_name.to_string(),
            problems,
        };
        let mut doc: serde_yaml::Value =
            serde_yaml::from_str(text).map_err(|e| fail(vec![syntax_problem(&e)]))?;
        let mut walk = Walk::default();
        walk.document(&mut doc);

        if walk.problems.is_empty() {
            let de = serde_yaml::Deserializer::from_str(text);
            let mut config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
                let path = yaml_path(&e.path().to_string());
                let inner = e.into_inner();
                let mut message = inner.to_string();
                // serde_yaml appends " at line L column C"; keep it, it helps find the spot.
                if let Some(stripped) = message.strip_prefix(&format!("{path}: ")) {
                    message = stripped.to_string();
                }
                fail(vec![ConfigProblem { path, message }])
            })?;
            config.resolve_paths(base_dir);
            let problems = walk.in_document_order(config.validate());
            return if problems.is_empty() {
                Ok(config)
            } else {
                Err(fail(problems))
            };
        }

        // The document has the stand-ins the walk put in, so it deserializes; the semantic
        // problems that touch a stand-in (or a removed field) say nothing about the file.
        let mut problems = std::mem::take(&mut walk.problems);
        if let Ok(mut config) = serde_yaml::from_value::<Config>(doc) {
            config.resolve_paths(base_dir);
            problems.extend(
                config
                    .validate()
                    .into_iter()
                    .filter(|p| !walk.damaged.iter().any(|d| paths_related(&p.path, d))),
            );
        }
        Err(fail(walk.in_document_order(problems)))
    }

    /// Reads only `admin.listen` from a configuration file, for commands that talk to a running
    /// replguard: the rest of the file (credentials the caller cannot read, say) does not matter.
    pub fn admin_listen_in_file(path: &Path) -> Result<SocketAddr, ConfigError> {
        let (name, text) = read_file(path)?;
        let fail = |problems| ConfigError {
            source_name: name.clone(),
            problems,
        };
        let doc: serde_yaml::Value =
            serde_yaml::from_str(&text).map_err(|e| fail(vec![syntax_problem(&e)]))?;
        let problem = |message: String| {
            fail(vec![ConfigProblem {
                path: "admin.listen".into(),
                message,
            }])
        };
        match &doc["admin"]["listen"] {
            serde_yaml::Value::Null => Err(problem("missing (required)".into())),
            serde_yaml::Value::String(s) => parse_addr(s).map_err(problem),
            other => Err(problem(format!(
                "expected {}, found {}",
                Ty::Text(ADDRESS).describe(),
                describe_value(other)
            ))),
        }
    }

    /// Takes relative `state_dir`, `admin.token_file`, `auth.password_file` and TLS file paths
    /// from `base_dir`.
    fn resolve_paths(&mut self, base_dir: Option<&Path>) {
        let Some(base) = base_dir else { return };
        self.state_dir = resolve_path(base, &self.state_dir);
        if let Some(f) = self.admin.token_file.as_mut() {
            *f = resolve_path(base, f);
        }
        for link in &mut self.links {
            if let Some(f) = link.auth.as_mut().and_then(|a| a.password_file.as_mut()) {
                *f = resolve_path(base, f);
            }
            if let Some(t) = link.tls.as_mut() {
                for f in [&mut t.cert_file, &mut t.key_file] {
                    *f = resolve_path(base, f);
                }
                if let Some(f) = t.client_ca_file.as_mut() {
                    *f = resolve_path(base, f);
                }
            }
            if let Some(t) = link.master_tls.as_mut() {
                t.ca_file = resolve_path(base, &t.ca_file);
                for f in [t.cert_file.as_mut(), t.key_file.as_mut()]
                    .into_iter()
                    .flatten()
                {
                    *f = resolve_path(base, f);
                }
            }
        }
    }

    /// Every semantic problem, each with its YAML path. Empty means valid.
    pub fn validate(&self) -> Vec<ConfigProblem> {
        let mut out = Vec::new();
        let mut push = |path: String, message: String| out.push(ConfigProblem { path, message });

        if self.state_dir.as_os_str().is_empty() {
            push("state_dir".into(), "must not be empty".into());
        } else if self.state_dir.exists() && !self.state_dir.is_dir() {
            push(
                "state_dir".into(),
                format!("{} exists and is not a directory", self.state_dir.display()),
            );
        }

        // Every address replguard binds, with its path, in document order.
        let mut binds: Vec<(String, SocketAddr)> = Vec::new();
        match parse_addr(&self.admin.listen) {
            Ok(a) => binds.push(("admin.listen".into(), a)),
            Err(m) => push("admin.listen".into(), m),
        }
        if let Err(p) = self.admin.token() {
            push(p.path, p.message);
        }

        if self.links.is_empty() {
            push("links".into(), "at least one link is required".to_string());
        }
        let mut names: HashMap<&str, usize> = HashMap::new();
        for (i, link) in self.links.iter().enumerate() {
            let p = |field: &str| format!("links[{i}].{field}");
            if link.name.is_empty() {
                push(p("name"), "must not be empty".into());
            } else if !link
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
            {
                push(
                    p("name"),
                    format!(
                        "{:?} may contain only ASCII letters, digits, '-', '_' and '.' (it names state files and metric labels)",
                        link.name
                    ),
                );
            } else if let Some(first) = names.insert(&link.name, i) {
                push(
                    p("name"),
                    format!("{:?} is already the name of links[{first}]", link.name),
                );
            }
            if let Some(g) = &link.group {
                if let Some(m) = group_problem(&self.links, i, g) {
                    push(p("group"), m);
                }
            }
            match parse_addr(&link.listen) {
                Ok(a) => {
                    if let Some((other, b)) = binds.iter().find(|(_, b)| binds_overlap(a, *b)) {
                        let why = if *b == a {
                            format!("{a} is already used by {other}")
                        } else {
                            format!(
                                "{a} overlaps {other} ({b}): a wildcard address takes its port on every local address of its family, so only one of them can be bound"
                            )
                        };
                        push(p("listen"), why);
                    }
                    binds.push((p("listen"), a));
                }
                Err(m) => push(p("listen"), m),
            }
            if let Err(m) = MasterAddr::parse(&link.master) {
                push(p("master"), m);
            }
            if link.lineage_poll_ms == 0 {
                push(p("lineage_poll_ms"), "must be greater than 0".into());
            }
            for (field, v) in [
                ("max_sessions", link.max_sessions),
                ("max_clients", link.max_clients),
                ("max_connections_per_ip", link.max_connections_per_ip),
                ("max_replica_records", link.max_replica_records),
            ] {
                if v == 0 {
                    push(p(field), "must be at least 1".into());
                }
            }
            for (j, net) in link.allow_from.iter().enumerate() {
                if let Err(m) = Cidr::parse(net) {
                    push(p(&format!("allow_from[{j}]")), m);
                }
            }
            if link.flavor == Flavor::Kvrocks && link.allow_empty_master {
                push(
                    p("allow_empty_master"),
                    "has no effect on a kvrocks link: replguard does not watch a Kvrocks master for an empty restart".into(),
                );
            }
            let t = &link.timeouts;
            for (field, v) in [
                ("timeouts.connect_ms", t.connect_ms),
                ("timeouts.handshake_step_ms", t.handshake_step_ms),
                ("timeouts.sync_idle_ms", t.sync_idle_ms),
                ("timeouts.first_command_ms", t.first_command_ms),
                ("timeouts.handshake_ms", t.handshake_ms),
            ] {
                if v == 0 {
                    push(p(field), "must be greater than 0".into());
                }
            }
            if let Some(auth) = &link.auth {
                if let Some(user) = &auth.user {
                    if link.flavor == Flavor::Kvrocks {
                        push(
                            p("auth.user"),
                            "a kvrocks link takes a password only: Kvrocks has no ACL users and answers AUTH with a user name as a wrong number of arguments".into(),
                        );
                    } else if user.is_empty() || user.contains(char::is_whitespace) {
                        push(
                            p("auth.user"),
                            "must be a non-empty name without spaces".into(),
                        );
                    }
                }
                if let Err(m) = auth.resolve() {
                    push(p("auth"), m);
                }
            }
        }
        for (path, message) in self.self_dials(&self.resolve_master_names()) {
            push(path, message);
        }
        out
    }

    /// What each link's master resolves to now, by link: `None` for an IP address (or a
    /// master that does not parse), else the lookup's result. The names are looked up in
    /// parallel, each within its link's `timeouts.connect_ms`.
    fn resolve_master_names(&self) -> Vec<Option<Result<Vec<SocketAddr>, String>>> {
        std::thread::scope(|scope| {
            let pending: Vec<_> = self
                .links
                .iter()
                .map(|l| {
                    let addr = MasterAddr::parse(&l.master)
                        .ok()
                        .filter(MasterAddr::is_name)?;
                    let limit = l.timeouts.connect().max(Duration::from_millis(1));
                    Some(scope.spawn(move || addr.resolve_blocking(limit)))
                })
                .collect();
            pending
                .into_iter()
                .map(|h| h.map(|h| h.join().unwrap_or_else(|_| Err("the lookup failed".into()))))
                .collect()
        })
    }

    /// Masters that are one of replguard's own listeners (wildcards included): the link's own
    /// listen address, the admin listener, or another link's, which may close a cycle of links.
    /// A master given by name is checked by what it resolves to now (`resolved`, by link).
    fn self_dials(
        &self,
        resolved: &[Option<Result<Vec<SocketAddr>, String>>],
    ) -> Vec<(String, String)> {
        let listens: Vec<Option<SocketAddr>> = self
            .links
            .iter()
            .map(|l| parse_addr(&l.listen).ok())
            .collect();
        let admin = parse_addr(&self.admin.listen).ok();
        // Each link's master as the addresses it dials.
        let masters: Vec<Vec<SocketAddr>> = self
            .links
            .iter()
            .enumerate()
            .map(|(i, l)| match MasterAddr::parse(&l.master) {
                Ok(MasterAddr::Ip(a)) => vec![a],
                Ok(MasterAddr::Name { .. }) => match resolved.get(i) {
                    Some(Some(Ok(addrs))) => addrs.clone(),
                    _ => Vec::new(),
                },
                Err(_) => Vec::new(),
            })
            .collect();
        // The link whose listener each link's master reaches, preferring its own, and the
        // address that reaches it.
        let next: Vec<Option<(usize, SocketAddr)>> = masters
            .iter()
            .enumerate()
            .map(|(i, ms)| {
                std::iter::once(i).chain(0..self.links.len()).find_map(|j| {
                    let l = listens[j]?;
                    ms.iter().find(|m| reaches(**m, l)).map(|m| (j, *m))
                })
            })
            .collect();
        // The master as a message names it: the address, or the name and what it resolves to.
        let shown = |i: usize, m: SocketAddr| match MasterAddr::parse(&self.links[i].master) {
            Ok(MasterAddr::Name { .. }) => format!("{} (resolves to {m})", self.links[i].master),
            _ => m.to_string(),
        };
        let mut out = Vec::new();
        for (i, ms) in masters.iter().enumerate() {
            let path = format!("links[{i}].master");
            match next[i] {
                Some((j, m)) if j == i => {
                    let by_name = match MasterAddr::parse(&self.links[i].master) {
                        Ok(MasterAddr::Name { .. }) => format!("{} ", shown(i, m)),
                        _ => String::new(),
                    };
                    out.push((
                        path,
                        format!(
                            "{by_name}is the link's own listen address; replguard would dial itself"
                        ),
                    ))
                }
                Some((j, m)) => {
                    let m = shown(i, m);
                    let name = |k: usize| self.links[k].name.as_str();
                    let mut chain = vec![i, j];
                    let mut at = j;
                    while let Some((k, _)) = next[at] {
                        if chain.contains(&k) {
                            chain.push(k);
                            break;
                        }
                        chain.push(k);
                        at = k;
                    }
                    let listen = listens[j].map(|l| l.to_string()).unwrap_or_default();
                    let message = if chain.last() == Some(&i) {
                        let names: Vec<&str> = chain.iter().map(|&k| name(k)).collect();
                        format!(
                            "{m} is links[{j}].listen ({listen}, link {}): the links form a cycle {}; replicas would be passed round it and never reach a master",
                            name(j),
                            names.join(" -> ")
                        )
                    } else {
                        format!(
                            "{m} is links[{j}].listen ({listen}, link {}): replguard would dial itself; point it at the real master",
                            name(j)
                        )
                    };
                    out.push((path, message));
                }
                None => {
                    let Some(a) = admin else { continue };
                    if let Some(m) = ms.iter().find(|m| reaches(**m, a)) {
                        out.push((
                            path,
                            format!(
                                "{} is admin.listen ({a}): replguard would dial its own admin listener",
                                shown(i, *m)
                            ),
                        ));
                    }
                }
            }
        }
        out
    }

    /// What is allowed but probably not meant, each with its YAML path: `check` prints these and
    /// `run` logs them at WARN.
    pub fn warnings(&self) -> Vec<ConfigProblem> {
        let mut out = Vec::new();
        let token = self.admin.token().ok().flatten();
        if let Ok(a) = parse_addr(&self.admin.listen) {
            if !a.ip().is_loopback() && token.is_none() {
                out.push(ConfigProblem {
                    path: "admin.listen".into(),
                    message: format!(
                        "{a} is reachable from other hosts and no admin token is set (admin.token_file or admin.token_env): anyone who reaches it reads /status and /metrics, and the mutating routes stay refused"
                    ),
                });
            }
        }
        for (i, r) in self.resolve_master_names().into_iter().enumerate() {
            if let Some(Err(e)) = r {
                out.push(ConfigProblem {
                    path: format!("links[{i}].master"),
                    message: format!(
                        "{} does not resolve now ({e}); the link starts anyway, and its sessions and reads of the master fail until the name resolves (it is looked up again at each dial)",
                        self.links[i].master
                    ),
                });
            }
        }
        for (i, l) in self.links.iter().enumerate() {
            let lends_cert = l.master_tls.as_ref().is_some_and(|t| t.cert_file.is_some());
            if lends_cert && l.tls.as_ref().is_none_or(|t| t.client_ca_file.is_none()) {
                out.push(ConfigProblem {
                    path: format!("links[{i}].master_tls.cert_file"),
                    message: "the master sees replguard's client certificate on every session of this link, and the link port asks replicas for none: set tls.client_ca_file so only replicas with a certificate of yours reach the master".into(),
                });
            }
        }
        if let Some(t) = &token {
            if t.0.len() < MIN_ADMIN_TOKEN_LEN {
                let field = if self.admin.token_file.is_some() {
                    "token_file"
                } else {
                    "token_env"
                };
                out.push(ConfigProblem {
                    path: format!("admin.{field}"),
                    message: format!(
                        "the token is {} characters long: use at least {MIN_ADMIN_TOKEN_LEN} random ones",
                        t.0.len()
                    ),
                });
            }
        }
        if let Some(f) = &self.admin.token_file {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = std::fs::metadata(f) {
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o004 != 0 {
                    out.push(ConfigProblem {
                        path: "admin.token_file".into(),
                        message: format!(
                            "{} is readable by every user of this host (mode {mode:o}): chmod 600 it",
                            f.display()
                        ),
                    });
                }
            }
        }
        out
    }
}

/// What a field's value must be, as the walk checks it.
#[derive(Debug)]
enum Ty {
    /// A scalar taken as text (numbers and booleans too, as serde reads them); the words say what
    /// the text should be.
    Text(&'static str),
    /// A whole number, 0 or more.
    Count,
    Bool,
    /// One of these words.
    Choice(&'static [&'static str]),
    Map(&'static [Field]),
    List(&'static Ty),
}

/// Whether a field may be left out, and whether it may be given with no value (`field:`/`~`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Presence {
    /// Must be given, with a value.
    Required,
    /// May be left out (a default applies); when given, needs a value.
    Defaulted,
    /// May be left out or given with no value.
    Optional,
}

#[derive(Debug)]
struct Field {
    name: &'static str,
    ty: Ty,
    presence: Presence,
}

const fn field(name: &'static str, presence: Presence, ty: Ty) -> Field {
    Field { name, ty, presence }
}

const ADDRESS: &str = "an IP address with a port (e.g. 127.0.0.1:7000)";
const MASTER_ADDRESS: &str =
    "an IP address or host name with a port (e.g. 10.0.0.5:6379 or redis-0.redis:6379)";
use Presence::{Defaulted, Optional, Required};

/// The schema the document is walked against; it mirrors the serde types above (a unit test
/// keeps the two in step).
const SCHEMA: &[Field] = &[
    field("state_dir", Required, Ty::Text("a directory path")),
    field("admin", Required, Ty::Map(ADMIN_FIELDS)),
    field("links", Required, Ty::List(&Ty::Map(LINK_FIELDS))),
    field("shutdown_grace_ms", Defaulted, Ty::Count),
];
const ADMIN_FIELDS: &[Field] = &[
    field("listen", Required, Ty::Text(ADDRESS)),
    field("token_file", Optional, Ty::Text("a file path")),
    field(
        "token_env",
        Optional,
        Ty::Text("an environment variable name"),
    ),
];
const LINK_FIELDS: &[Field] = &[
    field("name", Required, Ty::Text("a name")),
    field("listen", Required, Ty::Text(ADDRESS)),
    field("master", Required, Ty::Text(MASTER_ADDRESS)),
    field(
        "flavor",
        Required,
        Ty::Choice(&["redis", "valkey", "kvrocks"]),
    ),
    field("guard", Required, Ty::Choice(&["enforce", "observe"])),
    field("group", Optional, Ty::Text("a group name")),
    field("max_sessions", Defaulted, Ty::Count),
    field("max_clients", Defaulted, Ty::Count),
    field("max_connections_per_ip", Defaulted, Ty::Count),
    field(
        "allow_from",
        Defaulted,
        Ty::List(&Ty::Text("a network in CIDR form (e.g. 10.0.0.0/8)")),
    ),
    field("max_replica_records", Defaulted, Ty::Count),
    field("announce_replica_ip", Defaulted, Ty::Bool),
    field("auth", Optional, Ty::Map(AUTH_FIELDS)),
    field("timeouts", Defaulted, Ty::Map(TIMEOUT_FIELDS)),
    field("unknown_replica", Defaulted, Ty::Choice(&["full", "pass"])),
    field("allow_empty_master", Defaulted, Ty::Bool),
    field("lineage_poll_ms", Defaulted, Ty::Count),
    field("tls", Optional, Ty::Map(TLS_FIELDS)),
    field("master_tls", Optional, Ty::Map(MASTER_TLS_FIELDS)),
];
const TLS_FIELDS: &[Field] = &[
    field("cert_file", Required, Ty::Text("a PEM file path")),
    field("key_file", Required, Ty::Text("a PEM file path")),
    field("client_ca_file", Optional, Ty::Text("a PEM file path")),
];
const MASTER_TLS_FIELDS: &[Field] = &[
    field("ca_file", Required, Ty::Text("a PEM file path")),
    field("cert_file", Optional, Ty::Text("a PEM file path")),
    field("key_file", Optional, Ty::Text("a PEM file path")),
    field(
        "server_name",
        Optional,
        Ty::Text("a DNS name or IP address"),
    ),
];
const AUTH_FIELDS: &[Field] = &[
    field("user", Optional, Ty::Text("a user name")),
    field(
        "password_env",
        Optional,
        Ty::Text("an environment variable name"),
    ),
    field("password_file", Optional, Ty::Text("a file path")),
];
const TIMEOUT_FIELDS: &[Field] = &[
    field("connect_ms", Defaulted, Ty::Count),
    field("handshake_step_ms", Defaulted, Ty::Count),
    field("sync_idle_ms", Defaulted, Ty::Count),
    field("first_command_ms", Defaulted, Ty::Count),
    field("handshake_ms", Defaulted, Ty::Count),
];

impl Ty {
    /// What a value of this type is, for "expected ..." messages.
    fn describe(&self) -> String {
        match self {
            Ty::Text(what) => (*what).to_string(),
            Ty::Count => "a whole number (0 or more)".into(),
            Ty::Bool => "true or false".into(),
            Ty::Choice(words) => format!("one of {}", words.join(", ")),
            Ty::Map(_) => "a mapping (field: value lines)".into(),
            Ty::List(_) => "a list".into(),
        }
    }

    /// A value that deserializes and that `validate` reports only at its own path (or not at
    /// all): what the walk puts where a required value is missing or unusable.
    fn stand_in(&self) -> serde_yaml::Value {
        use serde_yaml::Value;
        match self {
            Ty::Text(_) => Value::String(String::new()),
            Ty::Count => Value::Number(1.into()),
            Ty::Bool => Value::Bool(false),
            Ty::Choice(words) => Value::String(words[0].to_string()),
            Ty::Map(fields) => Value::Mapping(
                fields
                    .iter()
                    .filter(|f| f.presence == Required)
                    .map(|f| (Value::String(f.name.into()), f.ty.stand_in()))
                    .collect(),
            ),
            Ty::List(_) => Value::Sequence(Vec::new()),
        }
    }
}

/// A YAML value in words, for "found ..." messages.
fn describe_value(v: &serde_yaml::Value) -> String {
    use serde_yaml::Value;
    match v {
        Value::Null => "no value".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the text {s:?}"),
        Value::Sequence(_) => "a list".into(),
        Value::Mapping(_) => "a mapping".into(),
        Value::Tagged(t) => format!("a value tagged {}", t.tag),
    }
}

/// A mapping key as it reads in a path.
fn key_text(k: &serde_yaml::Value) -> String {
    use serde_yaml::Value;
    match k {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => "~".into(),
        other => format!("({})", describe_value(other)),
    }
}

/// The walk of a document against [`SCHEMA`].
#[derive(Default)]
struct Walk {
    problems: Vec<ConfigProblem>,
    /// Paths that were missing, unusable or unknown: stand-ins or removals there.
    damaged: Vec<String>,
    /// Every path seen, numbered in document order (missing fields where their mapping starts).
    order: HashMap<String, usize>,
}

impl Walk {
    fn document(&mut self, doc: &mut serde_yaml::Value) {
        use serde_yaml::Value;
        if doc.is_null() {
            // An empty file: every required field is missing.
            *doc = Value::Mapping(Default::default());
        }
        if doc.is_mapping() {
            self.mapping("", doc, SCHEMA);
        } else {
            let top = Ty::Map(SCHEMA);
            self.problem(
                "(top level)",
                format!(
                    "expected {} with state_dir, admin and links, found {}",
                    top.describe(),
                    describe_value(doc)
                ),
            );
            *doc = top.stand_in();
            self.damaged.push(String::new());
        }
    }

    fn problem(&mut self, path: &str, message: String) {
        self.problems.push(ConfigProblem {
            path: path.to_string(),
            message,
        });
    }

    fn seen(&mut self, path: &str) {
        let n = self.order.len();
        self.order.entry(path.to_string()).or_insert(n);
    }

    /// Walks a mapping's entries against `fields`; `map` is a mapping.
    fn mapping(&mut self, path: &str, map: &mut serde_yaml::Value, fields: &[Field]) {
        use serde_yaml::Value;
        let Value::Mapping(m) = map else { return };
        let join = |name: &str| {
            if path.is_empty() {
                name.to_string()
            } else {
                format!("{path}.{name}")
            }
        };
        let keys: Vec<Value> = m.keys().cloned().collect();
        for f in fields {
            if f.presence == Required && !m.contains_key(f.name) {
                let p = join(f.name);
                self.seen(&p);
                self.problem(&p, "missing (required)".into());
                m.insert(Value::String(f.name.into()), f.ty.stand_in());
                self.damaged.push(p);
            }
        }
        for k in keys {
            let name = key_text(&k);
            let p = join(&name);
            self.seen(&p);
            let Some(f) = fields.iter().find(|f| k.as_str() == Some(f.name)) else {
                let hint = match closest(&name, fields.iter().map(|f| f.name)) {
                    Some(near) => format!(" (did you mean `{near}`?)"),
                    None => format!(
                        "; the fields here are {}",
                        fields.iter().map(|f| f.name).collect::<Vec<_>>().join(", ")
                    ),
                };
                self.problem(&p, format!("unknown field `{name}`{hint}"));
                m.remove(&k);
                self.damaged.push(p);
                continue;
            };
            let v = m.get_mut(&k).expect("a key of this mapping");
            if !self.value(&p, v, &f.ty, f.presence) {
                if f.presence == Required {
                    *v = f.ty.stand_in();
                } else {
                    m.remove(&k);
                }
                self.damaged.push(p);
            }
        }
    }

    /// Checks one value; false when it is unusable (the problem is recorded). Scalars are
    /// normalised as serde would read them from the text.
    fn value(
        &mut self,
        path: &str,
        v: &mut serde_yaml::Value,
        ty: &Ty,
        presence: Presence,
    ) -> bool {
        use serde_yaml::Value;
        if let (Value::Tagged(t), false) = (&mut *v, matches!(ty, Ty::Choice(_))) {
            // serde reads a tagged scalar, mapping or list as the plain one.
            let inner = std::mem::take(&mut t.value);
            *v = inner;
        }
        if v.is_null() && presence == Optional {
            return true;
        }
        match (ty, &mut *v) {
            (Ty::Text(_), Value::String(_)) => true,
            (Ty::Text(_), Value::Number(n)) => {
                *v = Value::String(n.to_string());
                true
            }
            (Ty::Text(_), Value::Bool(b)) => {
                *v = Value::String(b.to_string());
                true
            }
            (Ty::Count, Value::Number(n)) if n.as_u64().is_some() => true,
            (Ty::Bool, Value::Bool(_)) => true,
            (Ty::Choice(words), Value::String(s)) => {
                if words.contains(&s.as_str()) {
                    return true;
                }
                let hint = words
                    .iter()
                    .find(|w| w.eq_ignore_ascii_case(s))
                    .map(|w| format!(" (they are lowercase: {w})"))
                    .unwrap_or_default();
                self.problem(
                    path,
                    format!("{s:?} is not one of {}{hint}", words.join(", ")),
                );
                false
            }
            (Ty::Map(fields), Value::Mapping(_)) => {
                self.mapping(path, v, fields);
                true
            }
            (Ty::List(item), Value::Sequence(items)) => {
                for (i, it) in items.iter_mut().enumerate() {
                    let p = format!("{path}[{i}]");
                    self.seen(&p);
                    if !self.value(&p, it, item, Required) {
                        *it = item.stand_in();
                        self.damaged.push(p);
                    }
                }
                true
            }
            (ty, found) => {
                let found = describe_value(found);
                self.problem(path, format!("expected {}, found {found}", ty.describe()));
                false
            }
        }
    }

    /// `problems` sorted by where their path is in the document (stable, so problems at one
    /// path keep their order).
    fn in_document_order(&self, mut problems: Vec<ConfigProblem>) -> Vec<ConfigProblem> {
        let rank = |path: &str| {
            let mut p = path;
            loop {
                if let Some(n) = self.order.get(p) {
                    return *n;
                }
                match p.rfind(['.', '[']) {
                    Some(i) => p = &p[..i],
                    None => return usize::MAX,
                }
            }
        };
        problems.sort_by_key(|p| rank(&p.path));
        problems
    }
}

/// Whether a problem at path `a` may come from something at path `b`: the same place, or one
/// inside the other (`links[0].auth` and `links[0].auth.password_env`).
fn paths_related(a: &str, b: &str) -> bool {
    let inside = |x: &str, y: &str| {
        y.is_empty() || (x.starts_with(y) && matches!(x.as_bytes().get(y.len()), Some(b'.' | b'[')))
    };
    a == b || inside(a, b) || inside(b, a)
}

/// The known name closest to an unknown one, when it is close enough to be a typo.
fn closest<'a>(name: &str, known: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    known
        .map(|k| (edit_distance(name, k), k))
        .filter(|(d, k)| *d <= 2 && *d * 2 < k.len().min(name.len()).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Levenshtein distance over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

fn read_file(path: &Path) -> Result<(String, String), ConfigError> {
    let name = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => Ok((name, text)),
        Err(e) => Err(ConfigError {
            source_name: name,
            problems: vec![ConfigProblem {
                path: "(file)".into(),
                message: format!("cannot read: {e}"),
            }],
        }),
    }
}

/// The folder relative paths in the file at `path` are taken from, made absolute so that what
/// replguard logs and uses does not depend on the working directory.
fn base_dir(path: &Path) -> PathBuf {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf())
}

/// `p` taken from `base` when relative (leading `./` dropped); absolute and empty paths as is.
fn resolve_path(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() || p.as_os_str().is_empty() {
        return p.to_path_buf();
    }
    let rest: PathBuf = p
        .components()
        .skip_while(|c| matches!(c, std::path::Component::CurDir))
        .collect();
    if rest.as_os_str().is_empty() {
        base.to_path_buf()
    } else {
        base.join(rest)
    }
}

fn syntax_problem(e: &serde_yaml::Error) -> ConfigProblem {
    ConfigProblem {
        path: "(yaml)".into(),
        message: e.to_string(),
    }
}

/// Turns serde_path_to_error's `links[0].listen` / `.` into our path style.
fn yaml_path(p: &str) -> String {
    if p.is_empty() || p == "." {
        "(top level)".into()
    } else {
        p.to_string()
    }
}

/// Whether two listeners cannot both be bound: the same port on the same address, or on
/// addresses a wildcard covers (`0.0.0.0` every IPv4 one; `[::]` every one, as Linux binds it
/// dual-stack by default). Port 0 asks for a free port and never collides.
pub fn binds_overlap(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() != b.port() || a.port() == 0 {
        return false;
    }
    let (x, y) = (a.ip().to_canonical(), b.ip().to_canonical());
    let covers = |w: IpAddr, o: IpAddr| w.is_unspecified() && (w.is_ipv6() || o.is_ipv4());
    x == y || covers(x, y) || covers(y, x)
}

/// Whether a connection to `target` arrives at a listener bound to `bound`: the same address,
/// a wildcard listener and an address of this host (loopback, `0.0.0.0`/`[::]`, or one bound
/// to a local interface), or an unspecified target (which the kernel dials on loopback) and a
/// loopback listener.
pub fn reaches(target: SocketAddr, bound: SocketAddr) -> bool {
    if target.port() != bound.port() || bound.port() == 0 {
        return false;
    }
    let (t, b) = (target.ip().to_canonical(), bound.ip().to_canonical());
    if t == b {
        return true;
    }
    let same_family = t.is_ipv4() == b.is_ipv4();
    if b.is_unspecified() {
        return (b.is_ipv6() || t.is_ipv4()) && is_this_host(t);
    }
    t.is_unspecified() && b.is_loopback() && same_family
}

/// Whether `ip` is an address of this host: loopback, unspecified, or one a socket can be bound
/// to (the kernel accepts only its own addresses).
fn is_this_host(ip: IpAddr) -> bool {
    ip.is_loopback()
        || ip.is_unspecified()
        || std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// Parses `host:port` where host is an IP address; names are refused so that the address a
/// link listens on or dials is exactly what the operator reads in the file.
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>().map_err(|_| {
        format!("{s:?} is not an IP address with a port (e.g. 127.0.0.1:7000 or [::1]:7000)")
    })
}

/// Longest host name a master address may carry (RFC 1035: 253 characters, without a final dot).
pub const MAX_HOST_NAME: usize = 253;
/// Longest label (the part between two dots) of a host name.
const MAX_HOST_LABEL: usize = 63;
/// Longest text a master address can be: a host name with its final dot, `:` and a port.
const MAX_MASTER_ADDR: usize = MAX_HOST_NAME + 1 + 1 + 5;

/// Where a link's master is: an IP socket address, or a DNS name with a port. A name is
/// resolved at each dial (Kubernetes services, Sentinel with `resolve-hostnames yes`): the
/// configuration keeps the name, never what it resolved to once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MasterAddr {
    /// `10.0.0.5:6379`, `[fd00::5]:6379`.
    Ip(SocketAddr),
    /// `redis-0.redis.db.svc:6379`; the host in lowercase (names are case-insensitive).
    Name { host: String, port: u16 },
}

impl MasterAddr {
    /// Parses `IP:port`, `[IPv6]:port` or `host-name:port`. A host name is ASCII letters,
    /// digits and `-` in dot-separated labels of 1 to 63 characters (no label starts or ends
    /// with `-`), at most 253 characters, with an optional final dot; its last label is not all
    /// digits, so that a mistyped IPv4 address is never sent to the resolver as a name. The
    /// port is 1 to 65535.
    pub fn parse(s: &str) -> Result<MasterAddr, String> {
        let bad = |why: String| {
            format!(
                "{} is not a master address: {why} (give IP:port, [IPv6]:port or host-name:port, e.g. 10.0.0.5:6379 or redis-0.redis:6379)",
                shown(s)
            )
        };
        if let Ok(a) = s.parse::<SocketAddr>() {
            if a.port() == 0 {
                return Err(bad("port 0 cannot be dialled".into()));
            }
            return Ok(MasterAddr::Ip(a));
        }
        if s.len() > MAX_MASTER_ADDR {
            return Err(bad(format!(
                "it is {} bytes long; a host name has at most {MAX_HOST_NAME} characters",
                s.len()
            )));
        }
        let Some((host, port)) = s.rsplit_once(':') else {
            return Err(bad("it has no port".into()));
        };
        let port = parse_port(port).map_err(bad)?;
        if host.starts_with('[') || host.contains(':') {
            return Err(bad(
                "an IPv6 address goes in brackets, as [fd00::5]:6379, and nothing else does".into(),
            ));
        }
        check_host_name(host).map_err(bad)?;
        Ok(MasterAddr::Name {
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    /// The host a TLS certificate is checked against by default: the name without its final
    /// dot, or the IP address.
    pub fn tls_host(&self) -> String {
        match self {
            MasterAddr::Ip(a) => a.ip().to_string(),
            MasterAddr::Name { host, .. } => host.trim_end_matches('.').to_string(),
        }
    }

    /// Whether this is a name (resolved at each dial) rather than an IP address.
    pub fn is_name(&self) -> bool {
        matches!(self, MasterAddr::Name { .. })
    }

    /// The addresses to dial, in the resolver's order (duplicates dropped): the IP address
    /// itself, or what the name resolves to now. The caller bounds the time it takes.
    pub async fn resolve(&self) -> std::io::Result<Vec<SocketAddr>> {
        match self {
            MasterAddr::Ip(a) => Ok(vec![*a]),
            MasterAddr::Name { host, port } => {
                let found = tokio::net::lookup_host((host.as_str(), *port)).await?;
                nonempty(found)
            }
        }
    }

    /// [`Self::resolve`] for callers outside a runtime (`check`, validation), on a thread of
    /// its own so that `limit` bounds it even when the system resolver does not answer.
    pub fn resolve_blocking(&self, limit: Duration) -> Result<Vec<SocketAddr>, String> {
        let (host, port) = match self {
            MasterAddr::Ip(a) => return Ok(vec![*a]),
            MasterAddr::Name { host, port } => (host.clone(), *port),
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("resolve".into())
            .spawn(move || {
                use std::net::ToSocketAddrs;
                let r = (host.as_str(), port).to_socket_addrs().and_then(nonempty);
                let _ = tx.send(r);
            })
            .map_err(|e| format!("cannot start a resolver thread: {e}"))?;
        match rx.recv_timeout(limit) {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err(format!("no answer within {} ms", limit.as_millis())),
        }
    }
}

impl fmt::Display for MasterAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MasterAddr::Ip(a) => write!(f, "{a}"),
            MasterAddr::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// Whether two masters from the configuration are the same (as parsed; as text when one does
/// not parse).
pub fn same_master(a: &str, b: &str) -> bool {
    match (MasterAddr::parse(a), MasterAddr::parse(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// The addresses a lookup gave, duplicates dropped; none at all is an error.
fn nonempty(found: impl Iterator<Item = SocketAddr>) -> std::io::Result<Vec<SocketAddr>> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for a in found {
        if !out.contains(&a) {
            out.push(a);
        }
    }
    if out.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "the name resolves to no address",
        ));
    }
    Ok(out)
}

/// A port to dial: 1 to 65535, in decimal digits only.
fn parse_port(p: &str) -> Result<u16, String> {
    if p.is_empty() {
        return Err("the port is empty".into());
    }
    if p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "the port {} is not a number from 1 to 65535",
            shown(p)
        ));
    }
    match p.parse::<u16>() {
        Ok(0) => Err("port 0 cannot be dialled".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("the port {p} is not a number from 1 to 65535")),
    }
}

/// Checks a host name's syntax (see [`MasterAddr::parse`]).
pub fn check_host_name(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("the host is empty".into());
    }
    if !host.is_ascii() {
        return Err(
            "a host name is ASCII (write an internationalised name in its xn-- form)".into(),
        );
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.len() > MAX_HOST_NAME {
        return Err(format!(
            "the host name is {} characters long, at most {MAX_HOST_NAME} are allowed",
            name.len()
        ));
    }
    let labels: Vec<&str> = name.split('.').collect();
    for label in &labels {
        if label.is_empty() {
            return Err(
                "the host name has an empty label (a leading dot, or two dots in a row)".into(),
            );
        }
        if label.len() > MAX_HOST_LABEL {
            return Err(format!(
                "a label of the host name is {} characters long, at most {MAX_HOST_LABEL} are allowed",
                label.len()
            ));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err("a host name may contain only letters, digits, '-' and '.'".into());
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a label of the host name may not start or end with '-'".into());
        }
    }
    if labels
        .last()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(
            "it is neither an IP address nor a host name (a name's last label is not all digits)"
                .into(),
        );
    }
    Ok(())
}

/// User input for a message: quoted, and cut short when it is long.
fn shown(s: &str) -> String {
    const MAX: usize = 64;
    if s.chars().count() <= MAX {
        return format!("{s:?}");
    }
    let head: String = s.chars().take(MAX).collect();
    format!("{head:?}... ({} bytes)", s.len())
}

/// A source network of `allow_from`: an address and how many of its leading bits must match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl Cidr {
    /// Parses `10.0.0.0/8`, `fd00::/8`, or a single address (all its bits).
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let bad = || {
            format!(
                "{s:?} is not a network in CIDR form (e.g. 10.0.0.0/8, fd00::/8, or one address)"
            )
        };
        let (ip, bits) = match s.split_once('/') {
            Some((ip, bits)) => (ip, Some(bits)),
            None => (s, None),
        };
        let net: IpAddr = ip.parse().map_err(|_| bad())?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            None => max,
            Some(b) => match b.parse::<u8>() {
                Ok(n) if n <= max && !b.starts_with('+') => n,
                _ => return Err(bad()),
            },
        };
        Ok(Cidr { net, bits })
    }

    /// Whether `ip` is in this network; an IPv4 address mapped into IPv6 counts as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(&n.octets(), &a.octets(), self.bits),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(&n.octets(), &a.octets(), self.bits),
            _ => false,
        }
    }
}

/// Whether the first `bits` bits of `a` and `b` are equal.
fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let (whole, rest) = (usize::from(bits / 8), bits % 8);
    if a.get(..whole) != b.get(..whole) {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    match (a.get(whole), b.get(whole)) {
        (Some(x), Some(y)) => x & mask == y & mask,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
state_dir: ./state
admin:
  listen: 127.0.0.1:9121
links:
  - name: main
    listen: 127.0.0.1:7000
    master: 127.0.0.1:6379
    flavor: redis
    guard: enforce
"#;

    fn problems(yaml: &str) -> Vec<String> {
        match Config::from_yaml(yaml, "t.yaml") {
            Ok(_) => vec![],
            Err(e) => e.problems.iter().map(|p| p.to_string()).collect(),
        }
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::from_yaml(GOOD, "t.yaml").unwrap();
        let l = &c.links[0];
        assert_eq!(l.flavor, Flavor::Redis);
        assert_eq!(l.guard, GuardMode::Enforce);
        assert_eq!(l.max_sessions, DEFAULT_MAX_SESSIONS);
        assert!(l.announce_replica_ip);
        assert_eq!(l.timeouts.connect_ms, DEFAULT_CONNECT_TIMEOUT_MS);
        assert_eq!(c.shutdown_grace_ms, DEFAULT_SHUTDOWN_GRACE_MS);
        assert_eq!(l.unknown_replica, UnknownReplica::Full);
        assert!(!l.allow_empty_master);
        assert_eq!(l.lineage_poll_ms, DEFAULT_LINEAGE_POLL_MS);
    }

    #[test]
    fn unknown_field_is_rejected_with_its_path() {
        let y = GOOD.replace("guard: enforce", "guard: enforce\n    colour: blue");
        let p = problems(&y);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("links[0]"), "{p:?}");
        assert!(p[0].contains("unknown field `colour`"), "{p:?}");
    }

    #[test]
    fn bad_enum_value_names_the_field() {
        let p = problems(&format!(
            "{}    allow_empty_master: true\n",
            GOOD.replace("flavor: redis", "flavor: kvrocks")
        ));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("links[0].allow_empty_master: has no effect"),
            "{p:?}"
        );
        let p = problems(&GOOD.replace("flavor: redis", "flavor: memcached"));
        assert_eq!(p.len(), 1);
        assert!(p[0].starts_with("links[0].flavor"), "{p:?}");
    }

    #[test]
    fn every_semantic_problem_is_listed() {
        let y = r#"
state_dir: ./state
admin:
  listen: localhost:9121
links:
  - name: "bad name"
    listen: 127.0.0.1:7000
    master: 127.0.0.1:7000
    flavor: redis
    guard: observe
    max_sessions: 0
    timeouts: { connect_ms: 0 }
  - name: b
    listen: 127.0.0.1:7000
    master: nowhere
    flavor: valkey
    guard: enforce
    auth: { password_env: REPLGUARD_TEST_SURELY_UNSET_VAR }
"#;
        let p = problems(y);
        let want = [
            "admin.listen: ",
            "links[0].name: ",
            "links[0].master: is the link's own listen address",
            "links[0].max_sessions: must be at least 1",
            "links[0].timeouts.connect_ms: must be greater than 0",
            "links[1].listen: 127.0.0.1:7000 is already used by links[0].listen",
            "links[1].master: \"nowhere\" is not a master address: it has no port",
            "links[1].auth: environment variable REPLGUARD_TEST_SURELY_UNSET_VAR is not set",
        ];
        assert_eq!(p.len(), want.len(), "{p:#?}");
        for (got, w) in p.iter().zip(want) {
            assert!(got.starts_with(w), "{got:?} should start with {w:?}");
        }
    }

    #[test]
    fn overlapping_listeners_self_dials_and_cycles_are_all_listed() {
        let y = r#"
state_dir: ./state
admin:
  listen: 0.0.0.0:9121
links:
  - { name: a, listen: "127.0.0.1:7001", master: "127.0.0.1:7002", flavor: redis, guard: enforce }
  - { name: b, listen: "0.0.0.0:7002", master: "127.0.0.1:7001", flavor: redis, guard: enforce }
  - { name: c, listen: "127.0.0.1:7002", master: "127.0.0.2:9121", flavor: redis, guard: enforce }
  - { name: d, listen: "[::]:7004", master: "127.0.0.1:7004", flavor: redis, guard: enforce }
  - { name: e, listen: "0.0.0.0:7004", master: "[::1]:7004", flavor: redis, guard: enforce }
  - { name: f, listen: "127.0.0.1:9121", master: "10.255.255.1:7001", flavor: redis, guard: enforce }
  - { name: g, listen: "127.0.0.1:7007", master: "0.0.0.0:7008", flavor: redis, guard: enforce }
  - { name: h, listen: "127.0.0.1:7008", master: "127.0.0.1:7009", flavor: redis, guard: enforce }
  - { name: i, listen: "127.0.0.1:7009", master: "127.0.0.1:7007", flavor: redis, guard: enforce }
"#;
        assert_eq!(
            problems(y),
            [
                "links[0].master: 127.0.0.1:7002 is links[1].listen (0.0.0.0:7002, link b): the links form a cycle a -> b -> a; replicas would be passed round it and never reach a master",
                "links[1].master: 127.0.0.1:7001 is links[0].listen (127.0.0.1:7001, link a): the links form a cycle b -> a -> b; replicas would be passed round it and never reach a master",
                "links[2].listen: 127.0.0.1:7002 overlaps links[1].listen (0.0.0.0:7002): a wildcard address takes its port on every local address of its family, so only one of them can be bound",
                "links[2].master: 127.0.0.2:9121 is admin.listen (0.0.0.0:9121): replguard would dial its own admin listener",
                "links[3].master: is the link's own listen address; replguard would dial itself",
                "links[4].listen: 0.0.0.0:7004 overlaps links[3].listen ([::]:7004): a wildcard address takes its port on every local address of its family, so only one of them can be bound",
                "links[4].master: [::1]:7004 is links[3].listen ([::]:7004, link d): replguard would dial itself; point it at the real master",
                "links[5].listen: 127.0.0.1:9121 overlaps admin.listen (0.0.0.0:9121): a wildcard address takes its port on every local address of its family, so only one of them can be bound",
                "links[6].master: 0.0.0.0:7008 is links[7].listen (127.0.0.1:7008, link h): the links form a cycle g -> h -> i -> g; replicas would be passed round it and never reach a master",
                "links[7].master: 127.0.0.1:7009 is links[8].listen (127.0.0.1:7009, link i): the links form a cycle h -> i -> g -> h; replicas would be passed round it and never reach a master",
                "links[8].master: 127.0.0.1:7007 is links[6].listen (127.0.0.1:7007, link g): the links form a cycle i -> g -> h -> i; replicas would be passed round it and never reach a master",
            ]
        );
    }

    #[test]
    fn master_addresses_are_ips_or_host_names_with_a_port() {
        let name = |h: &str, port| MasterAddr::Name {
            host: h.into(),
            port,
        };
        for (text, want) in [
            (
                "10.0.0.5:6379",
                MasterAddr::Ip("10.0.0.5:6379".parse().unwrap()),
            ),
            ("[::1]:7000", MasterAddr::Ip("[::1]:7000".parse().unwrap())),
            (
                "[fd00::5]:6379",
                MasterAddr::Ip("[fd00::5]:6379".parse().unwrap()),
            ),
            ("localhost:6379", name("localhost", 6379)),
            (
                "Redis-0.Redis.db.svc.cluster.local.:6379",
                name("redis-0.redis.db.svc.cluster.local.", 6379),
            ),
            ("r1:65535", name("r1", 65535)),
            ("xn--bcher-kva.example:1", name("xn--bcher-kva.example", 1)),
            ("db.invalid:6379", name("db.invalid", 6379)),
        ] {
            assert_eq!(MasterAddr::parse(text), Ok(want), "{text}");
        }
        assert_eq!(
            MasterAddr::parse("Redis-0.Redis:6379").unwrap().to_string(),
            "redis-0.redis:6379"
        );
        assert_eq!(MasterAddr::parse("a.b.:1").unwrap().tls_host(), "a.b");
        assert_eq!(MasterAddr::parse("[::1]:1").unwrap().tls_host(), "::1");

        let long_label = format!("{}.example:6379", "a".repeat(64));
        let ok_label = format!("{}.example:6379", "a".repeat(63));
        assert!(MasterAddr::parse(&ok_label).is_ok());
        let long_name = format!("{}a:6379", "abcdefghi.".repeat(25)); // 251 characters
        assert!(MasterAddr::parse(&long_name).is_ok(), "{long_name}");
        let too_long = format!("{}abcd:6379", "abcdefghi.".repeat(25)); // 254 characters
        let huge = "a".repeat(100_000) + ":6379";
        for (text, why) in [
            ("", "it has no port"),
            ("db", "it has no port"),
            ("db:", "the port is empty"),
            (":6379", "the host is empty"),
            ("db:0", "port 0 cannot be dialled"),
            ("10.0.0.5:0", "port 0 cannot be dialled"),
            ("[::1]:0", "port 0 cannot be dialled"),
            ("db:65536", "the port 65536 is not a number from 1 to 65535"),
            ("db:+80", "is not a number from 1 to 65535"),
            ("db:80 ", "is not a number from 1 to 65535"),
            ("db:0x50", "is not a number from 1 to 65535"),
            ("db:99999999999999999999", "is not a number from 1 to 65535"),
            (" db:80", "only letters, digits"),
            ("d_b:80", "only letters, digits"),
            ("db/x:80", "only letters, digits"),
            ("db\0:80", "only letters, digits"),
            ("ünï.example:6379", "ASCII"),
            ("db\u{200b}:6379", "ASCII"),
            ("-db:80", "may not start or end with '-'"),
            ("db-.x:80", "may not start or end with '-'"),
            ("a..b:80", "empty label"),
            (".db:80", "empty label"),
            ("db..:80", "empty label"),
            (&long_label, "at most 63"),
            (&too_long, "at most 253"),
            (&huge, "bytes long"),
            ("::1:6379", "in brackets"),
            ("[db]:6379", "in brackets"),
            ("[::1:6379", "in brackets"),
            ("256.1.1.1:80", "neither an IP address nor a host name"),
            ("127.1:80", "neither an IP address nor a host name"),
            ("1:80", "neither an IP address nor a host name"),
        ] {
            let e = MasterAddr::parse(text).unwrap_err();
            assert!(e.contains(why), "{text:?}: {e}");
            assert!(e.contains("is not a master address"), "{text:?}: {e}");
            assert!(e.len() < 400, "the message stays short: {e}");
        }
        assert!(same_master("LocalHost:1", "localhost:1"));
        assert!(same_master("[::1]:1", "[0::1]:1"));
        assert!(!same_master("localhost:1", "127.0.0.1:1"));
    }

    #[test]
    fn a_master_name_is_checked_by_what_it_resolves_to() {
        let y = |master: &str, listen: &str| {
            format!(
                "state_dir: ./s\nadmin: {{ listen: 127.0.0.1:9121 }}\nlinks:\n  - {{ name: a, listen: \"{listen}\", master: \"{master}\", flavor: redis, guard: enforce }}\n  - {{ name: b, listen: 127.0.0.1:7102, master: 10.255.255.1:1, flavor: redis, guard: enforce }}\n"
            )
        };
        assert_eq!(
            problems(&y("localhost:7101", "127.0.0.1:7101")),
            ["links[0].master: localhost:7101 (resolves to 127.0.0.1:7101) is the link's own listen address; replguard would dial itself"]
        );
        assert_eq!(
            problems(&y("localhost:7102", "127.0.0.1:7101")),
            ["links[0].master: localhost:7102 (resolves to 127.0.0.1:7102) is links[1].listen (127.0.0.1:7102, link b): replguard would dial itself; point it at the real master"]
        );
        assert_eq!(
            problems(&y("localhost:9121", "127.0.0.1:7101")),
            ["links[0].master: localhost:9121 (resolves to 127.0.0.1:9121) is admin.listen (127.0.0.1:9121): replguard would dial its own admin listener"]
        );
        // A name that does not resolve is valid, with a warning at its path.
        let c = Config::from_yaml(&y("db.invalid:7101", "127.0.0.1:7101"), "t.yaml").unwrap();
        let w: Vec<String> = c.warnings().iter().map(|w| w.to_string()).collect();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("links[0].master: db.invalid:7101 does not resolve now ("),
            "{w:?}"
        );
        let c = Config::from_yaml(&y("localhost:6379", "127.0.0.1:7101"), "t.yaml").unwrap();
        assert!(c.warnings().is_empty(), "{:?}", c.warnings());
    }

    #[test]
    fn which_addresses_overlap_and_reach() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        for (x, y, overlap) in [
            ("0.0.0.0:1", "127.0.0.1:1", true),
            ("[::]:1", "127.0.0.1:1", true),
            ("[::]:1", "0.0.0.0:1", true),
            ("[::]:1", "[::1]:1", true),
            ("0.0.0.0:1", "[::1]:1", false),
            ("127.0.0.1:1", "[::1]:1", false),
            ("127.0.0.1:1", "127.0.0.2:1", false),
            ("[::ffff:127.0.0.1]:1", "127.0.0.1:1", true),
            ("0.0.0.0:1", "0.0.0.0:2", false),
            ("0.0.0.0:0", "127.0.0.1:0", false),
        ] {
            assert_eq!(binds_overlap(a(x), a(y)), overlap, "{x} {y}");
            assert_eq!(binds_overlap(a(y), a(x)), overlap, "{y} {x}");
        }
        for (target, bound, hit) in [
            ("127.0.0.1:1", "127.0.0.1:1", true),
            ("127.0.0.1:1", "0.0.0.0:1", true),
            ("127.0.0.5:1", "0.0.0.0:1", true),
            ("127.0.0.1:1", "[::]:1", true),
            ("[::1]:1", "[::]:1", true),
            ("[::1]:1", "0.0.0.0:1", false),
            ("0.0.0.0:1", "127.0.0.1:1", true),
            ("0.0.0.0:1", "0.0.0.0:1", true),
            ("[::]:1", "[::1]:1", true),
            ("0.0.0.0:1", "[::1]:1", false),
            // A host that is not this one (TEST-NET-3), on the wildcard's port.
            ("203.0.113.9:1", "0.0.0.0:1", false),
            ("127.0.0.1:2", "0.0.0.0:1", false),
            ("127.0.0.1:1", "127.0.0.2:1", false),
        ] {
            assert_eq!(reaches(a(target), a(bound)), hit, "{target} -> {bound}");
        }
    }

    #[test]
    fn the_admin_token_comes_from_one_reference() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("token");
        std::fs::write(&f, "  0123456789abcdef-token \n").unwrap();
        let with = |extra: &str| {
            GOOD.replace(
                "  listen: 127.0.0.1:9121",
                &format!("  listen: 127.0.0.1:9121\n{extra}"),
            )
        };
        let c =
            Config::from_yaml_in(&with("  token_file: token"), "t.yaml", Some(dir.path())).unwrap();
        assert_eq!(c.admin.token_file.as_deref(), Some(f.as_path()));
        let t = c.admin.token().unwrap().unwrap();
        assert_eq!(t.as_bytes(), b"0123456789abcdef-token");
        assert!(!format!("{t:?}").contains("0123"));
        assert!(Config::from_yaml(GOOD, "t.yaml")
            .unwrap()
            .admin
            .token()
            .unwrap()
            .is_none());

        let bad = |extra: &str, contents: &str| {
            std::fs::write(&f, contents).unwrap();
            match Config::from_yaml_in(&with(extra), "t.yaml", Some(dir.path())) {
                Ok(_) => vec![],
                Err(e) => e.problems.iter().map(|p| p.to_string()).collect(),
            }
        };
        assert_eq!(
            bad("  token_file: token\n  token_env: X", "t"),
            ["admin.token_env: give either token_file or token_env, not both"]
        );
        assert_eq!(
            bad("  token_file: token", " \n\n"),
            ["admin.token_file: the token it refers to is empty"]
        );
        assert_eq!(
            bad("  token_file: token", "two words"),
            ["admin.token_file: the token must be printable ASCII without spaces (it is sent in an HTTP header)"]
        );
        assert_eq!(
            bad("  token_env: REPLGUARD_TEST_SURELY_UNSET_VAR", "t"),
            ["admin.token_env: environment variable REPLGUARD_TEST_SURELY_UNSET_VAR is not set or not UTF-8"]
        );
        let p = bad("  token_file: nothing-here", "t");
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with(&format!(
                "admin.token_file: cannot read token file {}",
                dir.path().join("nothing-here").display()
            )),
            "{p:?}"
        );
    }

    #[test]
    fn what_is_allowed_but_unsafe_is_a_warning() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("token");
        std::fs::write(&f, "short\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let warnings = |listen: &str, token: &str| -> Vec<String> {
            let y = GOOD.replace(
                "  listen: 127.0.0.1:9121",
                &format!("  listen: {listen}\n{token}"),
            );
            Config::from_yaml_in(&y, "t.yaml", Some(dir.path()))
                .unwrap()
                .warnings()
                .iter()
                .map(|w| w.to_string())
                .collect()
        };
        assert!(warnings("127.0.0.1:9121", "").is_empty());
        assert!(warnings("'[::1]:9121'", "").is_empty());
        assert_eq!(
            warnings("0.0.0.0:9121", ""),
            ["admin.listen: 0.0.0.0:9121 is reachable from other hosts and no admin token is set (admin.token_file or admin.token_env): anyone who reaches it reads /status and /metrics, and the mutating routes stay refused"]
        );
        assert_eq!(
            warnings("0.0.0.0:9121", "  token_file: token"),
            [
                "admin.token_file: the token is 5 characters long: use at least 16 random ones".to_string(),
                format!(
                    "admin.token_file: {} is readable by every user of this host (mode 644): chmod 600 it",
                    f.display()
                ),
            ]
        );
        std::fs::write(&f, "0123456789abcdef\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(warnings("0.0.0.0:9121", "  token_file: token").is_empty());
    }

    #[test]
    fn empty_links_and_duplicate_names_are_rejected() {
        let y = "state_dir: s\nadmin: { listen: 127.0.0.1:1 }\nlinks: []\n";
        assert_eq!(problems(y), vec!["links: at least one link is required"]);
        let two = format!(
            "{GOOD}  - name: main\n    listen: 127.0.0.1:7001\n    master: 127.0.0.1:6379\n    flavor: redis\n    guard: enforce\n"
        );
        assert_eq!(
            problems(&two),
            vec!["links[1].name: \"main\" is already the name of links[0]"]
        );
    }

    #[test]
    fn the_links_of_a_group_agree_on_what_their_shared_ledger_needs() {
        let link = |name: &str, port: u16, flavor: &str, extra: &str| {
            format!(
                "  - {{ name: {name}, listen: 127.0.0.1:{port}, master: 127.0.0.1:{}, flavor: {flavor}, guard: enforce{extra} }}\n",
                port + 100
            )
        };
        let cfg = |links: &[String]| {
            format!(
                "state_dir: s\nadmin: {{ listen: 127.0.0.1:1 }}\nlinks:\n{}",
                links.concat()
            )
        };
        let ok = cfg(&[
            link("a", 7001, "redis", ", group: g"),
            link("b", 7002, "valkey", ", group: g"),
            link("c", 7003, "kvrocks", ", group: k"),
            link("d", 7004, "redis", ""),
        ]);
        assert!(problems(&ok).is_empty(), "{:?}", problems(&ok));
        let bad = cfg(&[
            link("a", 7001, "redis", ", group: g"),
            link("b", 7002, "kvrocks", ", group: g"),
            link("c", 7003, "redis", ", group: g, max_replica_records: 5"),
            link("d", 7004, "redis", ", group: \"../x\""),
        ]);
        assert_eq!(
            problems(&bad),
            vec![
                "links[1].group: group g has a redis link (links[0], a): the links of a group front nodes of one server family",
                "links[2].group: max_replica_records is 5 here and 1024 on links[0] (a), of the same group g: the group's links share one ledger, so they must agree",
                "links[3].group: \"../x\": a group name is 1 to 64 ASCII letters, digits, '-', '_' and '.', not starting with '.' (it names the group's ledger file and a metric label)",
            ]
        );
    }

    /// The problems of a link given as `fields` (YAML, indented 4) after the GOOD top.
    fn link_problems(fields: &str) -> Vec<String> {
        problems(&format!(
            "state_dir: ./state\nadmin:\n  listen: 127.0.0.1:9121\nlinks:\n  - name: main\n{fields}"
        ))
    }

    #[test]
    fn typos_are_listed_with_the_fields_they_leave_missing() {
        let p = link_problems(
            "    listen: 127.0.0.1:7000\n    master: 127.0.0.1:6379\n    flavour: redis\n    guard: enforce\n    max_session: 10\n",
        );
        assert_eq!(
            p,
            [
                "links[0].flavor: missing (required)",
                "links[0].flavour: unknown field `flavour` (did you mean `flavor`?)",
                "links[0].max_session: unknown field `max_session` (did you mean `max_sessions`?)",
            ]
        );
        let p = problems(&format!("{GOOD}colour: blue\n"));
        assert_eq!(
            p,
            ["colour: unknown field `colour`; the fields here are state_dir, admin, links, shutdown_grace_ms"]
        );
    }

    #[test]
    fn every_missing_required_field_is_listed() {
        let p = problems(
            "admin:\n  listen: 127.0.0.1:9121\nlinks:\n  - name: main\n    listen: 127.0.0.1:7000\n",
        );
        assert_eq!(
            p,
            [
                "state_dir: missing (required)",
                "links[0].master: missing (required)",
                "links[0].flavor: missing (required)",
                "links[0].guard: missing (required)",
            ]
        );
        assert_eq!(
            problems(""),
            [
                "state_dir: missing (required)",
                "admin: missing (required)",
                "links: missing (required)",
            ]
        );
    }

    #[test]
    fn values_of_the_wrong_type_say_what_was_expected() {
        let p = link_problems(
            "    listen: [127.0.0.1:7000]\n    master: 127.0.0.1:6379\n    flavor: Redis\n    guard: enforce\n    max_sessions: \"10\"\n    announce_replica_ip: yes\n    timeouts: 5000\n    lineage_poll_ms: -1\n    auth: { password_env: [A] }\n",
        );
        assert_eq!(
            p,
            [
                "links[0].listen: expected an IP address with a port (e.g. 127.0.0.1:7000), found a list",
                "links[0].flavor: \"Redis\" is not one of redis, valkey, kvrocks (they are lowercase: redis)",
                "links[0].max_sessions: expected a whole number (0 or more), found the text \"10\"",
                "links[0].announce_replica_ip: expected true or false, found the text \"yes\"",
                "links[0].timeouts: expected a mapping (field: value lines), found the number 5000",
                "links[0].lineage_poll_ms: expected a whole number (0 or more), found the number -1",
                "links[0].auth.password_env: expected an environment variable name, found a list",
            ]
        );
        assert_eq!(
            problems("state_dir:\nadmin: 9121\nlinks: { name: main }\n"),
            [
                "state_dir: expected a directory path, found no value",
                "admin: expected a mapping (field: value lines), found the number 9121",
                "links: expected a list, found a mapping",
            ]
        );
        assert_eq!(
            problems("- state_dir: s\n"),
            ["(top level): expected a mapping (field: value lines) with state_dir, admin and links, found a list"]
        );
    }

    #[test]
    fn structure_and_semantic_problems_are_listed_together() {
        let y = r#"
state_dir: ./state
admin:
  listen: 127.0.0.1:9121
links:
  - name: a
    listen: 127.0.0.1:7000
    flavour: redis
    guard: enforce
    auth: { pasword_env: X }
  - name: a
    listen: 127.0.0.1:7000
    master: "db:"
    flavor: kvrocks
    guard: enforce
    max_sessions: 0
    allow_empty_master: true
"#;
        // links[0]'s missing master and flavor get stand-ins that report nothing; the auth whose
        // only field is a typo is not also reported as lacking a password.
        assert_eq!(
            problems(y),
            [
                "links[0].master: missing (required)",
                "links[0].flavor: missing (required)",
                "links[0].flavour: unknown field `flavour` (did you mean `flavor`?)",
                "links[0].auth.pasword_env: unknown field `pasword_env` (did you mean `password_env`?)",
                "links[1].name: \"a\" is already the name of links[0]",
                "links[1].listen: 127.0.0.1:7000 is already used by links[0].listen",
                "links[1].master: \"db:\" is not a master address: the port is empty (give IP:port, [IPv6]:port or host-name:port, e.g. 10.0.0.5:6379 or redis-0.redis:6379)",
                "links[1].max_sessions: must be at least 1",
                "links[1].allow_empty_master: has no effect on a kvrocks link: replguard does not watch a Kvrocks master for an empty restart",
            ]
        );
    }

    #[test]
    fn a_yaml_syntax_error_is_one_problem_with_its_line() {
        let p = problems("state_dir: s\nadmin:\n  listen: a: b\nlinks: []\n");
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("(yaml): "), "{p:?}");
        assert!(p[0].contains("line 3 column"), "{p:?}");
    }

    /// The walk accepts what serde accepts, and rejects at least what serde rejects.
    #[test]
    fn the_walk_agrees_with_serde() {
        let walk_ok = |y: &str| {
            let mut doc: serde_yaml::Value = serde_yaml::from_str(y).unwrap();
            let mut w = Walk::default();
            w.document(&mut doc);
            w.problems.is_empty()
        };
        let serde_ok = |y: &str| serde_yaml::from_str::<Config>(y).is_ok();
        let same = [
            "max_sessions: 0x10",
            "max_sessions: +5",
            "max_sessions: 1.5",
            "max_sessions: -1",
            "max_sessions: ~",
            "max_sessions: '5'",
            "announce_replica_ip: True",
            "announce_replica_ip: 1",
            "announce_replica_ip: 'true'",
            "auth: ~",
            "auth: { user: ~, password_env: X }",
            "auth: { password_file: 12 }",
            "auth: []",
            "timeouts: {}",
            "timeouts: { connect_ms: 1 }",
            "timeouts: { connect: 1 }",
            "unknown_replica: pass",
            "unknown_replica: Full",
            "unknown_replica: ~",
            "allow_empty_master: ~",
            "lineage_poll_ms: !!int 5",
            "'<<': { x: 1 }",
            "1: 2",
        ];
        for extra in same {
            let y = format!("{GOOD}    {extra}\n");
            assert_eq!(walk_ok(&y), serde_ok(&y), "{extra}");
        }
        for (from, to) in [
            ("name: main", "name: 12"),
            ("name: main", "name: true"),
            ("master: 127.0.0.1:6379", "master: !x 127.0.0.1:6379"),
        ] {
            let y = GOOD.replace(from, to);
            assert!(walk_ok(&y) && serde_ok(&y), "{to}");
        }
        // Stricter than serde, which reads these as the text "~" or "" or takes the tag as the
        // variant.
        for (top, extra) in [
            ("state_dir: ~", ""),
            ("state_dir:", ""),
            ("state_dir: s", "    flavor: !redis"),
        ] {
            let y = GOOD.replace("state_dir: ./state", top);
            let y = if extra.is_empty() {
                y
            } else {
                y.replace("    flavor: redis", extra)
            };
            assert!(!walk_ok(&y) && serde_ok(&y), "{y}");
        }
    }

    /// Every field of the serde types is in the schema and the other way round.
    #[test]
    fn the_schema_matches_the_serde_types() {
        let full = Config {
            state_dir: "s".into(),
            admin: AdminConfig {
                listen: "127.0.0.1:1".into(),
                token_file: Some("t".into()),
                token_env: Some("T".into()),
            },
            links: vec![LinkConfig {
                name: "n".into(),
                listen: "127.0.0.1:2".into(),
                master: "127.0.0.1:3".into(),
                flavor: Flavor::Valkey,
                group: Some("g".into()),
                guard: GuardMode::Observe,
                max_sessions: 1,
                max_clients: 1,
                max_connections_per_ip: 1,
                allow_from: vec!["10.0.0.0/8".into()],
                max_replica_records: 1,
                announce_replica_ip: false,
                auth: Some(AuthConfig {
                    user: Some("u".into()),
                    password_env: Some("E".into()),
                    password_file: Some("f".into()),
                }),
                timeouts: TimeoutsConfig::default(),
                unknown_replica: UnknownReplica::Pass,
                allow_empty_master: true,
                lineage_poll_ms: 1,
                tls: Some(ListenTls {
                    cert_file: "c".into(),
                    key_file: "k".into(),
                    client_ca_file: Some("ca".into()),
                }),
                master_tls: Some(MasterTls {
                    ca_file: "ca".into(),
                    cert_file: Some("c".into()),
                    key_file: Some("k".into()),
                    server_name: Some("m".into()),
                }),
            }],
            shutdown_grace_ms: 1,
        };
        let mut doc = serde_yaml::to_value(&full).unwrap();
        let mut w = Walk::default();
        w.document(&mut doc);
        assert!(w.problems.is_empty(), "{:?}", w.problems);

        fn all_given(path: &str, v: &serde_yaml::Value, fields: &[Field]) {
            for f in fields {
                let x = &v[f.name];
                assert!(
                    !x.is_null(),
                    "{path}{} is in the schema, not in Config",
                    f.name
                );
                match &f.ty {
                    Ty::Map(inner) => all_given(&format!("{path}{}.", f.name), x, inner),
                    Ty::List(Ty::Map(inner)) => {
                        all_given(&format!("{path}{}[0].", f.name), &x[0], inner)
                    }
                    _ => {}
                }
            }
        }
        all_given("", &serde_yaml::to_value(&full).unwrap(), SCHEMA);

        let choices = |name: &str| match &LINK_FIELDS.iter().find(|f| f.name == name).unwrap().ty {
            Ty::Choice(words) => words.to_vec(),
            other => panic!("{other:?}"),
        };
        let names = |vals: Vec<serde_yaml::Value>| -> Vec<String> {
            vals.into_iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect()
        };
        let flavors = [Flavor::Redis, Flavor::Valkey, Flavor::Kvrocks]
            .map(|f| serde_yaml::to_value(f).unwrap());
        assert_eq!(names(flavors.to_vec()), choices("flavor"));
        let guards =
            [GuardMode::Enforce, GuardMode::Observe].map(|g| serde_yaml::to_value(g).unwrap());
        assert_eq!(names(guards.to_vec()), choices("guard"));
        let policies =
            [UnknownReplica::Full, UnknownReplica::Pass].map(|u| serde_yaml::to_value(u).unwrap());
        assert_eq!(names(policies.to_vec()), choices("unknown_replica"));
    }

    #[test]
    fn relative_paths_are_taken_from_the_files_folder() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pw"), "s3cret\n").unwrap();
        let y = GOOD.replace(
            "guard: enforce",
            "guard: enforce\n    auth: { password_file: ./pw }",
        );
        let c = Config::from_yaml_in(&y, "t.yaml", Some(dir.path())).unwrap();
        assert_eq!(c.state_dir, dir.path().join("state"));
        let pw = c.links[0].auth.as_ref().unwrap();
        assert_eq!(
            pw.password_file.as_deref(),
            Some(dir.path().join("pw").as_path())
        );
        assert_eq!(pw.resolve().unwrap().password, "s3cret");

        let f = dir.path().join("rg.yaml");
        std::fs::write(&f, GOOD.replace("./state", "/abs/state")).unwrap();
        assert_eq!(
            Config::load_file(&f).unwrap().state_dir,
            Path::new("/abs/state")
        );
        std::fs::write(&f, GOOD.replace("./state", "../up")).unwrap();
        assert_eq!(
            Config::load_file(&f).unwrap().state_dir,
            dir.path().join("../up")
        );
        // Not found beside the working directory: the problem names the resolved file.
        let p = problems(&y);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("links[0].auth: cannot read password file ./pw"),
            "{p:?}"
        );
    }

    #[test]
    fn a_kvrocks_link_takes_a_password_without_a_user() {
        std::env::set_var("REPLGUARD_TEST_KV_PASSWORD", "pw");
        let y = GOOD.replace(
            "flavor: redis\n    guard: enforce",
            "flavor: kvrocks\n    guard: enforce\n    auth: { user: ops, password_env: REPLGUARD_TEST_KV_PASSWORD }",
        );
        assert_eq!(
            problems(&y),
            vec!["links[0].auth.user: a kvrocks link takes a password only: Kvrocks has no ACL users and answers AUTH with a user name as a wrong number of arguments"]
        );
        assert_eq!(
            problems(&y.replace("user: ops, ", "")),
            Vec::<String>::new()
        );
    }

    #[test]
    fn admin_listen_is_read_without_the_rest_of_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("rg.yaml");
        let y = GOOD.replace(
            "guard: enforce",
            "guard: enforce\n    auth: { password_env: REPLGUARD_TEST_SURELY_UNSET_VAR }",
        );
        std::fs::write(&f, &y).unwrap();
        assert!(Config::load_file(&f).is_err());
        assert_eq!(
            Config::admin_listen_in_file(&f).unwrap(),
            "127.0.0.1:9121".parse().unwrap()
        );
        std::fs::write(&f, "links: []\n").unwrap();
        let e = Config::admin_listen_in_file(&f).unwrap_err();
        assert_eq!(
            e.problems[0].to_string(),
            "admin.listen: missing (required)"
        );
    }

    #[test]
    fn password_comes_from_a_file_without_its_newline() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "s3cret\n").unwrap();
        let auth = AuthConfig {
            user: Some("repl".into()),
            password_env: None,
            password_file: Some(f),
        };
        let c = auth.resolve().unwrap();
        assert_eq!(c.password, "s3cret");
        assert!(!format!("{c:?}").contains("s3cret"));
        let both = AuthConfig {
            password_env: Some("X".into()),
            ..auth.clone()
        };
        assert!(both.resolve().unwrap_err().contains("not both"));
    }

    #[test]
    fn limits_and_networks_are_checked_with_their_paths() {
        let p = problems(&format!(
            "{GOOD}    max_clients: 0\n    max_connections_per_ip: 0\n    max_replica_records: 0\n    allow_from: [10.0.0.0/8, 10.0.0.0/33, example.com, '::1/+1']\n    timeouts: {{ first_command_ms: 0, handshake_ms: 0 }}\n",
        ));
        assert_eq!(
            p,
            [
                "links[0].max_clients: must be at least 1",
                "links[0].max_connections_per_ip: must be at least 1",
                "links[0].max_replica_records: must be at least 1",
                "links[0].allow_from[1]: \"10.0.0.0/33\" is not a network in CIDR form (e.g. 10.0.0.0/8, fd00::/8, or one address)",
                "links[0].allow_from[2]: \"example.com\" is not a network in CIDR form (e.g. 10.0.0.0/8, fd00::/8, or one address)",
                "links[0].allow_from[3]: \"::1/+1\" is not a network in CIDR form (e.g. 10.0.0.0/8, fd00::/8, or one address)",
                "links[0].timeouts.first_command_ms: must be greater than 0",
                "links[0].timeouts.handshake_ms: must be greater than 0",
            ]
        );
        let c = Config::from_yaml(GOOD, "t.yaml").unwrap();
        let l = &c.links[0];
        assert_eq!(l.max_clients, DEFAULT_MAX_CLIENTS);
        assert_eq!(l.max_connections_per_ip, DEFAULT_MAX_CONNECTIONS_PER_IP);
        assert_eq!(l.max_replica_records, DEFAULT_MAX_REPLICA_RECORDS);
        assert!(l.allow_from.is_empty());
        assert_eq!(
            l.timeouts.first_command_ms,
            DEFAULT_FIRST_COMMAND_TIMEOUT_MS
        );
        assert_eq!(l.timeouts.handshake_ms, DEFAULT_HANDSHAKE_TIMEOUT_MS);
    }

    #[test]
    fn networks_match_by_their_prefix() {
        let net = |s: &str| Cidr::parse(s).unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(net("10.0.0.0/8").contains(ip("10.200.1.2")));
        assert!(!net("10.0.0.0/8").contains(ip("11.0.0.1")));
        assert!(net("192.168.4.0/22").contains(ip("192.168.7.255")));
        assert!(!net("192.168.4.0/22").contains(ip("192.168.8.0")));
        assert!(net("0.0.0.0/0").contains(ip("8.8.8.8")));
        assert!(!net("0.0.0.0/0").contains(ip("::2")));
        assert!(net("127.0.0.1").contains(ip("127.0.0.1")));
        assert!(!net("127.0.0.1").contains(ip("127.0.0.2")));
        assert!(net("127.0.0.1").contains(ip("::ffff:127.0.0.1")));
        assert!(net("fd00::/8").contains(ip("fd12::1")));
        assert!(!net("fd00::/8").contains(ip("fe80::1")));
    }
}
