//! The `xks-proxy` binary: parse the command line and hand over to the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    xks_proxy::cli::run(xks_proxy::cli::Cli::parse())
}
