//! The admin HTTP listener: `GET /status` (JSON), `GET /metrics` (Prometheus text format) and
//! the operator actions under `POST /links/<name>/`.
//!
//! HTTP/1.1 (hyper) with an axum router: one request per connection (`Connection: close`), a
//! bounded request head and body, bounded time, and at most [`MAX_CONNECTIONS`] connections at
//! once; connections beyond that wait in the listen backlog. `/metrics` is built at scrape time
//! from the link counters, the guard's counts and the session snapshots, and encoded by the
//! `prometheus` crate, which escapes label values (a replica's announced address is one).
//!
//! Reading is open; acting is not. Every `POST` is checked before it is routed:
//! 1. no token configured (`admin.token_file` / `admin.token_env`): 403, saying how to set one;
//! 2. no `Authorization: Bearer <token>`, or another token: 401 (compared in constant time);
//! 3. a re-point to one of replguard's own listeners (wildcards included): 400.
//!
//! Every refusal, here or by the HTTP layer (a slow or oversized head, an oversized body, a
//! request past its time), is a clear answer where HTTP still allows one, one log line and a
//! count in `replguard_admin_refusals_total{reason}`.

use crate::config::{reaches, AdminToken, MasterAddr};
use crate::conn::stats::SessionSnapshot;
use crate::link::{LinkCtx, Links};
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricType};
use prometheus::{Encoder as _, Registry, TextEncoder};
use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tracing::{debug, info, warn};

/// Largest request head accepted (hyper's read buffer; a larger head is answered 431).
const MAX_HEAD: usize = 8 * 1024;
/// Largest request body accepted (the endpoints read none; a larger one is answered 413).
const MAX_BODY: usize = 8 * 1024;
/// Time a client gets to send its whole request head, from the connection's start: a client
/// that trickles it byte by byte is cut here.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a request may take once its head is in (answered 408 past it). A re-point reads the
/// new master's INFO within the link's handshake step (10 s by default), possibly after a
/// lineage poll already under way.
const HANDLER_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest an admin connection is kept, whatever it is doing (a client that does not read its
/// answer included).
const CONNECTION_DEADLINE: Duration = Duration::from_secs(60);
/// Admin connections served at once.
pub const MAX_CONNECTIONS: usize = 64;

/// What the admin endpoints read.
pub struct AdminState {
    /// The links in force (a reload adds and removes).
    pub links: Arc<Links>,
    pub started: Instant,
    /// The bearer token `POST` requests must carry; without one they are refused.
    pub token: Option<AdminToken>,
    /// replguard's own listeners as bound that are not a link's (the admin one), with what
    /// they are: never a re-point target, and neither is the listener of any link in force.
    pub own_addrs: Vec<(String, SocketAddr)>,
    /// Refusals since start, by [`Refusal`].
    pub refusals: Refusals,
}

/// Why the admin listener refused a request or a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A `POST` while no token is configured (403).
    TokenNotConfigured,
    /// A `POST` without an `Authorization: Bearer` token (401).
    TokenMissing,
    /// A `POST` with another token (401).
    TokenWrong,
    /// A re-point to one of replguard's own listeners (400).
    OwnAddress,
    /// A re-point without a usable `addr` (400).
    BadAddress,
    /// No such path, link or action (404).
    NotFound,
    /// A method other than GET, HEAD and POST (405).
    MethodNotAllowed,
    /// A declared body over the limit (413).
    BodyTooLarge,
    /// A request that took longer than its time (408).
    RequestTimeout,
    /// A request head not complete within its time: the connection is closed.
    HeadTimeout,
    /// A request head over the limit (431).
    HeadTooLarge,
    /// Not HTTP/1.1 (400, or closed).
    Malformed,
    /// A connection still open at its deadline: closed.
    ConnectionDeadline,
}

impl Refusal {
    pub const ALL: [Refusal; 13] = [
        Refusal::TokenNotConfigured,
        Refusal::TokenMissing,
        Refusal::TokenWrong,
        Refusal::OwnAddress,
        Refusal::BadAddress,
        Refusal::NotFound,
        Refusal::MethodNotAllowed,
        Refusal::BodyTooLarge,
        Refusal::RequestTimeout,
        Refusal::HeadTimeout,
        Refusal::HeadTooLarge,
        Refusal::Malformed,
        Refusal::ConnectionDeadline,
    ];

    /// The `reason` label and log field.
    pub fn code(self) -> &'static str {
        match self {
            Refusal::TokenNotConfigured => "token_not_configured",
            Refusal::TokenMissing => "token_missing",
            Refusal::TokenWrong => "token_wrong",
            Refusal::OwnAddress => "own_address",
            Refusal::BadAddress => "bad_address",
            Refusal::NotFound => "not_found",
            Refusal::MethodNotAllowed => "method_not_allowed",
            Refusal::BodyTooLarge => "body_too_large",
            Refusal::RequestTimeout => "request_timeout",
            Refusal::HeadTimeout => "head_timeout",
            Refusal::HeadTooLarge => "head_too_large",
            Refusal::Malformed => "malformed",
            Refusal::ConnectionDeadline => "connection_deadline",
        }
    }
}

/// Refusal counts, one per [`Refusal`] in the order of [`Refusal::ALL`].
#[derive(Default)]
pub struct Refusals([AtomicU64; Refusal::ALL.len()]);

impl Refusals {
    fn index(r: Refusal) -> usize {
        Refusal::ALL
            .iter()
            .position(|x| *x == r)
            .expect("every refusal is in ALL")
    }

    pub fn get(&self, r: Refusal) -> u64 {
        self.0[Self::index(r)].load(Relaxed)
    }

    fn add(&self, r: Refusal) {
        self.0[Self::index(r)].fetch_add(1, Relaxed);
    }
}

/// The peer of an admin connection, handed to the handlers for their log lines.
#[derive(Debug, Clone, Copy)]
struct Peer(SocketAddr);

impl AdminState {
    /// Counts a refusal and logs it: attempts to act without the right token, or to point a
    /// link at replguard itself, at WARN; the rest at INFO.
    fn refused(&self, r: Refusal, peer: Option<SocketAddr>, detail: &str) {
        self.refusals.add(r);
        let peer = peer.map_or_else(|| "-".to_string(), |p| p.to_string());
        match r {
            Refusal::TokenMissing | Refusal::TokenWrong | Refusal::OwnAddress => {
                warn!(%peer, reason_code = r.code(), "admin request refused: {detail}")
            }
            _ => info!(%peer, reason_code = r.code(), "admin request refused: {detail}"),
        }
    }

    /// Refuses with `code` and `body`: counted, logged, answered.
    fn refuse(
        &self,
        r: Refusal,
        peer: Option<SocketAddr>,
        code: StatusCode,
        body: String,
    ) -> Response {
        self.refused(r, peer, body.trim_end());
        text(code, body)
    }

    /// The refusal's answer when a `POST` may not act; `None` when it may.
    fn unauthorized(&self, headers: &HeaderMap, peer: Option<SocketAddr>) -> Option<Response> {
        let Some(token) = &self.token else {
            return Some(self.refuse(
                Refusal::TokenNotConfigured,
                peer,
                StatusCode::FORBIDDEN,
                "the admin actions are disabled: no admin token is configured. Set admin.token_file (a file holding the token) or admin.token_env (an environment variable holding it) in the configuration, restart replguard, and send the token as \"Authorization: Bearer <token>\"\n".into(),
            ));
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes())
            .and_then(|v| {
                let (scheme, rest) = v.split_at(v.iter().position(|b| *b == b' ')?);
                scheme
                    .eq_ignore_ascii_case(b"bearer")
                    .then(|| rest.trim_ascii())
            });
        let refusal = match given {
            None => Refusal::TokenMissing,
            Some(t) if same_secret(t, token.as_bytes()) => return None,
            Some(_) => Refusal::TokenWrong,
        };
        let body = match refusal {
            Refusal::TokenMissing => {
                "this action needs \"Authorization: Bearer <token>\" with the admin token\n"
            }
            _ => "the admin token given is not the configured one\n",
        };
        let mut res = self.refuse(refusal, peer, StatusCode::UNAUTHORIZED, body.into());
        res.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"replguard admin\""),
        );
        Some(res)
    }

    /// The `/status` document.
    pub fn status_json(&self) -> String {
        crate::ops::status::document(&self.links.load(), self.started)
    }

    /// The `/metrics` document.
    ///
    /// Families come in a fixed order, each with its `# HELP` and `# TYPE` lines even when it
    /// has no series at the moment: the encoder takes no family without samples, so those two
    /// lines are written here (from the constant name and help, never from a label value).
    pub fn metrics_text(&self) -> Result<String, prometheus::Error> {
        let scrape = Scrape::of(&self.links.load(), &self.refusals)?;
        let order: Vec<(String, String, MetricType)> = scrape
            .families
            .iter()
            .map(|f| (f.desc.fq_name.clone(), f.desc.help.clone(), f.kind))
            .collect();
        let registry = Registry::new();
        registry.register(Box::new(scrape))?;
        let mut gathered: HashMap<String, proto::MetricFamily> = registry
            .gather()
            .into_iter()
            .map(|mf| (mf.name().to_string(), mf))
            .collect();
        let encoder = TextEncoder::new();
        let mut out = Vec::new();
        for (name, help, kind) in order {
            match gathered.remove(&name) {
                Some(mf) => encoder.encode(std::slice::from_ref(&mf), &mut out)?,
                None => {
                    let help = help.replace('\\', "\\\\").replace('\n', "\\n");
                    let kind = if kind == MetricType::COUNTER {
                        "counter"
                    } else {
                        "gauge"
                    };
                    writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}")?;
                }
            }
        }
        Ok(String::from_utf8(out).expect("the text encoder writes UTF-8"))
    }
}

/// The label sets of the exported families, in the order they are written.
const LINK: &[&str] = &["link"];
const GROUP: &[&str] = &["link", "group"];
const VERDICT: &[&str] = &["link", "verdict", "reason", "action"];
const SESSION: &[&str] = &["link", "session", "replica"];
const ADMIN_REFUSAL: &[&str] = &["reason"];
const REFUSAL: &[&str] = &["link", "reason"];

/// One metric family of a scrape: its descriptor (name, HELP, label names) and its samples,
/// each with its label values in the descriptor's order.
struct Family {
    desc: Desc,
    kind: MetricType,
    samples: Vec<(Vec<String>, f64)>,
}

impl Family {
    fn new(
        name: &str,
        kind: MetricType,
        help: &str,
        labels: &[&str],
        samples: Vec<(Vec<String>, f64)>,
    ) -> prometheus::Result<Self> {
        let labels = labels.iter().map(|l| l.to_string()).collect();
        let desc = Desc::new(name.into(), help.into(), labels, HashMap::new())?;
        Ok(Family {
            desc,
            kind,
            samples,
        })
    }

    /// The family as the encoder takes it. Labels keep the descriptor's order (the vector
    /// types of the crate would sort them by name).
    fn to_proto(&self) -> proto::MetricFamily {
        let mut mf = proto::MetricFamily::default();
        mf.set_name(self.desc.fq_name.clone());
        mf.set_help(self.desc.help.clone());
        mf.set_field_type(self.kind);
        mf.set_metric(
            self.samples
                .iter()
                .map(|(values, v)| {
                    let mut m = proto::Metric::default();
                    m.set_label(
                        self.desc
                            .variable_labels
                            .iter()
                            .zip(values)
                            .map(|(name, value)| {
                                let mut lp = proto::LabelPair::default();
                                lp.set_name(name.clone());
                                lp.set_value(value.clone());
                                lp
                            })
                            .collect(),
                    );
                    if self.kind == MetricType::COUNTER {
                        let mut c = proto::Counter::default();
                        c.set_value(*v);
                        m.set_counter(c);
                    } else {
                        let mut g = proto::Gauge::default();
                        g.set_value(*v);
                        m.set_gauge(g);
                    }
                    m
                })
                .collect(),
        );
        mf
    }
}

/// What one scrape exports, read from the links when it is taken.
struct Scrape {
    families: Vec<Family>,
}

impl Collector for Scrape {
    fn desc(&self) -> Vec<&Desc> {
        self.families.iter().map(|f| &f.desc).collect()
    }

    fn collect(&self) -> Vec<proto::MetricFamily> {
        self.families.iter().map(Family::to_proto).collect()
    }
}

impl Scrape {
    fn of(links: &[Arc<LinkCtx>], refusals: &Refusals) -> prometheus::Result<Self> {
        use MetricType::{COUNTER, GAUGE};
        let snaps: Vec<(&LinkCtx, Vec<SessionSnapshot>)> =
            links.iter().map(|l| (&**l, l.snapshots())).collect();
        let per_link = |f: &dyn Fn(&LinkCtx, &[SessionSnapshot]) -> u64| {
            snaps
                .iter()
                .map(|(l, s)| (vec![l.name.clone()], f(l, s) as f64))
                .collect()
        };
        let counter = |f: fn(&LinkCtx) -> u64| per_link(&|l, _| f(l));
        let per_session = |f: fn(&SessionSnapshot) -> Option<f64>| {
            snaps
                .iter()
                .flat_map(|(l, ss)| {
                    ss.iter().filter_map(move |s| {
                        let labels = vec![l.name.clone(), s.id.to_string(), s.replica.clone()];
                        f(s).map(|v| (labels, v))
                    })
                })
                .collect()
        };
        let verdicts = links
            .iter()
            .flat_map(|l| {
                l.guard.counts().into_iter().map(|((v, r, a), n)| {
                    let labels = [&*l.name, v, r, a].map(str::to_string);
                    (labels.to_vec(), n as f64)
                })
            })
            .collect();
        let connection_refusals = links
            .iter()
            .flat_map(|l| {
                l.admission
                    .refusals()
                    .into_iter()
                    .map(|(reason, n)| (vec![l.name.clone(), reason.to_string()], n as f64))
            })
            .collect();
        let families = vec![
            Family::new(
                "replguard_sessions_active",
                GAUGE,
                "Replica sessions open now.",
                LINK,
                counter(|l| l.sessions.len() as u64),
            )?,
            Family::new(
                "replguard_sessions_total",
                COUNTER,
                "Sessions accepted.",
                LINK,
                counter(|l| l.counters.sessions_total.load(Relaxed)),
            )?,
            Family::new(
                "replguard_sessions_refused_total",
                COUNTER,
                "Connections refused at max_sessions.",
                LINK,
                counter(|l| l.counters.sessions_refused.load(Relaxed)),
            )?,
            Family::new(
                "replguard_connections_refused_total",
                COUNTER,
                "Connections refused or cut by a limit, by reason (allow_from, max_connections_per_ip, max_clients, max_sessions, first_command_timeout, handshake_timeout, ip_address).",
                REFUSAL,
                connection_refusals,
            )?,
            Family::new(
                "replguard_session_errors_total",
                COUNTER,
                "Sessions that ended on a fault (not a clean close or shutdown).",
                LINK,
                counter(|l| l.counters.session_errors.load(Relaxed)),
            )?,
            Family::new(
                "replguard_tls_handshake_failures_total",
                COUNTER,
                "TLS handshakes that failed, with a replica on the link port or with the master.",
                LINK,
                counter(|l| l.counters.tls_failures.load(Relaxed)),
            )?,
            Family::new(
                "replguard_passthrough_sessions_total",
                COUNTER,
                "Connections that were not replicas and passed through.",
                LINK,
                counter(|l| l.counters.passthrough_total.load(Relaxed)),
            )?,
            Family::new(
                "replguard_full_syncs_total",
                COUNTER,
                "Full resyncs started (+FULLRESYNC or SYNC; for Kvrocks, checkpoint files relayed whole).",
                LINK,
                counter(|l| l.counters.full_syncs.load(Relaxed)),
            )?,
            Family::new(
                "replguard_partial_syncs_total",
                COUNTER,
                "Partial resyncs accepted by the master (+CONTINUE; +OK to a Kvrocks PSYNC).",
                LINK,
                counter(|l| l.counters.partial_syncs.load(Relaxed)),
            )?,
            Family::new(
                "replguard_psync_rejected_total",
                COUNTER,
                "PSYNC requests the master answered with an error.",
                LINK,
                counter(|l| l.counters.psync_rejected.load(Relaxed)),
            )?,
            Family::new(
                "replguard_verdicts_total",
                COUNTER,
                "Guard verdicts on PSYNC requests, by verdict, reason and what was done.",
                VERDICT,
                verdicts,
            )?,
            Family::new(
                "replguard_unsafe_resumes_accepted_total",
                COUNTER,
                "Resumes the master accepted although replguard judged them inconsistent (observe mode).",
                LINK,
                counter(|l| l.guard.unsafe_accepted.load(Relaxed)),
            )?,
            Family::new(
                "replguard_holds_total",
                COUNTER,
                "PSYNC requests held (answered -LOADING) by the empty-master protection.",
                LINK,
                counter(|l| l.guard.holds.load(Relaxed)),
            )?,
            Family::new(
                "replguard_kvrocks_stream_gaps_total",
                COUNTER,
                "Kvrocks: batches that started beyond the expected next sequence (missing batches).",
                LINK,
                counter(|l| l.guard.kv_gaps.load(Relaxed)),
            )?,
            Family::new(
                "replguard_ledger_save_failures_total",
                COUNTER,
                "Ledger saves that failed (the ledger is kept in memory and saved again).",
                LINK,
                counter(|l| l.guard.save_failures().0),
            )?,
            Family::new(
                "replguard_empty_master",
                GAUGE,
                "1 while the master shows a brand-new empty lineage.",
                LINK,
                counter(|l| u64::from(l.guard.empty_master().is_some())),
            )?,
            Family::new(
                "replguard_stale_master",
                GAUGE,
                "1 while the master serves a lineage the ledger knows was handed over to another (replicas filled from the newer one are held).",
                LINK,
                counter(|l| u64::from(l.guard.stale_master().is_some())),
            )?,
            Family::new(
                "replguard_link_group",
                GAUGE,
                "1 for each link in a group, labelled with the group whose ledger it shares.",
                GROUP,
                links
                    .iter()
                    .filter_map(|l| {
                        let g = l.cfg().group.clone()?;
                        Some((vec![l.name.clone(), g], 1.0))
                    })
                    .collect(),
            )?,
            Family::new(
                "replguard_stream_bytes_total",
                COUNTER,
                "Command-stream bytes relayed to replicas.",
                LINK,
                per_link(&|l, ss| {
                    l.counters.ended_stream_bytes.load(Relaxed)
                        + ss.iter().map(|s| s.delivered_bytes).sum::<u64>()
                }),
            )?,
            Family::new(
                "replguard_rdb_bytes_total",
                COUNTER,
                "RDB payload bytes relayed to replicas.",
                LINK,
                per_link(&|l, ss| {
                    l.counters.ended_rdb_bytes.load(Relaxed)
                        + ss.iter().map(|s| s.rdb_bytes).sum::<u64>()
                }),
            )?,
            Family::new(
                "replguard_replica_expected_offset",
                GAUGE,
                "Replication offset the replica should be at after what was delivered.",
                SESSION,
                per_session(|s| s.expected_offset.map(|v| v as f64)),
            )?,
            Family::new(
                "replguard_replica_ack_offset",
                GAUGE,
                "Last offset the replica acknowledged.",
                SESSION,
                per_session(|s| s.ack_offset.map(|v| v as f64)),
            )?,
            Family::new(
                "replguard_replica_lag_bytes",
                GAUGE,
                "Delivered but not yet acknowledged bytes.",
                SESSION,
                per_session(|s| s.lag_bytes.map(|v| v as f64)),
            )?,
            Family::new(
                "replguard_replica_lag_seconds",
                GAUGE,
                "Age of the oldest delivered byte the replica has not acknowledged.",
                SESSION,
                per_session(|s| s.lag_seconds),
            )?,
            Family::new(
                "replguard_replica_kvrocks_next_seq",
                GAUGE,
                "Kvrocks: the sequence the replica's next batch should start at.",
                SESSION,
                per_session(|s| s.kvrocks.as_ref().map(|k| k.next_seq as f64)),
            )?,
            Family::new(
                "replguard_replica_kvrocks_batches",
                GAUGE,
                "Kvrocks: WAL batches relayed in this session.",
                SESSION,
                per_session(|s| s.kvrocks.as_ref().map(|k| k.batches as f64)),
            )?,
            Family::new(
                "replguard_replica_kvrocks_heartbeat_age_seconds",
                GAUGE,
                "Kvrocks: seconds since the master's last ping on this stream.",
                SESSION,
                per_session(|s| {
                    s.kvrocks
                        .as_ref()
                        .and_then(|k| k.last_heartbeat_seconds_ago)
                }),
            )?,
            Family::new(
                "replguard_replica_rdb_bytes",
                GAUGE,
                "RDB payload bytes relayed in this session.",
                SESSION,
                per_session(|s| Some(s.rdb_bytes as f64)),
            )?,
            Family::new(
                "replguard_admin_refusals_total",
                COUNTER,
                "Admin requests and connections refused, by reason.",
                ADMIN_REFUSAL,
                Refusal::ALL
                    .iter()
                    .map(|r| (vec![r.code().to_string()], refusals.get(*r) as f64))
                    .collect(),
            )?,
        ];
        Ok(Scrape { families })
    }
}

/// The admin endpoints. Every answer has a body; anything the routes do not take is answered
/// by [`other`], as are odd spellings of the link actions (extra slashes).
pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/links/{name}/{action}", post(link_route))
        .fallback(other)
        .method_not_allowed_fallback(other)
        .layer(RequestBodyLimitLayer::new(MAX_BODY))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            HANDLER_TIMEOUT,
        ))
        .layer(axum::middleware::map_response_with_state(
            state.clone(),
            layer_refusals,
        ))
        .with_state(state)
}

/// Counts and logs the refusals the HTTP layers answer on their own (the handlers count theirs).
async fn layer_refusals(
    State(state): State<Arc<AdminState>>,
    peer: Option<Extension<Peer>>,
    res: Response,
) -> Response {
    let peer = peer.map(|Extension(Peer(p))| p);
    match res.status() {
        StatusCode::PAYLOAD_TOO_LARGE => state.refused(
            Refusal::BodyTooLarge,
            peer,
            &format!("request body over {MAX_BODY} bytes"),
        ),
        StatusCode::REQUEST_TIMEOUT => state.refused(
            Refusal::RequestTimeout,
            peer,
            &format!("request not done within {HANDLER_TIMEOUT:?}"),
        ),
        _ => {}
    }
    res
}

fn text(code: StatusCode, body: String) -> Response {
    (code, [(header::CONTENT_TYPE, "text/plain")], body).into_response()
}

/// Whether `given` is `secret`, looking at every byte whatever they hold, so the time taken
/// says nothing about how much of a guess was right.
fn same_secret(given: &[u8], secret: &[u8]) -> bool {
    let n = given.len().max(secret.len());
    let mut diff = u8::from(given.len() != secret.len());
    for i in 0..n {
        let a = given.get(i).copied().unwrap_or(0);
        let b = secret.get(i).copied().unwrap_or(0);
        diff |= std::hint::black_box(a ^ b);
    }
    diff == 0
}

async fn status(State(state): State<Arc<AdminState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        state.status_json(),
    )
        .into_response()
}

async fn metrics(State(state): State<Arc<AdminState>>) -> Response {
    match state.metrics_text() {
        Ok(body) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], body).into_response(),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("metrics: {e}\n")),
    }
}

async fn link_route(
    State(state): State<Arc<AdminState>>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    Path((name, action)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    let peer = peer.map(|Extension(Peer(p))| p);
    if let Some(refused) = state.unauthorized(&headers, peer) {
        return refused;
    }
    link_action(&state, peer, &name, &action, query.as_deref().unwrap_or("")).await
}

/// Paths and methods the routes do not take: `POST` to a path that is not a link action is 404
/// with the usage (once authorized, like every `POST`), any other `GET` is 404, any other
/// method 405.
async fn other(
    State(state): State<Arc<AdminState>>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    method: Method,
    uri: Uri,
) -> Response {
    let peer = peer.map(|Extension(Peer(p))| p);
    match method {
        Method::POST => {
            if let Some(refused) = state.unauthorized(&headers, peer) {
                return refused;
            }
            let parts: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
            match parts.as_slice() {
                ["links", name, action] => {
                    link_action(&state, peer, name, action, uri.query().unwrap_or("")).await
                }
                _ => state.refuse(
                    Refusal::NotFound,
                    peer,
                    StatusCode::NOT_FOUND,
                    "POST /links/<name>/master?addr=HOST:PORT or /links/<name>/allow-empty-master\n"
                        .into(),
                ),
            }
        }
        Method::GET => state.refuse(
            Refusal::NotFound,
            peer,
            StatusCode::NOT_FOUND,
            "try /status or /metrics\n".into(),
        ),
        _ => state.refuse(
            Refusal::MethodNotAllowed,
            peer,
            StatusCode::METHOD_NOT_ALLOWED,
            "GET or POST only\n".into(),
        ),
    }
}

/// Operator actions, once authorized:
/// - `POST /links/<name>/master?addr=HOST:PORT` re-points the link (failover following) at an
///   IP address or a host name, and keeps the re-point in `state_dir` (see [`LinkCtx::repoint`]);
/// - `POST /links/<name>/allow-empty-master` releases replicas held by the empty-master
///   protection.
async fn link_action(
    state: &AdminState,
    peer: Option<SocketAddr>,
    name: &str,
    action: &str,
    query: &str,
) -> Response {
    let Some(link) = state.links.find(name) else {
        return state.refuse(
            Refusal::NotFound,
            peer,
            StatusCode::NOT_FOUND,
            format!("no link named {name:?}\n"),
        );
    };
    match action {
        "master" => {
            let addr = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("addr="))
                .unwrap_or("");
            let a = match MasterAddr::parse(addr) {
                Ok(a) => a,
                Err(m) => {
                    return state.refuse(
                        Refusal::BadAddress,
                        peer,
                        StatusCode::BAD_REQUEST,
                        format!("addr: {m}\n"),
                    )
                }
            };
            // A name is checked by what it resolves to now; one that does not resolve is taken
            // (the link looks it up again at every dial), and the answer says so.
            let limit = link.cfg().timeouts.connect();
            let resolved = match tokio::time::timeout(limit, a.resolve()).await {
                Ok(Ok(addrs)) => Ok(addrs),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {} ms", limit.as_millis())),
            };
            let links_in_force = state.links.load();
            let own_addrs: Vec<(String, SocketAddr)> = state
                .own_addrs
                .iter()
                .cloned()
                .chain(
                    links_in_force
                        .iter()
                        .filter_map(|l| Some((format!("listener of link {}", l.name), l.bound()?))),
                )
                .collect();
            let dialled = resolved.as_deref().unwrap_or_default();
            let hit = dialled.iter().find_map(|d| {
                let (what, own) = own_addrs.iter().find(|(_, own)| reaches(*d, *own))?;
                Some((*d, what, *own))
            });
            if let Some((d, what, own)) = hit {
                let shown = if a.is_name() {
                    format!("{a} (resolves to {d})")
                } else {
                    a.to_string()
                };
                return state.refuse(
                    Refusal::OwnAddress,
                    peer,
                    StatusCode::BAD_REQUEST,
                    format!(
                        "addr: {shown} is replguard's own {what} ({own}); link {name} would dial itself. Give the real master's address\n"
                    ),
                );
            }
            let peer_text = peer.map_or_else(|| "-".to_string(), |p| p.to_string());
            match &resolved {
                Ok(addrs) if a.is_name() => {
                    let addrs: Vec<String> = addrs.iter().map(ToString::to_string).collect();
                    info!(link = %name, master = %a, resolves_to = %addrs.join(", "), peer = %peer_text, "operator re-pointed the link");
                }
                Ok(_) => {
                    info!(link = %name, master = %a, peer = %peer_text, "operator re-pointed the link")
                }
                Err(e) => warn!(link = %name, master = %a, error = %e, peer = %peer_text,
                                "operator re-pointed the link at a name that does not resolve now"),
            }
            // On a task of its own: a request cut short never leaves the re-point half done.
            let (link2, a2) = (link.clone(), a.clone());
            let kept = tokio::spawn(async move { link2.repoint(a2).await })
                .await
                .unwrap_or_else(|e| Err(e.to_string()));
            let mut answer = format!("link {name} now dials {a}\n");
            if let Err(e) = &resolved {
                answer.push_str(&format!(
                    "warning: {a} does not resolve now ({e}); the link reports the master unreachable until it does\n"
                ));
            }
            if let Err(e) = kept {
                answer.push_str(&format!("warning: {e}\n"));
            }
            text(StatusCode::OK, answer)
        }
        "allow-empty-master" => {
            let held = link.guard.allow_empty_master();
            let stale = link.guard.stale_master().map(|s| s.replid);
            tracing::warn!(link = %name, empty_master = held.as_deref().unwrap_or("-"),
                           stale_master = stale.as_deref().unwrap_or("-"),
                           "operator allowed replicas to sync from the empty or stale master");
            text(
                StatusCode::OK,
                format!(
                    "link {name}: replicas may now sync from the master (empty lineage {held:?})\n"
                ),
            )
        }
        _ => state.refuse(
            Refusal::NotFound,
            peer,
            StatusCode::NOT_FOUND,
            format!("unknown action {action:?}\n"),
        ),
    }
}

/// Serves the admin endpoints until `cancel` fires. Each connection runs on `tracker`; when
/// `cancel` fires, idle connections close at once and a request under way is answered first.
pub async fn serve(
    state: Arc<AdminState>,
    listener: TcpListener,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    let app = router(state.clone());
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let slot = tokio::select! {
            _ = cancel.cancelled() => return,
            s = slots.clone().acquire_owned() => s.expect("the semaphore is never closed"),
        };
        let (sock, peer) = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let app = app.clone().layer(Extension(Peer(peer)));
        let (state, cancel) = (state.clone(), cancel.clone());
        tracker.spawn(async move {
            connection(sock, peer, app, &state, cancel).await;
            drop(slot);
        });
    }
}

/// One admin connection: one request, then close; cut when its head is not in within
/// [`HEAD_TIMEOUT`], and at [`CONNECTION_DEADLINE`] whatever it is doing.
async fn connection(
    sock: TcpStream,
    peer: SocketAddr,
    app: Router,
    state: &AdminState,
    cancel: CancellationToken,
) {
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .keep_alive(false)
        .serve_connection(TokioIo::new(sock), TowerToHyperService::new(app));
    tokio::pin!(conn);
    let served = tokio::time::timeout(CONNECTION_DEADLINE, async {
        tokio::select! {
            r = conn.as_mut() => r,
            _ = cancel.cancelled() => {
                conn.as_mut().graceful_shutdown();
                conn.as_mut().await
            }
        }
    })
    .await;
    let refusal = match served {
        Ok(Ok(())) => return,
        Ok(Err(e)) if e.is_timeout() => (
            Refusal::HeadTimeout,
            format!("request head not complete within {HEAD_TIMEOUT:?}: connection closed"),
        ),
        Ok(Err(e)) if e.is_parse_too_large() => (
            Refusal::HeadTooLarge,
            format!("request head over {MAX_HEAD} bytes"),
        ),
        Ok(Err(e)) if e.is_parse() => (Refusal::Malformed, format!("not HTTP/1.1: {e}")),
        Ok(Err(e)) => {
            // The peer went away, or wrote nothing: its own business.
            debug!(%peer, error = %e, "admin request failed");
            return;
        }
        Err(_) => (
            Refusal::ConnectionDeadline,
            format!("connection still open after {CONNECTION_DEADLINE:?}: closed"),
        ),
    };
    state.refused(refusal.0, Some(peer), &refusal.1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::conn::stats::SessionStats;

    fn state(dir: &std::path::Path) -> AdminState {
        let yaml = format!(
            "state_dir: {}\nadmin:\n  listen: 127.0.0.1:1\nlinks:\n  - name: main\n    listen: 127.0.0.1:0\n    master: 127.0.0.1:6379\n    flavor: redis\n    guard: enforce\n",
            dir.display()
        );
        let cfg = Config::from_yaml(&yaml, "test.yaml").unwrap();
        let cancel = CancellationToken::new();
        let lc = &cfg.links[0];
        let books =
            crate::guard::Books::open_link(dir, &lc.name, &lc.master, lc.max_replica_records);
        let start = crate::link::MasterAtStart::choose(lc, dir).unwrap();
        let link = LinkCtx::new(
            lc.clone(),
            books,
            start,
            &cancel,
            Box::new(crate::redis::Redis),
        )
        .unwrap();
        AdminState {
            links: Arc::new(Links::new(vec![Arc::new(link)])),
            started: Instant::now(),
            token: None,
            own_addrs: Vec::new(),
            refusals: Refusals::default(),
        }
    }

    fn add_session(state: &AdminState, id: u64, ip: &str, port: u16) {
        let s = SessionStats::new(id, "main", "127.0.0.1:5000".parse().unwrap());
        s.set_replica_ip(ip);
        s.set_replica_port(port);
        s.begin_full(Some("abc"), Some(100));
        s.set_rdb_bytes(42);
        state.links.load()[0].sessions.insert(id, Arc::new(s));
    }

    #[test]
    fn a_secret_matches_only_itself() {
        assert!(same_secret(b"0123456789abcdef", b"0123456789abcdef"));
        for other in [
            &b""[..],
            b"0123456789abcde",
            b"0123456789abcdef0",
            b"0123456789abcdeF",
            b"1123456789abcdef",
            b"0123456789abcdef\0",
        ] {
            assert!(!same_secret(other, b"0123456789abcdef"), "{other:?}");
        }
        assert!(same_secret(b"", b""));
    }

    #[test]
    fn label_values_are_escaped() {
        let dir = tempfile::tempdir().unwrap();
        let st = state(dir.path());
        add_session(&st, 7, "1.2.3.4\"} 1\nevil_series 1\n# \\ }", 7000);
        let text = st.metrics_text().unwrap();
        assert!(
            text.contains(
                "replguard_replica_rdb_bytes{link=\"main\",session=\"7\",replica=\"1.2.3.4\\\"} 1\\nevil_series 1\\n# \\\\ }:7000\"} 42\n"
            ),
            "{text}"
        );
        assert!(
            text.lines()
                .all(|l| l.starts_with("# ") || l.starts_with("replguard_")),
            "{text}"
        );
    }

    #[test]
    fn samples_keep_their_names_labels_and_order() {
        let dir = tempfile::tempdir().unwrap();
        let st = state(dir.path());
        add_session(&st, 3, "10.0.0.3", 6380);
        let text = st.metrics_text().unwrap();
        for line in [
            "# HELP replguard_sessions_total Sessions accepted.",
            "# TYPE replguard_sessions_total counter",
            "replguard_sessions_total{link=\"main\"} 0",
            "# TYPE replguard_sessions_active gauge",
            "replguard_sessions_active{link=\"main\"} 1",
            "replguard_rdb_bytes_total{link=\"main\"} 42",
            "# TYPE replguard_replica_expected_offset gauge",
            "replguard_replica_expected_offset{link=\"main\",session=\"3\",replica=\"10.0.0.3:6380\"} 100",
            "replguard_empty_master{link=\"main\"} 0",
            "replguard_stale_master{link=\"main\"} 0",
            "# TYPE replguard_link_group gauge",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}\n{text}");
        }
        // A family without series still says what it is.
        assert!(
            text.contains(
                "# HELP replguard_replica_ack_offset Last offset the replica acknowledged.\n\
                 # TYPE replguard_replica_ack_offset gauge\n# HELP "
            ),
            "{text}"
        );
        assert!(!text.contains("replguard_replica_ack_offset{"), "{text}");
        assert!(
            text.contains("# TYPE replguard_verdicts_total counter\n"),
            "{text}"
        );
        assert_eq!(text.matches("# TYPE ").count(), 29, "{text}");
        assert_eq!(text.matches("# HELP ").count(), 29, "{text}");
    }
}
