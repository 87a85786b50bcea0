//! What the chaos integration tests share.

use std::path::PathBuf;

/// The `meridian` binary the tests run: `MERIDIAN_BIN`, or the one cargo
/// built beside the test executable.
pub(crate) fn meridian() -> PathBuf {
    if let Some(path) = std::env::var_os("MERIDIAN_BIN") {
        return path.into();
    }
    // target/debug/deps/<test>-<hash> -> target/debug/meridian
    let exe = std::env::current_exe().expect("the test executable's path");
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("a target directory")
        .join("meridian");
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build --bin meridian` (or set MERIDIAN_BIN)",
        bin.display()
    );
    bin
}
