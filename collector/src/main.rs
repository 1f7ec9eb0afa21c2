//! `tracegate`: the collector service and the command line to read its records.

mod grpc;
mod store;
mod view;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "tracegate",
    version,
    about = "tracegate collector and record tools"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Receive records from tracegate filters over gRPC and store them.
    Serve {
        /// Data directory (created if missing; one server per directory).
        #[arg(long)]
        data: PathBuf,
        /// gRPC listen address; port 0 picks a free port (the address is printed).
        #[arg(long, default_value = "127.0.0.1:4317")]
        grpc: SocketAddr,
    },
    /// Print one session's exchanges in order.
    Replay {
        /// Session id (the session header's value, or the request id).
        session: String,
        #[arg(long)]
        data: PathBuf,
        /// One JSON object per exchange instead of the readable timeline.
        #[arg(long)]
        json: bool,
    },
    /// List sessions: first and last time, exchange count.
    Sessions {
        #[arg(long)]
        data: PathBuf,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { data, grpc } => grpc::serve(&data, grpc),
        Command::Replay {
            session,
            data,
            json,
        } => {
            let records = store::read_session(&data, &session)
                .with_context(|| format!("reading records in {}", data.display()))?;
            if records.is_empty() {
                anyhow::bail!(
                    "no exchanges recorded for session {session:?} in {}",
                    data.display()
                );
            }
            let mut out = std::io::stdout().lock();
            if json {
                view::write_json_lines(&mut out, &records)?;
            } else {
                view::write_timeline(&mut out, &session, &records)?;
            }
            Ok(())
        }
        Command::Sessions { data } => {
            let records = store::read_all(&data)
                .with_context(|| format!("reading records in {}", data.display()))?;
            view::write_sessions(&mut std::io::stdout().lock(), &records)?;
            Ok(())
        }
    }
}
