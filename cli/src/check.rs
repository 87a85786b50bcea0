//! `meridian config check FILE`.

use std::path::Path;
use std::process::ExitCode;

use raft::model::GatewayConfig;

/// Prints every violated rule, one per line; exit code 1 when there is any.
pub(crate) fn main(file: &Path) -> ExitCode {
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(error) => {
            eprintln!("{}: cannot read: {error}", file.display());
            return ExitCode::from(66);
        }
    };
    match GatewayConfig::parse(&text) {
        Ok(config) => {
            println!(
                "{}: ok ({} upstreams, {} routes, {} versioned APIs)",
                file.display(),
                config.upstreams.len(),
                config.routes.len(),
                config.versioning.len()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for error in &errors.0 {
                eprintln!("{}: {error}", file.display());
            }
            eprintln!("{}: {} error(s)", file.display(), errors.0.len());
            ExitCode::FAILURE
        }
    }
}
