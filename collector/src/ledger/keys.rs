//! The seal key pair: Ed25519, stored as PEM (PKCS#8 private key, SPKI public
//! key) so that auditors can check seals with any tool, not only this one.

use anyhow::{bail, Context, Result};
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{SigningKey, VerifyingKey};
use std::io::Write;
use std::path::Path;

pub fn generate() -> Result<SigningKey> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    Ok(SigningKey::from_bytes(&secret))
}

/// Writes `private` (mode 0600, never overwritten) and `public`.
pub fn write_pair(key: &SigningKey, private: &Path, public: &Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let pem = key
        .to_pkcs8_pem(Default::default())
        .map_err(|e| anyhow::anyhow!("encoding the private key: {e}"))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(private)
        .with_context(|| format!("creating {} (it must not exist yet)", private.display()))?;
    f.write_all(pem.as_bytes())?;
    f.sync_all()?;
    let public_pem = key
        .verifying_key()
        .to_public_key_pem(Default::default())
        .map_err(|e| anyhow::anyhow!("encoding the public key: {e}"))?;
    std::fs::write(public, public_pem).with_context(|| format!("writing {}", public.display()))?;
    Ok(())
}

pub fn read_private(path: &Path) -> Result<SigningKey> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    SigningKey::from_pkcs8_pem(&text).map_err(|e| {
        anyhow::anyhow!(
            "{}: not an Ed25519 private key in PKCS#8 PEM ({e}); make one with `tracegate keygen`",
            path.display()
        )
    })
}

pub fn read_public(path: &Path) -> Result<VerifyingKey> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    if text.contains("PRIVATE KEY") {
        bail!(
            "{} holds a private key; give verify the public key (.pub)",
            path.display()
        );
    }
    VerifyingKey::from_public_key_pem(&text)
        .map_err(|e| anyhow::anyhow!("{}: not an Ed25519 public key in PEM ({e})", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_round_trips_and_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let (private, public) = (dir.path().join("k"), dir.path().join("k.pub"));
        let key = generate().unwrap();
        write_pair(&key, &private, &public).unwrap();
        assert_eq!(read_private(&private).unwrap(), key);
        assert_eq!(read_public(&public).unwrap(), key.verifying_key());
        assert!(write_pair(&key, &private, &public).is_err());
        assert!(read_public(&private)
            .unwrap_err()
            .to_string()
            .contains("private key"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&private).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
