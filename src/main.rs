//! The `xks-proxy` binary: parse the command line and hand over to the library.

use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of glibc's malloc: allocation was about 15 % of the proxy's CPU per request
/// under load (malloc, free and `malloc_consolidate` in a profile at 16 concurrent requests),
/// from the many small, short-lived buffers of TLS, HTTP, JSON and the audit line.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    xks_proxy::cli::run(xks_proxy::cli::Cli::parse())
}
