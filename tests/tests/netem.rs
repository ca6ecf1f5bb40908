//! The link emulator itself (tests/src/netem.rs): delay, jitter, loss, bursts and the rate cap
//! measured with real UDP and TCP between its two namespaces, and the namespaces gone after
//! every drop, a panicking test's included. Needs root (network namespaces, /dev/net/tun).
use opus_tunnel_tests::netem::{namespaces, remove_leftovers, Netns};
use opus_tunnel_tests::{serial, Dir, Link, Loss, Netem};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

/// A UDP socket bound in `ns` on `addr:port` (port 0: any).
fn udp(ns: &Netns, addr: std::net::Ipv4Addr, port: u16) -> UdpSocket {
    ns.run(|| UdpSocket::bind((addr, port)))
        .expect("namespace")
        .expect("bind")
}

/// Echoes every datagram on `sock` back to its sender until `stop` arrives or 30 s pass.
fn echo(sock: UdpSocket) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let _ = sock.set_read_timeout(Some(Duration::from_secs(30)));
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            if &buf[..n] == b"stop" {
                break;
            }
            let _ = sock.send_to(&buf[..n], from);
        }
    })
}

/// Round-trip times of `count` pings from A to an echo in B, `gap` apart; also whether the
/// echoes came back in the order sent.
fn rtts(net: &Netem, count: u32, gap: Duration) -> (Vec<f64>, bool) {
    let server = udp(net.b(), net.addr_b(), 7000);
    let h = echo(server);
    let client = udp(net.a(), net.addr_a(), 0);
    client
        .set_read_timeout(Some(Duration::from_millis(5)))
        .unwrap();
    let peer = SocketAddr::from((net.addr_b(), 7000));
    let t0 = Instant::now();
    let mut sent = Vec::new();
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    let mut next = Instant::now();
    let deadline = Instant::now() + gap * count + Duration::from_secs(2);
    while Instant::now() < deadline && got.len() < count as usize {
        if sent.len() < count as usize && Instant::now() >= next {
            let i = sent.len() as u32;
            sent.push(t0.elapsed().as_secs_f64());
            client.send_to(&i.to_be_bytes(), peer).unwrap();
            next += gap;
        }
        if let Ok((4, _)) = client.recv_from(&mut buf) {
            let i = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
            got.push((i, t0.elapsed().as_secs_f64() - sent[i]));
        }
    }
    client.send_to(b"stop", peer).unwrap();
    h.join().unwrap();
    let in_order = got.windows(2).all(|w| w[0].0 < w[1].0);
    (got.into_iter().map(|(_, r)| r * 1000.0).collect(), in_order)
}

/// Minimum, median, 95th percentile and maximum.
fn summary(v: &[f64]) -> (f64, f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    (s[0], s[s.len() / 2], s[s.len() * 95 / 100], s[s.len() - 1])
}

#[test]
fn delay_and_jitter_show_in_the_round_trip() {
    let _g = serial();
    let net = Netem::new(Link::wan(ms(20), Duration::ZERO, 0.0)).expect("netem");
    let (r, in_order) = rtts(&net, 100, ms(10));
    let (min, med, p95, max) = summary(&r);
    println!(
        "20 ms one way, no jitter: RTT min {min:.2} median {med:.2} p95 {p95:.2} max {max:.2} ms \
         over {} pings",
        r.len()
    );
    assert_eq!(r.len(), 100, "pings lost on a lossless link");
    assert!(in_order);
    // The odd ping waits for a busy machine's scheduler: the median is held to ±3 ms, the 95th
    // percentile to +5 ms (a clean-clone run on this virtual machine, descheduled now and then,
    // measured p95 43.1 ms), the maximum is only printed.
    assert!(
        (med - 40.0).abs() <= 3.0,
        "median RTT {med} ms, want 40 ± 3"
    );
    assert!(min >= 39.5 && p95 <= 45.0, "RTT {min}..{p95} ms (min..p95)");

    // Live change: order-keeping jitter 0–5 ms each way.
    net.set_links(Link::wan(ms(20), ms(5), 0.0));
    let (r, in_order) = rtts(&net, 200, ms(5));
    let (min, med, p95, max) = summary(&r);
    println!(
        "20 ms + 0–5 ms ordered jitter: RTT min {min:.2} median {med:.2} p95 {p95:.2} \
         max {max:.2} ms"
    );
    assert_eq!(r.len(), 200);
    assert!(in_order, "order-keeping jitter reordered packets");
    assert!(min >= 39.5, "RTT below 2 × delay: {min} ms");
    assert!(
        p95 <= 50.0 + 3.0,
        "RTT above 2 × (delay + jitter) + 3 ms: p95 {p95} ms"
    );
    assert!(med > 42.0, "jitter did not show: median {med} ms");

    // Reordering jitter: pings 1 ms apart with 0–10 ms of jitter overtake each other.
    net.set_links(
        Link::ideal()
            .with_delay(ms(5))
            .with_reordering_jitter(ms(10)),
    );
    let (r, in_order) = rtts(&net, 200, ms(1));
    let (min, med, p95, max) = summary(&r);
    println!(
        "5 ms + 0–10 ms reordering jitter: RTT min {min:.2} median {med:.2} p95 {p95:.2} \
         max {max:.2} ms, in order: {in_order}"
    );
    assert!(!in_order, "reordering jitter kept the order");
    assert!(
        min >= 9.5 && p95 <= 30.0 + 3.0,
        "RTT {min}..{p95} ms (min..p95)"
    );
    let s = net.stats(Dir::AtoB);
    assert!(s.forwarded >= 500 && s.dropped() == 0, "{s:?}");
}

/// Sends `n` numbered datagrams from A to B, 200 µs apart; the numbers that arrived.
fn blast(net: &Netem, n: u32) -> Vec<u32> {
    let rx = udp(net.b(), net.addr_b(), 7001);
    rx.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let tx = udp(net.a(), net.addr_a(), 0);
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        while let Ok(n) = rx.recv(&mut buf) {
            if n == 4 {
                got.push(u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]));
            }
        }
        got
    });
    let peer = SocketAddr::from((net.addr_b(), 7001));
    let t0 = Instant::now();
    for i in 0..n {
        while t0.elapsed() < Duration::from_micros(200) * i {
            std::thread::yield_now();
        }
        tx.send_to(&i.to_be_bytes(), peer).unwrap();
    }
    reader.join().unwrap()
}

/// Loss rate and mean burst length (consecutive missing numbers) of what [`blast`] got.
fn loss_figures(n: u32, got: &[u32]) -> (f64, f64, u32) {
    let mut arrived = vec![false; n as usize];
    for &i in got {
        arrived[i as usize] = true;
    }
    let (mut lost, mut bursts, mut run, mut longest) = (0u32, 0u32, 0u32, 0u32);
    for &a in &arrived {
        if a {
            run = 0;
        } else {
            lost += 1;
            if run == 0 {
                bursts += 1;
            }
            run += 1;
            longest = longest.max(run);
        }
    }
    (
        f64::from(lost) / f64::from(n),
        f64::from(lost) / f64::from(bursts.max(1)),
        longest,
    )
}

#[test]
fn random_and_bursty_loss() {
    let _g = serial();
    let n = 4000;
    let net = Netem::with_links(Link::ideal().with_loss(Loss::Random(0.05)), Link::ideal())
        .expect("netem");
    let got = blast(&net, n);
    let (rate, burst, longest) = loss_figures(n, &got);
    let s = net.stats(Dir::AtoB);
    println!(
        "random 5 %: {n} sent, loss {:.2} %, mean burst {burst:.2}, longest {longest}; {s:?}",
        rate * 100.0
    );
    assert!((rate - 0.05).abs() <= 0.012, "loss {rate}");
    // Only our datagrams crossed (no IPv6 chatter), and every one not lost arrived.
    assert_eq!(s.received, u64::from(n), "{s:?}");
    assert_eq!(s.lost, u64::from(n) - got.len() as u64, "{s:?}");
    assert!(burst < 1.3, "random loss came in bursts: {burst}");

    net.set_link(Dir::AtoB, Link::ideal().with_loss(Loss::bursty(0.05, 4.0)));
    let got = blast(&net, n);
    let (rate, burst, longest) = loss_figures(n, &got);
    println!(
        "Gilbert–Elliott 5 %, mean burst 4: loss {:.2} %, mean burst {burst:.2}, longest {longest}",
        rate * 100.0
    );
    assert!((rate - 0.05).abs() <= 0.025, "loss {rate}");
    assert!(burst > 2.0, "bursty loss had mean burst {burst}");
    // Nothing was lost the other way.
    assert_eq!(net.stats(Dir::BtoA).lost, 0);
}

#[test]
fn tcp_throughput_under_a_rate_cap() {
    let _g = serial();
    let cap = 125_000u64; // 1 Mbit/s
    let net = Netem::new(Link::wan(ms(10), Duration::ZERO, 0.0).with_rate(cap, 32 * 1024))
        .expect("netem");
    let listener = net
        .b()
        .run(|| TcpListener::bind((net.addr_b(), 7002)))
        .unwrap()
        .unwrap();
    let secs = 4.0;
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let t0 = Instant::now();
        let mut buf = vec![0u8; 65536];
        let (mut total, mut at_1s) = (0u64, None);
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            total += n as u64;
            if at_1s.is_none() && t0.elapsed() >= Duration::from_secs(1) {
                at_1s = Some((total, Instant::now()));
            }
        }
        let (b1, t1) = at_1s.unwrap();
        (total - b1) as f64 / t1.elapsed().as_secs_f64()
    });
    let peer = SocketAddr::from((net.addr_b(), 7002));
    let mut c = net.a().run(|| TcpStream::connect(peer)).unwrap().unwrap();
    let chunk = vec![0x55u8; 16384];
    let t0 = Instant::now();
    while t0.elapsed().as_secs_f64() < secs {
        c.write_all(&chunk).unwrap();
    }
    drop(c);
    let rate = server.join().unwrap();
    let s = net.stats(Dir::AtoB);
    println!(
        "TCP under a {:.0} kbit/s cap: {:.1} kbit/s of payload ({:.1} % of the cap), queue drops {}",
        cap as f64 * 8.0 / 1000.0,
        rate * 8.0 / 1000.0,
        rate / cap as f64 * 100.0,
        s.queue_drops
    );
    // Payload of 1500-byte packets is 1448 bytes (IP + TCP headers with timestamps).
    assert!(
        rate <= cap as f64 * 1.02 && rate >= cap as f64 * 0.85,
        "{rate} B/s under a cap of {cap}"
    );
}

#[test]
fn namespaces_are_removed_on_drop_and_on_panic() {
    let _g = serial();
    let (a, b) = {
        let net = Netem::new(Link::lan()).expect("netem");
        let (a, b) = (net.a().name().to_string(), net.b().name().to_string());
        let ns = namespaces();
        assert!(ns.contains(&a) && ns.contains(&b), "{ns:?}");
        // Two instances at once have distinct names.
        let other = Netem::new(Link::lan()).expect("second netem");
        assert_ne!(other.a().name(), a);
        (a, b)
    };
    let ns = namespaces();
    assert!(!ns.contains(&a) && !ns.contains(&b), "left behind: {ns:?}");

    let names = std::sync::Mutex::new(Vec::new());
    let r = std::panic::catch_unwind(|| {
        let net = Netem::new(Link::lan()).expect("netem");
        names
            .lock()
            .unwrap()
            .extend([net.a().name().to_string(), net.b().name().to_string()]);
        panic!("a failing test");
    });
    assert!(r.is_err());
    let ns = namespaces();
    for n in names.lock().unwrap().iter() {
        assert!(!ns.contains(n), "{n} left behind after a panic: {ns:?}");
    }

    // Leftovers of a dead process go, a live one's stay.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let stale = format!("otnem-{dead}-0-a");
    assert!(std::process::Command::new("ip")
        .args(["netns", "add", &stale])
        .status()
        .unwrap()
        .success());
    let live = Netem::new(Link::lan()).expect("netem");
    let removed = remove_leftovers();
    let ns = namespaces();
    assert!(
        removed.contains(&stale) && !ns.contains(&stale),
        "{removed:?}"
    );
    assert!(ns.iter().any(|n| n == live.a().name()), "{ns:?}");
}
