//! `meridian config check FILE`: a gateway configuration (`.yaml`, `.json`)
//! or, for a `.toml` file, a node's own settings (node.toml).

use std::path::Path;
use std::process::ExitCode;

use node::config::RawConfig;
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
    if file.extension().is_some_and(|e| e == "toml") {
        return node_config(file, &text);
    }
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
        Err(errors) => report(file, &errors.0),
    }
}

/// Checks a node.toml the way `meridian node run` does before it starts.
fn node_config(file: &Path, text: &str) -> ExitCode {
    let raw = match RawConfig::parse(text) {
        Ok(raw) => raw,
        Err(message) => return report(file, &[message]),
    };
    match raw.validate() {
        Ok(config) => {
            println!(
                "{}: ok (node {} in region {})",
                file.display(),
                config.id,
                config.region
            );
            ExitCode::SUCCESS
        }
        Err(errors) => report(file, &errors.0),
    }
}

/// Prints each error under the file's name, then how many; a failure.
fn report(file: &Path, errors: &[impl std::fmt::Display]) -> ExitCode {
    for error in errors {
        eprintln!("{}: {error}", file.display());
    }
    eprintln!("{}: {} error(s)", file.display(), errors.len());
    ExitCode::FAILURE
}
