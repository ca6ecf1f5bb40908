//! TCP plumbing shared by the test proxies ([`crate::CountingProxy`],
//! [`crate::ImpairmentProxy`]) and the echo servers of the tests.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// Locks `m`, also when a panicking thread poisoned it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Takes everything out of `m`.
pub(crate) fn take_all<T>(m: &Mutex<Vec<T>>) -> Vec<T> {
    std::mem::take(&mut *lock(m))
}

/// Joins the finished threads of `handles` and keeps the others, so that a long test does not
/// accumulate handles.
pub(crate) fn reap_finished(handles: &mut Vec<JoinHandle<()>>) {
    let (done, live): (Vec<_>, Vec<_>) = std::mem::take(handles)
        .into_iter()
        .partition(|h| h.is_finished());
    for h in done {
        let _ = h.join();
    }
    *handles = live;
}

/// A non-blocking listener on `127.0.0.1:port` (0 = any free port) and its port; `what`
/// names the proxy in the panic message.
pub(crate) fn listen_local(port: u16, what: &str) -> (TcpListener, u16) {
    let listener = TcpListener::bind(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("{what} cannot bind 127.0.0.1:{port}: {e}"));
    listener
        .set_nonblocking(true)
        .expect("nonblocking listener");
    let port = listener.local_addr().expect("local_addr").port();
    (listener, port)
}

/// Accepts connections on `listener` until `stop` is set, handing each client (made
/// blocking again) to `on_client`; polls every 5 ms.
pub(crate) fn accept_until(
    listener: &TcpListener,
    stop: &AtomicBool,
    mut on_client: impl FnMut(TcpStream),
) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                let _ = client.set_nonblocking(false);
                on_client(client);
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// A proxied connection: the accepted client and its connection to the target.
pub(crate) struct Link {
    pub client: TcpStream,
    pub server: TcpStream,
}

impl Link {
    /// Connects `client` through to `127.0.0.1:target` (2 s timeout), both with no delay; if
    /// the target is not listening the client is closed, as a dead server would.
    pub fn connect(client: TcpStream, target: u16) -> Option<Link> {
        let addr = SocketAddr::from(([127, 0, 0, 1], target));
        let Ok(server) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
            let _ = client.shutdown(Shutdown::Both);
            return None;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        Some(Link { client, server })
    }

    /// Other handles on the same two sockets.
    pub fn try_clone(&self) -> Option<Link> {
        Some(Link {
            client: self.client.try_clone().ok()?,
            server: self.server.try_clone().ok()?,
        })
    }
}

/// Echoes everything read on `s` back until the peer closes or an error, in `buf_len` reads.
pub fn echo(mut s: TcpStream, buf_len: usize) {
    let mut buf = vec![0u8; buf_len];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
}
