//! The receiver's main-thread logic, once for both daemons: answering tunnels that passed
//! their handshake (a playback stream for a play tunnel; the source resolved for a record
//! tunnel), creating a record tunnel's capture stream only while the desktop end has readers
//! and parking its real-time side in between, removing the streams of tunnels that ended and
//! ending the tunnels whose stream is gone, publishing statistics, and refusing with the same
//! status and reason whichever daemon runs it.
//!
//! A daemon implements [`Daemon`] (open a play stream, resolve and open a capture, park one)
//! and [`StreamHandle`] on its stream types (gone? publish); its module keeps a [`Sessions`],
//! hands [`Sessions::host`] to [`crate::server::Receiver::start`], wakes its main loop from
//! the waker given to [`Sessions::set_waker`], and calls [`Sessions::service`] when woken and
//! [`Sessions::publish`] once a second.
use crate::connection::ConnShared;
use crate::decode::Playback;
use crate::encode::Feeder;
use crate::handshake::{STATUS_NO_SUCH_DEVICE, STATUS_TOO_MANY_CONNECTIONS};
use crate::server::{Host, RecordRequest, StreamRequest};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::{Arc, Mutex, OnceLock};

/// Why a daemon could not give a tunnel its stream: the status and reason the peer gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// 404 (no such device), 415 (a format the daemon cannot use), 503 (the daemon refused).
    pub status: u16,
    /// One line for the peer's log.
    pub reason: String,
}

impl Refusal {
    /// 404: the device is not there. `None`: there is no default device of that `kind`
    /// (`sink` or `source`).
    pub fn no_device(kind: &str, name: Option<&str>) -> Refusal {
        Refusal {
            status: STATUS_NO_SUCH_DEVICE,
            reason: match name {
                Some(n) => format!("no {kind} named {n:?}"),
                None => format!("there is no default {kind}"),
            },
        }
    }

    /// 415: the daemon cannot use this format.
    pub fn format(why: impl Into<String>) -> Refusal {
        Refusal {
            status: crate::handshake::STATUS_UNSUPPORTED_FORMAT,
            reason: why.into(),
        }
    }

    /// 503: the daemon refused the stream for another reason.
    pub fn refused(why: impl Into<String>) -> Refusal {
        Refusal {
            status: STATUS_TOO_MANY_CONNECTIONS,
            reason: why.into(),
        }
    }
}

/// A stream for the daemon to create for a tunnel.
pub struct NewStream<'a, IO> {
    /// The tunnel (format, channel map, label, statistics).
    pub conn: &'a Arc<ConnShared>,
    /// `<far end's device> on <far end's host>`.
    pub name: &'a str,
    /// The tunnel's properties (peer, remote name, codec), after the daemon's own.
    pub props: Vec<(String, String)>,
    /// The real-time side for the stream's callback.
    pub io: IO,
}

/// A stream the daemon created for a tunnel.
pub trait StreamHandle {
    /// The stream is gone (killed, destroyed, failed): its tunnel ends.
    fn gone(&self) -> bool;
    /// Shows the tunnel's statistics as the stream's properties.
    fn publish(&self, props: &[(String, String)]);
    /// A play tunnel went quiet (`true`: nothing to play, its buffer empty) or has audio
    /// again: the daemon may cork the stream meanwhile, so that its device can idle or
    /// suspend. The default does nothing.
    fn set_quiet(&self, _quiet: bool) {}
}

/// What a daemon does for the receiver, on its main thread.
pub trait Daemon {
    /// A playback stream.
    type Play: StreamHandle;
    /// A capture stream.
    type Capture: StreamHandle;
    /// A capture's real-time side while no stream runs it.
    type Parked;
    /// Where a record tunnel records (resolved when it arrives).
    type Source;

    /// Creates the playback stream of a tunnel on `device` (`None`: the default sink); returns
    /// it and the name of the device it plays on.
    fn open_play(
        &mut self,
        device: Option<&str>,
        new: NewStream<'_, Playback>,
    ) -> Result<(Self::Play, String), Refusal>;

    /// Finds the source `wanted` (`None`: the default source) and the name to answer with.
    fn resolve_source(&mut self, wanted: Option<&str>) -> Result<(Self::Source, String), Refusal>;

    /// Wraps what a capture stream's callback feeds, before its first stream.
    fn park(&mut self, feeder: Feeder) -> Self::Parked;

    /// Creates a capture stream on `source`.
    fn open_capture(
        &mut self,
        source: &Self::Source,
        new: NewStream<'_, Self::Parked>,
    ) -> Result<Self::Capture, String>;

    /// Destroys a capture stream and takes its real-time side back (`None`: it was lost, and
    /// the tunnel ends).
    fn close_capture(&mut self, stream: Self::Capture) -> Option<Self::Parked>;
}

/// The connection threads' side: requests queue here for the main thread, which is woken.
struct Queue {
    plays: Mutex<VecDeque<StreamRequest>>,
    records: Mutex<VecDeque<RecordRequest>>,
    waker: OnceLock<Box<dyn Fn() + Send + Sync>>,
}

impl Queue {
    fn wake(&self) {
        if let Some(w) = self.waker.get() {
            w();
        }
    }

    fn take<T>(q: &Mutex<VecDeque<T>>) -> Vec<T> {
        match q.lock() {
            Ok(mut q) => q.drain(..).collect(),
            Err(_) => Vec::new(),
        }
    }
}

impl Host for Queue {
    fn open(&self, req: StreamRequest) {
        if let Ok(mut q) = self.plays.lock() {
            q.push_back(req);
        }
        self.wake();
    }

    fn open_record(&self, req: RecordRequest) {
        if let Ok(mut q) = self.records.lock() {
            q.push_back(req);
        }
        self.wake();
    }

    fn changed(&self) {
        self.wake();
    }
}

struct Play<D: Daemon> {
    stream: D::Play,
    conn: Arc<ConnShared>,
    /// What the stream was last told by [`StreamHandle::set_quiet`].
    quiet: bool,
}

/// A record tunnel: its capture stream exists only while the desktop end has readers
/// (privacy, CPU, bandwidth); in between, its real-time side is parked here.
struct Record<D: Daemon> {
    stream: Option<D::Capture>,
    parked: Option<D::Parked>,
    source: D::Source,
    conn: Arc<ConnShared>,
    name: String,
    props: Vec<(String, String)>,
}

/// The receiver's tunnels as the daemon's main thread sees them.
pub struct Sessions<D: Daemon> {
    queue: Arc<Queue>,
    default_sink: Option<String>,
    default_source: Option<String>,
    plays: Vec<Play<D>>,
    records: Vec<Record<D>>,
}

impl<D: Daemon> Sessions<D> {
    /// Tunnels that name no device play on `default_sink` and record from `default_source`
    /// (`None`: the daemon's defaults).
    pub fn new(default_sink: Option<String>, default_source: Option<String>) -> Sessions<D> {
        Sessions {
            queue: Arc::new(Queue {
                plays: Mutex::new(VecDeque::new()),
                records: Mutex::new(VecDeque::new()),
                waker: OnceLock::new(),
            }),
            default_sink,
            default_source,
            plays: Vec::new(),
            records: Vec::new(),
        }
    }

    /// The side the connection threads call (give it to the receiver).
    pub fn host(&self) -> Arc<dyn Host> {
        self.queue.clone()
    }

    /// How the connection threads wake the main thread (once; later calls are ignored).
    pub fn set_waker(&self, wake: impl Fn() + Send + Sync + 'static) {
        let _ = self.queue.waker.set(Box::new(wake));
    }

    /// Tunnels with a stream or waiting for readers.
    pub fn len(&self) -> usize {
        self.plays.len() + self.records.len()
    }

    /// No tunnels.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Answers new tunnels, removes the ended ones, ends those whose stream is gone, and
    /// starts or stops record tunnels' captures as their readers come and go.
    pub fn service(&mut self, daemon: &mut D) {
        for req in Queue::take(&self.queue.plays) {
            let (conn, playback, name, props, replier) = req.into_parts();
            let device = conn.device.clone().or_else(|| self.default_sink.clone());
            let new = NewStream {
                conn: &conn,
                name: &name,
                props,
                io: playback,
            };
            match daemon.open_play(device.as_deref(), new) {
                Ok((stream, on)) => {
                    log::info!("tunnel {} plays as stream {name:?} on {on}", conn.label);
                    replier.accept(&on);
                    self.plays.push(Play {
                        stream,
                        conn,
                        quiet: false,
                    });
                }
                Err(r) => replier.refuse(r.status, &r.reason),
            }
        }
        self.plays.retain(|p| {
            if p.stream.gone() {
                log::info!("stream of {} is gone; closing its tunnel", p.conn.label);
                p.conn.kill();
                return false;
            }
            !p.conn.is_closed()
        });
        for p in &mut self.plays {
            let quiet = p.conn.quiet();
            if quiet != p.quiet {
                p.quiet = quiet;
                p.stream.set_quiet(quiet);
            }
        }
        for req in Queue::take(&self.queue.records) {
            let (conn, feeder, name, props, replier) = req.into_parts();
            let wanted = conn.device.clone().or_else(|| self.default_source.clone());
            match daemon.resolve_source(wanted.as_deref()) {
                Ok((source, label)) => {
                    log::info!(
                        "record tunnel {} records {label} while it has readers",
                        conn.label
                    );
                    replier.accept(&label);
                    self.records.push(Record {
                        stream: None,
                        parked: Some(daemon.park(feeder)),
                        source,
                        conn,
                        name,
                        props,
                    });
                }
                Err(r) => replier.refuse(r.status, &r.reason),
            }
        }
        self.records.retain_mut(|r| follow_readers(daemon, r));
    }

    /// Publishes each stream's statistics as its properties (about once a second).
    pub fn publish(&self) {
        for p in &self.plays {
            p.stream.publish(&p.conn.stat_properties());
        }
        for r in &self.records {
            if let Some(s) = &r.stream {
                s.publish(&r.conn.stat_properties());
            }
        }
    }

    /// The receiver stops (after its network side): refuses what still waits, drops every
    /// stream.
    pub fn shutdown(&mut self) {
        for req in Queue::take(&self.queue.plays) {
            req.into_parts()
                .4
                .refuse(STATUS_TOO_MANY_CONNECTIONS, "the receiver is shutting down");
        }
        for req in Queue::take(&self.queue.records) {
            req.into_parts()
                .4
                .refuse(STATUS_TOO_MANY_CONNECTIONS, "the receiver is shutting down");
        }
        self.plays.clear();
        self.records.clear();
    }
}

/// A daemon's side and its tunnels, shared by the callbacks of its main loop (main thread
/// only): [`MainThread::on_wake`] for the wake-up the connection threads trigger,
/// [`MainThread::on_tick`] for a one-second timer.
pub struct MainThread<D: Daemon>(Rc<RefCell<(D, Sessions<D>)>>);

impl<D: Daemon + 'static> MainThread<D> {
    /// The daemon's side and its (still empty) tunnels.
    pub fn new(daemon: D, sessions: Sessions<D>) -> MainThread<D> {
        MainThread(Rc::new(RefCell::new((daemon, sessions))))
    }

    /// A callback that services the tunnels (see [`Sessions::service`]).
    pub fn on_wake(&self) -> impl FnMut() + 'static {
        self.callback(false)
    }

    /// A callback that services the tunnels and publishes their statistics.
    pub fn on_tick(&self) -> impl FnMut() + 'static {
        self.callback(true)
    }

    fn callback(&self, publish: bool) -> impl FnMut() + 'static {
        let m = self.0.clone();
        move || {
            if let Ok(mut g) = m.try_borrow_mut() {
                let (daemon, sessions) = &mut *g;
                sessions.service(daemon);
                if publish {
                    sessions.publish();
                }
            }
        }
    }

    /// Runs `f` on the daemon's side and the tunnels; `None` while a callback holds them.
    pub fn with<R>(&self, f: impl FnOnce(&mut D, &mut Sessions<D>) -> R) -> Option<R> {
        let mut g = self.0.try_borrow_mut().ok()?;
        let (daemon, sessions) = &mut *g;
        Some(f(daemon, sessions))
    }
}

/// One record tunnel's step: ends it if its stream is gone or its connection closed (false),
/// creates its capture when readers come and parks it when they go.
fn follow_readers<D: Daemon>(daemon: &mut D, r: &mut Record<D>) -> bool {
    if r.stream.as_ref().is_some_and(|s| s.gone()) {
        log::info!(
            "capture stream of {} is gone; closing its tunnel",
            r.conn.label
        );
        r.conn.kill();
        return false;
    }
    if r.conn.is_closed() {
        return false;
    }
    let want = r.conn.recording();
    if want && r.stream.is_none() {
        if let Some(io) = r.parked.take() {
            let new = NewStream {
                conn: &r.conn,
                name: &r.name,
                props: r.props.clone(),
                io,
            };
            match daemon.open_capture(&r.source, new) {
                Ok(stream) => {
                    log::info!("record tunnel {}: recording", r.conn.label);
                    r.stream = Some(stream);
                }
                Err(e) => {
                    log::warn!("record tunnel {}: cannot record: {e}", r.conn.label);
                    r.conn.kill();
                    return false;
                }
            }
        }
    } else if !want {
        if let Some(stream) = r.stream.take() {
            log::info!("record tunnel {}: stopped (no readers)", r.conn.label);
            r.parked = daemon.close_capture(stream);
            if r.parked.is_none() {
                r.conn.kill();
                return false;
            }
        }
    }
    true
}
