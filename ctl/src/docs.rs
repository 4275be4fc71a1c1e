//! `shmemctl completions SHELL` and the hidden `shmemctl man [SUBCOMMAND]`: both generated
//! from the clap definitions in main.rs, so they cannot drift from the real command line.

use std::io::{self, Write};

use anyhow::Result;
use clap::CommandFactory;

use crate::report::StdoutError;
use crate::Args;

/// Prints the completion script for `shell`.
pub fn completions(shell: clap_complete::Shell) -> Result<()> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Args::command(), "shmemctl", &mut out);
    print(&out)
}

/// Prints shmemctl(1), or with a subcommand shmemctl-SUBCOMMAND(1), the page that
/// shmemctl(1)'s SUBCOMMANDS section names.
pub fn man(subcommand: Option<&str>) -> Result<()> {
    let mut command = Args::command();
    command.build();
    let page = match subcommand {
        None => command,
        Some(name) => {
            let sub = command
                .get_subcommands()
                .find(|s| s.get_name() == name && !s.is_hide_set())
                .ok_or_else(|| anyhow::anyhow!("no subcommand {name:?}"))?;
            sub.clone()
                .display_name(format!("shmemctl-{name}"))
                .bin_name(format!("shmemctl {name}"))
        }
    };
    let mut out = Vec::new();
    clap_mangen::Man::new(page)
        .section("1")
        .manual("shmem-broker")
        .render(&mut out)
        .map_err(StdoutError)?;
    print(&out)
}

/// The subcommands that have a page of their own (what `man` takes).
pub fn subcommands() -> Vec<String> {
    Args::command()
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .map(|s| s.get_name().to_string())
        .collect()
}

fn print(bytes: &[u8]) -> Result<()> {
    let mut stdout = io::stdout().lock();
    stdout
        .write_all(bytes)
        .and_then(|()| stdout.flush())
        .map_err(StdoutError)?;
    Ok(())
}
