//! The client port's accept loop: every TCP connection a client opens (HTTP requests,
//! Engine.IO long-polls, WebSockets) is counted against a cap per node and per IP
//! address, and HTTP/1.1 is served with a deadline for a request's head that is also
//! the idle timeout of a kept-alive connection.
//!
//! Why here and not in the routes: a socket costs a file descriptor and buffers before
//! any route sees a byte, so a client that opens sockets and never finishes a request
//! (or never sends one) must be bounded where sockets are accepted. A socket over a cap
//! is closed at once and counted (`edgeroom_sockets_refused`); one that stays silent
//! past `http_header_timeout_ms` is closed and counted (`edgeroom_http_timeouts`). A
//! WebSocket keeps its socket's place in the count for as long as it lives: the permit
//! travels inside the stream that the upgrade hands over.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;

use edgeroom_host::config::Limits;
use edgeroom_host::metrics::{self, Metrics};

/// The address a client's socket came from, in every request's extensions (requests
/// forwarded by a peer have none: their client is counted where it connected).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// File descriptors kept for everything else a node opens (its store, peers, logs)
/// when the socket cap is taken from the process's open-file limit.
const FDS_KEPT: usize = 256;
/// Pause after `accept` fails (out of descriptors, most likely) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// How many of something each client address holds, under a cap per address (the
/// sockets here; Engine.IO sessions in `engineio`).
#[derive(Default)]
pub struct PerAddress(Mutex<HashMap<IpAddr, usize>>);

impl PerAddress {
    /// One more for `ip`, unless it holds `max` already.
    pub fn take(&self, ip: IpAddr, max: usize) -> bool {
        let mut held = self.0.lock();
        let n = held.entry(ip).or_insert(0);
        let taken = *n < max;
        if taken {
            *n += 1;
        } else if *n == 0 {
            held.remove(&ip);
        }
        taken
    }

    /// One fewer for `ip` (one it took).
    pub fn give_back(&self, ip: IpAddr) {
        let mut held = self.0.lock();
        if let Some(n) = held.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                held.remove(&ip);
            }
        }
    }
}

/// The caps, and what is open now.
struct Caps {
    node: Arc<Semaphore>,
    per_ip: usize,
    open: PerAddress,
    metrics: Arc<Metrics>,
}

/// One accepted socket's places in the counts; given back when it drops.
struct Place {
    caps: Arc<Caps>,
    ip: IpAddr,
    _node: OwnedSemaphorePermit,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.caps.open.give_back(self.ip);
        self.caps.metrics.sockets.dec();
    }
}

impl Caps {
    /// A place for a socket from `ip`, or why there is none.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Place, &'static str> {
        let node = self.node.clone().try_acquire_owned().map_err(|_| "node")?;
        if !self.open.take(ip, self.per_ip) {
            return Err("ip");
        }
        self.metrics.sockets.inc();
        Ok(Place {
            caps: self.clone(),
            ip,
            _node: node,
        })
    }
}

/// The socket cap this process can afford: `limits.max_sockets`, or when that is 0
/// the open-file limit less what the node keeps for itself.
pub fn socket_cap(limits: &Limits) -> usize {
    if limits.max_sockets > 0 {
        return limits.max_sockets;
    }
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` through a valid pointer.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0;
    let fds = match ok {
        true => usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX),
        false => 1024,
    };
    fds.saturating_sub(FDS_KEPT).max(1)
}

/// A client socket with its places in the counts.
struct Counted {
    stream: TcpStream,
    _place: Place,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Serve `app` on `listener` until `stop` turns true; then stop accepting, let each
/// connection finish the request it is in, and return once all have closed.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: &Limits,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
) {
    let cap = socket_cap(limits);
    tracing::debug!(
        sockets = cap,
        per_ip = limits.sockets_per_ip,
        "client socket caps"
    );
    let caps = Arc::new(Caps {
        node: Arc::new(Semaphore::new(cap)),
        per_ip: limits.sockets_per_ip.max(1),
        open: PerAddress::default(),
        metrics,
    });
    let header_timeout = Duration::from_millis(limits.http_header_timeout_ms.max(1));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    let mut conns = JoinSet::new();
    let mut halt = stop.clone();
    let halted = async move {
        let _ = halt.wait_for(|s| *s).await;
    };
    tokio::pin!(halted);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = &mut halted => break,
        };
        while conns.try_join_next().is_some() {}
        let Some(stream) = admit(&caps, stream, peer) else {
            continue;
        };
        let routes = TowerToHyperService::new(app.clone());
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(ClientAddr(peer));
            hyper::service::Service::call(&routes, req)
        });
        let conn = http
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let metrics = caps.metrics.clone();
        let mut stop = stop.clone();
        conns.spawn(async move {
            tokio::pin!(conn);
            let stopping = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            let done = tokio::select! {
                done = conn.as_mut() => done,
                () = stopping => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = done
                && e.is_timeout()
            {
                metrics.http_timeouts.inc();
            }
        });
    }
    while conns.join_next().await.is_some() {}
}

/// `stream` with its places in the counts, or `None` (closed, counted) over a cap.
fn admit(caps: &Arc<Caps>, stream: TcpStream, peer: SocketAddr) -> Option<Counted> {
    match caps.admit(peer.ip().to_canonical()) {
        Ok(place) => {
            // Small frames (Engine.IO packets, WebSocket messages) go out at once.
            let _ = stream.set_nodelay(true);
            Some(Counted {
                stream,
                _place: place,
            })
        }
        Err(kind) => {
            metrics::count(&caps.metrics.sockets_refused, kind);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_holds_at_most_its_share_and_gets_places_back() {
        let held = PerAddress::default();
        let (a, b) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        assert!(held.take(a, 2) && held.take(a, 2));
        assert!(!held.take(a, 2), "a third place for one address");
        assert!(held.take(b, 2), "another address has its own share");
        held.give_back(a);
        assert!(held.take(a, 2));
        held.give_back(a);
        held.give_back(a);
        held.give_back(b);
        assert!(
            held.0.lock().is_empty(),
            "addresses holding nothing are forgotten"
        );
    }
}
