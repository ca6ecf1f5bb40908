//! Tests of the harness itself, against the stock daemon and its stock modules only.

use opus_tunnel_tests::process::pid_exists;
use opus_tunnel_tests::tcp;
use opus_tunnel_tests::{
    analyse_stereo, free_port, play, play_loop, serial, tone, tone_loop, write_s16le,
    CountingProxy, Daemon, Recorder,
};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

#[test]
fn daemon_starts_answers_and_stops() {
    let _g = serial();
    let t = Instant::now();
    let d = Daemon::start().expect("daemon starts");
    let pid = d.pid();
    assert!(pid > 0);
    assert!(d.is_alive());
    assert!(d.sinks().contains(&"null".to_string()), "{:?}", d.sinks());
    let info = d.pactl_ok(&["info"]);
    assert!(info.contains("Default Sink: null"), "{info}");
    assert!(d.rss_kib() > 1000, "rss {}", d.rss_kib());
    assert!(d.log().contains("Daemon startup complete"), "{}", d.log());
    let idx = d
        .load_module("module-null-sink", "sink_name=extra")
        .expect("stock module loads by name");
    assert!(d.sinks().contains(&"extra".to_string()));
    d.unload_module(idx).expect("unload");
    assert!(!d.sinks().contains(&"extra".to_string()));
    let err = d.load_module("module-does-not-exist", "").unwrap_err();
    assert!(!err.is_empty());
    println!("daemon start+checks: {:?}", t.elapsed());
    let dir = d.dir().to_path_buf();
    drop(d);
    assert!(!pid_exists(pid), "daemon {pid} still there after drop");
    assert!(!dir.exists(), "{} not removed", dir.display());
}

#[test]
fn daemon_and_clients_stopped_when_the_test_panics() {
    let _g = serial();
    let (tx, rx) = std::sync::mpsc::channel();
    let r = std::panic::catch_unwind(move || {
        let d = Daemon::start().expect("daemon starts");
        let player = play_loop(&d, "null", tone_loop(440.0, 440.0, -20.0));
        tx.send((d.pid(), player.pid(), d.dir().to_path_buf()))
            .unwrap();
        // The player is leaked on purpose: the daemon's drop must still kill it.
        std::mem::forget(player);
        panic!("deliberate panic inside the test");
    });
    assert!(r.is_err());
    let (pid, pacat, dir) = rx.recv().unwrap();
    assert!(!pid_exists(pid), "daemon {pid} survived the panic");
    // A panicking test keeps the daemon's dir (log) for post-mortems.
    assert!(dir.join("daemon.log").exists());
    let _ = std::fs::remove_dir_all(&dir);
    // pacat was killed by the daemon's drop; it is a zombie at most (the leaked Child never
    // reaps it), so look at its state rather than at kill(pid, 0).
    let state = std::fs::read_to_string(format!("/proc/{pacat}/stat")).unwrap_or_default();
    let st = state
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .next();
    assert!(
        matches!(st, None | Some("Z") | Some("X")),
        "pacat {pacat} runs: {state}"
    );
}

#[test]
fn restart_keeps_dir_and_ports() {
    let _g = serial();
    let port = free_port();
    let mut d = Daemon::builder().native_tcp(port).start().expect("start");
    let old = d.pid();
    d.kill();
    assert!(!d.is_alive());
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    d.restart().expect("restart");
    assert_ne!(d.pid(), old);
    assert!(d.is_alive());
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_ok(),
        "port {port} again"
    );
    assert!(d.log().contains("daemon restarted"));
}

#[test]
fn tone_through_null_sink_comes_back() {
    let _g = serial();
    let d = Daemon::start().expect("start");
    let file = d.dir().join("tone.raw");
    write_s16le(&file, &tone(&[1000.0, 1500.0], -12.0, 3.0)).unwrap();
    let mut rec = Recorder::start(&d, "null.monitor");
    let t = Instant::now();
    let mut p = play(&d, "null", &file);
    let got = rec.read(3.8).expect("record");
    println!("recorded after {:?}", t.elapsed());
    assert!(p.wait(Duration::from_secs(5)), "pacat did not finish");
    println!("play 3 s + record 3.8 s: {:?}", t.elapsed());
    let r = analyse_stereo(&got, 0.2).expect("signal recorded");
    println!("{r:?}");
    assert!(r.seconds > 2.0, "{r:?}");
    r.assert_tone(1000.0, 1500.0, -12.0, 5.0, 1.0);
    // Tighter than asked, to show the analysis is sharp.
    assert!((r.left_hz - 1000.0).abs() < 0.5 && (r.right_hz - 1500.0).abs() < 0.5);
}

#[test]
fn counting_proxy_counts_exactly_and_cuts() {
    let _g = serial();
    // An echo server.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let echo = std::thread::spawn(move || {
        for s in l.incoming().take(2) {
            let s = s.unwrap();
            std::thread::spawn(move || tcp::echo(s, 8192));
        }
    });
    let proxy = CountingProxy::start(port);
    let mut c = TcpStream::connect(("127.0.0.1", proxy.port())).unwrap();
    let payload: Vec<u8> = (0..1_000_003u32).map(|i| (i * 7 + i / 13) as u8).collect();
    let mut c2 = c.try_clone().unwrap();
    let p2 = payload.clone();
    let writer = std::thread::spawn(move || c2.write_all(&p2).unwrap());
    let mut back = vec![0u8; payload.len()];
    c.read_exact(&mut back).unwrap();
    writer.join().unwrap();
    assert_eq!(back, payload);
    // Counters are updated after each write; give the last one a moment.
    let deadline = Instant::now() + Duration::from_secs(2);
    while proxy.bytes_to_client() < payload.len() as u64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(proxy.bytes_to_server(), payload.len() as u64);
    assert_eq!(proxy.bytes_to_client(), payload.len() as u64);
    assert_eq!(proxy.connections(), 1);
    assert_eq!(proxy.open_connections(), 1);

    proxy.cut_all();
    c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut b = [0u8; 16];
    match c.read(&mut b) {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!("read {n} bytes after cut_all"),
    }
    // Still accepting.
    let mut c3 = TcpStream::connect(("127.0.0.1", proxy.port())).unwrap();
    c3.write_all(b"ping").unwrap();
    let mut b4 = [0u8; 4];
    c3.read_exact(&mut b4).unwrap();
    assert_eq!(&b4, b"ping");
    let t = Instant::now();
    drop(proxy);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "drop took {:?}",
        t.elapsed()
    );
    let _ = c3.read(&mut b4); // closed by the drop
    echo.join().unwrap();
}

#[test]
fn stock_tunnel_sink_new_carries_the_tone() {
    let _g = serial();
    let port = free_port();
    let receiver = Daemon::builder()
        .name("receiver")
        .native_tcp(port)
        .start()
        .expect("receiver");
    let proxy = CountingProxy::start(port);
    let sender = Daemon::builder().name("sender").start().expect("sender");
    let idx = sender
        .load_module(
            "module-tunnel-sink-new",
            &format!(
                "sink_name=tun server=tcp:127.0.0.1:{} sink=null",
                proxy.port()
            ),
        )
        .expect("module-tunnel-sink-new loads");
    // Wait for the tunnel's stream to appear on the receiver.
    let deadline = Instant::now() + Duration::from_secs(5);
    while receiver.sink_input_count() == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(receiver.sink_input_count(), 1, "{}", receiver.log_tail(20));

    let mut rec = Recorder::start(&receiver, "null.monitor");
    let t = Instant::now();
    let player = play_loop(&sender, "tun", tone_loop(1000.0, 1500.0, -12.0));
    std::thread::sleep(Duration::from_secs(1));
    rec.discard();
    let b0 = proxy.bytes_to_server();
    let t0 = Instant::now();
    let got = rec.read(3.0).expect("record");
    let rate = (proxy.bytes_to_server() - b0) as f64 * 8.0 / t0.elapsed().as_secs_f64();
    println!(
        "stock PCM tunnel: {:.0} kbit/s to the server while playing; {:?} total",
        rate / 1000.0,
        t.elapsed()
    );
    let r = analyse_stereo(&got, 0.0).expect("signal arrived");
    println!("{r:?}");
    r.assert_tone(1000.0, 1500.0, -12.0, 5.0, 1.0);
    assert!(
        rate > 1_000_000.0,
        "PCM tunnel should carry ~1.5 Mbit/s: {rate}"
    );
    drop(player);
    sender.unload_module(idx).expect("unload tunnel");
    assert!(!sender.sinks().contains(&"tun".to_string()));
}
