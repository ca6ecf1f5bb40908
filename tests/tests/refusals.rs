//! The PulseAudio and PipeWire receivers refuse alike: the same status and the same reason for
//! each refusal a peer can meet — 400 (not our handshake), 403 (an address the ACL does not
//! admit, no cookie), 404 (no such sink, no such source), 415 (a format Opus cannot carry),
//! 503 (`max_connections` reached), 505 (another protocol version, with `Supported`). Each
//! receiver runs in its own real daemon; the handshakes are written by hand on real TCP
//! connections.
use opus_tunnel_tests::daemon::{free_port, require_modules, Daemon};
use opus_tunnel_tests::pipewire::{require_pw_modules, PipeWire};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

const PA_RECEIVER: &str = "module-opus-protocol-tcp";
const PW_RECEIVER: &str = "libpipewire-module-opus-protocol-tcp";

/// A hello as a sender writes it.
fn hello(direction: &str, version: u32, device: Option<&str>, rate: u32) -> String {
    let mut h = format!("OPUS-TUNNEL/{version} {direction}\nName: raw\nHost: test\n");
    if let Some(d) = device {
        h.push_str(&format!("Device: {d}\n"));
    }
    h.push_str(&format!(
        "Codec: opus\nRate: {rate}\nChannels: 2\nChannel-Map: front-left,front-right\nFrame-Usec: 20000\n\n"
    ));
    h
}

/// The receiver's answer to `text`: its status, reason and header lines. The connection is
/// returned too, so that an accepted tunnel can be held open.
fn ask(port: u16, text: &str) -> (u16, String, Vec<String>, TcpStream) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    s.write_all(text.as_bytes()).unwrap();
    // The answer's lines up to the blank line (or whatever came before the peer closed).
    let mut reader = BufReader::new(s.try_clone().expect("clone"));
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(n) if n > 0 && line.trim_end() != "" => lines.push(line.trim_end().to_string()),
            _ => break,
        }
    }
    let first = lines.first().cloned().unwrap_or_default();
    let mut parts = first.splitn(3, ' ');
    let _proto = parts.next();
    let status = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let reason = parts.next().unwrap_or_default().to_string();
    let headers = lines.into_iter().skip(1).collect();
    (status, reason, headers, s)
}

/// Every refusal, from a receiver listening openly on `open` (anonymous, one connection at
/// most) and by ACL only on `acl` (10.0.0.0/8, no cookie).
fn refusals(open: u16, acl: u16) -> Vec<(u16, String)> {
    let mut got = Vec::new();
    let mut note =
        |what: &str, (status, reason, headers, _): (u16, String, Vec<String>, TcpStream)| {
            println!("{what}: {status} {reason} {headers:?}");
            if status == 505 {
                assert!(
                    headers.iter().any(|h| h == "Supported: 1,2"),
                    "505 without Supported: {headers:?}"
                );
            }
            got.push((status, reason));
        };
    note("garbage", ask(open, "GET / HTTP/1.1\nHost: x\n\n"));
    note("version 99", ask(open, &hello("PLAY", 99, None, 48_000)));
    note("rate 12345", ask(open, &hello("PLAY", 1, None, 12_345)));
    note(
        "no such sink",
        ask(open, &hello("PLAY", 1, Some("nowhere"), 48_000)),
    );
    note(
        "no such source",
        ask(open, &hello("RECORD", 1, Some("nowhere"), 48_000)),
    );
    note("not in the ACL", ask(acl, &hello("PLAY", 1, None, 48_000)));
    // One tunnel plays (held open, silent for less than the 5 s a dead peer gets); a second
    // one is one too many.
    let first = ask(open, &hello("PLAY", 1, None, 48_000));
    assert_eq!(
        first.0, 200,
        "the first tunnel was refused: {} {}",
        first.0, first.1
    );
    note("one too many", ask(open, &hello("PLAY", 1, None, 48_000)));
    drop(first);
    got
}

fn expected_statuses(got: &[(u16, String)]) {
    let statuses: Vec<u16> = got.iter().map(|(s, _)| *s).collect();
    assert_eq!(statuses, [400, 505, 415, 404, 404, 403, 503]);
    assert_eq!(got[3].1, "no sink named \"nowhere\"");
    assert_eq!(got[4].1, "no source named \"nowhere\"");
    assert!(got[6].1.contains("max_connections=1"), "{}", got[6].1);
}

#[test]
fn pulseaudio_and_pipewire_receivers_refuse_alike() {
    let test = "pulseaudio_and_pipewire_receivers_refuse_alike";
    if !require_modules(test, &[PA_RECEIVER]) || !require_pw_modules(test, &[PW_RECEIVER]) {
        return;
    }
    let (open, acl) = (free_port(), free_port());
    let pa = Daemon::builder()
        .name("pa-receiver")
        .line(format!(
            "load-module {PA_RECEIVER} port={open} listen=127.0.0.1 auth-anonymous=1 max_connections=1"
        ))
        .line(format!(
            "load-module {PA_RECEIVER} port={acl} listen=127.0.0.1 auth-ip-acl=10.0.0.0/8 auth-cookie-enabled=0"
        ))
        .start()
        .unwrap_or_else(|e| panic!("PulseAudio with {PA_RECEIVER}: {e:#}"));
    let from_pa = refusals(open, acl);
    expected_statuses(&from_pa);
    drop(pa);

    let (open, acl) = (free_port(), free_port());
    let pw = PipeWire::builder()
        .name("pw-receiver")
        .module(
            PW_RECEIVER,
            &format!("server.address = [ \"tcp:127.0.0.1:{open}\" ] auth.anonymous = true max.connections = 1"),
        )
        .module(
            PW_RECEIVER,
            &format!("server.address = [ \"tcp:127.0.0.1:{acl}\" ] auth.ip-acl = \"10.0.0.0/8\""),
        )
        .start()
        .unwrap_or_else(|e| panic!("PipeWire with {PW_RECEIVER}: {e:#}"));
    let from_pw = refusals(open, acl);
    let log = pw.log();
    drop(pw);
    expected_statuses(&from_pw);
    assert_eq!(from_pa, from_pw, "the receivers answer differently\n{log}");
}
