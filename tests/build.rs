//! Sets `cfg(as_root)` when the tests are built by root, so that tests which need root (other
//! uids through setpriv, a systemd lab) run there and show as ignored ("needs root") anywhere
//! else, instead of passing without having run. CI builds and runs as root.
//!
//! Decided at build time because `#[ignore]` is: a suite built as root and then run as another
//! user fails those tests loudly ([`require_root`](../harness/lib.rs)) rather than skipping them.

use std::fs;

fn main() {
    println!("cargo:rustc-check-cfg=cfg(as_root)");
    println!("cargo:rerun-if-changed=build.rs");
    if effective_uid() == Some(0) {
        println!("cargo:rustc-cfg=as_root");
    }
}

/// The effective uid, from the second field of `Uid:` in /proc/self/status.
fn effective_uid() -> Option<u32> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
