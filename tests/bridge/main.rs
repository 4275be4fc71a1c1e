//! shmem-bridge between two simulated hosts: two network namespaces joined by a veth pair, a
//! broker per host, a Zenoh router in host A, an exporting bridge in A and importing bridges in
//! B, all real processes (the lab is `shmem_broker_tests::bridge`). Needs root (namespaces) and
//! `ip` (iproute2).
//!
//! Messages in these tests carry their own sequence number, so "nothing lost, nothing
//! repeated, in order" is checked message by message; bulk transfers check a SHA-256.
//!
//! One module per topic; `cargo test --test bridge kills::` runs one of them.

mod back_pressure;
mod hostile;
mod kills;
mod link_cut;
mod transfer;
