//! `meridian node run --config node.toml [--gateway FILE]`, `meridian node
//! drain [--wait]`, and the runtime and logging set-up every long-running
//! command shares.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use node::config::{Config, RawConfig};

#[derive(clap::Subcommand)]
pub(crate) enum Command {
    /// Run one node from its node.toml.
    Run(Args),
    /// Drain a running node (for rolling restarts): it reports unhealthy to
    /// DNS GSLB and anycast at once, keeps serving for
    /// `shutdown.drain-delay`, finishes its in-flight requests, then exits.
    Drain {
        /// Return only once the node has stopped (its admin API is gone).
        #[arg(long)]
        wait: bool,
        /// How long `--wait` waits.
        #[arg(long, default_value = "2m")]
        timeout: humantime::Duration,
        #[command(flatten)]
        target: crate::admin::Target,
    },
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

pub(crate) fn main(command: Command) -> ExitCode {
    let args = match command {
        Command::Run(args) => args,
        Command::Drain {
            wait,
            timeout,
            target,
        } => {
            return match block_on(drain(target, wait, timeout.into())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("meridian: {error:#}");
                    ExitCode::FAILURE
                }
            };
        }
    };
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

/// `meridian node drain`: asks the node to drain; with `wait`, polls its
/// `/healthz` until it no longer answers.
async fn drain(
    target: crate::admin::Target,
    wait: bool,
    timeout: std::time::Duration,
) -> anyhow::Result<()> {
    let answer = target
        .call(http::Method::POST, "/v1/node/drain", None)
        .await?;
    println!(
        "node {} draining: reporting unhealthy now, closing its listeners in {} ms, then giving in-flight requests up to {} ms",
        answer["node"], answer["drain_delay_ms"], answer["grace_period_ms"]
    );
    if !wait {
        return Ok(());
    }
    let deadline = tokio::time::Instant::now() + timeout;
    while target
        .call(http::Method::GET, "/healthz", None)
        .await
        .is_ok()
    {
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("the node is still running after {timeout:?}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    println!("node stopped");
    Ok(())
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
