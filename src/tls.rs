//! HTTPS and WSS for `serve --tls-cert --tls-key` (rustls).
//!
//! Phones give a page its best audio path (AudioWorklet, WebCodecs) only in a secure context,
//! so the relay can serve TLS itself. Handshakes run in each connection's own task
//! (`accept.rs`), with a deadline: a client that opens a connection and says nothing holds up
//! no one else.

use std::path::Path;
use std::sync::Arc;
use tokio_rustls::rustls;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("{0}")]
    Config(String),
}

fn file_error(path: &Path, message: impl Into<String>) -> Error {
    Error::File {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// Reads a PEM certificate chain and its PEM private key into a server configuration
/// (HTTP/1.1 only: browsers open WebSockets over HTTP/1.1).
pub fn load(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, Error> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_error(cert, format!("cannot read the certificate: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(cert, format!("not a PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(file_error(
            cert,
            "no certificate in the file (expected PEM)",
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        file_error(
            key,
            format!("cannot read a PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"),
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| Error::Config(format!("the certificate and key do not go together: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Client configuration for `wss://`: the system's certificate authorities, plus those in
/// `extra` (PEM), which may be a relay's self-signed certificate.
pub fn client_config(extra: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, Error> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    // Unreadable system certificates are skipped: the others, or `extra`, may still do.
    let (added, _) =
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    let mut count = added;
    if let Some(path) = extra {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| file_error(path, format!("cannot read the certificate: {e}")))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| file_error(path, format!("not a PEM certificate: {e}")))?;
        if certs.is_empty() {
            return Err(file_error(
                path,
                "no certificate in the file (expected PEM)",
            ));
        }
        for c in certs {
            roots
                .add(c)
                .map_err(|e| file_error(path, format!("not a usable certificate: {e}")))?;
            count += 1;
        }
    }
    if count == 0 {
        return Err(Error::Config(
            "no trusted certificate authority: install the system's (ca-certificates) or name one in BOOTHCAST_CA_CERT".into(),
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
