//! TLS for `serve` (rustls): the machine side requires a client certificate
//! from the configured CA, so only gateways holding one can write records or
//! ask for approvals; the approvers' API uses the same server certificate
//! without asking for one (approvers bring tokens).
//!
//! Handshakes run off the accept loop (one task each, with a deadline), so a
//! client that stalls its handshake holds up nobody. A refused handshake is
//! logged (at most one line a second) and the connection closed: nothing
//! from it reaches a service.

use anyhow::{bail, Context, Result};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;

/// Longest a client may take to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading certificates from {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("reading certificates from {}", path.display()))?;
    if certs.is_empty() {
        bail!("{} holds no PEM certificate", path.display());
    }
    Ok(certs)
}

/// Which side a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// A certificate from `client_ca` is required (the machine side).
    Required,
    /// No client certificate asked for (the approvers' API).
    None,
}

/// The rustls server configuration from the configured files.
pub fn server_config(tls: &TlsConfig, auth: ClientAuth) -> Result<Arc<ServerConfig>> {
    let chain = certificates(&tls.cert)?;
    let key = PrivateKeyDer::from_pem_file(&tls.key)
        .with_context(|| format!("reading the private key {}", tls.key.display()))?;
    let builder = ServerConfig::builder();
    let builder = match auth {
        ClientAuth::Required => {
            let mut roots = RootCertStore::empty();
            for ca in certificates(&tls.client_ca)? {
                roots
                    .add(ca)
                    .with_context(|| format!("a CA certificate in {}", tls.client_ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
                .build()
                .with_context(|| format!("client CAs from {}", tls.client_ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        ClientAuth::None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .with_context(|| format!("{} and {}", tls.cert.display(), tls.key.display()))?;
    // The machine side speaks both (gRPC needs HTTP/2; approval calls may
    // come over HTTP/1.1); the approvers' API speaks HTTP/1.1.
    config.alpn_protocols = match auth {
        ClientAuth::Required => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        ClientAuth::None => vec![b"http/1.1".to_vec()],
    };
    Ok(Arc::new(config))
}

/// Logs refused handshakes, at most one line a second (a scan must not
/// flood the log), counting the ones it did not print.
struct RefusalLog {
    label: &'static str,
    state: Mutex<(Option<Instant>, u64)>,
}

impl RefusalLog {
    fn refused(&self, peer: SocketAddr, why: &str) {
        let Ok(mut s) = self.state.lock() else { return };
        let now = Instant::now();
        if s.0
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            s.1 += 1;
            return;
        }
        let more = std::mem::take(&mut s.1);
        s.0 = Some(now);
        let also = if more > 0 {
            format!(" ({more} more refused since the last line)")
        } else {
            String::new()
        };
        eprintln!(
            "tracegate: {}: TLS handshake with {peer} refused: {why}{also}",
            self.label
        );
    }
}

/// Accepts connections on `listener` and hands on those whose TLS
/// handshake succeeds.
pub fn accept(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    label: &'static str,
) -> mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)> {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = TlsAcceptor::from(config);
    let log = Arc::new(RefusalLog {
        label,
        state: Mutex::new((None, 0)),
    });
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: wait, go on.
                    eprintln!("tracegate: {label}: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            // Answers are small frames: no Nagle delay on them.
            let _ = tcp.set_nodelay(true);
            let (acceptor, out, log) = (acceptor.clone(), tx.clone(), log.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = out.send((stream, peer)).await;
                    }
                    Ok(Err(e)) => log.refused(peer, &e.to_string()),
                    Err(_) => log.refused(peer, "no handshake in time"),
                }
            });
            if tx.is_closed() {
                break;
            }
        }
    });
    rx
}

/// TLS connections as an axum listener.
pub struct Listener {
    pub connections: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    pub local: SocketAddr,
}

impl axum::serve::Listener for Listener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.connections.recv().await {
            Some(c) => c,
            // The accept loop ended: nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
