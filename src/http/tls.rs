//! The metrics endpoint's serving certificate: `tls.crt`/`tls.key` from a
//! directory (a mounted Secret, e.g. from cert-manager; re-read when the
//! files change, checked at most every 10 s, so a renewed certificate is
//! served without a restart), or a self-signed one made at start (the
//! ServiceMonitor then skips verification, as kubebuilder's scaffold does).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::crypto::ring;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

const RECHECK: Duration = Duration::from_secs(10);

fn certified(cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("certificate: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate in the PEM".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("private key: {e}"))?;
    let signing = ring::sign::any_supported_type(&key).map_err(|e| format!("private key: {e}"))?;
    Ok(CertifiedKey::new(certs, signing))
}

/// A self-signed certificate for `names` (made in memory; never written).
pub fn self_signed(names: Vec<String>) -> Result<CertifiedKey, String> {
    let c = rcgen::generate_simple_self_signed(names).map_err(|e| e.to_string())?;
    certified(
        c.cert.pem().as_bytes(),
        c.signing_key.serialize_pem().as_bytes(),
    )
}

struct Loaded {
    key: Arc<CertifiedKey>,
    stamp: Option<(SystemTime, SystemTime)>,
    checked: Instant,
}

/// Serves the certificate of a directory, reloading it when it changes.
pub struct Resolver {
    dir: Option<PathBuf>,
    current: Mutex<Loaded>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver").field("dir", &self.dir).finish()
    }
}

fn stamp(dir: &Path) -> Option<(SystemTime, SystemTime)> {
    let m = |n: &str| {
        std::fs::metadata(dir.join(n))
            .and_then(|m| m.modified())
            .ok()
    };
    Some((m("tls.crt")?, m("tls.key")?))
}

fn load(dir: &Path) -> Result<CertifiedKey, String> {
    let read =
        |n: &str| std::fs::read(dir.join(n)).map_err(|e| format!("{}: {e}", dir.join(n).display()));
    certified(&read("tls.crt")?, &read("tls.key")?).map_err(|e| format!("{}: {e}", dir.display()))
}

impl Resolver {
    /// From `dir` (tls.crt, tls.key), or self-signed for `names`.
    pub fn new(dir: Option<PathBuf>, names: Vec<String>) -> Result<Resolver, String> {
        let (key, st) = match &dir {
            Some(d) => (load(d)?, stamp(d)),
            None => (self_signed(names)?, None),
        };
        Ok(Resolver {
            dir,
            current: Mutex::new(Loaded {
                key: Arc::new(key),
                stamp: st,
                checked: Instant::now(),
            }),
        })
    }

    fn get(&self) -> Arc<CertifiedKey> {
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(dir) = &self.dir
            && cur.checked.elapsed() >= RECHECK
        {
            cur.checked = Instant::now();
            let st = stamp(dir);
            if st.is_some() && st != cur.stamp {
                match load(dir) {
                    Ok(k) => {
                        tracing::info!(dir = %dir.display(), "reloaded the metrics serving certificate");
                        cur.key = Arc::new(k);
                        cur.stamp = st;
                    }
                    // keep serving the previous one (a half-written renewal)
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot reload the metrics serving certificate")
                    }
                }
            }
        }
        cur.key.clone()
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

/// A rustls server configuration (ring, TLS 1.2 and 1.3, HTTP/1.1).
pub fn server_config(resolver: Arc<Resolver>) -> Result<rustls::ServerConfig, String> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}
