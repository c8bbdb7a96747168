//! Generates codecs for every schema in `<conformance>/sbe/valid` into `OUT_DIR` and writes
//! `OUT_DIR/all.rs`, which declares one module per schema, so building this crate proves the
//! generated code compiles.
//!
//! The conformance folder is `TALLY_SBE_CONFORMANCE_DIR`, else `<workspace>/../shared/conformance`.
//! When it is absent the crate builds with no schema modules, and `CONFORMANCE_DIR_MISSING`
//! names the folder that was looked for (the tests fail with it under `CI`, else skip).

use std::fmt::Write;
use std::path::PathBuf;

fn module_name(stem: &str) -> String {
    let mut s = String::new();
    let mut prev_lower = false;
    for c in stem.chars() {
        if c.is_ascii_uppercase() && prev_lower {
            s.push('_');
        }
        prev_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
        s.push(if c.is_ascii_alphanumeric() {
            c.to_ascii_lowercase()
        } else {
            '_'
        });
    }
    s
}

/// Generates codecs for codec-gen's own test schemas (`codec-gen/tests/schemas`) into
/// `OUT_DIR/local_<name>.rs` and returns the module declarations (`pub mod local { ... }`).
fn local_schemas(manifest: &std::path::Path, out: &std::path::Path) -> String {
    let dir = manifest.join("../tests/schemas");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("codec-gen/tests/schemas exists")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "xml"))
        .collect();
    files.sort();
    let mut mods = String::from("/// Codecs for codec-gen's own test schemas (`codec-gen/tests/schemas`).\npub mod local {\n");
    for path in files {
        println!("cargo:rerun-if-changed={}", path.display());
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("schema")
            .to_string();
        let module = module_name(&stem);
        let xml = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let code = codec_gen::generate_from_xml(&xml)
            .unwrap_or_else(|e| panic!("{}:\n{e}", path.display()));
        std::fs::write(out.join(format!("local_{module}.rs")), code).expect("OUT_DIR is writable");
        let _ = writeln!(mods, "    /// Codecs generated from `codec-gen/tests/schemas/{stem}.xml`.\n    #[allow(clippy::all, clippy::pedantic, missing_docs, dead_code)]\n    pub mod {module} {{\n        include!(concat!(env!(\"OUT_DIR\"), \"/local_{module}.rs\"));\n    }}");
    }
    mods.push_str("}\n");
    mods
}

fn main() {
    let manifest =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    println!("cargo:rerun-if-env-changed=TALLY_SBE_CONFORMANCE_DIR");
    println!("cargo::rustc-check-cfg=cfg(sbe_conformance_present)");
    let dir = match std::env::var_os("TALLY_SBE_CONFORMANCE_DIR") {
        Some(d) => PathBuf::from(d),
        None => manifest.join("../../../shared/conformance"),
    };
    let valid = dir.join("sbe/valid");
    let mut all = local_schemas(&manifest, &out);
    let _ = writeln!(
        all,
        "/// The conformance folder used at build time.\npub const CONFORMANCE_DIR: &str = {:?};",
        dir.display().to_string()
    );
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&valid) {
        Ok(entries) => entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "xml"))
            .collect(),
        Err(_) => {
            println!(
                "cargo:warning=SBE conformance schemas not found at {}: set TALLY_SBE_CONFORMANCE_DIR; the conformance tests skip (and fail when CI is set)",
                valid.display()
            );
            let _ = writeln!(all, "/// Set when the conformance folder was not found at build time.\npub const CONFORMANCE_DIR_MISSING: Option<&str> = Some({:?});\n/// Schemas compiled: none.\npub const SCHEMAS: &[&str] = &[];", valid.display().to_string());
            std::fs::write(out.join("all.rs"), all).expect("OUT_DIR is writable");
            return;
        }
    };
    files.sort();
    println!("cargo:rerun-if-changed={}", valid.display());
    println!("cargo:rustc-cfg=sbe_conformance_present");
    let _ = writeln!(all, "/// Set when the conformance folder was not found at build time.\npub const CONFORMANCE_DIR_MISSING: Option<&str> = None;");
    let mut names = Vec::new();
    for path in files {
        println!("cargo:rerun-if-changed={}", path.display());
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("schema")
            .to_string();
        let module = module_name(&stem);
        let xml = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let code = codec_gen::generate_from_xml(&xml)
            .unwrap_or_else(|e| panic!("{} must be accepted, but:\n{e}", path.display()));
        std::fs::write(out.join(format!("{module}.rs")), code).expect("OUT_DIR is writable");
        let _ = writeln!(all, "/// Codecs generated from `sbe/valid/{stem}.xml`.\n#[allow(clippy::all, clippy::pedantic, missing_docs, dead_code)]\npub mod {module} {{\n    include!(concat!(env!(\"OUT_DIR\"), \"/{module}.rs\"));\n}}");
        names.push(format!("{stem:?}"));
    }
    let _ = writeln!(
        all,
        "/// Every schema compiled (file stems).\npub const SCHEMAS: &[&str] = &[{}];",
        names.join(", ")
    );
    std::fs::write(out.join("all.rs"), all).expect("OUT_DIR is writable");
}
