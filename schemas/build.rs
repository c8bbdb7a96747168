//! Generates the codecs of every `*.xml` schema in this folder into `OUT_DIR/<name>.rs` through
//! `codec-gen`, so the codecs cannot drift from the schemas. A schema error fails the build with
//! every problem listed.

use std::path::PathBuf;

fn main() {
    let dir =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    println!("cargo:rerun-if-changed={}", dir.display());
    let entries = std::fs::read_dir(&dir).expect("the crate folder is readable");
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("xml") {
            continue;
        }
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        println!("cargo:rerun-if-changed={}", path.display());
        let xml = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let code = codec_gen::generate_from_xml(&xml)
            .unwrap_or_else(|e| panic!("{}:\n{e}", path.display()));
        std::fs::write(out.join(format!("{stem}.rs")), code).expect("OUT_DIR is writable");
    }
}
