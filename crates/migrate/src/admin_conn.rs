//! The admin (master) connection that `migrate` opens: the one place that
//! holds the most powerful password we ever send. It goes only to a server
//! that proves who it is and only by SCRAM:
//!
//! - TLS, when on, is verified against the roots the caller chose (the
//!   migrate function: AWS's RDS CA bundle shipped in the binary, nothing
//!   else; see [`tenant_users::db::tls_connector`]);
//! - a server that asks for a cleartext or MD5 password is cut off before
//!   the password leaves: the reply bytes are checked below tokio-postgres,
//!   which would otherwise answer either request;
//! - SCRAM uses channel binding (`SCRAM-SHA-256-PLUS`) whenever the server
//!   offers it over TLS (tokio-postgres's `prefer`, the default), so a
//!   relay in the middle cannot replay the exchange.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use tokio_postgres::{Client, NoTls};

/// Opens the admin connection: plain when `connector` is `None` (local
/// development and tests), TLS otherwise; either way only SCRAM (or no
/// password at all, as a trust-auth local server does) gets through.
/// The connection's task is spawned; the handle ends with it.
pub async fn connect(
    config: &tokio_postgres::Config,
    connector: Option<tenant_users::db::MakeTlsConnector>,
) -> Result<(Client, tokio::task::JoinHandle<()>), ConnectError> {
    let (host, port) = match endpoint(config).map_err(ConnectError::Reach)? {
        Endpoint::Tcp(host, port) => (host, port),
        #[cfg(unix)]
        Endpoint::Unix(socket) => {
            // A local server's socket: no TLS, the same guard.
            let stream = tokio::net::UnixStream::connect(&socket)
                .await
                .map_err(ConnectError::Reach)?;
            return plain(config, stream).await;
        }
    };
    let limit = config.get_connect_timeout().copied();
    let tcp = match limit {
        Some(limit) => tokio::time::timeout(limit, TcpStream::connect((host.as_str(), port)))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))
            .and_then(|r| r),
        None => TcpStream::connect((host.as_str(), port)).await,
    }
    .map_err(ConnectError::Reach)?;
    let _ = tcp.set_nodelay(true);
    match connector {
        None => plain(config, tcp).await,
        Some(mut make) => {
            let tls = MakeTlsConnect::<TcpStream>::make_tls_connect(&mut make, &host)
                .map_err(|e| ConnectError::Tls(e.to_string()))?;
            let (client, connection) = config.connect_raw(tcp, GuardedTls(tls)).await?;
            Ok((client, spawn(connection)))
        }
    }
}

/// Plain text over `stream` (a TCP or Unix socket), through the guard.
async fn plain<S>(
    config: &tokio_postgres::Config,
    stream: S,
) -> Result<(Client, tokio::task::JoinHandle<()>), ConnectError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut config = config.clone();
    config.ssl_mode(tokio_postgres::config::SslMode::Disable);
    let (client, connection) = config.connect_raw(Guarded::new(stream), NoTls).await?;
    Ok((client, spawn(connection)))
}

/// Drives the connection until it ends.
fn spawn<F: Future + Send + 'static>(connection: F) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let _ = connection.await;
    })
}

/// Why the admin connection did not open.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No TCP connection (or not exactly one host to make it to).
    #[error("{0}")]
    Reach(#[source] io::Error),
    /// The TLS connector refused the host name.
    #[error("TLS set-up failed: {0}")]
    Tls(String),
    /// Everything after TCP: TLS, authentication (a refused cleartext or
    /// MD5 request shows here), the server's own errors.
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
}

enum Endpoint {
    Tcp(String, u16),
    #[cfg(unix)]
    Unix(std::path::PathBuf),
}

fn endpoint(config: &tokio_postgres::Config) -> Result<Endpoint, io::Error> {
    let port = config.get_ports().first().copied().unwrap_or(5432);
    match config.get_hosts() {
        [tokio_postgres::config::Host::Tcp(host)] => Ok(Endpoint::Tcp(host.clone(), port)),
        #[cfg(unix)]
        [tokio_postgres::config::Host::Unix(dir)] => {
            Ok(Endpoint::Unix(dir.join(format!(".s.PGSQL.{port}"))))
        }
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the admin connection takes exactly one host",
        )),
    }
}

/// Wraps the TLS connector so that the stream it yields is [`Guarded`].
struct GuardedTls<T>(T);

impl<S, T> TlsConnect<S> for GuardedTls<T>
where
    T: TlsConnect<S> + Send + 'static,
    T::Future: Send + 'static,
    T::Stream: Send,
{
    type Stream = Guarded<T::Stream>;
    type Error = T::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Stream, T::Error>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        let inner = self.0.connect(stream);
        Box::pin(async move { inner.await.map(Guarded::new) })
    }
}

/// A stream that reads the server's authentication requests before
/// tokio-postgres does, and fails the read on a cleartext or MD5 request.
pub struct Guarded<S> {
    inner: S,
    watch: AuthWatch,
}

impl<S> Guarded<S> {
    pub fn new(inner: S) -> Self {
        Guarded {
            inner,
            watch: AuthWatch::default(),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => match this.watch.feed(&buf.filled()[before..]) {
                Ok(()) => Poll::Ready(Ok(())),
                Err(refused) => {
                    tracing::error!(%refused, "admin connection refused the server's authentication request");
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        refused,
                    )))
                }
            },
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S: TlsStream + Unpin> TlsStream for Guarded<S> {
    fn channel_binding(&self) -> ChannelBinding {
        self.inner.channel_binding()
    }
}

/// Follows the backend's messages up to `AuthenticationOk`: each is a type
/// byte, a 4-byte length that counts itself, and a body; an
/// `Authentication*` message (`R`) starts its body with a 4-byte code.
#[derive(Default)]
struct AuthWatch {
    head: [u8; 9],
    have: usize,
    skip: usize,
    done: bool,
}

const AUTH_OK: u32 = 0;
const AUTH_CLEARTEXT: u32 = 3;
const AUTH_MD5: u32 = 5;

impl AuthWatch {
    fn feed(&mut self, mut data: &[u8]) -> Result<(), &'static str> {
        while !data.is_empty() && !self.done {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                data = &data[n..];
                continue;
            }
            let need = if self.have > 0 && self.head[0] == b'R' {
                9
            } else if self.have > 0 {
                5
            } else {
                1
            };
            let n = (need - self.have).min(data.len());
            self.head[self.have..self.have + n].copy_from_slice(&data[..n]);
            self.have += n;
            data = &data[n..];
            if self.have < need || need == 1 {
                continue;
            }
            let len = u32::from_be_bytes([self.head[1], self.head[2], self.head[3], self.head[4]])
                as usize;
            if self.head[0] == b'R' {
                if len < 8 {
                    return Err("malformed authentication request");
                }
                let code =
                    u32::from_be_bytes([self.head[5], self.head[6], self.head[7], self.head[8]]);
                match code {
                    AUTH_CLEARTEXT => {
                        return Err(
                            "the server asked for a cleartext password; only SCRAM is sent",
                        );
                    }
                    AUTH_MD5 => {
                        return Err("the server asked for an MD5 password; only SCRAM is sent");
                    }
                    AUTH_OK => self.done = true,
                    _ => {}
                }
                self.skip = len - 8;
            } else {
                if len < 4 {
                    return Err("malformed message before authentication");
                }
                self.skip = len - 4;
            }
            self.have = 0;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(code: u32, body: &[u8]) -> Vec<u8> {
        let mut m = vec![b'R'];
        m.extend_from_slice(&(8 + body.len() as u32).to_be_bytes());
        m.extend_from_slice(&code.to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    fn fed_byte_by_byte(stream: &[u8]) -> Result<(), &'static str> {
        let mut w = AuthWatch::default();
        for b in stream {
            w.feed(std::slice::from_ref(b))?;
        }
        Ok(())
    }

    #[test]
    fn cleartext_and_md5_requests_are_refused_however_the_bytes_arrive() {
        for code in [AUTH_CLEARTEXT, AUTH_MD5] {
            let body = if code == AUTH_MD5 {
                &b"salt"[..]
            } else {
                &[][..]
            };
            let stream = auth(code, body);
            assert!(AuthWatch::default().feed(&stream).is_err());
            assert!(fed_byte_by_byte(&stream).is_err());
        }
    }

    #[test]
    fn scram_then_ok_passes_and_later_bytes_are_not_read_as_requests() {
        let mut stream = auth(10, b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0");
        stream.extend(auth(11, b"r=nonce,s=salt,i=4096"));
        stream.extend(auth(12, b"v=proof"));
        stream.extend(auth(AUTH_OK, b""));
        // After AuthenticationOk, anything (here a fake "R ... 3") is data.
        stream.extend(auth(AUTH_CLEARTEXT, b""));
        assert_eq!(AuthWatch::default().feed(&stream), Ok(()));
        assert_eq!(fed_byte_by_byte(&stream), Ok(()));
    }

    #[test]
    fn an_error_before_authentication_is_skipped_whole() {
        let mut stream = vec![b'E'];
        let body = b"SFATAL\0C28000\0Mno\0\0";
        stream.extend_from_slice(&(4 + body.len() as u32).to_be_bytes());
        stream.extend_from_slice(body);
        assert_eq!(fed_byte_by_byte(&stream), Ok(()));
        assert!(AuthWatch::default().feed(&auth(1, &[0; 1])[..5]).is_ok());
    }
}
