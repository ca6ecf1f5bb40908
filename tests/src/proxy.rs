//! A TCP proxy that counts the bytes on the wire and can cut the link.

use crate::tcp::{accept_links, lock, reap_finished, take_all, Acceptor};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

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
    acceptor: Acceptor,
    shared: Arc<Shared>,
}

impl CountingProxy {
    /// A proxy on a free port to `127.0.0.1:target`.
    pub fn start(target: u16) -> CountingProxy {
        Self::start_on(0, target)
    }

    /// A proxy on `127.0.0.1:listen_port` (0 = any free port) to `127.0.0.1:target`.
    pub fn start_on(listen_port: u16, target: u16) -> CountingProxy {
        let shared = Arc::new(Shared::default());
        let sh = shared.clone();
        let acceptor = Acceptor::spawn("proxy", listen_port, target, move |l| {
            accept_loop(l, target, sh)
        });
        CountingProxy { acceptor, shared }
    }

    /// The port the proxy listens on.
    pub fn port(&self) -> u16 {
        self.acceptor.port
    }

    /// The port it forwards to.
    pub fn target(&self) -> u16 {
        self.acceptor.target
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
        for (_, a, b) in take_all(&self.shared.conns) {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.acceptor.join();
        self.cut_all();
        for p in take_all(&self.shared.pumps) {
            let _ = p.join();
        }
    }
}

fn accept_loop(listener: TcpListener, target: u16, sh: Arc<Shared>) {
    accept_links(
        &listener,
        target,
        &sh.stop,
        &sh.accepted,
        |id, [link, down, kept]| {
            lock(&sh.conns).push((id, kept.client, kept.server));
            let done = Arc::new(AtomicU64::new(0));
            let up = spawn_pump(link.client, link.server, sh.clone(), true, id, done.clone());
            let down = spawn_pump(down.server, down.client, sh.clone(), false, id, done);
            let mut p = lock(&sh.pumps);
            reap_finished(&mut p);
            p.extend([up, down]);
        },
    );
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
