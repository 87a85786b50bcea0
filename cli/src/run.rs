//! `meridian node run --config node.toml [--gateway FILE]`, and the runtime
//! and logging set-up every long-running command shares.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use node::config::{Config, RawConfig};

#[derive(clap::Subcommand)]
pub(crate) enum Command {
    /// Run one node from its node.toml.
    Run(Args),
}

#[derive(clap::Args)]
pub(crate) struct Args {
    /// The node's own settings.
    #[arg(long, short)]
    config: PathBuf,
    /// A gateway configuration to commit at start and on SIGHUP (overrides `gateway` in node.toml).
    #[arg(long)]
    gateway: Option<PathBuf>,
}

/// Exit code for a configuration that cannot be used (EX_CONFIG).
const EXIT_CONFIG: u8 = 78;

pub(crate) fn main(Command::Run(args): Command) -> ExitCode {
    match load(&args.config, args.gateway) {
        Ok(config) => match serve(config, None) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("meridian: {error:#}");
                ExitCode::FAILURE
            }
        },
        Err(message) => {
            eprintln!("{message}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// Reads and validates a node.toml; the error lists every broken rule.
fn load(path: &Path, gateway: Option<PathBuf>) -> Result<Config, String> {
    let mut raw = RawConfig::load(path).map_err(|e| e.to_string())?;
    if let Some(gateway) = gateway {
        raw.gateway = Some(gateway);
    }
    raw.validate().map_err(|errors| {
        errors
            .0
            .iter()
            .map(|e| format!("{}: {e}", path.display()))
            .collect::<Vec<_>>()
            .join("\n")
    })
}

/// Runs the node of `path`, joining with `join` first when given.
pub(crate) fn serve_file(
    path: &Path,
    gateway: Option<PathBuf>,
    join: Option<String>,
) -> anyhow::Result<()> {
    let config = load(path, gateway).map_err(|message| anyhow::anyhow!(message))?;
    serve(config, join)
}

/// Builds the runtime the configuration asks for.
pub(crate) fn runtime(worker_threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let runtime = if worker_threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        if worker_threads > 1 {
            builder.worker_threads(worker_threads);
        }
        builder.enable_all().build()
    };
    runtime.context("cannot start the async runtime")
}

/// Runs a short command on a small runtime.
pub(crate) fn block_on(future: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(future)
}

/// Initialises the diagnostic log (stderr, so stdout stays the access log).
pub(crate) fn init_tracing(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

fn serve(config: Config, join: Option<String>) -> anyhow::Result<()> {
    init_tracing(&config.log.level);
    runtime(config.runtime.worker_threads)?.block_on(async {
        let app = match join {
            Some(token) => node::App::join(config, &token).await?,
            None => node::App::build(config, None).await?,
        };
        app.run(node::shutdown::signal()).await;
        Ok(())
    })
}
