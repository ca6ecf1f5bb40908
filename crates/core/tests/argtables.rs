//! The README's and docs/pipewire.md's argument tables agree with the modules' own tables
//! (`opus_tunnel_core::argtable`): the same keys, the same defaults.
use opus_tunnel_core::argtable::{
    check_markdown, markdown_table, Arg, PW_RECEIVER, PW_TUNNEL, RECEIVER, TUNNEL_SINK,
    TUNNEL_SOURCE,
};

fn read(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn check(file: &str, cases: &[(&[&str], &[Arg])]) {
    let text = read(file);
    let mut errors = Vec::new();
    for (headings, table) in cases {
        match markdown_table(&text, headings) {
            None => errors.push(format!("{file}: no table after {headings:?}")),
            Some(rows) => {
                if let Err(e) = check_markdown(table, &rows) {
                    errors.push(format!("{file} {headings:?}:\n{e}"));
                }
            }
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

#[test]
fn readme_tables_are_the_modules() {
    check(
        "README.md",
        &[
            (&["## module-tunnel-sink-opus (sender)"], TUNNEL_SINK),
            (
                &["## module-tunnel-source-opus (the microphone, on the desktop)"],
                TUNNEL_SOURCE,
            ),
            (&["## module-opus-protocol-tcp (receiver)"], RECEIVER),
        ],
    );
}

#[test]
fn pipewire_doc_tables_are_the_modules() {
    check(
        "docs/pipewire.md",
        &[
            (
                &["## libpipewire-module-opus-protocol-tcp", "### Options"],
                PW_RECEIVER,
            ),
            (
                &["## libpipewire-module-opus-tunnel", "### Options"],
                PW_TUNNEL,
            ),
        ],
    );
}
