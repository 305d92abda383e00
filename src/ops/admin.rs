//! The admin HTTP listener: `GET /status` (JSON), `GET /metrics` (Prometheus text format) and
//! the operator actions under `POST /links/<name>/`.
//!
//! HTTP/1.1 (hyper) with an axum router: one request per connection (`Connection: close`), a
//! bounded request head and body, bounded time, and at most [`MAX_CONNECTIONS`] connections at
//! once; connections beyond that wait in the listen backlog. `/metrics` is built at scrape time
//! from the link counters, the guard's counts and the session snapshots, and encoded by the
//! `prometheus` crate, which escapes label values (a replica's announced address is one).

use crate::conn::stats::SessionSnapshot;
use crate::link::LinkCtx;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricType};
use prometheus::{Encoder as _, Registry, TextEncoder};
use serde::Serialize;
use std::collections::HashMap;
use std::io::Write as _;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tracing::debug;

/// Largest request head accepted (hyper's read buffer; a larger head is answered 431).
const MAX_HEAD: usize = 8 * 1024;
/// Largest request body accepted (the endpoints read none; a larger one is answered 413).
const MAX_BODY: usize = 8 * 1024;
/// Time a client gets to send its request head.
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
    pub links: Vec<Arc<LinkCtx>>,
    pub started: Instant,
    /// The process-wide token, parent of re-pointed links' session tokens.
    pub cancel: CancellationToken,
}

#[derive(Serialize)]
struct Status<'a> {
    version: &'static str,
    uptime_seconds: f64,
    links: Vec<LinkStatus<'a>>,
}

#[derive(Serialize)]
struct LinkStatus<'a> {
    name: &'a str,
    listen: &'a str,
    master: String,
    flavor: crate::config::Flavor,
    guard: crate::config::GuardMode,
    max_sessions: usize,
    sessions_active: usize,
    sessions_total: u64,
    sessions_refused: u64,
    full_syncs: u64,
    partial_syncs: u64,
    psync_rejected: u64,
    sessions: Vec<SessionSnapshot>,
    ledger: serde_json::Value,
}

impl AdminState {
    /// The `/status` document.
    pub fn status_json(&self) -> String {
        let links = self
            .links
            .iter()
            .map(|l| {
                let c = &l.counters;
                let sessions = l.snapshots();
                LinkStatus {
                    name: &l.cfg.name,
                    listen: &l.cfg.listen,
                    master: l.master().to_string(),
                    flavor: l.cfg.flavor,
                    guard: l.cfg.guard,
                    max_sessions: l.cfg.max_sessions,
                    sessions_active: sessions.len(),
                    sessions_total: c.sessions_total.load(Relaxed),
                    sessions_refused: c.sessions_refused.load(Relaxed),
                    full_syncs: c.full_syncs.load(Relaxed),
                    partial_syncs: c.partial_syncs.load(Relaxed),
                    psync_rejected: c.psync_rejected.load(Relaxed),
                    sessions,
                    ledger: l.guard.status(),
                }
            })
            .collect();
        let status = Status {
            version: env!("CARGO_PKG_VERSION"),
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            links,
        };
        serde_json::to_string_pretty(&status).expect("status serializes")
    }

    /// The `/metrics` document.
    ///
    /// Families come in a fixed order, each with its `# HELP` and `# TYPE` lines even when it
    /// has no series at the moment: the encoder takes no family without samples, so those two
    /// lines are written here (from the constant name and help, never from a label value).
    pub fn metrics_text(&self) -> Result<String, prometheus::Error> {
        let scrape = Scrape::of(&self.links)?;
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
const VERDICT: &[&str] = &["link", "verdict", "reason", "action"];
const SESSION: &[&str] = &["link", "session", "replica"];
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
    fn of(links: &[Arc<LinkCtx>]) -> prometheus::Result<Self> {
        use MetricType::{COUNTER, GAUGE};
        let snaps: Vec<(&LinkCtx, Vec<SessionSnapshot>)> =
            links.iter().map(|l| (&**l, l.snapshots())).collect();
        let per_link = |f: &dyn Fn(&LinkCtx, &[SessionSnapshot]) -> u64| {
            snaps
                .iter()
                .map(|(l, s)| (vec![l.cfg.name.clone()], f(l, s) as f64))
                .collect()
        };
        let counter = |f: fn(&LinkCtx) -> u64| per_link(&|l, _| f(l));
        let per_session = |f: fn(&SessionSnapshot) -> Option<f64>| {
            snaps
                .iter()
                .flat_map(|(l, ss)| {
                    ss.iter().filter_map(move |s| {
                        let labels = vec![l.cfg.name.clone(), s.id.to_string(), s.replica.clone()];
                        f(s).map(|v| (labels, v))
                    })
                })
                .collect()
        };
        let verdicts = links
            .iter()
            .flat_map(|l| {
                l.guard.counts().into_iter().map(|((v, r, a), n)| {
                    let labels = [&*l.cfg.name, v, r, a].map(str::to_string);
                    (labels.to_vec(), n as f64)
                })
            })
            .collect();
        let refusals = links
            .iter()
            .flat_map(|l| {
                l.admission
                    .refusals()
                    .into_iter()
                    .map(|(reason, n)| (vec![l.cfg.name.clone(), reason.to_string()], n as f64))
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
                refusals,
            )?,
            Family::new(
                "replguard_session_errors_total",
                COUNTER,
                "Sessions that ended on a fault (not a clean close or shutdown).",
                LINK,
                counter(|l| l.counters.session_errors.load(Relaxed)),
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
        .with_state(state)
}

fn text(code: StatusCode, body: String) -> Response {
    (code, [(header::CONTENT_TYPE, "text/plain")], body).into_response()
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
    Path((name, action)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    link_action(&state, &name, &action, query.as_deref().unwrap_or("")).await
}

/// Paths and methods the routes do not take: `POST` to a path that is not a link action is 404
/// with the usage, any other `GET` is 404, any other method 405.
async fn other(State(state): State<Arc<AdminState>>, method: Method, uri: Uri) -> Response {
    match method {
        Method::POST => {
            let parts: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
            match parts.as_slice() {
                ["links", name, action] => {
                    link_action(&state, name, action, uri.query().unwrap_or("")).await
                }
                _ => text(
                    StatusCode::NOT_FOUND,
                    "POST /links/<name>/master?addr=IP:PORT or /links/<name>/allow-empty-master\n"
                        .into(),
                ),
            }
        }
        Method::GET => text(StatusCode::NOT_FOUND, "try /status or /metrics\n".into()),
        _ => text(StatusCode::METHOD_NOT_ALLOWED, "GET or POST only\n".into()),
    }
}

/// Operator actions:
/// - `POST /links/<name>/master?addr=IP:PORT` re-points the link (failover following);
/// - `POST /links/<name>/allow-empty-master` releases replicas held by the empty-master
///   protection.
async fn link_action(state: &AdminState, name: &str, action: &str, query: &str) -> Response {
    let Some(link) = state.links.iter().find(|l| l.cfg.name == name) else {
        return text(StatusCode::NOT_FOUND, format!("no link named {name:?}\n"));
    };
    match action {
        "master" => {
            let addr = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("addr="))
                .unwrap_or("");
            match crate::config::parse_addr(addr) {
                Ok(a) => {
                    link.repoint(a, &state.cancel).await;
                    text(StatusCode::OK, format!("link {name} now dials {a}\n"))
                }
                Err(m) => text(StatusCode::BAD_REQUEST, format!("addr: {m}\n")),
            }
        }
        "allow-empty-master" => {
            let held = link.guard.allow_empty_master();
            tracing::warn!(link = %name, empty_master = held.as_deref().unwrap_or("-"), "operator allowed replicas to sync from the empty master");
            text(
                StatusCode::OK,
                format!(
                    "link {name}: replicas may now sync from the master (empty lineage {held:?})\n"
                ),
            )
        }
        _ => text(
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
    let app = router(state);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let slot = tokio::select! {
            _ = cancel.cancelled() => return,
            s = slots.clone().acquire_owned() => s.expect("the semaphore is never closed"),
        };
        let sock = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (app, cancel) = (app.clone(), cancel.clone());
        tracker.spawn(async move {
            connection(sock, app, cancel).await;
            drop(slot);
        });
    }
}

/// One admin connection: one request, then close.
async fn connection(sock: TcpStream, app: Router, cancel: CancellationToken) {
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
    match served {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!(error = %e, "admin request failed"),
        Err(_) => {
            debug!(deadline = ?CONNECTION_DEADLINE, "admin connection closed at its deadline")
        }
    }
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
        let link = LinkCtx::new(
            cfg.links[0].clone(),
            dir,
            &cancel,
            Box::new(crate::redis::Redis),
        )
        .unwrap();
        AdminState {
            links: vec![Arc::new(link)],
            started: Instant::now(),
            cancel,
        }
    }

    fn add_session(state: &AdminState, id: u64, ip: &str, port: u16) {
        let s = SessionStats::new(id, "main", "127.0.0.1:5000".parse().unwrap());
        s.set_replica_ip(ip);
        s.set_replica_port(port);
        s.begin_full(Some("abc"), Some(100));
        s.set_rdb_bytes(42);
        state.links[0].sessions.insert(id, Arc::new(s));
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
        assert_eq!(text.matches("# TYPE ").count(), 25, "{text}");
        assert_eq!(text.matches("# HELP ").count(), 25, "{text}");
    }
}
