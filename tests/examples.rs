//! The client library's examples (client/examples) run against a real broker: built by
//! `cargo test --workspace`, run here from target/debug/examples.

use shmem_broker_tests::*;
use std::process::{Command, Stdio};

fn run_example(broker: &Broker, name: &str, args: &[&str]) -> CmdOutput {
    let mut cmd = Command::new(binary(&format!("examples/{name}")));
    cmd.arg(broker.socket_path()).args(args);
    let mut proc = Proc::start(cmd, name, broker.dir(), Stdio::null(), None);
    proc.output(WAIT * 6)
}

#[test]
fn example_hello_sends_and_receives() {
    let broker = Broker::start(None);
    let out = run_example(&broker, "hello", &[]);
    let stdout = out.expect_success();
    for needle in [
        "channel hello-example of 65536 bytes",
        "received \"hello #0\"",
        "received \"hello #2\"",
        "nothing more for now",
    ] {
        assert!(stdout.contains(needle), "{needle:?} missing in: {stdout}");
    }
}

#[test]
fn example_async_pipe_moves_thousands_of_messages() {
    let broker = Broker::start(None);
    let out = run_example(&broker, "async_pipe", &["5000"]);
    let stdout = out.expect_success();
    assert!(
        stdout.contains("sent and received 5000 messages"),
        "{stdout}"
    );
}

#[test]
fn example_zero_copy_moves_thousands_of_messages_in_place() {
    let broker = Broker::start(None);
    let out = run_example(&broker, "zero_copy", &["3000"]);
    let stdout = out.expect_success();
    assert!(
        stdout.contains("sent and received 3000 messages in place"),
        "{stdout}"
    );
}
