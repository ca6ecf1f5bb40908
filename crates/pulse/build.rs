//! Generates bindings to pulsecore, the internal library of the *installed* PulseAudio daemon.
//!
//! PulseAudio has no stable module ABI and Debian ships no pulsecore headers, so the headers
//! come from PulseAudio's source tree of exactly the installed version: `PULSE_DIR` names a
//! prepared tree (the convention of out-of-tree modules); without it the tree prepared by
//! `scripts/prepare-pulse-tree.sh` under `<workspace>/.pulse-src/` is used.
use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn fail(msg: &str) -> ! {
    eprintln!("\nerror: {msg}\n");
    // cargo shows stderr of a failing build script; keep the reason on its own line.
    std::process::exit(1);
}

fn pkg_config(args: &[&str]) -> Option<String> {
    let out = Command::new("pkg-config").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The version of the PulseAudio source tree at `tree`, from `.tarball-version`.
fn tree_version(tree: &Path) -> Option<String> {
    let v = fs::read_to_string(tree.join(".tarball-version")).ok()?;
    Some(v.trim().to_string())
}

fn main() {
    println!("cargo:rerun-if-env-changed=PULSE_DIR");
    println!("cargo:rerun-if-env-changed=LIBCLANG_PATH");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=wrapper.h");

    let version = pkg_config(&["--modversion", "libpulse"]).unwrap_or_else(|| {
        fail(
            "pkg-config does not know libpulse: the PulseAudio development files are missing.\n\
             Install them with: apt-get install libpulse-dev pulseaudio pkg-config \
             (or run scripts/install-deps.sh as root).",
        )
    });
    let libdir = pkg_config(&["--variable=libdir", "libpulse"])
        .unwrap_or_else(|| fail("pkg-config gives no libdir for libpulse"));
    let pulse_libdir = PathBuf::from(&libdir).join("pulseaudio");
    let core_lib = pulse_libdir.join(format!("libpulsecore-{version}.so"));
    if !core_lib.exists() {
        fail(&format!(
            "{} is missing: the installed PulseAudio daemon does not match libpulse-dev {version}.\n\
             Install the daemon of the same version: apt-get install pulseaudio",
            core_lib.display()
        ));
    }

    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap_or_default());
    let workspace = manifest
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let tree = match env::var_os("PULSE_DIR") {
        Some(d) => PathBuf::from(d),
        None => workspace
            .join(".pulse-src")
            .join(format!("pulseaudio-{version}")),
    };
    if !tree.join("src/pulsecore/sink.h").exists() {
        fail(&format!(
            "no PulseAudio {version} source tree at {} (PULSE_DIR {}).\n\
             The pulsecore headers come from the source of exactly the installed daemon version.\n\
             Fetch and prepare it with: scripts/prepare-pulse-tree.sh   (Debian's source package, needs root)\n\
             or point PULSE_DIR at a PulseAudio {version} source tree.",
            tree.display(),
            if env::var_os("PULSE_DIR").is_some() { "is set" } else { "is unset" }
        ));
    }
    match tree_version(&tree) {
        Some(v) if v == version => {}
        Some(v) => fail(&format!(
            "the PulseAudio source tree at {} is version {v}, but the installed daemon is {version}.\n\
             pulsecore has no stable ABI: build against the source of the installed version \
             (scripts/prepare-pulse-tree.sh fetches it) or install PulseAudio {v}.",
            tree.display()
        )),
        None => fail(&format!(
            "cannot tell the version of the PulseAudio tree at {} (no .tarball-version).",
            tree.display()
        )),
    }
    println!(
        "cargo:rerun-if-changed={}",
        tree.join(".tarball-version").display()
    );

    // What differs between the releases this is built for (Debian 12: 16.1, Debian 13: 17.0),
    // all taken from the tree of the installed version, so nothing here is version-gated:
    // - pa_core (pulsecore/core.h) gained policy_default_sink/_source in 17.0, before
    //   default_sink and the fields after it: the layout comes from bindgen over that tree.
    // - PA_RATE_MAX (pulse/sample.h) is 384000 in 16.1 and 768000 in 17.0: the binding reads it
    //   (allowlisted below) instead of writing a number.
    // - sink.h, source.h, sink-input.h, source-output.h, modargs.h, rtpoll.h: unchanged.
    // - libpulsecore-<version>.so and the module directory are named by the upstream version.
    let out = PathBuf::from(env::var("OUT_DIR").unwrap_or_default());
    // pulsecore headers insist on config.h. These defines select the same code paths as the
    // daemon's own build (GCC __atomic builtins); nothing else in the headers depends on it.
    let config_h = format!(
        "#pragma once\n#define PACKAGE \"pulseaudio\"\n#define PACKAGE_NAME \"pulseaudio\"\n\
         #define PACKAGE_VERSION \"{version}\"\n#define HAVE_ATOMIC_BUILTINS 1\n\
         #define HAVE_ATOMIC_BUILTINS_MEMORY_MODEL 1\n#define HAVE_SYSTEMD_JOURNAL 1\n"
    );
    if let Err(e) = fs::write(out.join("config.h"), config_h) {
        fail(&format!("cannot write config.h: {e}"));
    }
    let wrapper = manifest.join("wrapper.h");
    let src = tree.join("src");
    let static_fns = out.join("pulse_static_fns");

    let builder = bindgen::Builder::default()
        .header(wrapper.to_string_lossy())
        .clang_arg(format!("-I{}", out.display()))
        .clang_arg(format!("-I{}", src.display()))
        .clang_arg("-I/usr/include")
        .allowlist_function("pa_(sink|sink_input|source|source_output|modargs|rtpoll|thread|thread_mq|asyncmsgq|memblock|proplist|core_rttime|namereg|channel_map|sample_spec|sample_format|parse_sample_format|usec_to_bytes|bytes_to_usec|frame_size|rtclock|log_level_meta|get_library_version|hook|message_handler|json_object|xstrdup|xfree|xstrdup|msgobject|module|bytes_per_second)_?.*")
        .allowlist_function("pa_(sink|source)_(new_data|input_new_data|output_new_data)_.*")
        .allowlist_function("pa_rtclock_now|pa_thread_make_realtime|pa_get_host_name|pa_parse_boolean|pa_channel_map_init_extend|pa_sample_spec_valid|pa_channel_map_valid|pa_channel_map_compatible|pa_channel_map_snprint|pa_sample_format_to_string")
        .allowlist_type("pa_(core|module|sink|sink_input|source|source_output|modargs|rtpoll|thread|thread_mq|asyncmsgq|memchunk|memblock|proplist|sample_spec|channel_map|msgobject|object|mainloop_api|time_event|io_event|sink_new_data|sink_input_new_data|source_new_data|source_output_new_data|update_mode_t|sink_message_t|source_message_t|sink_input_message_t|source_output_message_t|core_hook_t|hook_result_t|hook_priority_t|namereg_type_t|sink_state_t|source_state_t|suspend_cause_t|sink_input_state_t|io_event_flags_t)")
        .allowlist_item("PA_MESSAGE_SHUTDOWN|PA_SINK_MESSAGE_.*|PA_SINK_INPUT_MESSAGE_.*|PA_SOURCE_MESSAGE_.*|PA_SOURCE_OUTPUT_MESSAGE_.*|PA_CORE_MESSAGE_.*|PA_SINK_.*|PA_SOURCE_.*|PA_SINK_INPUT_.*|PA_UPDATE_.*|PA_LOG_.*|PA_PROP_.*|PA_CHANNEL_MAP_.*|PA_IO_EVENT_.*|PA_JSON_TYPE_.*|PA_RATE_MAX|PA_CHANNELS_MAX")
        .wrap_static_fns(true)
        .wrap_static_fns_path(&static_fns)
        .derive_default(true)
        .prepend_enum_name(false)
        .layout_tests(false)
        .generate_comments(false)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()));

    // A missing libclang makes bindgen panic; turn that into a message that says what to do.
    let generated =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || builder.generate()));
    let bindings = match generated {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => fail(&format!(
            "bindgen could not parse the pulsecore headers of {}: {e}",
            tree.display()
        )),
        Err(_) => fail(
            "bindgen failed to run; the usual cause is a missing libclang.\n\
             Install it with: apt-get install libclang-dev clang (or set LIBCLANG_PATH).",
        ),
    };
    if let Err(e) = bindings.write_to_file(out.join("bindings.rs")) {
        fail(&format!("cannot write bindings.rs: {e}"));
    }

    // Wrappers for the static inline functions (PA_SINK_IS_OPENED, pa_sink_unref, ...).
    let c_file = static_fns.with_extension("c");
    cc::Build::new()
        .file(&c_file)
        .include(&out)
        .include(&src)
        .include(&manifest)
        .flag("-include")
        .flag(wrapper.to_string_lossy().as_ref())
        .flag_if_supported("-Wno-unused-parameter")
        .warnings(false)
        .compile("pulse_static_fns");

    println!("cargo:rustc-link-search=native={}", pulse_libdir.display());
    println!("cargo:rustc-link-lib=dylib=pulsecore-{version}");
    println!("cargo:rustc-link-lib=dylib=pulsecommon-{version}");
    println!("cargo:rustc-link-lib=dylib=pulse");
    println!("cargo:rustc-env=OPUS_TUNNEL_PA_VERSION={version}");
    println!("cargo:version={version}");
    println!("cargo:pulse_libdir={}", pulse_libdir.display());
}
