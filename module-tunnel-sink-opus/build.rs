// The module finds the daemon's pulsecore through an RPATH, as the stock modules do; the
// binding crate reports where it is (cargo `links` metadata).
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_PULSECORE_PULSE_LIBDIR");
    if let Ok(dir) = std::env::var("DEP_PULSECORE_PULSE_LIBDIR") {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-rpath,{dir}");
    }
}
