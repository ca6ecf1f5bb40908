//! TCP plumbing shared by the test proxies ([`crate::CountingProxy`],
//! [`crate::ImpairmentProxy`]) and the echo servers of the tests.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
fn listen_local(port: u16, what: &str) -> (TcpListener, u16) {
    let listener = TcpListener::bind(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("{what} cannot bind 127.0.0.1:{port}: {e}"));
    listener
        .set_nonblocking(true)
        .expect("nonblocking listener");
    let port = listener.local_addr().expect("local_addr").port();
    (listener, port)
}

/// Accepts connections on `listener` until `stop` is set (polling every 5 ms), counts each
/// in `accepted`, connects it through to `127.0.0.1:target` ([`Link::connect`]) and hands
/// `on_link` its number and three handles on its sockets (one per direction, one to keep
/// for closing it).
pub(crate) fn accept_links(
    listener: &TcpListener,
    target: u16,
    stop: &AtomicBool,
    accepted: &AtomicU64,
    mut on_link: impl FnMut(u64, [Link; 3]),
) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                let id = accepted.fetch_add(1, Ordering::SeqCst);
                let _ = client.set_nonblocking(false);
                let Some(link) = Link::connect(client, target) else {
                    continue;
                };
                let (Some(down), Some(kept)) = (link.try_clone(), link.try_clone()) else {
                    continue;
                };
                on_link(id, [link, down, kept]);
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// The accepting thread of a proxy listening on `127.0.0.1:port` for `127.0.0.1:target`.
pub(crate) struct Acceptor {
    pub port: u16,
    pub target: u16,
    thread: Option<JoinHandle<()>>,
}

impl Acceptor {
    /// Listens on `listen_port` (0 = any free port) and runs `run(listener)` on a thread named
    /// `<name>-<port>`.
    pub fn spawn(
        name: &str,
        listen_port: u16,
        target: u16,
        run: impl FnOnce(TcpListener) + Send + 'static,
    ) -> Acceptor {
        let (listener, port) = listen_local(listen_port, name);
        let thread = std::thread::Builder::new()
            .name(format!("{name}-{port}"))
            .spawn(move || run(listener))
            .unwrap_or_else(|e| panic!("spawn {name} acceptor: {e}"));
        Acceptor {
            port,
            target,
            thread: Some(thread),
        }
    }

    /// Waits for the thread (after its stop flag was set).
    pub fn join(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
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
