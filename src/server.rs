//! Starting and stopping the whole proxy: bind every listener first (so a taken port is reported
//! before anything runs), then serve until shutdown.
//!
//! Shutdown, in order:
//! 1. the cancellation token fires: listeners stop accepting, every session's relay is cancelled
//!    and both of its sockets close (replicas reconnect and resume on their own); idle admin
//!    connections close, and an admin request under way is answered first;
//! 2. each session logs its books as it ends;
//! 3. replguard waits up to `shutdown_grace_ms` for that, then returns.

use crate::config::Config;
use crate::config::Flavor;
use crate::guard::store::StateDirLock;
use crate::kvrocks::Kvrocks;
use crate::link::{self, Flavour, LinkCtx};
use crate::ops::admin::{self, AdminState};
use crate::redis::Redis;
use anyhow::Context;
use std::net::SocketAddr;
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
    /// Where each link listens, in configuration order.
    pub link_addrs: Vec<SocketAddr>,
    /// The links, for in-process inspection.
    pub links: Vec<Arc<LinkCtx>>,
    cancel: CancellationToken,
    tracker: TaskTracker,
    grace: Duration,
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
    let mut links = Vec::new();
    let mut link_addrs = Vec::new();
    let mut listeners = Vec::new();
    for lc in &config.links {
        let listener = TcpListener::bind(&lc.listen)
            .await
            .with_context(|| format!("link {}: cannot listen on {}", lc.name, lc.listen))?;
        link_addrs.push(listener.local_addr()?);
        let flavour: Box<dyn Flavour> = match lc.flavor {
            Flavor::Redis | Flavor::Valkey => Box::new(Redis),
            Flavor::Kvrocks => Box::new(Kvrocks),
        };
        links.push(Arc::new(LinkCtx::new(
            lc.clone(),
            &config.state_dir,
            &cancel,
            flavour,
        )?));
        listeners.push(listener);
    }
    let admin_listener = TcpListener::bind(&config.admin.listen)
        .await
        .with_context(|| format!("admin: cannot listen on {}", config.admin.listen))?;
    let admin_addr = admin_listener.local_addr()?;

    for ((link, listener), addr) in links.iter().zip(listeners).zip(&link_addrs) {
        info!(link = %link.cfg.name, listen = %addr, master = %link.master(),
              flavor = %link.cfg.flavor, guard = %link.cfg.guard, "link ready");
        tracker.spawn(link::serve(
            link.clone(),
            listener,
            cancel.clone(),
            tracker.clone(),
        ));
        tracker.spawn(link::keep(link.clone(), cancel.clone()));
    }
    let token = config.admin.token().map_err(|p| anyhow::anyhow!("{p}"))?;
    let mut own_addrs = vec![("admin listener".to_string(), admin_addr)];
    own_addrs.extend(
        links
            .iter()
            .zip(&link_addrs)
            .map(|(l, a)| (format!("listener of link {}", l.cfg.name), *a)),
    );
    info!(listen = %admin_addr, max_connections = admin::MAX_CONNECTIONS,
          actions = if token.is_some() { "POST with the admin token" } else { "refused: no admin token configured" },
          "admin ready (GET /status, GET /metrics)");
    let state = Arc::new(AdminState {
        links: links.clone(),
        started: Instant::now(),
        cancel: cancel.clone(),
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
        grace: Duration::from_millis(config.shutdown_grace_ms),
        _state_lock: state_lock,
    })
}

impl Running {
    /// Stops accepting, closes every session and waits for them to report.
    pub async fn shutdown(self) {
        info!("shutting down");
        self.cancel.cancel();
        self.tracker.close();
        if tokio::time::timeout(self.grace, self.tracker.wait())
            .await
            .is_err()
        {
            warn!(
                grace_ms = self.grace.as_millis() as u64,
                "some tasks did not finish within the shutdown grace period"
            );
        }
        for link in &self.links {
            link.guard.save_if_dirty().await;
        }
        info!("stopped");
    }

    /// Applies a re-read configuration: a link whose `master` changed is re-pointed (its
    /// sessions close and replicas reconnect), `allow_empty_master: true` releases held
    /// replicas. Other changes need a restart and are reported as such.
    pub async fn reload(&self, config: &Config) {
        for lc in &config.links {
            let Some(link) = self.links.iter().find(|l| l.cfg.name == lc.name) else {
                warn!(link = %lc.name, "reload: new links need a restart");
                continue;
            };
            match crate::config::parse_addr(&lc.master) {
                Ok(addr) if addr != link.master() => link.repoint(addr, &self.cancel).await,
                _ => {}
            }
            if lc.allow_empty_master {
                link.guard.allow_empty_master();
            }
            match link.reload_tls(lc) {
                Ok(()) if lc.tls.is_some() || lc.master_tls.is_some() => {
                    info!(link = %lc.name, "reload: TLS certificates read again")
                }
                Ok(()) => {}
                Err(e) => {
                    error!(link = %lc.name, error = %e, "reload: the TLS material in force stays")
                }
            }
            if lc.listen != link.cfg.listen
                || lc.flavor != link.cfg.flavor
                || lc.guard != link.cfg.guard
            {
                warn!(link = %lc.name, "reload: listen, flavor and guard changes need a restart");
            }
        }
        info!("configuration reloaded");
    }
}
