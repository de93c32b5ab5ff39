//! TLS termination with rustls: TLS 1.2 and 1.3 (set by Pingora's acceptor),
//! AEAD suites only (rustls offers nothing else), and a certificate that
//! reloads with the config without dropping the listener.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Serves the current certificate; [`CertResolver::set`] swaps it.
#[derive(Debug)]
pub struct CertResolver {
    current: ArcSwap<CertifiedKey>,
}

impl CertResolver {
    pub fn new(key: CertifiedKey) -> Self {
        Self {
            current: ArcSwap::from_pointee(key),
        }
    }

    pub fn set(&self, key: CertifiedKey) {
        self.current.store(Arc::new(key));
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// Read a PEM certificate chain and private key and check they belong
/// together. Errors name the file.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    let cert_pem = std::fs::read(cert).map_err(|e| format!("{}: {e}", cert.display()))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut &cert_pem[..])
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: bad PEM: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate found", cert.display()));
    }
    let key_pem = std::fs::read(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let key_der = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|e| format!("{}: bad PEM: {e}", key.display()))?
        .ok_or_else(|| format!("{}: no private key found", key.display()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key_der)
        .map_err(|e| format!("{}: unsupported key: {e}", key.display()))?;
    let ck = CertifiedKey::new(certs, signing);
    ck.keys_match()
        .map_err(|e| format!("{} and {} do not match: {e}", cert.display(), key.display()))?;
    Ok(ck)
}
