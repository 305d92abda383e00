//! The admin HTTP listener: `GET /status` (JSON), `GET /metrics` (Prometheus text format) and
//! the operator actions under `POST /links/<name>/`.
//!
//! HTTP/1.1 (hyper) with an axum router: one request per connection (`Connection: close`), a
//! bounded request head and body, bounded time, and at most [`MAX_CONNECTIONS`] connections at
//! once; connections beyond that wait in the listen backlog.

use crate::link::LinkCtx;
use crate::stats::SessionSnapshot;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::Serialize;
use std::fmt::Write as _;
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
    pub fn metrics_text(&self) -> String {
        let mut out = String::new();
        let mut family =
            |name: &str, kind: &str, help: &str, rows: &mut dyn Iterator<Item = (String, f64)>| {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
                for (labels, v) in rows {
                    let _ = writeln!(out, "{name}{{{labels}}} {v}");
                }
            };
        let link_label = |l: &LinkCtx| format!("link=\"{}\"", l.cfg.name);
        let counter = |f: fn(&LinkCtx) -> u64| {
            self.links
                .iter()
                .map(move |l| (link_label(l), f(l) as f64))
                .collect::<Vec<_>>()
        };
        let snaps: Vec<(String, SessionSnapshot)> = self
            .links
            .iter()
            .flat_map(|l| l.snapshots().into_iter().map(|s| (link_label(l), s)))
            .collect();
        let per_session = |f: fn(&SessionSnapshot) -> Option<f64>| {
            snaps
                .iter()
                .filter_map(|(ll, s)| {
                    f(s).map(|v| {
                        (
                            format!("{ll},session=\"{}\",replica=\"{}\"", s.id, s.replica),
                            v,
                        )
                    })
                })
                .collect::<Vec<_>>()
        };

        family(
            "replguard_sessions_active",
            "gauge",
            "Replica sessions open now.",
            &mut counter(|l| l.sessions.len() as u64).into_iter(),
        );
        family(
            "replguard_sessions_total",
            "counter",
            "Sessions accepted.",
            &mut counter(|l| l.counters.sessions_total.load(Relaxed)).into_iter(),
        );
        family(
            "replguard_sessions_refused_total",
            "counter",
            "Connections refused at max_sessions.",
            &mut counter(|l| l.counters.sessions_refused.load(Relaxed)).into_iter(),
        );
        family(
            "replguard_session_errors_total",
            "counter",
            "Sessions that ended on a fault (not a clean close or shutdown).",
            &mut counter(|l| l.counters.session_errors.load(Relaxed)).into_iter(),
        );
        family(
            "replguard_passthrough_sessions_total",
            "counter",
            "Connections that were not replicas and passed through.",
            &mut counter(|l| l.counters.passthrough_total.load(Relaxed)).into_iter(),
        );
        family(
            "replguard_full_syncs_total",
            "counter",
            "Full resyncs started (+FULLRESYNC or SYNC; for Kvrocks, checkpoint files relayed whole).",
            &mut counter(|l| l.counters.full_syncs.load(Relaxed)).into_iter(),
        );
        family(
            "replguard_partial_syncs_total",
            "counter",
            "Partial resyncs accepted by the master (+CONTINUE; +OK to a Kvrocks PSYNC).",
            &mut counter(|l| l.counters.partial_syncs.load(Relaxed)).into_iter(),
        );
        family(
            "replguard_psync_rejected_total",
            "counter",
            "PSYNC requests the master answered with an error.",
            &mut counter(|l| l.counters.psync_rejected.load(Relaxed)).into_iter(),
        );
        let verdicts: Vec<(String, f64)> = self
            .links
            .iter()
            .flat_map(|l| {
                l.guard.counts().into_iter().map(move |((v, r, a), n)| {
                    (
                        format!(
                            "{},verdict=\"{v}\",reason=\"{r}\",action=\"{a}\"",
                            link_label(l)
                        ),
                        n as f64,
                    )
                })
            })
            .collect();
        family(
            "replguard_verdicts_total",
            "counter",
            "Guard verdicts on PSYNC requests, by verdict, reason and what was done.",
            &mut verdicts.into_iter(),
        );
        family(
            "replguard_unsafe_resumes_accepted_total",
            "counter",
            "Resumes the master accepted although replguard judged them inconsistent (observe mode).",
            &mut counter(|l| l.guard.unsafe_accepted.load(Relaxed)).into_iter(),
        );
        family(
            "replguard_holds_total",
            "counter",
            "PSYNC requests held (answered -LOADING) by the empty-master protection.",
            &mut counter(|l| l.guard.holds.load(Relaxed)).into_iter(),
        );
        family(
            "replguard_kvrocks_stream_gaps_total",
            "counter",
            "Kvrocks: batches that started beyond the expected next sequence (missing batches).",
            &mut counter(|l| l.guard.kv_gaps.load(Relaxed)).into_iter(),
        );
        family(
            "replguard_empty_master",
            "gauge",
            "1 while the master shows a brand-new empty lineage.",
            &mut counter(|l| u64::from(l.guard.empty_master().is_some())).into_iter(),
        );
        family(
            "replguard_stream_bytes_total",
            "counter",
            "Command-stream bytes relayed to replicas.",
            &mut counter(|l| {
                l.counters.ended_stream_bytes.load(Relaxed) + live(l, |s| s.delivered_bytes)
            })
            .into_iter(),
        );
        family(
            "replguard_rdb_bytes_total",
            "counter",
            "RDB payload bytes relayed to replicas.",
            &mut counter(|l| l.counters.ended_rdb_bytes.load(Relaxed) + live(l, |s| s.rdb_bytes))
                .into_iter(),
        );
        family(
            "replguard_replica_expected_offset",
            "gauge",
            "Replication offset the replica should be at after what was delivered.",
            &mut per_session(|s| s.expected_offset.map(|v| v as f64)).into_iter(),
        );
        family(
            "replguard_replica_ack_offset",
            "gauge",
            "Last offset the replica acknowledged.",
            &mut per_session(|s| s.ack_offset.map(|v| v as f64)).into_iter(),
        );
        family(
            "replguard_replica_lag_bytes",
            "gauge",
            "Delivered but not yet acknowledged bytes.",
            &mut per_session(|s| s.lag_bytes.map(|v| v as f64)).into_iter(),
        );
        family(
            "replguard_replica_lag_seconds",
            "gauge",
            "Age of the oldest delivered byte the replica has not acknowledged.",
            &mut per_session(|s| s.lag_seconds).into_iter(),
        );
        family(
            "replguard_replica_kvrocks_next_seq",
            "gauge",
            "Kvrocks: the sequence the replica's next batch should start at.",
            &mut per_session(|s| s.kvrocks.as_ref().map(|k| k.next_seq as f64)).into_iter(),
        );
        family(
            "replguard_replica_kvrocks_batches",
            "gauge",
            "Kvrocks: WAL batches relayed in this session.",
            &mut per_session(|s| s.kvrocks.as_ref().map(|k| k.batches as f64)).into_iter(),
        );
        family(
            "replguard_replica_kvrocks_heartbeat_age_seconds",
            "gauge",
            "Kvrocks: seconds since the master's last ping on this stream.",
            &mut per_session(|s| {
                s.kvrocks
                    .as_ref()
                    .and_then(|k| k.last_heartbeat_seconds_ago)
            })
            .into_iter(),
        );
        family(
            "replguard_replica_rdb_bytes",
            "gauge",
            "RDB payload bytes relayed in this session.",
            &mut per_session(|s| Some(s.rdb_bytes as f64)).into_iter(),
        );
        out
    }
}

/// Sum over a link's live sessions.
fn live(l: &LinkCtx, f: fn(&SessionSnapshot) -> u64) -> u64 {
    l.snapshots().iter().map(f).sum()
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
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics_text(),
    )
        .into_response()
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
            tracing::warn!(link = %name, empty_master = ?held, "operator allowed replicas to sync from the empty master");
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
