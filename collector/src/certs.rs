//! `tracegate certs`: a private CA and the two certificates the machine side
//! needs (rcgen, ECDSA P-256): the collector's server certificate and a
//! client certificate for the gateways (Envoy). Made once: an existing set
//! is kept, so scripts may run it on every start.

use anyhow::{bail, Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

/// The name the collector's certificate carries first; gateways check it.
pub const COLLECTOR_NAME: &str = "tracegate-collector";
pub const GATEWAY_NAME: &str = "tracegate-gateway";

pub const FILES: [&str; 6] = [
    "ca.pem",
    "ca.key",
    "collector.pem",
    "collector.key",
    "gateway.pem",
    "gateway.key",
];

/// What `make` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Made {
    New,
    Kept,
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    // An hour back: clocks of the hosts involved differ a little.
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(days);
}

fn write(path: &Path, text: &str, private: bool) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

/// Makes the CA and both certificates in `dir`, unless all are there.
/// `names` are the collector's DNS names and IP addresses (besides
/// `tracegate-collector`, `localhost` and 127.0.0.1).
pub fn make(dir: &Path, names: &[String], days: i64) -> Result<Made> {
    let paths: Vec<PathBuf> = FILES.iter().map(|f| dir.join(f)).collect();
    let present = paths.iter().filter(|p| p.exists()).count();
    if present == FILES.len() {
        return Ok(Made::Kept);
    }
    if present > 0 {
        bail!(
            "{} holds some of {} but not all: remove them or use another directory",
            dir.display(),
            FILES.join(", ")
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;

    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name = rcgen::DistinguishedName::new();
    ca.distinguished_name
        .push(DnType::CommonName, "tracegate private CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut ca, days.saturating_mul(5));
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let mut sans = vec![
        COLLECTOR_NAME.to_string(),
        "localhost".to_string(),
        "127.0.0.1".to_string(),
    ];
    for n in names {
        if !sans.contains(n) {
            sans.push(n.clone());
        }
    }
    let leaf = |cn: &str, sans: Vec<String>, eku: ExtendedKeyUsagePurpose| -> Result<_> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(sans)?;
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![eku];
        p.use_authority_key_identifier_extension = true;
        validity(&mut p, days);
        let cert = p.signed_by(&key, &issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    let (collector_pem, collector_key) =
        leaf(COLLECTOR_NAME, sans, ExtendedKeyUsagePurpose::ServerAuth)?;
    let (gateway_pem, gateway_key) = leaf(
        GATEWAY_NAME,
        vec![GATEWAY_NAME.to_string()],
        ExtendedKeyUsagePurpose::ClientAuth,
    )?;
    let texts = [
        (ca_cert.pem(), false),
        (issuer.key().serialize_pem(), true),
        (collector_pem, false),
        (collector_key, true),
        (gateway_pem, false),
        (gateway_key, true),
    ];
    for (path, (text, private)) in paths.iter().zip(texts) {
        write(path, &text, private)?;
    }
    Ok(Made::New)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TlsConfig;
    use crate::tls::{server_config, ClientAuth};

    #[test]
    fn made_once_then_kept_and_usable_by_rustls() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("tls");
        assert_eq!(
            make(&d, &["collector.example".into()], 30).unwrap(),
            Made::New
        );
        let before = std::fs::read(d.join("ca.pem")).unwrap();
        assert_eq!(make(&d, &[], 30).unwrap(), Made::Kept);
        assert_eq!(std::fs::read(d.join("ca.pem")).unwrap(), before);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.join("gateway.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let tls = TlsConfig {
            cert: d.join("collector.pem"),
            key: d.join("collector.key"),
            client_ca: d.join("ca.pem"),
        };
        server_config(&tls, ClientAuth::Required).unwrap();
        std::fs::remove_file(d.join("gateway.key")).unwrap();
        assert!(make(&d, &[], 30)
            .unwrap_err()
            .to_string()
            .contains("not all"));
    }
}
