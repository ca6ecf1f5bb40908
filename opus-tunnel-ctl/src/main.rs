//! `opus-tunnel-ctl`: lists the Opus tunnel sinks of a PulseAudio daemon with their state and
//! statistics, and reads or sets their knobs by friendly names. A normal client of the daemon:
//! sinks and their properties through libpulse's introspection, knobs through the message
//! handler each tunnel sink registers at `/opus_tunnel/<sink name>` (`get`, `set key=value ...`).

mod knobs;
mod message;
mod status;

use anyhow::{anyhow, Result};
use clap::{Parser, Subcommand};
use message::Answer;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "opus-tunnel-ctl",
    version,
    about = "Status and live control of Opus tunnel sinks (module-tunnel-sink-opus)"
)]
struct Cli {
    /// The sound server to talk to, e.g. unix:/run/user/1000/pulse/native or tcp:host:4713
    /// (default: $PULSE_SERVER, else libpulse's default)
    #[arg(short, long, global = true, env = "PULSE_SERVER")]
    server: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Every tunnel sink with its state, server, bitrate, latency, health and knobs.
    Status {
        /// Refresh every second until interrupted (Ctrl-C).
        #[arg(short, long)]
        watch: bool,
    },
    /// Sets knobs of a tunnel sink: bitrate=32k complexity=5 frame=10 bandwidth=wideband
    /// fec=on ... (friendly names or the full compression.* keys).
    Set {
        /// The tunnel sink's name (as in `pactl list short sinks`).
        sink: String,
        /// NAME=VALUE pairs. Names: bitrate, frame/frame_size, complexity,
        /// bandwidth/max_bandwidth, signal, vbr, cvbr/vbr_constraint, application/app,
        /// lsb/lsb_depth, dtx, fec, loss/packet_loss.
        #[arg(required = true, value_name = "NAME=VALUE")]
        knobs: Vec<String>,
    },
    /// Prints the knobs and statistics of a tunnel sink as key=value lines.
    Get {
        /// The tunnel sink's name.
        sink: String,
    },
}

/// The object path of a tunnel sink's message handler (as the module makes it: characters
/// other than letters, digits, `.`, `_`, `-` become `_`).
fn handler_path(sink: &str) -> String {
    let clean: String = sink
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("/opus_tunnel/{clean}")
}

/// Sends `message` to the sink's handler; the response text, or an error that says what
/// went wrong (a missing handler means no tunnel sink of that name).
fn ask(server: Option<&str>, sink: &str, msg: &str, params: &str) -> Result<String> {
    let path = handler_path(sink);
    match message::send(server, &path, msg, params)? {
        Answer::Response(text) => Ok(text),
        Answer::Failed(message::ERR_NOENTITY) => Err(anyhow!(
            "no tunnel sink {sink:?} (nothing answers at {path}; `opus-tunnel-ctl status` lists the tunnels)"
        )),
        Answer::Failed(code) => Err(anyhow!("{path}: {}", message::strerror(code))),
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let server = cli.server.as_deref().filter(|s| !s.is_empty());
    match cli.command {
        Command::Status { watch } => {
            status::run(server, watch)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Get { sink } => {
            let text = ask(server, &sink, "get", "")?;
            if let Some(reason) = text.strip_prefix("error: ") {
                eprintln!("opus-tunnel-ctl: {sink}: {}", reason.trim());
                return Ok(ExitCode::FAILURE);
            }
            print!("{text}");
            if !text.ends_with('\n') {
                println!();
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Set { sink, knobs } => {
            let params = match knobs::set_params(&knobs) {
                Ok(p) => p,
                Err(e) => {
                    for line in e.lines() {
                        eprintln!("opus-tunnel-ctl: {line}");
                    }
                    return Ok(ExitCode::from(2));
                }
            };
            let text = ask(server, &sink, "set", &params)?;
            let text = text.trim();
            if text == "ok" {
                println!("{sink}: set {params}");
                return Ok(ExitCode::SUCCESS);
            }
            let reason = text.strip_prefix("error: ").unwrap_or(text);
            // The module joins several refusals with "; ".
            for r in reason.split("; ") {
                eprintln!("opus-tunnel-ctl: {sink}: refused {r}");
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("opus-tunnel-ctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
        let c = Cli::try_parse_from(["opus-tunnel-ctl", "set", "tun", "bitrate=32k", "fec=on"])
            .unwrap();
        match c.command {
            Command::Set { sink, knobs } => {
                assert_eq!(sink, "tun");
                assert_eq!(knobs, ["bitrate=32k", "fec=on"]);
            }
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["opus-tunnel-ctl", "set", "tun"]).is_err());
        let c =
            Cli::try_parse_from(["opus-tunnel-ctl", "status", "--watch", "-s", "unix:/x"]).unwrap();
        assert_eq!(c.server.as_deref(), Some("unix:/x"));
    }

    #[test]
    fn handler_paths() {
        assert_eq!(handler_path("tun"), "/opus_tunnel/tun");
        assert_eq!(
            handler_path("tunnel-opus.host"),
            "/opus_tunnel/tunnel-opus.host"
        );
        assert_eq!(handler_path("a b/c"), "/opus_tunnel/a_b_c");
    }
}
