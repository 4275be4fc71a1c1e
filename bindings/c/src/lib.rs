//! The C API of shmem-broker: `libshmem_broker` (shared and static) and `shmem_broker.h`,
//! built on the Rust client library (no second implementation of the ring).
//!
//! Every exported function checks its pointer arguments, catches panics (none crosses into C:
//! it becomes `SHMEM_ERR_PANIC`), and reports failures as a negative code plus a message kept
//! per thread ([`shmem_last_error_message`]). Handles are boxed Rust values the caller owns
//! and gives back with the matching `*_free` function.

#![allow(non_camel_case_types)]

// The modules, in the order cbindgen reads them into the header (it follows `mod` declarations
// in order, and rustfmt sorts only a run of them with no blank line between: keep the lines
// apart): codes and types, then the functions as a program calls them.
mod codes;

mod handles;

mod guard;

mod client;

mod producer;

mod consumer;

pub use client::*;
pub use codes::*;
pub use consumer::*;
pub use guard::shmem_last_error_message;
pub use handles::*;
pub use producer::*;

#[cfg(test)]
mod tests {
    /// The header in include/ is what cbindgen makes from this source now;
    /// `SHMEM_BLESS=1 cargo test -p shmem-broker-c` rewrites it.
    #[test]
    fn the_kept_header_is_current() {
        let dir = env!("CARGO_MANIFEST_DIR");
        let config = cbindgen::Config::from_file(format!("{dir}/cbindgen.toml")).expect("config");
        let mut generated = Vec::new();
        cbindgen::Builder::new()
            .with_crate(dir)
            .with_config(config)
            .generate()
            .expect("cbindgen")
            .write(&mut generated);
        let path = format!("{dir}/include/shmem_broker.h");
        if std::env::var_os("SHMEM_BLESS").is_some() {
            std::fs::write(&path, &generated).expect("write the header");
        }
        let kept = std::fs::read(&path).unwrap_or_default();
        assert!(
            kept == generated,
            "{path} is out of date: run SHMEM_BLESS=1 cargo test -p shmem-broker-c"
        );
    }
}
