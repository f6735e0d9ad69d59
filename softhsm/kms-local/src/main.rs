//! `xks-kms-local`: parses the command line, loads the state, binds, prints one startup line
//! (`xks-kms-local listening on http://ADDR`) on stdout and serves until SIGINT or SIGTERM.
//! Logs go to stderr.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tokio::net::TcpListener;
use xks_kms_local::config::Args;
use xks_kms_local::ops::Front;
use xks_kms_local::server::{router, serve};
use xks_kms_local::state::Db;
use xks_kms_local::xks_client::XksClient;

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&args.log_level)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xks-kms-local: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let settings = args.settings()?;
    let client_tls = args.client_tls()?;
    let server_tls = args.server_tls()?;
    let db = Db::open(args.state.clone())?;
    let xks = XksClient::new(client_tls, settings.region.clone(), settings.xks_timeout);
    let front = Arc::new(Front { db, xks, settings });
    let listener = TcpListener::bind(args.listen).await?;
    let scheme = if server_tls.is_some() {
        "https"
    } else {
        "http"
    };
    let mut stdout = std::io::stdout();
    writeln!(
        stdout,
        "xks-kms-local listening on {scheme}://{}",
        listener.local_addr()?
    )?;
    stdout.flush()?;
    serve(listener, server_tls, router(front), shutdown()).await?;
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            let _ = interrupt.await;
            return;
        };
        tokio::select! {
            _ = interrupt => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
