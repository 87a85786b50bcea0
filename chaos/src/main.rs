//! `meridian-chaos` (also `meridian chaos …`): runs a chaos scenario on a
//! cluster of real `meridian` processes (a network namespace per region
//! when root, loopback otherwise) and writes its report.
//!
//! ```text
//! meridian-chaos list
//! meridian-chaos run <NAME|FILE> [--seed N] [--duration D] [--out DIR] [--meridian PATH]
//!     [--network loopback|namespaces]
//! meridian-chaos run <NAME|FILE> --target HOST:PORT --hook FAULT=CMD --hook FAULT.heal=CMD
//!     [--consumer NAME --probe-path PATH] [--route PATH]…
//! ```
//!
//! Exit status: 0 when every invariant held, 1 when one failed, 2 when the
//! run itself could not be made, 64 for an invalid scenario, 130 / 143 when
//! SIGINT / SIGTERM stopped it (the nodes it started are killed and its
//! namespaces deleted first).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use chaos::cluster::Network;
use chaos::report::Report;
use chaos::run::Options;
use chaos::scenario::{self, Scenario};
use chaos::target;

#[derive(Parser)]
#[command(
    name = "meridian-chaos",
    version,
    about = "Fault injection for Meridian: real nodes, real faults, checked invariants"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the built-in scenarios.
    List,
    /// Run a scenario (a built-in name or a TOML file) and write its report.
    Run(Box<RunArgs>),
}

#[derive(clap::Args)]
struct RunArgs {
    /// A built-in scenario name (see `list`) or a scenario file.
    scenario: String,
    /// Override the scenario's seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Override the scenario's duration (e.g. 30s).
    #[arg(long)]
    duration: Option<humantime::Duration>,
    /// Where the report, node configs, data dirs and logs go
    /// (default: `./chaos-SCENARIO-SEED`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The meridian binary (default: `meridian` next to this one).
    #[arg(long, env = "MERIDIAN_BIN")]
    meridian: Option<PathBuf>,
    /// How the cluster's nodes are networked: `namespaces` (a network
    /// namespace per region, root only) or `loopback` (default: namespaces
    /// when root and iproute2 is there, else loopback).
    #[arg(long, conflicts_with = "target")]
    network: Option<Network>,
    #[command(flatten)]
    target: TargetArgs,
}

/// Running against an existing deployment instead of a cluster of its own.
#[derive(clap::Args)]
struct TargetArgs {
    /// The admin address (host:port) of any node of an existing deployment
    /// to run against; its faults need --hook. Admin calls carry
    /// MERIDIAN_TOKEN. Config writes add marker routes, and the
    /// configuration in force is put back at the end.
    #[arg(long)]
    target: Option<String>,
    /// FAULT=COMMAND or FAULT.heal=COMMAND: how to inject or heal a fault on
    /// the target (`sh -c`; {id}, {region}, {admin}, {proxy}, {cut},
    /// {delay}, {jitter}, {loss}, {offset} are filled in). Repeatable.
    #[arg(long = "hook", requires = "target")]
    hooks: Vec<String>,
    /// On the target: the consumer to create and revoke keys for.
    #[arg(long, requires = "target")]
    consumer: Option<String>,
    /// On the target: a proxy path whose route requires an API key, where
    /// revoked keys are tried.
    #[arg(long, requires = "target")]
    probe_path: Option<String>,
    /// On the target: a path for the load instead of the scenario's routes.
    /// Repeatable.
    #[arg(long = "route", requires = "target")]
    routes: Vec<String>,
}

/// Exit code for an invalid scenario (EX_USAGE).
const EXIT_USAGE: u8 = 64;

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MERIDIAN_CHAOS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    match Cli::parse().command {
        Command::List => {
            for (name, text) in scenario::BUILTIN {
                let description = Scenario::load(text, None, None)
                    .map(|s| s.description)
                    .unwrap_or_else(|e| format!("(invalid: {e})"));
                println!("{name:<22} {description}");
            }
            ExitCode::SUCCESS
        }
        Command::Run(args) => {
            let RunArgs {
                scenario,
                seed,
                duration,
                out,
                meridian,
                network,
                target,
            } = *args;
            let text = match scenario::builtin(&scenario) {
                Some(text) => text.to_owned(),
                None => match std::fs::read_to_string(&scenario) {
                    Ok(text) => text,
                    Err(error) => {
                        eprintln!(
                            "meridian-chaos: {scenario} is neither a built-in scenario (see `list`) nor a readable file: {error}"
                        );
                        return ExitCode::from(EXIT_USAGE);
                    }
                },
            };
            let scenario = match Scenario::load(&text, seed, duration.map(Into::into)) {
                Ok(s) => s,
                Err(errors) => {
                    for error in &errors.0 {
                        eprintln!("meridian-chaos: {scenario}: {error}");
                    }
                    return ExitCode::from(EXIT_USAGE);
                }
            };
            let target = match target.settings() {
                Ok(target) => target,
                Err(error) => {
                    eprintln!("meridian-chaos: {error}");
                    return ExitCode::from(EXIT_USAGE);
                }
            };
            match execute(&scenario, out, meridian, target, network) {
                Ok(Ended::Judged(report)) => {
                    print!("{}", report.summary());
                    if report.pass {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Ok(Ended::Interrupted { signal, code }) => {
                    eprintln!("meridian-chaos: interrupted by {signal}; no report");
                    ExitCode::from(code)
                }
                Err(error) => {
                    eprintln!("meridian-chaos: {error:#}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

impl TargetArgs {
    fn settings(self) -> Result<Option<target::Settings>, String> {
        let Some(admin) = self.target else {
            return Ok(None);
        };
        Ok(Some(target::Settings {
            admin,
            hooks: target::parse_hooks(&self.hooks)?,
            consumer: self.consumer,
            probe_path: self.probe_path,
            routes: self.routes,
        }))
    }
}

/// How a run ended.
enum Ended {
    /// It ran to the end and was judged.
    Judged(Box<Report>),
    /// SIGINT or SIGTERM stopped it: the cluster was stopped (its
    /// processes killed by PID, its namespaces deleted) and no report
    /// written. `code` is the shell's 128 + signal number.
    Interrupted { signal: &'static str, code: u8 },
}

/// Waits for SIGINT or SIGTERM; the signal's name and exit code.
async fn interrupted() -> (&'static str, u8) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        // Without handlers the default action (exit) stays: never resolve.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => ("SIGINT", 130),
        _ = term.recv() => ("SIGTERM", 143),
    }
}

fn execute(
    scenario: &Scenario,
    out: Option<PathBuf>,
    meridian: Option<PathBuf>,
    target: Option<target::Settings>,
    network: Option<Network>,
) -> anyhow::Result<Ended> {
    let meridian = match meridian {
        Some(path) => path,
        None => std::env::current_exe()
            .context("locating this executable")?
            .with_file_name("meridian"),
    };
    let out =
        out.unwrap_or_else(|| PathBuf::from(format!("chaos-{}-{}", scenario.name, scenario.seed)));
    let network = network.unwrap_or_else(Network::best);
    let against = match &target {
        Some(t) => format!("against the deployment at {}", t.admin),
        None => format!(
            "on {} with {}",
            match network {
                Network::Loopback => "loopback",
                Network::Namespaces => "a network namespace per region",
            },
            meridian.display()
        ),
    };
    eprintln!(
        "meridian-chaos: running {} (seed {}, {:?}) {against}; report in {}",
        scenario.name,
        scenario.seed,
        scenario.duration,
        out.display()
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let options = Options {
        meridian: meridian.clone(),
        out: out.clone(),
        target,
        network: Some(network),
    };
    let remote = options.target.is_some();
    // Dropping the run on a signal drops its cluster, which kills every
    // node it started and deletes its namespaces.
    let report = runtime.block_on(async {
        tokio::select! {
            report = chaos::run_and_judge(scenario, &options) => report.map(Ok),
            (signal, code) = interrupted() => Ok(Err((signal, code))),
        }
    })?;
    let report = match report {
        Ok(report) => report,
        Err((signal, code)) => {
            if remote {
                eprintln!(
                    "meridian-chaos: the deployment's configuration was not put back: marker routes chaos-w… may remain, and a fault's heal hook may not have run"
                );
            }
            return Ok(Ended::Interrupted { signal, code });
        }
    };
    let (md, json) = report.write(&out)?;
    eprintln!(
        "meridian-chaos: report: {} and {}",
        md.display(),
        json.display()
    );
    Ok(Ended::Judged(Box::new(report)))
}
