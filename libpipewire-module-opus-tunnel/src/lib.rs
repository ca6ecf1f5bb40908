//! libpipewire-module-opus-tunnel (being written).
