//! The `replguard` command line: `run`, `check` and `status`.

use clap::{Parser, Subcommand};
use replguard::config::{parse_addr, Config, ConfigError, ConfigProblem, MasterAddr};
use replguard::conn::tls::LinkTls;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "replguard",
    version,
    about = "A replication proxy that guards replicas' resume points"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the proxy.
    Run {
        /// The YAML configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a configuration file: lists every problem with its YAML path.
    Check {
        /// The YAML configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print a running replguard's books: one line per session, then held replicas.
    ///
    /// Exit code 0: nothing to attend to; 2: a replica is held or lags; 1: replguard's admin
    /// listener cannot be read.
    #[command(group = clap::ArgGroup::new("target").required(true))]
    Status {
        /// The running replguard's configuration file; only admin.listen is read.
        #[arg(long, short, group = "target")]
        config: Option<PathBuf>,
        /// The admin listener's address (IP:port), instead of --config.
        #[arg(long, group = "target", value_parser = parse_addr)]
        admin: Option<SocketAddr>,
        /// A replica lags when its oldest unacknowledged byte is older than this.
        #[arg(long, default_value_t = 10.0, value_parser = parse_seconds)]
        max_lag_seconds: f64,
    },
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("{s:?} is not a number of seconds (0 or more)")),
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Usage errors exit 1, not clap's 2: `status` keeps 2 for "a replica needs attention".
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.command {
        Cmd::Status {
            config,
            admin,
            max_lag_seconds,
        } => {
            let listen = match (admin, config) {
                (Some(addr), _) => addr,
                (None, Some(path)) => match Config::admin_listen_in_file(&path) {
                    Ok(addr) => addr,
                    Err(e) => {
                        eprint!("{e}");
                        return ExitCode::FAILURE;
                    }
                },
                (None, None) => unreachable!("clap requires --config or --admin"),
            };
            status(listen, max_lag_seconds)
        }
        Cmd::Check { config } => match Config::load_file(&config).and_then(|c| {
            tls_problems(&c, &config)?;
            Ok(c)
        }) {
            Ok(c) => {
                println!(
                    "{}: valid ({} link{})",
                    config.display(),
                    c.links.len(),
                    if c.links.len() == 1 { "" } else { "s" }
                );
                for w in c.warnings() {
                    eprintln!("warning: {w}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprint!("{e}");
                ExitCode::FAILURE
            }
        },
        Cmd::Run { config } => {
            let cfg = match Config::load_file(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprint!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            init_logging();
            for w in cfg.warnings() {
                tracing::warn!(path = %w.path, "configuration: {}", w.message);
            }
            let rt = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("replguard: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(run(cfg, &config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    // Straight to stderr: REPLGUARD_LOG may filter out every log line, and the
                    // reason replguard stopped must never be one of them.
                    eprintln!("replguard: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// `replguard status`: prints the books of the replguard whose admin listener is at `listen`.
fn status(listen: SocketAddr, max_lag_seconds: f64) -> ExitCode {
    use replguard::ops::report as status;
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("replguard status: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let doc = match rt.block_on(status::fetch(status::connect_addr(listen), status::TIMEOUT)) {
        Ok(doc) => doc,
        Err(e) => {
            eprintln!("replguard status: {e}");
            return ExitCode::FAILURE;
        }
    };
    let report = status::report(&doc, max_lag_seconds);
    print!("{}", report.text);
    if report.attention.is_empty() {
        return ExitCode::SUCCESS;
    }
    println!();
    for a in &report.attention {
        println!("attention: {a}");
    }
    ExitCode::from(2)
}

/// Runs until SIGTERM/SIGINT; SIGHUP re-reads the configuration file.
async fn run(cfg: Config, path: &std::path::Path) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let running = replguard::server::start(cfg).await?;
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM received"); break }
            _ = int.recv() => { tracing::info!("SIGINT received"); break }
            _ = hup.recv() => reload(&running, path).await,
        }
    }
    running.shutdown().await;
    Ok(())
}

/// SIGHUP: re-reads and checks the file as `check` does; a valid one is put in force, one with
/// problems changes nothing and each problem is logged with its YAML path.
async fn reload(running: &replguard::server::Running, path: &std::path::Path) {
    tracing::info!(file = %path.display(), "SIGHUP received: re-reading the configuration");
    // Off the runtime: checking the file looks up masters given by name.
    let file = path.to_path_buf();
    let loaded = tokio::task::spawn_blocking(move || Config::load_file(&file))
        .await
        .unwrap_or_else(|e| {
            Err(ConfigError {
                source_name: path.display().to_string(),
                problems: vec![ConfigProblem {
                    path: "(file)".into(),
                    message: format!("the check did not finish: {e}"),
                }],
            })
        });
    match loaded {
        Ok(new) => running.reload(&new).await,
        Err(e) => {
            for p in &e.problems {
                tracing::error!(file = %e.source_name, path = %p.path, "configuration problem: {}", p.message);
            }
            tracing::error!(
                problems = e.problems.len(),
                "SIGHUP: configuration not reloaded, nothing changed"
            );
        }
    }
}

/// Logs to stderr with the `REPLGUARD_LOG` filter; one that cannot be used as given (empty,
/// unparsable, or naming something that is neither a level nor `target=level`) is reported and
/// replaced by `info`, so a typo never silences replguard.
fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let (filter, warning) = match std::env::var("REPLGUARD_LOG") {
        Err(std::env::VarError::NotPresent) => (EnvFilter::new("info"), None),
        Err(std::env::VarError::NotUnicode(raw)) => (
            EnvFilter::new("info"),
            Some(format!(
                "REPLGUARD_LOG={raw:?} is not UTF-8; logging at info instead"
            )),
        ),
        Ok(raw) => match log_filter(&raw) {
            Ok(f) => (f, None),
            Err(why) => (
                EnvFilter::new("info"),
                Some(format!(
                    "REPLGUARD_LOG={raw:?} {why}; logging at info instead"
                )),
            ),
        },
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    if let Some(w) = warning {
        tracing::warn!("{w}");
    }
}

/// The filter `REPLGUARD_LOG` asks for, or why it cannot be used.
///
/// `tracing` reads a bare word that is not a level as a target (`verbose` means "everything from
/// a module named verbose, nothing else"), which would silently turn replguard's logging off;
/// bare words must therefore be levels or replguard's own modules.
fn log_filter(raw: &str) -> Result<tracing_subscriber::EnvFilter, String> {
    use tracing::level_filters::LevelFilter;
    if raw.trim().is_empty() {
        return Err("is empty".into());
    }
    let filter = tracing_subscriber::EnvFilter::builder()
        .parse(raw)
        .map_err(|e| format!("is not a filter ({e})"))?;
    if !raw.contains(['[', '{']) {
        for d in raw.split(',').map(str::trim).filter(|d| !d.is_empty()) {
            let ours = d == "replguard" || d.starts_with("replguard::");
            if !(d.contains('=') || ours || d.parse::<LevelFilter>().is_ok()) {
                return Err(format!(
                    "is not a filter: `{d}` is neither a level (trace, debug, info, warn, error, off) nor target=level (e.g. replguard::redis::session=debug)"
                ));
            }
        }
    }
    Ok(filter)
}

/// Loads every link's TLS files, as `run` would, so `check` reports a certificate that does
/// not load with the field it came from.
fn tls_problems(c: &Config, path: &std::path::Path) -> Result<(), ConfigError> {
    let mut problems = Vec::new();
    for (i, l) in c.links.iter().enumerate() {
        let Ok(master) = MasterAddr::parse(&l.master) else {
            continue;
        };
        if let Err(e) = LinkTls::load(l.tls.as_ref(), l.master_tls.as_ref(), &master) {
            problems.push(ConfigProblem {
                path: format!("links[{i}].{}", e.field),
                message: e.message,
            });
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ConfigError {
            source_name: path.display().to_string(),
            problems,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::log_filter;

    #[test]
    fn log_filters_that_would_silence_replguard_are_refused() {
        for ok in [
            "info",
            "DEBUG",
            "warn,replguard::redis::session=trace",
            "replguard",
            "h2=debug,info",
        ] {
            assert!(log_filter(ok).is_ok(), "{ok}");
        }
        for (bad, why) in [
            ("verbose", "`verbose` is neither a level"),
            ("info,verbose", "`verbose` is neither a level"),
            ("", "is empty"),
            ("  ", "is empty"),
            ("replguard=loud", "is not a filter ("),
        ] {
            let e = log_filter(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }
}
