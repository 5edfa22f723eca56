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

/// A server connection's TLS session, shared by its connection's task and, while the delegate
/// is caught up, its channel's writer (`direct.rs`), which encrypts each frame for it and sends
/// the record itself. Every byte that leaves goes through the session's one queue of records,
/// under this lock, so the two never interleave within a record.
pub type Session = Arc<std::sync::Mutex<rustls::ServerConnection>>;

/// Records a session keeps unsent for a client that does not read, in bytes (rustls's own
/// default is 64 KiB: ten seconds of a 32 kbit/s channel). Past it a write waits, so a slow
/// listener's frames back up in the relay's queue, where they are skipped to stay live, as the
/// kernel's share is kept small on plain TCP (`server::NOTSENT_LOWAT`).
pub const SEND_BUFFER: usize = 8 * 1024;

/// A server's TLS stream over `io` (after the handshake) whose [`Session`] can be shared: what
/// `tokio_rustls::server::TlsStream` does for reading and writing (RFC 8446 records through
/// rustls), with the session behind a lock.
pub struct Shared<IO> {
    io: IO,
    session: Session,
    /// The peer closed its side (a read of 0 bytes).
    eof: bool,
    closing: bool,
}

impl<IO> Shared<IO> {
    /// After the handshake: `tokio_rustls::server::TlsStream::into_inner`'s parts.
    pub fn new(io: IO, mut session: rustls::ServerConnection) -> Shared<IO> {
        session.set_buffer_limit(Some(SEND_BUFFER));
        Shared {
            io,
            session: Arc::new(std::sync::Mutex::new(session)),
            eof: false,
            closing: false,
        }
    }

    pub fn session(&self) -> Session {
        self.session.clone()
    }
}

/// `std::io::Read` over an `AsyncRead` for one poll: `Pending` is `WouldBlock`.
struct ReadIo<'a, 'b, IO> {
    io: &'a mut IO,
    cx: &'a mut std::task::Context<'b>,
}

impl<IO: tokio::io::AsyncRead + Unpin> std::io::Read for ReadIo<'_, '_, IO> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut buf = tokio::io::ReadBuf::new(buf);
        match std::pin::Pin::new(&mut *self.io).poll_read(self.cx, &mut buf) {
            std::task::Poll::Ready(Ok(())) => Ok(buf.filled().len()),
            std::task::Poll::Ready(Err(e)) => Err(e),
            std::task::Poll::Pending => Err(std::io::ErrorKind::WouldBlock.into()),
        }
    }
}

/// `std::io::Write` over an `AsyncWrite` for one poll: `Pending` is `WouldBlock`.
struct WriteIo<'a, 'b, IO> {
    io: &'a mut IO,
    cx: &'a mut std::task::Context<'b>,
}

impl<IO: tokio::io::AsyncWrite + Unpin> std::io::Write for WriteIo<'_, '_, IO> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match std::pin::Pin::new(&mut *self.io).poll_write(self.cx, buf) {
            std::task::Poll::Ready(r) => r,
            std::task::Poll::Pending => Err(std::io::ErrorKind::WouldBlock.into()),
        }
    }

    fn write_vectored(&mut self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
        match std::pin::Pin::new(&mut *self.io).poll_write_vectored(self.cx, bufs) {
            std::task::Poll::Ready(r) => r,
            std::task::Poll::Pending => Err(std::io::ErrorKind::WouldBlock.into()),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match std::pin::Pin::new(&mut *self.io).poll_flush(self.cx) {
            std::task::Poll::Ready(r) => r,
            std::task::Poll::Pending => Err(std::io::ErrorKind::WouldBlock.into()),
        }
    }
}

/// Writes the session's queued records to `io` until it has none or `io` would block:
/// `Ok(true)` when none is left.
fn send_queued<IO: tokio::io::AsyncWrite + Unpin>(
    session: &mut rustls::ServerConnection,
    io: &mut IO,
    cx: &mut std::task::Context<'_>,
) -> std::io::Result<bool> {
    while session.wants_write() {
        match session.write_tls(&mut WriteIo { io, cx }) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

impl<IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> tokio::io::AsyncRead for Shared<IO> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::io::Read;
        use std::task::Poll;
        let this = self.get_mut();
        let mut session = this.session.lock().expect("TLS session lock poisoned");
        loop {
            // Plaintext already decrypted comes first; `Ok(0)` is the peer's close_notify.
            match session.reader().read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            match session.read_tls(&mut ReadIo {
                io: &mut this.io,
                cx,
            }) {
                Ok(0) => this.eof = true,
                Ok(_) => {
                    if let Err(e) = session.process_new_packets() {
                        // Its alert, if it can go at once.
                        let _ = send_queued(&mut session, &mut this.io, cx);
                        return Poll::Ready(Err(std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            e,
                        )));
                    }
                    // What reading made to send (a key update's answer): at once if it can
                    // go, else with the next write.
                    if let Err(e) = send_queued(&mut session, &mut this.io, cx) {
                        return Poll::Ready(Err(e));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl<IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite
    for Shared<IO>
{
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::io::Write;
        use std::task::Poll;
        let this = self.get_mut();
        let mut session = this.session.lock().expect("TLS session lock poisoned");
        // Records queued before (by this task or the channel's writer) go first.
        let mut taken = 0;
        loop {
            let all_sent = match send_queued(&mut session, &mut this.io, cx) {
                Ok(done) => done,
                Err(e) => return Poll::Ready(Err(e)),
            };
            if taken == buf.len() {
                return Poll::Ready(Ok(taken));
            }
            // The session takes what fits under its buffer limit.
            match session.writer().write(&buf[taken..]) {
                // Nothing queued, and yet no room: not a state rustls comes to.
                Ok(0) if all_sent => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
                Ok(n) => taken += n,
                Err(e) => return Poll::Ready(Err(e)),
            }
            if !all_sent {
                // The socket is full: what was taken is the session's to send.
                return if taken == 0 {
                    Poll::Pending
                } else {
                    Poll::Ready(Ok(taken))
                };
            }
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        let this = self.get_mut();
        let mut session = this.session.lock().expect("TLS session lock poisoned");
        match send_queued(&mut session, &mut this.io, cx) {
            Ok(true) => {}
            Ok(false) => return Poll::Pending,
            Err(e) => return Poll::Ready(Err(e)),
        }
        drop(session);
        std::pin::Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        let this = self.get_mut();
        let mut session = this.session.lock().expect("TLS session lock poisoned");
        if !std::mem::replace(&mut this.closing, true) {
            session.send_close_notify();
        }
        match send_queued(&mut session, &mut this.io, cx) {
            Ok(true) => {}
            Ok(false) => return Poll::Pending,
            Err(e) => return Poll::Ready(Err(e)),
        }
        drop(session);
        match std::task::ready!(std::pin::Pin::new(&mut this.io).poll_shutdown(cx)) {
            Err(e) if e.kind() == std::io::ErrorKind::NotConnected => Poll::Ready(Ok(())),
            r => Poll::Ready(r),
        }
    }
}
