//! Shared helpers for cross-service tests and benchmarks.

use std::fmt;
use std::path::{Path, PathBuf};

/// The environment variable that names the `switchboard` binary to start, when it is not
/// the one Cargo built next to the running test or benchmark.
pub const SWITCHBOARD_BIN: &str = "SWITCHBOARD_BIN";

/// The `switchboard` binary is not where it was looked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingBinary {
    /// Where it was looked for.
    pub path: PathBuf,
    /// The command that builds it there.
    pub build: &'static str,
}

impl fmt::Display for MissingBinary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no switchboard binary at {}: run `{}` first, or set {SWITCHBOARD_BIN} to one",
            self.path.display(),
            self.build
        )
    }
}

impl std::error::Error for MissingBinary {}

/// The `switchboard` binary the end-to-end tests and the benchmarks start: the one
/// `SWITCHBOARD_BIN` names when it is set, else the one Cargo built in the same profile
/// directory as the running executable (a test runs from `target/<profile>/deps/`, the
/// bench from `target/<profile>/`, and the binary is `target/<profile>/switchboard`).
pub fn find_switchboard_bin() -> Result<PathBuf, MissingBinary> {
    let running = std::env::current_exe().unwrap_or_default();
    find_switchboard_bin_from(
        std::env::var_os(SWITCHBOARD_BIN).map(PathBuf::from),
        &running,
    )
}

/// [`find_switchboard_bin`] for a given `SWITCHBOARD_BIN` and running executable.
fn find_switchboard_bin_from(
    named: Option<PathBuf>,
    running: &Path,
) -> Result<PathBuf, MissingBinary> {
    let mut profile_dir = running.parent().unwrap_or(Path::new("."));
    if profile_dir.file_name().is_some_and(|name| name == "deps") {
        profile_dir = profile_dir.parent().unwrap_or(profile_dir);
    }
    let build = if profile_dir
        .file_name()
        .is_some_and(|name| name == "release")
    {
        "cargo build --release -p switchboard"
    } else {
        "cargo build -p switchboard"
    };
    let path = named.unwrap_or_else(|| {
        profile_dir.join(format!("switchboard{}", std::env::consts::EXE_SUFFIX))
    });
    if path.is_file() {
        Ok(path)
    } else {
        Err(MissingBinary { path, build })
    }
}

/// [`find_switchboard_bin`], for tests: a missing binary fails the test with the command
/// that builds it.
pub fn switchboard_bin() -> PathBuf {
    find_switchboard_bin().unwrap_or_else(|missing| panic!("{missing}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_binary_names_the_command_that_builds_it() {
        let dir = std::env::temp_dir().join(switchboard_eventlog::testing::unique_name());
        let deps = dir.join("debug").join("deps");
        std::fs::create_dir_all(&deps).unwrap();
        let missing = find_switchboard_bin_from(None, &deps.join("e2e-0123")).unwrap_err();
        assert_eq!(missing.path, dir.join("debug").join("switchboard"));
        assert!(
            missing.to_string().contains("`cargo build -p switchboard`"),
            "{missing}"
        );

        let release = dir.join("release");
        std::fs::create_dir_all(&release).unwrap();
        let missing = find_switchboard_bin_from(None, &release.join("bench")).unwrap_err();
        assert_eq!(missing.path, release.join("switchboard"));
        assert_eq!(missing.build, "cargo build --release -p switchboard");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_binary_is_found_next_to_a_test_or_named_by_the_variable() {
        let dir = std::env::temp_dir().join(switchboard_eventlog::testing::unique_name());
        let deps = dir.join("debug").join("deps");
        std::fs::create_dir_all(&deps).unwrap();
        let bin = dir
            .join("debug")
            .join(format!("switchboard{}", std::env::consts::EXE_SUFFIX));
        std::fs::write(&bin, b"").unwrap();
        assert_eq!(
            find_switchboard_bin_from(None, &deps.join("e2e-0123")),
            Ok(bin.clone())
        );

        let elsewhere = dir.join("elsewhere");
        std::fs::write(&elsewhere, b"").unwrap();
        assert_eq!(
            find_switchboard_bin_from(Some(elsewhere.clone()), &deps.join("e2e-0123")),
            Ok(elsewhere)
        );
        let named_missing = dir.join("nowhere");
        assert_eq!(
            find_switchboard_bin_from(Some(named_missing.clone()), &deps.join("e2e-0123"))
                .unwrap_err()
                .path,
            named_missing
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
