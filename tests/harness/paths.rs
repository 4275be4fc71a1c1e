//! Paths and binaries: the workspace, the built binaries, temp dirs, required tools.

use std::path::{Path, PathBuf};

use crate::{BROKER_BIN, CTL_BIN};

/// The workspace root (the parent of this crate).
pub fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives inside the workspace")
        .to_path_buf()
}

/// Where the binaries under test are: `$SHMEM_BROKER_BIN_DIR`, else `$CARGO_TARGET_DIR/debug`,
/// else `<workspace>/target/debug`.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = non_empty_env("SHMEM_BROKER_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let target = match non_empty_env("CARGO_TARGET_DIR") {
        Some(dir) if Path::new(&dir).is_absolute() => PathBuf::from(dir),
        Some(dir) => workspace_dir().join(dir),
        None => workspace_dir().join("target"),
    };
    target.join("debug")
}

fn non_empty_env(name: &str) -> Option<std::ffi::OsString> {
    std::env::var_os(name).filter(|v| !v.is_empty())
}

/// The path of one of the workspace's binaries; panics with the fix if it was not built.
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    if !path.is_file() {
        panic!(
            "binary {name} not found at {}: run `cargo build --workspace` first",
            path.display()
        );
    }
    path
}

pub fn broker_bin() -> PathBuf {
    binary(BROKER_BIN)
}

pub fn ctl_bin() -> PathBuf {
    binary(CTL_BIN)
}

/// The example config shipped in the repository.
pub fn example_config() -> PathBuf {
    workspace_dir().join("config").join("shmem-broker.toml")
}

/// Finds an external tool in PATH, or panics naming the package that provides it.
pub fn require_tool(tool: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!("{tool} not found in PATH: install it (apt-get install {package})")
        })
}

/// A fresh temp dir, removed on drop.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("shmem-broker-test.")
        .tempdir()
        .expect("create a temp dir for the test")
}
