//! HTTPS for both daemons (the field's `server.tls_cert` / `server.tls_key`): a rustls acceptor
//! from PEM files, with aws-lc-rs (already the workspace's crypto). A file that cannot be read
//! or holds no usable PEM is an error naming it.

use std::path::Path;
use std::sync::Arc;

pub use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The acceptor for the certificate chain in `cert` and its private key in `key` (PEM; HTTP/1.1
/// offered by ALPN). The error names the file at fault, or both when they do not match.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, String> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|error| format!("cannot read {}: {error}", path.display()))
    };
    let cert_pem = read(cert)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|error| format!("{} is not a PEM certificate chain: {error}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{} holds no PEM certificate (BEGIN CERTIFICATE)",
            cert.display()
        ));
    }
    let key_pem = read(key)?;
    let private_key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|error| format!("{} is not a PEM private key: {error}", key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("TLS set-up: {error}"))?
        .with_no_client_auth()
        .with_single_cert(certs, private_key)
        .map_err(|error| {
            format!(
                "the certificate in {} and the key in {} cannot be used together: {error}",
                cert.display(),
                key.display()
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
