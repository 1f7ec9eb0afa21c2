//! What `verify`, `certs` and `keygen` report when they are done.

use std::fmt::Write;
use std::path::Path;

use crate::certs::Made;
use crate::ledger::verify::Report;

/// `verify`'s report, a line each: every problem, the summary (`OK` or
/// `FAILED`, what was checked, how fast), and the count of problems if any.
pub fn verify_report(report: &Report, secs: f64) -> String {
    let mut text = String::new();
    for p in &report.problems {
        let _ = writeln!(text, "PROBLEM {p}");
    }
    let seq = match (report.first_seq, report.last_seq) {
        (Some(a), Some(b)) => format!("sequence {a}..{b}"),
        _ => "no records".into(),
    };
    let _ = writeln!(
        text,
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
        let _ = writeln!(text, "{} problems", report.problems.len());
    }
    text
}

/// What `certs` made in `dir`, and where each file goes.
pub fn certs_made(dir: &Path, made: &Made) -> String {
    match made {
        Made::New => format!(
            "wrote {dir}/ca.pem (the CA: give it to serve's tls.client_ca and to the gateways), \
             {dir}/ca.key (keep it offline), {dir}/collector.pem and .key (serve's tls.cert and tls.key), \
             {dir}/gateway.pem and .key (Envoy's client certificate)",
            dir = dir.display()
        ),
        Made::Kept => format!("{}: certificates already there, kept", dir.display()),
    }
}

/// Where `keygen` wrote the key pair, and what each file is for.
pub fn keys_written(private: &Path, public: &Path) -> String {
    format!(
        "wrote {} (private: give it to `tracegate serve --key`) and {} (public: for `tracegate verify --pubkey`)",
        private.display(),
        public.display()
    )
}

/// A policy as `tracegate policy` prints it: name, version and SHA-256 of
/// its canonical configuration, a line each (`-` for what is not set).
pub fn policy_lines(p: &tracegate_proto::v1::PolicyRef) -> String {
    use crate::term::Safe;
    let or_dash = |s: &str| {
        if s.is_empty() {
            "-".to_string()
        } else {
            Safe(s).to_string()
        }
    };
    format!(
        "  name     {}\n  version  {}\n  sha256   {}",
        or_dash(&p.name),
        or_dash(&p.version),
        Safe(&p.sha256)
    )
}
