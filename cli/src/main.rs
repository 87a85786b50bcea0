//! `meridian`: runs a node, runs a local demo, manages a cluster and its
//! replicated configuration.

mod admin;
mod chaos;
mod check;
mod cluster;
mod demo;
mod dev;
mod ops;
mod run;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc: the request path allocates many small, short-lived buffers, and
/// glibc's allocator cost about a tenth of the proxy's CPU in profiles.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "meridian", version, about = "A multi-region API gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a gateway on an embedded demo configuration, with demo backends.
    Dev(dev::Args),
    /// Run a node.
    #[command(subcommand)]
    Node(run::Command),
    /// Create, join, inspect and shrink the cluster.
    #[command(subcommand)]
    Cluster(cluster::Command),
    /// Commit a gateway configuration through the cluster.
    Apply(ops::Apply),
    /// Check, read, compare and roll back gateway configurations.
    #[command(subcommand)]
    Config(ops::Config),
    /// Create and revoke API keys.
    #[command(subcommand)]
    Key(ops::Key),
    /// Revoke credentials.
    #[command(subcommand)]
    Revoke(ops::Revoke),
    /// Run a chaos scenario on a cluster of its own or a deployment (runs `meridian-chaos`).
    Chaos(chaos::Args),
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Dev(args) => return dev::main(args),
        Command::Chaos(args) => return chaos::main(args),
        Command::Node(command) => return run::main(command),
        Command::Config(ops::Config::Check { file }) => return check::main(&file),
        Command::Cluster(command) => cluster::main(command),
        Command::Apply(args) => ops::apply(args),
        Command::Config(command) => ops::config(command),
        Command::Key(command) => ops::key(command),
        Command::Revoke(command) => ops::revoke(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("meridian: {error:#}");
            ExitCode::FAILURE
        }
    }
}
