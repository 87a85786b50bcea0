//! `meridian chaos …`: runs `meridian-chaos`, the chaos harness's binary,
//! found next to this executable (a git-style external subcommand), so
//! that `cli` does not depend on the `chaos` crate. The harness is pointed
//! at this `meridian` through `MERIDIAN_BIN` unless that is already set.

use std::ffi::OsString;
use std::process::{Command, ExitCode};

/// The harness's binary name.
const HARNESS: &str = "meridian-chaos";

#[derive(clap::Args)]
#[command(disable_help_flag = true)]
pub(crate) struct Args {
    /// Arguments for meridian-chaos: `list`, `run NAME|FILE [--seed N]
    /// [--duration D] [--out DIR] [--network namespaces|loopback]
    /// [--target HOST:PORT --hook FAULT=CMD …]`, `--help`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
    args: Vec<OsString>,
}

pub(crate) fn main(args: Args) -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(error) => {
            eprintln!("meridian chaos: cannot locate this executable: {error}");
            return ExitCode::from(2);
        }
    };
    let harness = exe.with_file_name(HARNESS);
    if !harness.is_file() {
        eprintln!(
            "meridian chaos: {} is missing; it ships beside meridian (build it with `cargo build -p chaos`)",
            harness.display()
        );
        return ExitCode::from(2);
    }
    let mut command = Command::new(&harness);
    command.args(&args.args);
    if std::env::var_os("MERIDIAN_BIN").is_none() {
        command.env("MERIDIAN_BIN", &exe);
    }
    exec(command, &harness)
}

#[cfg(unix)]
fn exec(mut command: Command, harness: &std::path::Path) -> ExitCode {
    use std::os::unix::process::CommandExt;
    let error = command.exec();
    eprintln!("meridian chaos: cannot run {}: {error}", harness.display());
    ExitCode::from(2)
}

#[cfg(not(unix))]
fn exec(mut command: Command, harness: &std::path::Path) -> ExitCode {
    match command.status() {
        Ok(status) => ExitCode::from(status.code().unwrap_or(2).clamp(0, 255) as u8),
        Err(error) => {
            eprintln!("meridian chaos: cannot run {}: {error}", harness.display());
            ExitCode::from(2)
        }
    }
}
