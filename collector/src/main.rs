//! `tracegate`: the collector service and the command line to read and audit
//! its records.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tracegate_collector::config::ServeConfig;
use tracegate_collector::ledger::caller::Caller;
use tracegate_collector::ledger::follow::Follower;
use tracegate_collector::ledger::layout::Layout;
use tracegate_collector::ledger::read::Reader;
use tracegate_collector::ledger::writer::{Ledger, Options};
use tracegate_collector::ledger::{keys, verify};
use tracegate_collector::policy_cli::{self, Applied, ApplyOptions};
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
    Serve(ServeArgs),
    /// Look at and decide approvals (talks to `serve --approvals`) with an
    /// approver's token.
    Approvals(ApprovalsArgs),
    /// Make a private CA, the collector's certificate and a client certificate
    /// for gateways (DIR/ca.pem, ca.key, collector.pem, collector.key,
    /// gateway.pem, gateway.key); keeps an existing set.
    Certs(CertsArgs),
    /// Make a seal key pair: PREFIX.key (private, mode 0600) and PREFIX.pub.
    Keygen(KeygenArgs),
    /// Check every CRC, chain link, seal, signature and retention entry of a
    /// data directory; exit 1 on any problem.
    Verify(VerifyArgs),
    /// Print one session's exchanges in order, caller by caller (callers
    /// who sent the same session id are never mixed), each as the
    /// conversation it carried: messages, tool calls and results,
    /// reasoning, streamed answers reassembled (--raw: bodies as sent).
    Replay(ReplayArgs),
    /// List sessions per caller: session, caller, first and last time,
    /// exchange count.
    Sessions(SessionsArgs),
    /// Write stored records to stdout.
    Export(ExportArgs),
    /// Print records as they are stored, like `tail -f` (follows segment
    /// rolls); readable lines or --json, optionally filtered.
    Tail(TailArgs),
    /// Tokens used, by caller, model or session, summed from the records.
    Usage(UsageArgs),
    /// Check a filter configuration offline with the filter's own code, or
    /// swap one into the directory Envoy watches (ECDS); exit 1 if invalid.
    Policy(PolicyArgs),
}

#[derive(Args)]
struct PolicyArgs {
    #[command(subcommand)]
    command: PolicyCommand,
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate FILE (the filter's JSON, or an ECDS resource file written
    /// by `apply`) with the filter's Policy::compile; print each
    /// configuration's name, version and SHA-256.
    Check { file: PathBuf },
    /// Validate FILE (the filter's JSON) and swap it atomically into
    /// DIR/NAME.json, the ECDS resource Envoy watches; only the
    /// configuration string changes (module and VM settings are kept).
    Apply {
        file: PathBuf,
        /// The watched directory (Envoy's `watched_directory`).
        #[arg(long)]
        dir: PathBuf,
        /// The HTTP filter's name in Envoy (the resource's name).
        #[arg(long, default_value = "tracegate")]
        name: String,
        /// The filter module: needed when DIR/NAME.json does not exist yet
        /// (it is made), else it replaces the module path in it.
        #[arg(long)]
        wasm: Option<PathBuf>,
    },
}

#[derive(Args)]
struct ServeArgs {
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
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g.
    /// 127.0.0.1:9464; port 0 picks a free one). Label caps: `metrics` in
    /// --config.
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// Serve the web console here (e.g. 127.0.0.1:8443; port 0 picks a
    /// free one): sessions, the approval inbox, store integrity. Needs
    /// --approvals and a `console` section (OIDC sign-in) in --config.
    #[arg(long, requires = "approvals")]
    console: Option<SocketAddr>,
}

#[derive(Args)]
struct ApprovalsArgs {
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
}

#[derive(Args)]
struct CertsArgs {
    #[arg(long)]
    out: PathBuf,
    /// More DNS names or IP addresses for the collector's certificate
    /// (it always holds tracegate-collector, localhost and 127.0.0.1).
    #[arg(long = "name")]
    names: Vec<String>,
    /// Validity of the two certificates (the CA's: five times this).
    #[arg(long, default_value_t = 365)]
    days: i64,
}

#[derive(Args)]
struct KeygenArgs {
    #[arg(long, default_value = "tracegate-seal")]
    out: PathBuf,
}

#[derive(Args)]
struct VerifyArgs {
    #[arg(long)]
    data: PathBuf,
    /// The seal public key (PEM). Keep your own copy: the one in the data
    /// directory proves nothing against whoever can write there.
    #[arg(long)]
    pubkey: PathBuf,
}

#[derive(Args)]
struct ReplayArgs {
    /// Session id (the session header's value, or the request id).
    session: String,
    #[arg(long)]
    data: PathBuf,
    /// Only this caller's exchanges, as `sessions` lists them:
    /// ISSUER|SUBJECT (a verified token's), anonymous or rejected.
    #[arg(long, value_parser = parse_caller)]
    caller: Option<Caller>,
    /// One JSON object per exchange instead of the readable timeline.
    #[arg(long, conflicts_with = "raw")]
    json: bool,
    /// The bodies as sent (the timeline without reading them as the
    /// conversation).
    #[arg(long)]
    raw: bool,
}

#[derive(Args)]
struct SessionsArgs {
    #[arg(long)]
    data: PathBuf,
}

#[derive(Args)]
struct ExportArgs {
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
}

#[derive(Args)]
struct UsageArgs {
    #[arg(long)]
    data: PathBuf,
    #[arg(long, value_enum, default_value_t = By::Identity)]
    by: By,
    /// Records whose request started at or after this: RFC 3339 time or a
    /// duration ago (24h).
    #[arg(long, value_parser = parse_time)]
    since: Option<i64>,
    /// One JSON object per group and line.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum By {
    Identity,
    Model,
    Session,
}

#[derive(Args)]
struct TailArgs {
    #[arg(long)]
    data: PathBuf,
    /// Show this many already stored records first.
    #[arg(short = 'n', long, default_value_t = 10)]
    lines: usize,
    /// One JSON object per record (as `export`).
    #[arg(long)]
    json: bool,
    /// Only this session id.
    #[arg(long)]
    session: Option<String>,
    /// Only this caller: the verified subject, `anonymous` or `rejected`.
    #[arg(long)]
    identity: Option<String>,
    /// Only this verdict (allowed, masked, blocked, refused, ...).
    #[arg(long)]
    verdict: Option<String>,
    /// Only records in which this detector found something.
    #[arg(long)]
    detector: Option<String>,
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
        Command::Serve(args) => cmd_serve(args)?,
        Command::Approvals(args) => cmd_approvals(args)?,
        Command::Certs(args) => cmd_certs(args)?,
        Command::Keygen(args) => cmd_keygen(args)?,
        Command::Verify(args) => return cmd_verify(args),
        Command::Replay(args) => cmd_replay(args)?,
        Command::Sessions(args) => cmd_sessions(args)?,
        Command::Export(args) => cmd_export(args)?,
        Command::Tail(args) => cmd_tail(args)?,
        Command::Usage(args) => cmd_usage(args)?,
        Command::Policy(args) => return cmd_policy(args),
    }
    Ok(0)
}

fn cmd_serve(args: ServeArgs) -> Result<()> {
    let config = match &args.config {
        Some(path) => ServeConfig::load(path)?,
        None => ServeConfig::default(),
    };
    let layout = Layout::new(&args.data);
    let key = seal_key(&layout, args.key.as_deref())?;
    let seal_public = key.verifying_key();
    let opts = Options {
        segment_bytes: args.segment_size,
        segment_age: args.segment_age,
        retain_age: args.retain_age,
        retain_bytes: args.retain_size,
    };
    let ledger = Ledger::open(layout, key, opts)?;
    for finding in &ledger.findings {
        eprintln!("tracegate: recovery: {finding}");
    }
    let listen = server::Listen {
        grpc: args.grpc,
        approvals: args.approvals,
        webhook: args.approval_webhook,
        metrics: args.metrics,
        console: args.console,
        seal_public: Some(seal_public),
    };
    server::serve(ledger, listen, &config, &args.data)
}

fn cmd_approvals(args: ApprovalsArgs) -> Result<()> {
    let token = approver_token(args.token_file, args.token)?;
    let client = approvals_cli::Client::new(&args.server, token.trim(), args.ca.as_deref())?;
    let out = &mut std::io::stdout().lock();
    match args.command {
        ApprovalCommand::List { all } => client.list(out, all),
        ApprovalCommand::Show { id } => client.show(out, &id),
        ApprovalCommand::Approve { id, reason } => client.decide(out, &id, true, &reason),
        ApprovalCommand::Deny { id, reason } => client.decide(out, &id, false, &reason),
    }
}

/// `--token-file` wins over `--token` (or TRACEGATE_TOKEN).
fn approver_token(file: Option<PathBuf>, token: Option<String>) -> Result<String> {
    match (file, token) {
        (Some(path), _) => std::fs::read_to_string(&path)
            .with_context(|| format!("reading the token file {}", path.display())),
        (None, Some(t)) => Ok(t),
        (None, None) => {
            bail!("an approver's token is needed: --token-file FILE or TRACEGATE_TOKEN")
        }
    }
}

fn cmd_certs(args: CertsArgs) -> Result<()> {
    if !(1..=3650).contains(&args.days) {
        bail!("--days {} is outside 1..=3650", args.days);
    }
    let made = certs::make(&args.out, &args.names, args.days)?;
    println!("{}", view::report::certs_made(&args.out, &made));
    Ok(())
}

fn cmd_keygen(args: KeygenArgs) -> Result<()> {
    let (private, public) = (
        args.out.with_extension("key"),
        args.out.with_extension("pub"),
    );
    keys::write_pair(&keys::generate()?, &private, &public)?;
    println!("{}", view::report::keys_written(&private, &public));
    Ok(())
}

/// Exit code 1 if the data directory has any problem.
fn cmd_verify(args: VerifyArgs) -> Result<i32> {
    let key = keys::read_public(&args.pubkey)?;
    let started = Instant::now();
    let report = verify::verify(&Layout::new(&args.data), &key)?;
    let secs = started.elapsed().as_secs_f64();
    print!("{}", view::report::verify_report(&report, secs));
    Ok(if report.problems.is_empty() { 0 } else { 1 })
}

fn cmd_replay(args: ReplayArgs) -> Result<()> {
    let mut reader = Reader::open(Layout::new(&args.data))?;
    let records = reader.session(&args.session, args.caller.as_ref())?;
    let records = view::fold_written_ahead(records);
    let events = reader.approval_events(&view::approvals_named(&records))?;
    warn(&reader);
    if records.is_empty() {
        let of = args
            .caller
            .map(|c| format!(" of caller {}", Safe(&view::caller::key(&c))))
            .unwrap_or_default();
        bail!(
            "no exchanges recorded for session {}{of} in {}",
            Safe(&args.session),
            args.data.display()
        );
    }
    let out = &mut std::io::stdout().lock();
    let format = if args.json {
        view::ReplayFormat::Json
    } else if args.raw {
        view::ReplayFormat::Raw
    } else {
        // Placeholders in reverse video on a terminal; plain text (they
        // keep their brackets) in a pipe or with NO_COLOR.
        use std::io::IsTerminal;
        let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        view::ReplayFormat::Conversation { color }
    };
    view::write_replay(out, &args.session, records, &events, format)?;
    Ok(())
}

fn cmd_sessions(args: SessionsArgs) -> Result<()> {
    let mut reader = Reader::open(Layout::new(&args.data))?;
    let sessions = reader.sessions()?;
    warn(&reader);
    view::write_sessions(&mut std::io::stdout().lock(), &sessions)?;
    Ok(())
}

fn cmd_export(args: ExportArgs) -> Result<()> {
    let Format::Jsonl = args.format;
    let mut reader = Reader::open(Layout::new(&args.data))?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let n = reader.export(args.since, args.until, |r| {
        view::write_json_lines(&mut out, std::slice::from_ref(r))?;
        Ok(())
    })?;
    out.flush()?;
    warn(&reader);
    eprintln!("tracegate: exported {n} records");
    Ok(())
}

fn cmd_usage(args: UsageArgs) -> Result<()> {
    let by = match args.by {
        By::Identity => view::UsageBy::Identity,
        By::Model => view::UsageBy::Model,
        By::Session => view::UsageBy::Session,
    };
    let mut reader = Reader::open(Layout::new(&args.data))?;
    let mut report = view::UsageReport::new(by);
    reader.export(args.since, None, |r| {
        report.add(r);
        Ok(())
    })?;
    warn(&reader);
    let out = &mut std::io::stdout().lock();
    if args.json {
        report.write_json(out)?;
    } else {
        report.write_table(out)?;
    }
    Ok(())
}

/// Follows the store until interrupted (or stdout closes).
fn cmd_tail(args: TailArgs) -> Result<()> {
    let layout = Layout::new(&args.data);
    if !layout.exists() {
        anyhow::bail!(
            "{} is not a tracegate data directory (no segments/)",
            args.data.display()
        );
    }
    let filter = view::TailFilter {
        session: args.session,
        identity: args.identity,
        verdict: args.verdict,
        detector: args.detector,
    };
    let (mut follower, earlier) = Follower::at_end(layout, usize::MAX)?;
    let mut batch: Vec<_> = earlier.into_iter().filter(|r| filter.matches(r)).collect();
    batch.drain(..batch.len().saturating_sub(args.lines));
    let mut warned = 0;
    loop {
        let mut out = std::io::stdout().lock();
        for r in &batch {
            let written = if args.json {
                view::write_json_lines(&mut out, std::slice::from_ref(r))
            } else {
                view::write_tail_line(&mut out, r)
            };
            if written.and_then(|()| out.flush()).is_err() {
                // The reader went away (`| head`): done.
                return Ok(());
            }
        }
        drop(out);
        for w in &follower.warnings[warned..] {
            eprintln!("tracegate: warning: {w} (run `tracegate verify`)");
        }
        warned = follower.warnings.len();
        // Polling: the writer appends in groups; a quarter second keeps
        // `tail` prompt without loading an idle store.
        std::thread::sleep(Duration::from_millis(250));
        batch = follower.poll()?;
        batch.retain(|r| filter.matches(r));
    }
}

/// Exit 1 when a configuration is invalid (its error on stderr names the
/// field), as `verify` does for a damaged store.
fn cmd_policy(args: PolicyArgs) -> Result<i32> {
    match args.command {
        PolicyCommand::Check { file } => {
            let mut invalid = false;
            for c in policy_cli::check(&file)? {
                match c.result {
                    Ok(p) => println!(
                        "{}: valid\n{}",
                        Safe(&c.source),
                        view::report::policy_lines(&p)
                    ),
                    Err(e) => {
                        invalid = true;
                        eprintln!("tracegate: {}: {}", Safe(&c.source), Safe(&e.to_string()));
                    }
                }
            }
            Ok(i32::from(invalid))
        }
        PolicyCommand::Apply {
            file,
            dir,
            name,
            wasm,
        } => match policy_cli::apply(&file, &ApplyOptions { dir, name, wasm })? {
            Applied::Invalid(e) => {
                eprintln!(
                    "tracegate: {}: {}; nothing applied",
                    Safe(&file.display().to_string()),
                    Safe(&e.to_string())
                );
                Ok(1)
            }
            Applied::Written {
                file,
                policy,
                replaced,
            } => {
                println!(
                    "applied to {}\n{}",
                    Safe(&file.display().to_string()),
                    view::report::policy_lines(&policy)
                );
                if let Some(old) = replaced {
                    println!("  replaced sha256 {}", Safe(&old.sha256));
                }
                Ok(0)
            }
        },
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
                "unknown size unit {other:?} (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)"
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
