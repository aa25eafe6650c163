//! A TCP relay that delays every chunk, in each direction, by a fixed time
//! from the moment it arrived (a delay line, not a serialising sleep): a
//! network hop of that one-way latency between the service and PostgreSQL,
//! so round trips show up as multiples of it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Listens on a loopback port and relays to `target` with `delay` each way.
pub async fn delay_proxy(target: u16, delay: Duration) -> u16 {
    relay(target, delay, Arc::default()).await
}

/// A relay to `target` without delay that counts the connections made
/// through it: each one is a login by the service. The count is taken
/// when the relay accepts, so it is up to date once a request that logged
/// in has returned.
pub async fn counting_relay(target: u16) -> (u16, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    (relay(target, Duration::ZERO, count.clone()).await, count)
}

/// A relay to `target` that can be cut: while cut, every connection
/// through it is closed, new ones as soon as they are accepted (a network
/// path to a dependency that fails, and heals when restored).
pub async fn switchable_relay(target: u16) -> (u16, Switch) {
    let (up, watch) = tokio::sync::watch::channel(true);
    let accepted = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            if !*watch.borrow() {
                drop(inbound);
                continue;
            }
            let Ok(outbound) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else {
                continue;
            };
            let mut watch = watch.clone();
            tokio::spawn(async move {
                let (mut ri, mut wi) = inbound.into_split();
                let (mut ro, mut wo) = outbound.into_split();
                tokio::select! {
                    _ = tokio::io::copy(&mut ri, &mut wo) => {}
                    _ = tokio::io::copy(&mut ro, &mut wi) => {}
                    _ = watch.wait_for(|up| !*up) => {}
                }
            });
        }
    });
    (port, Switch { up, accepted })
}

/// Cuts and restores a [`switchable_relay`], and counts the connections
/// it accepted (cut or not: each is an attempt to reach the target).
pub struct Switch {
    up: tokio::sync::watch::Sender<bool>,
    accepted: Arc<AtomicUsize>,
}

impl Switch {
    pub fn cut(&self) {
        self.up.send_replace(false);
    }

    pub fn restore(&self) {
        self.up.send_replace(true);
    }

    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

async fn relay(target: u16, delay: Duration, accepted: Arc<AtomicUsize>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            accepted.fetch_add(1, Ordering::SeqCst);
            let Ok(outbound) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else {
                continue;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let (ri, wi) = inbound.into_split();
            let (ro, wo) = outbound.into_split();
            tokio::spawn(pipe(ri, wo, delay));
            tokio::spawn(pipe(ro, wi, delay));
        }
    });
    port
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send((Instant::now(), buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
    });
    while let Some((arrived, chunk)) = rx.recv().await {
        tokio::time::sleep_until((arrived + delay).into()).await;
        if to.write_all(&chunk).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
