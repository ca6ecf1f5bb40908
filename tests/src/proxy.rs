//! A TCP proxy that counts the bytes on the wire and can cut the link.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    to_server: AtomicU64,
    to_client: AtomicU64,
    accepted: AtomicU64,
    /// Both sockets of every live connection, for cut_all and drop.
    conns: Mutex<Vec<(u64, TcpStream, TcpStream)>>,
    pumps: Mutex<Vec<JoinHandle<()>>>,
}

/// Listens on `127.0.0.1:<port>` and forwards every connection to `127.0.0.1:<target>`,
/// counting the bytes in each direction. Dropping it closes all connections and joins its
/// threads.
pub struct CountingProxy {
    port: u16,
    target: u16,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl CountingProxy {
    /// A proxy on a free port to `127.0.0.1:target`.
    pub fn start(target: u16) -> CountingProxy {
        Self::start_on(0, target)
    }

    /// A proxy on `127.0.0.1:listen_port` (0 = any free port) to `127.0.0.1:target`.
    pub fn start_on(listen_port: u16, target: u16) -> CountingProxy {
        let listener = TcpListener::bind(("127.0.0.1", listen_port))
            .unwrap_or_else(|e| panic!("proxy cannot bind 127.0.0.1:{listen_port}: {e}"));
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let port = listener.local_addr().expect("local_addr").port();
        let shared = Arc::new(Shared::default());
        let sh = shared.clone();
        let acceptor = std::thread::Builder::new()
            .name(format!("proxy-{port}"))
            .spawn(move || accept_loop(listener, target, sh))
            .expect("spawn proxy acceptor");
        CountingProxy {
            port,
            target,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// The port the proxy listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port it forwards to.
    pub fn target(&self) -> u16 {
        self.target
    }

    /// Bytes forwarded from clients to the server so far.
    pub fn bytes_to_server(&self) -> u64 {
        self.shared.to_server.load(Ordering::SeqCst)
    }

    /// Bytes forwarded from the server to clients so far.
    pub fn bytes_to_client(&self) -> u64 {
        self.shared.to_client.load(Ordering::SeqCst)
    }

    /// Connections accepted so far (including ones whose target refused).
    pub fn connections(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections currently open.
    pub fn open_connections(&self) -> usize {
        self.shared.conns.lock().map(|c| c.len()).unwrap_or(0)
    }

    /// Closes every current connection (both sides see the connection reset/closed); new
    /// connections are still accepted.
    pub fn cut_all(&self) {
        let conns = match self.shared.conns.lock() {
            Ok(mut c) => std::mem::take(&mut *c),
            Err(p) => std::mem::take(&mut *p.into_inner()),
        };
        for (_, a, b) in conns {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
        self.cut_all();
        let pumps = match self.shared.pumps.lock() {
            Ok(mut p) => std::mem::take(&mut *p),
            Err(p) => std::mem::take(&mut *p.into_inner()),
        };
        for p in pumps {
            let _ = p.join();
        }
    }
}

fn accept_loop(listener: TcpListener, target: u16, sh: Arc<Shared>) {
    while !sh.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                let id = sh.accepted.fetch_add(1, Ordering::SeqCst);
                let _ = client.set_nonblocking(false);
                let addr = SocketAddr::from(([127, 0, 0, 1], target));
                let Ok(server) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
                    // Target not listening: close the client, as a dead server would.
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (Ok(c2), Ok(s2), Ok(c3), Ok(s3)) = (
                    client.try_clone(),
                    server.try_clone(),
                    client.try_clone(),
                    server.try_clone(),
                ) else {
                    continue;
                };
                if let Ok(mut conns) = sh.conns.lock() {
                    conns.push((id, c3, s3));
                }
                let done = Arc::new(AtomicU64::new(0));
                let up = spawn_pump(client, server, sh.clone(), true, id, done.clone());
                let down = spawn_pump(s2, c2, sh.clone(), false, id, done);
                if let Ok(mut p) = sh.pumps.lock() {
                    // Reap finished pumps so a long test doesn't accumulate handles.
                    let (done, live): (Vec<_>, Vec<_>) = std::mem::take(&mut *p)
                        .into_iter()
                        .partition(|h| h.is_finished());
                    for h in done {
                        let _ = h.join();
                    }
                    *p = live;
                    p.extend([up, down]);
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

fn spawn_pump(
    from: TcpStream,
    to: TcpStream,
    sh: Arc<Shared>,
    upstream: bool,
    id: u64,
    done: Arc<AtomicU64>,
) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(if upstream { "proxy-up" } else { "proxy-down" }.into())
        .spawn(move || {
            pump(from, to, &sh, upstream);
            // The second pump of a connection to finish forgets its sockets.
            if done.fetch_add(1, Ordering::SeqCst) == 1 {
                if let Ok(mut conns) = sh.conns.lock() {
                    conns.retain(|(i, _, _)| *i != id);
                }
            }
        })
        .expect("spawn pump")
}

fn pump(mut from: TcpStream, mut to: TcpStream, sh: &Shared, upstream: bool) {
    let counter = if upstream {
        &sh.to_server
    } else {
        &sh.to_client
    };
    let mut buf = vec![0u8; 65536];
    loop {
        match from.read(&mut buf) {
            Ok(0) => {
                // Orderly close: pass the half-close on.
                let _ = to.shutdown(Shutdown::Write);
                break;
            }
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    let _ = from.shutdown(Shutdown::Both);
                    let _ = to.shutdown(Shutdown::Both);
                    break;
                }
                counter.fetch_add(n as u64, Ordering::SeqCst);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => {
                let _ = from.shutdown(Shutdown::Both);
                let _ = to.shutdown(Shutdown::Both);
                break;
            }
        }
        if sh.stop.load(Ordering::SeqCst) {
            break;
        }
    }
}
