//! The Python package from a Python programmer's side: a fresh venv (`python3 -m venv`) gets
//! `pip install bindings/python` exactly as the README says (maturin from PyPI as the build
//! backend), then pytest runs `bindings/python/tests` against a real broker started here, with
//! the real `shmemctl` and the C examples (built with the system C compiler against the C
//! library) as the other ends: 64 MiB Python to C, C to Python, Python to Rust, Rust to Python,
//! fan-out to three Python consumers, a consumer killed with SIGKILL, end-of-stream, the
//! zero-copy memoryviews' invalidation, errors, fileno with select/asyncio, the GIL.
//!
//! The extension is built in the dev profile (overflow checks on, like every test here) in
//! `target/python`, which reruns reuse.

use shmem_broker_tests::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Runs `cmd` to the end; panics with its output unless it succeeded.
fn run(cmd: &mut Command, what: &str) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A C example compiled against the header in the tree and the library `cargo build` made.
fn compile_c_example(cc: &Path, out_dir: &Path, name: &str) -> PathBuf {
    let out = out_dir.join(name);
    run(
        Command::new(cc)
            .args(["-std=c11", "-D_POSIX_C_SOURCE=200809L", "-Wall", "-Werror"])
            .arg("-I")
            .arg(workspace_dir().join("bindings/c/include"))
            .arg(workspace_dir().join(format!("bindings/c/examples/{name}.c")))
            .arg("-o")
            .arg(&out)
            .arg("-L")
            .arg(bin_dir())
            .arg("-lshmem_broker"),
        &format!("cc {name}.c"),
    );
    out
}

#[test]
fn python_package_passes_its_pytest_suite_against_a_real_broker() {
    let python = require_tool("python3", "python3 python3-venv");
    let cc = require_tool("cc", "gcc");
    let work = temp_dir();
    let venv = work.path().join("venv");
    run(
        Command::new(&python).args(["-m", "venv"]).arg(&venv),
        "python3 -m venv (apt-get install python3-venv)",
    );
    let pip = venv.join("bin/pip");
    run(
        Command::new(&pip).args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "pytest",
            "numpy",
        ]),
        "pip install pytest numpy",
    );
    // The README's one command, with maturin fetched from PyPI into pip's build environment.
    run(
        Command::new(&pip)
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(workspace_dir().join("bindings/python"))
            .env("CARGO_TARGET_DIR", workspace_dir().join("target/python"))
            .env("MATURIN_PEP517_ARGS", "--profile dev"),
        "pip install bindings/python",
    );

    let send = compile_c_example(&cc, work.path(), "shmem-cat-send");
    let recv = compile_c_example(&cc, work.path(), "shmem-cat-recv");
    let broker = Broker::start(None);
    let out = Command::new(venv.join("bin/python"))
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp"])
        .arg(work.path().join("pytest"))
        .arg(workspace_dir().join("bindings/python/tests"))
        .env("SHMEM_BROKER_SOCKET", broker.socket_path())
        .env("SHMEMCTL", ctl_bin())
        .env("SHMEM_CAT_SEND", &send)
        .env("SHMEM_CAT_RECV", &recv)
        .env("LD_LIBRARY_PATH", bin_dir())
        .stdin(Stdio::null())
        .output()
        .expect("run pytest");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Shown with --nocapture; on failure the assertion below carries it.
    println!("{report}");
    assert!(
        out.status.success(),
        "pytest failed ({}):\n{report}",
        out.status
    );
    // No test may be skipped here: this machine has everything they need.
    assert!(
        report.contains(" passed") && !report.contains("skipped"),
        "pytest ran every test:\n{report}"
    );
}
