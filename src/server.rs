//! Starting and stopping the whole proxy: bind every listener first (so a taken port is reported
//! before anything runs), then serve until shutdown.
//!
//! Shutdown, in order:
//! 1. the cancellation token fires: listeners stop accepting, every session's relay is cancelled
//!    and both of its sockets close (replicas reconnect and resume on their own); idle admin
//!    connections close, and an admin request under way is answered first;
//! 2. each session logs its books as it ends;
//! 3. replguard waits up to `shutdown_grace_ms` for that, then returns.
//!
//! A reload ([`Running::reload`]) puts a re-read configuration in force without a restart, in
//! this order: fields of the whole proxy; links removed from the file stop (as at shutdown,
//! for that link alone, and its ledger is saved); links still in the file take their new
//! values ([`LinkCtx::reconfigure`]); links new in the file are bound and started. What needs a
//! restart (`state_dir`, `admin.listen`, a link's `listen` and `flavor`) keeps its old value and
//! is named in a WARN.

use crate::config::{Config, Flavor, LinkConfig};
use crate::guard::store::StateDirLock;
use crate::guard::Books;
use crate::kvrocks::Kvrocks;
use crate::link::{self, same_addr, Flavour, LinkCtx, Links, MasterAtStart};
use crate::ops::admin::{self, AdminState};
use crate::redis::Redis;
use anyhow::Context;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

/// A running proxy.
pub struct Running {
    /// Where the admin listener is bound (useful with port 0).
    pub admin_addr: SocketAddr,
    /// Where each link listened at start, in configuration order.
    pub link_addrs: Vec<SocketAddr>,
    /// The links in force (a reload adds and removes).
    pub links: Arc<Links>,
    cancel: CancellationToken,
    /// The admin listener and its connections (each link has its own tracker).
    tracker: TaskTracker,
    /// `shutdown_grace_ms` in force.
    grace_ms: AtomicU64,
    /// `state_dir` and `admin.listen` as started with: only a restart changes them.
    state_dir: PathBuf,
    admin_listen: String,
    /// Where the admin token was read from at start (`token_file`, `token_env`).
    admin_token_ref: (Option<PathBuf>, Option<String>),
    /// Held until the proxy has stopped and saved its ledgers.
    _state_lock: StateDirLock,
}

/// Binds every listener and starts serving.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("cannot create state_dir {}", config.state_dir.display()))?;
    let state_lock = StateDirLock::acquire(&config.state_dir)?;
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let mut bound: Vec<(Arc<LinkCtx>, TcpListener)> = Vec::new();
    for lc in &config.links {
        let books = group_books(bound.iter().map(|(l, _)| l), lc);
        bound.push(bind_link(lc, &config.state_dir, &cancel, books).await?);
    }
    let admin_listener = TcpListener::bind(&config.admin.listen)
        .await
        .with_context(|| format!("admin: cannot listen on {}", config.admin.listen))?;
    let admin_addr = admin_listener.local_addr()?;

    let mut links = Vec::new();
    let mut link_addrs = Vec::new();
    for (link, listener) in bound {
        link_addrs.push(listener.local_addr()?);
        spawn_link(&link, listener)?;
        links.push(link);
    }
    let token = config.admin.token().map_err(|p| anyhow::anyhow!("{p}"))?;
    let own_addrs = vec![("admin listener".to_string(), admin_addr)];
    info!(listen = %admin_addr, max_connections = admin::MAX_CONNECTIONS,
          actions = if token.is_some() { "POST with the admin token" } else { "refused: no admin token configured" },
          "admin ready (GET /status, GET /metrics)");
    let links = Arc::new(Links::new(links));
    let state = Arc::new(AdminState {
        links: links.clone(),
        started: Instant::now(),
        token,
        own_addrs,
        refusals: Default::default(),
    });
    tracker.spawn(admin::serve(
        state,
        admin_listener,
        cancel.clone(),
        tracker.clone(),
    ));

    Ok(Running {
        admin_addr,
        link_addrs,
        links,
        cancel,
        tracker,
        grace_ms: AtomicU64::new(config.shutdown_grace_ms),
        state_dir: config.state_dir.clone(),
        admin_listen: config.admin.listen.clone(),
        admin_token_ref: (
            config.admin.token_file.clone(),
            config.admin.token_env.clone(),
        ),
        _state_lock: state_lock,
    })
}

/// The books of `lc`'s group when one of `links` already keeps them.
fn group_books<'a>(
    links: impl IntoIterator<Item = &'a Arc<LinkCtx>>,
    lc: &LinkConfig,
) -> Option<Arc<Books>> {
    let g = lc.group.as_deref()?;
    links
        .into_iter()
        .map(|l| l.guard.books())
        .find(|b| b.group() == Some(g))
        .cloned()
}

/// Binds a link's listener and builds the link (its ledger loaded, or its group's `books`
/// when another link of the group keeps them already); nothing runs yet.
async fn bind_link(
    lc: &LinkConfig,
    state_dir: &Path,
    cancel: &CancellationToken,
    books: Option<Arc<Books>>,
) -> anyhow::Result<(Arc<LinkCtx>, TcpListener)> {
    let listener = TcpListener::bind(&lc.listen)
        .await
        .with_context(|| format!("link {}: cannot listen on {}", lc.name, lc.listen))?;
    let flavour: Box<dyn Flavour> = match lc.flavor {
        Flavor::Redis | Flavor::Valkey => Box::new(Redis),
        Flavor::Kvrocks => Box::new(Kvrocks),
    };
    // The master in force (a kept re-point, or the configuration's) names the link's ledger.
    let start =
        MasterAtStart::choose(lc, state_dir).with_context(|| format!("link {}", lc.name))?;
    let master = start.ledger_master.clone();
    let books = books.unwrap_or_else(|| match &lc.group {
        Some(g) => Books::open_group(state_dir, g, lc.max_replica_records),
        None => Books::open_link(state_dir, &lc.name, &master, lc.max_replica_records),
    });
    books.join(state_dir, &lc.name, &master);
    let link = LinkCtx::new(lc.clone(), books, start, cancel, flavour)
        .with_context(|| format!("link {}", lc.name))?;
    link.set_bound(listener.local_addr()?);
    Ok((Arc::new(link), listener))
}

/// Starts a bound link: its accept loop and its keeper, on the link's own tracker.
fn spawn_link(link: &Arc<LinkCtx>, listener: TcpListener) -> anyhow::Result<()> {
    let cfg = link.cfg();
    info!(link = %link.name, listen = %listener.local_addr()?, master = %link.master(),
          flavor = %cfg.flavor, guard = %cfg.guard, "link ready");
    link.tasks.spawn(link::serve(
        link.clone(),
        listener,
        link.stop.clone(),
        link.tasks.clone(),
    ));
    link.tasks
        .spawn(link::keep(link.clone(), link.stop.clone()));
    Ok(())
}

impl Running {
    fn grace(&self) -> Duration {
        Duration::from_millis(self.grace_ms.load(Relaxed))
    }

    /// Stops accepting, closes every session and waits for them to report.
    pub async fn shutdown(self) {
        info!("shutting down");
        self.cancel.cancel();
        self.tracker.close();
        let links = self.links.load();
        for link in links.iter() {
            link.tasks.close();
        }
        let all = async {
            self.tracker.wait().await;
            for link in links.iter() {
                link.tasks.wait().await;
            }
        };
        if tokio::time::timeout(self.grace(), all).await.is_err() {
            warn!(
                grace_ms = self.grace().as_millis() as u64,
                "some tasks did not finish within the shutdown grace period"
            );
        }
        for link in links.iter() {
            link.guard.save_if_dirty().await;
        }
        info!("stopped");
    }

    /// Puts a re-read, validated configuration in force as far as it can be without a restart
    /// (see the module's documentation), and logs one line naming what changed.
    pub async fn reload(&self, config: &Config) {
        let mut changed: Vec<String> = Vec::new();
        let mut not_applied: Vec<String> = Vec::new();
        if config.state_dir != self.state_dir {
            needs_restart(
                &mut not_applied,
                "state_dir".into(),
                &self.state_dir.display().to_string(),
                &config.state_dir.display().to_string(),
            );
        }
        let show = |r: &(Option<PathBuf>, Option<String>)| match r {
            (Some(f), _) => format!("token_file {}", f.display()),
            (None, Some(e)) => format!("token_env {e}"),
            (None, None) => "no token".to_string(),
        };
        let token_ref = (
            config.admin.token_file.clone(),
            config.admin.token_env.clone(),
        );
        if token_ref != self.admin_token_ref {
            needs_restart(
                &mut not_applied,
                "admin.token".into(),
                &show(&self.admin_token_ref),
                &show(&token_ref),
            );
        }
        if !same_addr(&config.admin.listen, &self.admin_listen) {
            needs_restart(
                &mut not_applied,
                "admin.listen".into(),
                &self.admin_listen,
                &config.admin.listen,
            );
        }
        if config.shutdown_grace_ms != self.grace_ms.load(Relaxed) {
            self.grace_ms.store(config.shutdown_grace_ms, Relaxed);
            changed.push("shutdown_grace_ms".into());
        }

        let before = self.links.load();
        let in_file = |name: &str| config.links.iter().any(|lc| lc.name == name);
        let (kept, removed): (Vec<_>, Vec<_>) =
            before.iter().cloned().partition(|l| in_file(&l.name));
        if !removed.is_empty() {
            self.links.store(kept.clone());
            for link in &removed {
                self.remove_link(link).await;
                changed.push(format!("links.{} (removed)", link.name));
            }
        }

        let mut links = Vec::new();
        for lc in &config.links {
            if let Some(link) = kept.iter().find(|l| l.name == lc.name) {
                let r = link.reconfigure(lc).await;
                let path = |f: &str| format!("links.{}.{f}", lc.name);
                let old = link.cfg();
                for f in &r.needs_restart {
                    let group = |g: &Option<String>| g.clone().unwrap_or_else(|| "none".into());
                    let (in_force, file) = match *f {
                        "listen" => (old.listen.clone(), lc.listen.clone()),
                        "group" => (group(&old.group), group(&lc.group)),
                        _ => (old.flavor.to_string(), lc.flavor.to_string()),
                    };
                    needs_restart(&mut not_applied, path(f), &in_force, &file);
                }
                not_applied.extend(r.failed.iter().map(|f| path(f)));
                changed.extend(r.changed.iter().map(|f| path(f)));
                links.push(link.clone());
                continue;
            }
            let books = group_books(kept.iter().chain(&links), lc);
            let added = match bind_link(lc, &self.state_dir, &self.cancel, books).await {
                Ok((link, listener)) => spawn_link(&link, listener).map(|()| link),
                Err(e) => Err(e),
            };
            match added {
                Ok(link) => {
                    changed.push(format!("links.{} (added)", lc.name));
                    links.push(link);
                }
                Err(e) => {
                    error!(link = %lc.name, "reload: the new link is not started: {e:#}");
                    not_applied.push(format!("links.{} (added)", lc.name));
                }
            }
        }
        self.links.store(links);

        let not_applied = (!not_applied.is_empty()).then(|| not_applied.join(", "));
        if changed.is_empty() {
            info!(
                not_applied = not_applied.as_deref(),
                "configuration re-read: nothing changed"
            );
        } else {
            info!(
                changed = changed.join(", ").as_str(),
                not_applied = not_applied.as_deref(),
                "configuration reloaded"
            );
        }
    }

    /// Stops a link a reload removed, as shutdown stops them all: its listener closes, its
    /// sessions close (their replicas see the connection drop), then its ledger is saved.
    async fn remove_link(&self, link: &LinkCtx) {
        link.stop.cancel();
        link.tasks.close();
        let grace = self.grace();
        if tokio::time::timeout(grace, link.tasks.wait())
            .await
            .is_err()
        {
            warn!(link = %link.name, grace_ms = grace.as_millis() as u64,
                  "reload: some sessions of the removed link did not end within the shutdown grace period");
        }
        link.guard.save_if_dirty().await;
        info!(link = %link.name, "link removed: its listener and sessions are closed, its ledger saved");
    }
}

/// Logs that `field` needs a restart to change and notes it as not applied.
fn needs_restart(not_applied: &mut Vec<String>, field: String, in_force: &str, file: &str) {
    warn!(
        field = field.as_str(),
        in_force, file, "reload: {field} changes only with a restart; the old value stays in force"
    );
    not_applied.push(field);
}
