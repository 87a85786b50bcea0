//! `meridian`: runs a node, runs a local demo, and checks configuration.

mod check;
mod demo;
mod dev;
mod run;

use std::path::PathBuf;

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
    /// Run and manage a node.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Work with gateway configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Subcommand)]
enum NodeCommand {
    /// Run one node from its node.toml.
    Run(run::Args),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a gateway configuration offline; prints every error.
    Check {
        /// The gateway.yaml (or .json) file.
        file: PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    match Cli::parse().command {
        Command::Dev(args) => dev::main(args),
        Command::Node(NodeCommand::Run(args)) => run::main(args),
        Command::Config(ConfigCommand::Check { file }) => check::main(&file),
    }
}
