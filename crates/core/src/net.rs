//! The transport under a tunnel: a TCP or unix-socket stream, whichever end connected, and
//! once the hello has chosen encryption, the Noise record layer over it
//! ([`crate::secure`]): what is written is sealed into records, what is read is opened, so
//! everything above (RTP, RTCP, control) is the same with or without encryption.
use crate::params::ServerAddr;
use crate::secure::{Opener, Pattern, Sealer};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a connection attempt may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A connected transport (TCP or unix socket), encrypted or not. Clones share the socket and
/// the encryption state: one clone may read while another writes.
pub(crate) struct Conn {
    io: Io,
    secure: Option<Arc<Secure>>,
}

enum Io {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// The record layer of an encrypted connection.
struct Secure {
    pattern: Pattern,
    send: Mutex<SendSide>,
    recv: Mutex<RecvSide>,
}

struct SendSide {
    sealer: Sealer,
    /// A write failed part-way: the stream is out of step and may not be written again.
    broken: bool,
    wire: Vec<u8>,
}

struct RecvSide {
    opener: Opener,
    /// Opened bytes not yet handed to a reader.
    plain: Vec<u8>,
    pos: usize,
}

fn invalid(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())
}

impl Conn {
    fn new(io: Io) -> Conn {
        Conn { io, secure: None }
    }

    /// From now on, everything written is sealed and everything read is opened. `pending`:
    /// bytes already received after the handshake (the first records).
    pub(crate) fn encrypt(&mut self, sealer: Sealer, mut opener: Opener, pending: &[u8]) {
        opener.push(pending);
        self.secure = Some(Arc::new(Secure {
            pattern: sealer.pattern(),
            send: Mutex::new(SendSide {
                sealer,
                broken: false,
                wire: Vec::new(),
            }),
            recv: Mutex::new(RecvSide {
                opener,
                plain: Vec::new(),
                pos: 0,
            }),
        }));
    }

    /// The pattern of an encrypted connection.
    pub(crate) fn pattern(&self) -> Option<Pattern> {
        self.secure.as_ref().map(|s| s.pattern)
    }

    /// The transport keys of an encrypted connection, for datagrams ([`crate::udp`]; one
    /// state holds both directions: sealing uses ours, opening the peer's).
    pub(crate) fn datagram_key(&self) -> Option<Arc<snow::StatelessTransportState>> {
        let s = self.secure.as_ref()?;
        let key = s.send.lock().ok()?.sealer.transport_key();
        Some(key)
    }

    /// The peer's address (TCP only).
    pub(crate) fn peer_addr(&self) -> Option<std::net::SocketAddr> {
        match &self.io {
            Io::Tcp(s) => s.peer_addr().ok(),
            Io::Unix(_) => None,
        }
    }

    fn raw_read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        match &self.io {
            Io::Tcp(s) => (&*s).read(buf),
            Io::Unix(s) => (&*s).read(buf),
        }
    }

    fn raw_write(&self, buf: &[u8]) -> std::io::Result<usize> {
        match &self.io {
            Io::Tcp(s) => (&*s).write(buf),
            Io::Unix(s) => (&*s).write(buf),
        }
    }

    /// Writes all of `buf` to the socket, retrying only interruptions.
    fn raw_write_all(&self, mut buf: &[u8]) -> std::io::Result<()> {
        while !buf.is_empty() {
            match self.raw_write(buf) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => buf = &buf[n..],
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Connects, and tells how long the connection that succeeded took to open: for TCP the
    /// kernel's SYN / SYN-ACK exchange, one network round trip with no application on the way
    /// (a unix socket: nothing).
    pub(crate) fn connect(addr: &ServerAddr) -> std::io::Result<(Conn, Duration)> {
        match addr {
            ServerAddr::Tcp { host, port } => {
                let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
                for a in (host.as_str(), *port).to_socket_addrs()? {
                    let t = Instant::now();
                    match TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
                        Ok(s) => {
                            let rtt = t.elapsed();
                            let _ = s.set_nodelay(true);
                            return Ok((Conn::new(Io::Tcp(s)), rtt));
                        }
                        Err(e) => last = e,
                    }
                }
                Err(last)
            }
            ServerAddr::Unix(p) => {
                Ok((Conn::new(Io::Unix(UnixStream::connect(p)?)), Duration::ZERO))
            }
            ServerAddr::Rtp { .. } => Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "plain RTP (rtp://) has no connection",
            )),
        }
    }

    pub(crate) fn try_clone(&self) -> std::io::Result<Conn> {
        let io = match &self.io {
            Io::Tcp(s) => Io::Tcp(s.try_clone()?),
            Io::Unix(s) => Io::Unix(s.try_clone()?),
        };
        Ok(Conn {
            io,
            secure: self.secure.clone(),
        })
    }

    pub(crate) fn set_timeouts(
        &self,
        read: Option<Duration>,
        write: Option<Duration>,
    ) -> std::io::Result<()> {
        match &self.io {
            Io::Tcp(s) => {
                s.set_read_timeout(read)?;
                s.set_write_timeout(write)
            }
            Io::Unix(s) => {
                s.set_read_timeout(read)?;
                s.set_write_timeout(write)
            }
        }
    }

    pub(crate) fn set_read_timeout(&self, read: Duration) -> std::io::Result<()> {
        match &self.io {
            Io::Tcp(s) => s.set_read_timeout(Some(read)),
            Io::Unix(s) => s.set_read_timeout(Some(read)),
        }
    }

    /// Ends the reading side: a read blocked on the connection returns 0 at once (this is how
    /// another thread wakes it); writing still works.
    pub(crate) fn shutdown_read(&self) {
        let _ = match &self.io {
            Io::Tcp(s) => s.shutdown(Shutdown::Read),
            Io::Unix(s) => s.shutdown(Shutdown::Read),
        };
    }

    pub(crate) fn shutdown(&self) {
        let _ = match &self.io {
            Io::Tcp(s) => s.shutdown(Shutdown::Both),
            Io::Unix(s) => s.shutdown(Shutdown::Both),
        };
    }
}

impl Read for Conn {
    /// Cleartext: the socket's bytes. Encrypted: opened records' bytes; a record that fails
    /// to open is an `InvalidData` error, and so is every later read (close the connection).
    /// A read timeout surfaces as the socket's own error, as without encryption.
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let Some(secure) = self.secure.clone() else {
            return self.raw_read(buf);
        };
        if buf.is_empty() {
            return Ok(0);
        }
        let mut rx = secure
            .recv
            .lock()
            .map_err(|_| invalid("the receiving side failed"))?;
        let mut net = [0u8; 16384];
        loop {
            let RecvSide { opener, plain, pos } = &mut *rx;
            if *pos < plain.len() {
                let n = buf.len().min(plain.len() - *pos);
                buf[..n].copy_from_slice(&plain[*pos..*pos + n]);
                *pos += n;
                if *pos == plain.len() {
                    plain.clear();
                    *pos = 0;
                }
                return Ok(n);
            }
            match opener.next_plain() {
                Ok(Some(p)) => {
                    *plain = p;
                    *pos = 0;
                    continue;
                }
                Ok(None) => {}
                Err(e) => return Err(invalid(e)),
            }
            let n = self.raw_read(&mut net)?;
            if n == 0 {
                return Ok(0);
            }
            rx.opener.push(&net[..n]);
        }
    }
}

impl Write for Conn {
    /// See the `&Conn` writer: the same, through an exclusive reference.
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        (&*self).write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Writing through a shared reference, as `&TcpStream` allows: the sealing side is behind a
/// mutex, so a clone kept elsewhere (to wake a reader) may write too.
impl Write for &Conn {
    /// Cleartext: the socket's write. Encrypted: all of `buf` is sealed and written, or an
    /// error, after which the connection may not be written again (a record cut short would
    /// put the stream out of step).
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let Some(secure) = self.secure.clone() else {
            return self.raw_write(buf);
        };
        if buf.is_empty() {
            return Ok(0);
        }
        let mut tx = secure
            .send
            .lock()
            .map_err(|_| invalid("the sending side failed"))?;
        if tx.broken {
            return Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "an earlier encrypted write failed part-way",
            ));
        }
        let mut wire = std::mem::take(&mut tx.wire);
        wire.clear();
        if let Err(e) = tx.sealer.seal(buf, &mut wire) {
            tx.broken = true;
            return Err(invalid(e));
        }
        let r = self.raw_write_all(&wire);
        tx.wire = wire;
        match r {
            Ok(()) => Ok(buf.len()),
            Err(e) => {
                tx.broken = true;
                Err(e)
            }
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl From<TcpStream> for Conn {
    fn from(s: TcpStream) -> Conn {
        Conn::new(Io::Tcp(s))
    }
}
