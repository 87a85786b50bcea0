//! `meridian node run --config node.toml [--gateway FILE]`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use node::config::{Config, RawConfig};

#[derive(clap::Args)]
pub(crate) struct Args {
    /// The node's own settings.
    #[arg(long, short)]
    config: PathBuf,
    /// A gateway configuration to load at start and on SIGHUP (overrides `gateway` in node.toml).
    #[arg(long)]
    gateway: Option<PathBuf>,
}

/// Exit code for a configuration that cannot be used (EX_CONFIG).
const EXIT_CONFIG: u8 = 78;

pub(crate) fn main(args: Args) -> ExitCode {
    let mut raw = match RawConfig::load(&args.config) {
        Ok(raw) => raw,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Some(gateway) = args.gateway {
        raw.gateway = Some(gateway);
    }
    let config = match raw.validate() {
        Ok(config) => config,
        Err(errors) => {
            for error in &errors.0 {
                eprintln!("{}: {error}", args.config.display());
            }
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match serve(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("meridian: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Builds the runtime the configuration asks for and runs the node on it.
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

fn serve(config: Config) -> anyhow::Result<()> {
    init_tracing(&config.log.level);
    runtime(config.runtime.worker_threads)?.block_on(async {
        let app = node::App::build(config, None).await?;
        app.run(node::shutdown::signal()).await;
        Ok(())
    })
}
