//! The YAML configuration: schema, defaults, and one `validate()` that reports every problem with
//! its YAML path.
//!
//! Loading goes `load_file` -> `from_yaml` (serde, unknown fields rejected, the failing path named)
//! -> `validate` (semantic checks, all problems collected at once).

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
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
}

/// The server family behind a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Flavor {
    Redis,
    Valkey,
    Kvrocks,
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
    /// Lineage guard mode.
    pub guard: GuardMode,
    /// Most replica sessions open at once on this link.
    #[serde(default = "default_max_sessions")]
    pub max_sessions: usize,
    /// Add `REPLCONF ip-address <replica address>` when the replica did not announce one, so the
    /// master's INFO and ROLE name the real replica instead of replguard.
    #[serde(default = "default_true")]
    pub announce_replica_ip: bool,
    /// Credentials replguard uses towards the master for replication sessions.
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// Timeouts, in milliseconds.
    #[serde(default)]
    pub timeouts: TimeoutsConfig,
    /// What the guard does with replicas its ledger has never seen.
    #[serde(default)]
    pub unknown_replica: crate::verdict::UnknownReplica,
    /// Let replicas sync from a master that came back empty with a new lineage.
    #[serde(default)]
    pub allow_empty_master: bool,
    /// How often the master's INFO replication is read, in milliseconds.
    #[serde(default = "default_lineage_poll_ms")]
    pub lineage_poll_ms: u64,
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
}

impl Default for TimeoutsConfig {
    fn default() -> Self {
        TimeoutsConfig {
            connect_ms: DEFAULT_CONNECT_TIMEOUT_MS,
            handshake_step_ms: DEFAULT_HANDSHAKE_STEP_TIMEOUT_MS,
            sync_idle_ms: DEFAULT_SYNC_IDLE_TIMEOUT_MS,
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
}

fn default_true() -> bool {
    true
}
fn default_max_sessions() -> usize {
    DEFAULT_MAX_SESSIONS
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
    /// Reads, parses and validates a configuration file.
    pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            source_name: name.clone(),
            problems: vec![ConfigProblem {
                path: "(file)".into(),
                message: format!("cannot read: {e}"),
            }],
        })?;
        Self::from_yaml(&text, &name)
    }

    /// Parses and validates YAML text; `source_name` names it in errors.
    pub fn from_yaml(text: &str, source_name: &str) -> Result<Config, ConfigError> {
        let fail = |problems| ConfigError {
            source_name: source_name.to_string(),
            problems,
        };
        let de = serde_yaml::Deserializer::from_str(text);
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = yaml_path(&e.path().to_string());
            let inner = e.into_inner();
            let mut message = inner.to_string();
            // serde_yaml appends " at line L column C"; keep it, it helps find the spot.
            if let Some(stripped) = message.strip_prefix(&format!("{path}: ")) {
                message = stripped.to_string();
            }
            fail(vec![ConfigProblem { path, message }])
        })?;
        let problems = config.validate();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(fail(problems))
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

        let mut listens: HashMap<SocketAddr, String> = HashMap::new();
        match parse_addr(&self.admin.listen) {
            Ok(a) => {
                listens.insert(a, "admin.listen".into());
            }
            Err(m) => push("admin.listen".into(), m),
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
            let listen = parse_addr(&link.listen);
            match &listen {
                Ok(a) => {
                    if let Some(other) = listens.insert(*a, p("listen")) {
                        push(p("listen"), format!("{a} is already used by {other}"));
                    }
                }
                Err(m) => push(p("listen"), m.clone()),
            }
            match parse_addr(&link.master) {
                Ok(m) => {
                    if listen.as_ref().is_ok_and(|l| *l == m) {
                        push(
                            p("master"),
                            "is the link's own listen address; replguard would dial itself".into(),
                        );
                    }
                }
                Err(m) => push(p("master"), m),
            }
            if link.lineage_poll_ms == 0 {
                push(p("lineage_poll_ms"), "must be greater than 0".into());
            }
            if link.max_sessions == 0 {
                push(p("max_sessions"), "must be at least 1".into());
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
            ] {
                if v == 0 {
                    push(p(field), "must be greater than 0".into());
                }
            }
            if let Some(auth) = &link.auth {
                if let Some(user) = &auth.user {
                    if user.is_empty() || user.contains(char::is_whitespace) {
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
        out
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

/// Parses `host:port` where host is an IP address; names are refused so that the address a
/// link listens on or dials is exactly what the operator reads in the file.
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>().map_err(|_| {
        format!("{s:?} is not an IP address with a port (e.g. 127.0.0.1:7000 or [::1]:7000)")
    })
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
        assert_eq!(l.unknown_replica, crate::verdict::UnknownReplica::Full);
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
            "links[1].master: \"nowhere\" is not an IP address",
            "links[1].auth: environment variable REPLGUARD_TEST_SURELY_UNSET_VAR is not set",
        ];
        assert_eq!(p.len(), want.len(), "{p:#?}");
        for (got, w) in p.iter().zip(want) {
            assert!(got.starts_with(w), "{got:?} should start with {w:?}");
        }
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
}
