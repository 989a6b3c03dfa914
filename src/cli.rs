//! The command line: `serve`, `check`, `demo` and `ctl`.
//!
//! Each subcommand is a function returning the process exit code; errors are rendered here, once.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, DEFAULT_CONFIG_PATH};
use crate::demo::{self, DemoBackends};
use crate::server::{ProcessSignals, RunMode, Switchyard};

/// switchyard: a reverse proxy for blue/green and canary deploys.
#[derive(Debug, Parser)]
#[command(name = "switchyard", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy.
    Serve {
        /// The configuration file.
        #[arg(short, long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Take over the listening sockets of a running switchyard. Set by `switchyard ctl
        /// upgrade`, which starts this process; not for use by hand.
        #[arg(long, hide = true)]
        upgrade: bool,
    },
    /// Validate a configuration file: print every error, exit 0 if there is none, 1 otherwise.
    Check {
        #[arg(short, long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Run a self-contained demo on loopback: two demo pools and the proxy on 127.0.0.1:8080.
    Demo {
        /// Where the demo proxy listens.
        #[arg(long, default_value = demo::DEMO_LISTEN)]
        listen: String,
        /// Where the demo serves /metrics.
        #[arg(long, default_value = demo::DEMO_METRICS)]
        metrics: String,
    },
    /// Talk to a running switchyard's admin API.
    Ctl(Box<crate::ctl::CtlArgs>),
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Serve { config, upgrade } => serve(&config, upgrade),
        Command::Demo { listen, metrics } => run_demo(&listen, &metrics),
        Command::Ctl(args) => crate::ctl::run(*args),
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match Config::load(path) {
        Ok(config) => {
            println!("{}: ok: {}", path.display(), config.summary());
            for warning in unresolved_names(&config) {
                eprintln!("{}: warning: {warning}", path.display());
            }
            let now = std::time::SystemTime::now();
            // Config::load has checked every certificate; this only finds the ones near expiry.
            if let Ok(certs) = crate::tls::Certificates::load(&config.tls, now) {
                for warning in certs.warnings(now) {
                    eprintln!("{}: warning: {warning}", path.display());
                }
            }
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!(
                "{}: {} error(s); nothing was started",
                path.display(),
                errors.0.len()
            );
            ExitCode::from(1)
        }
    }
}

/// The backend names that do not resolve now, each with why: worth a warning, not an error
/// (the name may be registered by the deploy that is about to happen).
fn unresolved_names(config: &Config) -> Vec<String> {
    let names: Vec<_> = config.pools.iter().flat_map(|p| p.names.clone()).collect();
    if names.is_empty() {
        return Vec::new();
    }
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return vec!["cannot start a runtime to resolve the backend names".into()];
    };
    rt.block_on(crate::dns::Names::lookup_all(&config.dns, names))
        .into_iter()
        .filter_map(|(name, answer)| {
            answer.err().map(|e| {
                format!(
                    "backend name {name} does not resolve now ({e}); its pool gets its addresses \
                     once it does"
                )
            })
        })
        .collect()
}

/// Catches signals from the start, so none arriving during start-up is lost.
fn signals() -> Option<ProcessSignals> {
    match ProcessSignals::install() {
        Ok(s) => Some(s),
        Err(e) => {
            // Before the log subscriber may exist: straight to stderr.
            eprintln!("error: cannot install signal handlers: {e}");
            None
        }
    }
}

fn serve(path: &std::path::Path, upgrade: bool) -> ExitCode {
    let Some(signals) = signals() else {
        return ExitCode::from(1);
    };
    // The config says how to log (so the subscriber waits for it); its own errors go to stderr
    // as `check` prints them.
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!(
                "{}: {} error(s); refusing to start (run `switchyard check -c {}` after fixing)",
                path.display(),
                errors.0.len(),
                path.display()
            );
            return ExitCode::from(1);
        }
    };
    crate::logging::init_with(&config.log);
    // Reload re-reads, and `ctl upgrade` restarts from, the same file, by its absolute path
    // (the proxy's working directory is not the operator's).
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mode = RunMode {
        hand_over: Some(signals.hand_over_trigger()),
        upgrade,
        ..RunMode::process()
    };
    match Switchyard::build(config, Some(path), mode) {
        Ok(mut app) => {
            app.reload_on(&signals);
            app.run(signals.run_args());
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::from(1)
        }
    }
}

fn run_demo(listen: &str, metrics: &str) -> ExitCode {
    crate::logging::init();
    let Some(signals) = signals() else {
        return ExitCode::from(1);
    };
    let dir = match tempfile::Builder::new()
        .prefix("switchyard-demo-")
        .tempdir()
    {
        Ok(d) => d,
        Err(e) => {
            tracing::error!("cannot create a temporary directory for the demo: {e}");
            return ExitCode::from(1);
        }
    };
    let backends = match DemoBackends::bind(&["blue", "green"]) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!("cannot start the demo backends on loopback: {e}");
            return ExitCode::from(1);
        }
    };
    let toml = backends.config_toml(listen, metrics, dir.path());
    let config = match Config::parse(&toml, "<demo>") {
        Ok(c) => c,
        Err(e) => {
            // The demo config is generated; an error here is a bug, and worth showing in full.
            tracing::error!("the generated demo configuration is invalid:\n{e}\n{toml}");
            return ExitCode::from(1);
        }
    };
    let banner = demo::banner(listen, &config.admin.socket, &backends.pools);
    let mut app = match Switchyard::build(config, None, RunMode::process()) {
        Ok(app) => app,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(1);
        }
    };
    app.add_background("demo backends", backends);
    let switchboard = app.switchboard();
    app.add_background(
        "demo banner",
        demo::Banner {
            text: banner,
            switchboard,
        },
    );
    app.run(signals.run_args());
    drop(dir);
    ExitCode::SUCCESS
}
