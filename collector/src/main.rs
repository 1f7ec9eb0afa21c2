//! `tracegate`: the collector service and the command line to read and audit
//! its records.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tracegate_collector::config::ServeConfig;
use tracegate_collector::ledger::caller::Caller;
use tracegate_collector::ledger::layout::Layout;
use tracegate_collector::ledger::read::Reader;
use tracegate_collector::ledger::writer::{Ledger, Options};
use tracegate_collector::ledger::{keys, verify};
use tracegate_collector::term::Safe;
use tracegate_collector::{approvals_cli, certs, server, view};

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
    /// Receive records from tracegate filters over gRPC and store them durably.
    Serve {
        /// Data directory (created if missing; one server per directory).
        #[arg(long)]
        data: PathBuf,
        /// gRPC listen address; port 0 picks a free port (the address is printed).
        #[arg(long, default_value = "127.0.0.1:4317")]
        grpc: SocketAddr,
        /// Seal signing key (PEM, from `tracegate keygen`). Without it the
        /// server makes DATA/seal.key on first start: convenient, but whoever
        /// can write the data directory can then re-sign it.
        #[arg(long)]
        key: Option<PathBuf>,
        /// Seal the open segment and start another at this size.
        #[arg(long, default_value = "64MiB", value_parser = parse_size)]
        segment_size: u64,
        /// ...or when its first record is this old.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        segment_age: Duration,
        /// Delete sealed segments whose newest record is older than this (e.g. 90d).
        #[arg(long, value_parser = humantime::parse_duration)]
        retain_age: Option<Duration>,
        /// Delete the oldest sealed segments while the store is larger than this (e.g. 50GiB).
        #[arg(long, value_parser = parse_size)]
        retain_size: Option<u64>,
        /// Configuration file (JSON): `tls` (client certificates required on
        /// the gRPC port) and `approvers` (who may decide approvals).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Serve the approval service: the approvers' API here (e.g.
        /// 127.0.0.1:4318; port 0 picks a free one), the filters' calls on
        /// the gRPC port. Needs `approvers` in --config.
        #[arg(long)]
        approvals: Option<SocketAddr>,
        /// POST a JSON notice to this URL for every new pending approval.
        #[arg(long, requires = "approvals")]
        approval_webhook: Option<String>,
    },
    /// Look at and decide approvals (talks to `serve --approvals`) with an
    /// approver's token.
    Approvals {
        /// The approval service.
        #[arg(
            long,
            env = "TRACEGATE_APPROVALS",
            default_value = "http://127.0.0.1:4318"
        )]
        server: String,
        /// A file holding the approver's token (a JWT from the
        /// organisation's issuer); wins over TRACEGATE_TOKEN.
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// The approver's token itself.
        #[arg(long, env = "TRACEGATE_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// CA certificate (PEM) to trust for an https service (e.g. the ca.pem
        /// of `tracegate certs`).
        #[arg(long, env = "TRACEGATE_CA")]
        ca: Option<PathBuf>,
        #[command(subcommand)]
        command: ApprovalCommand,
    },
    /// Make a private CA, the collector's certificate and a client certificate
    /// for gateways (DIR/ca.pem, ca.key, collector.pem, collector.key,
    /// gateway.pem, gateway.key); keeps an existing set.
    Certs {
        #[arg(long)]
        out: PathBuf,
        /// More DNS names or IP addresses for the collector's certificate
        /// (it always holds tracegate-collector, localhost and 127.0.0.1).
        #[arg(long = "name")]
        names: Vec<String>,
        /// Validity of the two certificates (the CA's: five times this).
        #[arg(long, default_value_t = 365)]
        days: i64,
    },
    /// Make a seal key pair: PREFIX.key (private, mode 0600) and PREFIX.pub.
    Keygen {
        #[arg(long, default_value = "tracegate-seal")]
        out: PathBuf,
    },
    /// Check every CRC, chain link, seal, signature and retention entry of a
    /// data directory; exit 1 on any problem.
    Verify {
        #[arg(long)]
        data: PathBuf,
        /// The seal public key (PEM). Keep your own copy: the one in the data
        /// directory proves nothing against whoever can write there.
        #[arg(long)]
        pubkey: PathBuf,
    },
    /// Print one session's exchanges in order, caller by caller: callers
    /// who sent the same session id are never mixed.
    Replay {
        /// Session id (the session header's value, or the request id).
        session: String,
        #[arg(long)]
        data: PathBuf,
        /// Only this caller's exchanges, as `sessions` lists them:
        /// ISSUER|SUBJECT (a verified token's), anonymous or rejected.
        #[arg(long, value_parser = parse_caller)]
        caller: Option<Caller>,
        /// One JSON object per exchange instead of the readable timeline.
        #[arg(long)]
        json: bool,
    },
    /// List sessions per caller: session, caller, first and last time,
    /// exchange count.
    Sessions {
        #[arg(long)]
        data: PathBuf,
    },
    /// Write stored records to stdout.
    Export {
        #[arg(long)]
        data: PathBuf,
        #[arg(long, value_enum, default_value_t = Format::Jsonl)]
        format: Format,
        /// Records whose request started at or after this: RFC 3339 time
        /// (2026-11-25T10:00:00Z) or a duration ago (2h).
        #[arg(long, value_parser = parse_time)]
        since: Option<i64>,
        /// ...and before this.
        #[arg(long, value_parser = parse_time)]
        until: Option<i64>,
    },
}

#[derive(Subcommand)]
enum ApprovalCommand {
    /// Pending approvals (all with --all), newest first.
    List {
        #[arg(long)]
        all: bool,
    },
    /// One approval: the request, its risk, its history.
    Show { id: String },
    /// Approve a pending request, as the token's verified identity. Nobody
    /// may approve their own request.
    Approve {
        id: String,
        #[arg(long)]
        reason: String,
    },
    /// Deny a pending request.
    Deny {
        id: String,
        #[arg(long)]
        reason: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    /// One JSON object per record and line.
    Jsonl,
}

fn main() {
    match run(Cli::parse()) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            let e = format!("{e:#}");
            eprintln!("tracegate: {}", Safe(&e));
            std::process::exit(2);
        }
    }
}

fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Serve {
            data,
            grpc,
            key,
            segment_size,
            segment_age,
            retain_age,
            retain_size,
            config,
            approvals,
            approval_webhook,
        } => {
            let config = match &config {
                Some(path) => ServeConfig::load(path)?,
                None => ServeConfig::default(),
            };
            let layout = Layout::new(&data);
            let key = seal_key(&layout, key.as_deref())?;
            let opts = Options {
                segment_bytes: segment_size,
                segment_age,
                retain_age,
                retain_bytes: retain_size,
            };
            let ledger = Ledger::open(layout, key, opts)?;
            for finding in &ledger.findings {
                eprintln!("tracegate: recovery: {finding}");
            }
            let listen = server::Listen {
                grpc,
                approvals,
                webhook: approval_webhook,
            };
            server::serve(ledger, listen, &config, &data)?;
            Ok(0)
        }
        Command::Approvals {
            server,
            token_file,
            token,
            ca,
            command,
        } => {
            let token = match (token_file, token) {
                (Some(path), _) => std::fs::read_to_string(&path)
                    .with_context(|| format!("reading the token file {}", path.display()))?,
                (None, Some(t)) => t,
                (None, None) => {
                    bail!("an approver's token is needed: --token-file FILE or TRACEGATE_TOKEN")
                }
            };
            let client = approvals_cli::Client::new(&server, token.trim(), ca.as_deref())?;
            let out = &mut std::io::stdout().lock();
            match command {
                ApprovalCommand::List { all } => client.list(out, all)?,
                ApprovalCommand::Show { id } => client.show(out, &id)?,
                ApprovalCommand::Approve { id, reason } => {
                    client.decide(out, &id, true, &reason)?
                }
                ApprovalCommand::Deny { id, reason } => client.decide(out, &id, false, &reason)?,
            }
            Ok(0)
        }
        Command::Certs { out, names, days } => {
            if !(1..=3650).contains(&days) {
                bail!("--days {days} is outside 1..=3650");
            }
            match certs::make(&out, &names, days)? {
                certs::Made::New => println!(
                    "wrote {dir}/ca.pem (the CA: give it to serve's tls.client_ca and to the gateways), \
                     {dir}/ca.key (keep it offline), {dir}/collector.pem and .key (serve's tls.cert and tls.key), \
                     {dir}/gateway.pem and .key (Envoy's client certificate)",
                    dir = out.display()
                ),
                certs::Made::Kept => println!("{}: certificates already there, kept", out.display()),
            }
            Ok(0)
        }
        Command::Keygen { out } => {
            let (private, public) = (out.with_extension("key"), out.with_extension("pub"));
            keys::write_pair(&keys::generate()?, &private, &public)?;
            println!(
                "wrote {} (private: give it to `tracegate serve --key`) and {} (public: for `tracegate verify --pubkey`)",
                private.display(),
                public.display()
            );
            Ok(0)
        }
        Command::Verify { data, pubkey } => {
            let key = keys::read_public(&pubkey)?;
            let started = Instant::now();
            let report = verify::verify(&Layout::new(&data), &key)?;
            let secs = started.elapsed().as_secs_f64();
            for p in &report.problems {
                println!("PROBLEM {p}");
            }
            let seq = match (report.first_seq, report.last_seq) {
                (Some(a), Some(b)) => format!("sequence {a}..{b}"),
                _ => "no records".into(),
            };
            println!(
                "{}: {} segments ({} sealed), {} entries, {seq}, {} segments deleted by retention (seals checked); {:.1} MB in {:.2} s ({:.0} MB/s)",
                if report.problems.is_empty() { "OK" } else { "FAILED" },
                report.segments,
                report.sealed,
                report.entries,
                report.retained,
                report.bytes as f64 / 1e6,
                secs,
                report.bytes as f64 / 1e6 / secs.max(1e-9),
            );
            if !report.problems.is_empty() {
                println!("{} problems", report.problems.len());
                return Ok(1);
            }
            Ok(0)
        }
        Command::Replay {
            session,
            data,
            caller,
            json,
        } => {
            let mut reader = Reader::open(Layout::new(&data))?;
            let records = view::fold_written_ahead(reader.session(&session, caller.as_ref())?);
            let ids: Vec<String> = records
                .iter()
                .filter_map(|r| r.approval.as_ref().map(|a| a.id.clone()))
                .filter(|id| !id.is_empty())
                .collect();
            let events = reader.approval_events(&ids)?;
            warn(&reader);
            if records.is_empty() {
                let of = caller
                    .map(|c| format!(" of caller {}", Safe(&view::caller::key(&c))))
                    .unwrap_or_default();
                bail!(
                    "no exchanges recorded for session {}{of} in {}",
                    Safe(&session),
                    data.display()
                );
            }
            let mut out = std::io::stdout().lock();
            for (i, (caller, records)) in view::by_caller(records).iter().enumerate() {
                if json {
                    view::write_json_lines(&mut out, records)?;
                } else {
                    if i > 0 {
                        use std::io::Write;
                        writeln!(out)?;
                    }
                    view::write_timeline(&mut out, &session, caller, records, &events)?;
                }
            }
            Ok(0)
        }
        Command::Sessions { data } => {
            let mut reader = Reader::open(Layout::new(&data))?;
            let sessions = reader.sessions()?;
            warn(&reader);
            view::write_sessions(&mut std::io::stdout().lock(), &sessions)?;
            Ok(0)
        }
        Command::Export {
            data,
            format: Format::Jsonl,
            since,
            until,
        } => {
            let mut reader = Reader::open(Layout::new(&data))?;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let n = reader.export(since, until, |r| {
                view::write_json_lines(&mut out, std::slice::from_ref(r))?;
                Ok(())
            })?;
            use std::io::Write;
            out.flush()?;
            warn(&reader);
            eprintln!("tracegate: exported {n} records");
            Ok(0)
        }
    }
}

fn warn(reader: &Reader) {
    for w in &reader.warnings {
        eprintln!("tracegate: warning: {w} (run `tracegate verify`)");
    }
}

/// The seal key: `--key`, else DATA/seal.key, made on first start.
fn seal_key(layout: &Layout, key: Option<&Path>) -> Result<ed25519_dalek::SigningKey> {
    if let Some(path) = key {
        return keys::read_private(path);
    }
    let (private, public) = layout.default_key();
    if private.exists() {
        return keys::read_private(&private);
    }
    std::fs::create_dir_all(&layout.root)
        .with_context(|| format!("creating {}", layout.root.display()))?;
    let key = keys::generate()?;
    keys::write_pair(&key, &private, &public)?;
    eprintln!(
        "tracegate: made seal key {} (public {}); for production keep the key outside the data directory (--key) and give auditors the .pub",
        private.display(),
        public.display()
    );
    Ok(key)
}

fn parse_caller(s: &str) -> Result<Caller, String> {
    view::caller::parse(s).map_err(|e| e.to_string())
}

/// `64MiB`, `10GB`, `4096`.
fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 64MiB, 10GB, 4096)"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        other => {
            return Err(format!(
                "unknown size unit {other:?} (B, KB, MB, GB, KiB, MiB, GiB)"
            ))
        }
    };
    n.checked_mul(mult)
        .filter(|&b| b > 0)
        .ok_or_else(|| format!("{s:?} is out of range"))
}

/// RFC 3339 time, or a duration before now; Unix nanoseconds.
fn parse_time(s: &str) -> Result<i64, String> {
    let t = match humantime::parse_rfc3339_weak(s) {
        Ok(t) => t,
        Err(_) => {
            let ago = humantime::parse_duration(s).map_err(|_| {
                format!(
                    "{s:?} is neither an RFC 3339 time (2026-11-25T10:00:00Z) nor a duration (2h)"
                )
            })?;
            SystemTime::now() - ago
        }
    };
    let d = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| format!("{s:?} is before 1970"))?;
    i64::try_from(d.as_nanos()).map_err(|_| format!("{s:?} is too far in the future"))
}
