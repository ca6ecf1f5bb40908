//! Friendly knob names (`bitrate=32k`, `frame=10`, ...) → the sink's property keys
//! (`compression.bitrate`, `compression.frame_size`, ...), as the module's `set` message takes
//! them. Values are passed on as they are (apart from a `ms` suffix on frame sizes): the module
//! validates them, with the same messages as for its arguments and properties.

/// `(friendly names, property key)`, in the order of the README's table.
pub const KNOBS: [(&[&str], &str); 12] = [
    (&["bitrate"], "compression.bitrate"),
    (&["frame", "frame_size"], "compression.frame_size"),
    (&["complexity"], "compression.opus.complexity"),
    (
        &["bandwidth", "max_bandwidth"],
        "compression.opus.max_bandwidth",
    ),
    (&["signal"], "compression.opus.signal"),
    (&["vbr"], "compression.opus.vbr"),
    (
        &["cvbr", "vbr_constraint"],
        "compression.opus.vbr_constraint",
    ),
    (&["application", "app"], "compression.opus.application"),
    (&["lsb", "lsb_depth"], "compression.opus.lsb_depth"),
    (&["dtx"], "compression.opus.dtx"),
    (&["fec"], "compression.opus.fec"),
    (&["loss", "packet_loss"], "compression.opus.packet_loss"),
];

/// Every friendly name, for messages: `bitrate, frame/frame_size, ...`.
pub fn friendly_list() -> String {
    KNOBS
        .iter()
        .map(|(names, _)| names.join("/"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The property key of a friendly name or of a full key (`compression.bitrate`,
/// `compression.opus.fec`, ... and `compression` itself, which the module refuses to change
/// with a reason). Names are case-insensitive and `-` stands for `_`.
pub fn key_of(name: &str) -> Result<&'static str, String> {
    let n = name.trim().to_ascii_lowercase().replace('-', "_");
    for (names, key) in KNOBS {
        if names.contains(&n.as_str()) || key == n {
            return Ok(key);
        }
    }
    if n == "compression" {
        return Ok("compression");
    }
    Err(format!(
        "{name:?} is not a knob; accepted: {} (or the full keys compression.*)",
        friendly_list()
    ))
}

/// One `NAME=VALUE` argument → `key=value` for the `set` message.
pub fn translate(arg: &str) -> Result<String, String> {
    let (name, value) = arg
        .split_once('=')
        .ok_or_else(|| format!("{arg:?}: expected NAME=VALUE, e.g. bitrate=32k"))?;
    let key = key_of(name)?;
    let value = value.trim();
    if value.is_empty() {
        return Err(format!("{name}: no value"));
    }
    if value.chars().any(char::is_whitespace) {
        return Err(format!("{name}: {value:?}: a value cannot contain spaces"));
    }
    let value = if key == "compression.frame_size" {
        value.strip_suffix("ms").unwrap_or(value).trim()
    } else {
        value
    };
    Ok(format!("{key}={value}"))
}

/// All arguments → the parameters of the `set` message (`key=value key=value`); every bad
/// argument is reported, one per line.
pub fn set_params(args: &[String]) -> Result<String, String> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for a in args {
        match translate(a) {
            Ok(kv) => out.push(kv),
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        return Err(errors.join("\n"));
    }
    if out.is_empty() {
        return Err(format!("nothing to set; knobs: {}", friendly_list()));
    }
    Ok(out.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn friendly_names_map_to_keys() {
        let cases = [
            ("bitrate", "compression.bitrate"),
            ("frame", "compression.frame_size"),
            ("frame_size", "compression.frame_size"),
            ("complexity", "compression.opus.complexity"),
            ("bandwidth", "compression.opus.max_bandwidth"),
            ("max_bandwidth", "compression.opus.max_bandwidth"),
            ("max-bandwidth", "compression.opus.max_bandwidth"),
            ("signal", "compression.opus.signal"),
            ("vbr", "compression.opus.vbr"),
            ("cvbr", "compression.opus.vbr_constraint"),
            ("vbr_constraint", "compression.opus.vbr_constraint"),
            ("application", "compression.opus.application"),
            ("app", "compression.opus.application"),
            ("lsb", "compression.opus.lsb_depth"),
            ("lsb_depth", "compression.opus.lsb_depth"),
            ("dtx", "compression.opus.dtx"),
            ("fec", "compression.opus.fec"),
            ("loss", "compression.opus.packet_loss"),
            ("packet_loss", "compression.opus.packet_loss"),
            ("FEC", "compression.opus.fec"),
        ];
        for (name, key) in cases {
            assert_eq!(key_of(name), Ok(key), "{name}");
        }
    }

    #[test]
    fn full_keys_pass_through() {
        for (_, key) in KNOBS {
            assert_eq!(key_of(key), Ok(key));
        }
        assert_eq!(key_of("compression"), Ok("compression"));
    }

    #[test]
    fn unknown_names_are_refused_with_the_list() {
        let e = key_of("loudness").unwrap_err();
        assert!(e.contains("\"loudness\" is not a knob"), "{e}");
        assert!(e.contains("bitrate, frame/frame_size, complexity"), "{e}");
        assert!(e.contains("loss/packet_loss"), "{e}");
        assert!(key_of("compression.opus.loudness").is_err());
    }

    #[test]
    fn arguments_translate() {
        for (given, sent) in [
            ("bitrate=32k", "compression.bitrate=32k"),
            ("frame=10ms", "compression.frame_size=10"),
            ("frame=2.5", "compression.frame_size=2.5"),
            ("compression.opus.fec=on", "compression.opus.fec=on"),
        ] {
            assert_eq!(translate(given).as_deref(), Ok(sent));
        }
        assert!(translate("bitrate").unwrap_err().contains("NAME=VALUE"));
        assert!(translate("bitrate=").unwrap_err().contains("no value"));
        assert_eq!(
            set_params(&[
                "bitrate=32k".into(),
                "complexity=5".into(),
                "frame=10".into(),
                "bandwidth=wideband".into(),
                "fec=on".into(),
            ])
            .as_deref(),
            Ok("compression.bitrate=32k compression.opus.complexity=5 \
                compression.frame_size=10 compression.opus.max_bandwidth=wideband \
                compression.opus.fec=on")
        );
        let e = set_params(&["bogus=1".into(), "fec=on".into(), "x".into()]).unwrap_err();
        assert_eq!(e.lines().count(), 2, "{e}");
        assert!(set_params(&[]).is_err());
    }

    /// The table covers exactly the module's knobs (core's `KNOB_KEYS`).
    #[test]
    fn every_module_knob_has_a_friendly_name() {
        let mut ours: Vec<&str> = KNOBS.iter().map(|(_, k)| *k).collect();
        let mut theirs: Vec<&str> = opus_tunnel_core::params::KNOB_KEYS.to_vec();
        ours.sort_unstable();
        theirs.sort_unstable();
        assert_eq!(ours, theirs);
    }
}
