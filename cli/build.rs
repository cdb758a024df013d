//! Embeds the plugin SDKs in the binary, so that `pushdown plugin new` works without this
//! source tree: the Rust SDK (`pushdown-plugins/sdk` and the `protocol` crate it uses, in a
//! two-member workspace whose manifest is this workspace's with the other members removed,
//! and this workspace's `Cargo.lock`), `ABI.md`, and the C header
//! `pushdown-plugins/c/pushdown_plugin.h`. Writes `$OUT_DIR/sdk_files.rs`: `SDK_FILES`, a
//! slice of (path relative to the SDK folder, bytes).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The crates of the SDK workspace, by folder.
const MEMBERS: &[&str] = &["protocol", "pushdown-plugins/sdk"];

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("..");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    for member in MEMBERS {
        let dir = root.join(member);
        for name in ["Cargo.toml", "README.md"] {
            if dir.join(name).is_file() {
                files.push((format!("{member}/{name}"), dir.join(name)));
            }
        }
        let mut sources: Vec<PathBuf> = std::fs::read_dir(dir.join("src"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "rs"))
            .collect();
        sources.sort();
        for s in sources {
            let name = s.file_name().unwrap().to_string_lossy().into_owned();
            files.push((format!("{member}/src/{name}"), s));
        }
        println!("cargo:rerun-if-changed={}", dir.join("src").display());
    }
    for f in [
        "Cargo.lock",
        "pushdown-plugins/ABI.md",
        "pushdown-plugins/c/pushdown_plugin.h",
    ] {
        files.push((f.to_string(), root.join(f)));
    }
    let manifest = workspace_manifest(&root.join("Cargo.toml"));
    let generated = out.join("sdk-workspace-Cargo.toml");
    std::fs::write(&generated, manifest).unwrap();
    files.push(("Cargo.toml".into(), generated));

    let mut code = String::from(
        "/// The SDK's files: (path inside the SDK folder, bytes). Written by build.rs.\n\
         pub const SDK_FILES: &[(&str, &[u8])] = &[\n",
    );
    for (name, path) in &files {
        println!("cargo:rerun-if-changed={}", path.display());
        let path = path.canonicalize().unwrap();
        writeln!(
            code,
            "    ({name:?}, include_bytes!({:?})),",
            path.display()
        )
        .unwrap();
    }
    code.push_str("];\n");
    std::fs::write(out.join("sdk_files.rs"), code).unwrap();
    println!(
        "cargo:rerun-if-changed={}",
        root.join("Cargo.toml").display()
    );
}

/// This workspace's manifest with `members` the SDK's crates and without the path
/// dependencies on crates the SDK folder lacks; everything else (package fields, the
/// versions of dependencies, lints) stays, so the SDK builds as it does here.
fn workspace_manifest(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = String::new();
    let mut in_members = false;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if in_members {
            if trimmed.starts_with(']') {
                in_members = false;
            }
            continue;
        }
        if trimmed.starts_with("members = [") {
            let list: Vec<String> = MEMBERS.iter().map(|m| format!("{m:?}")).collect();
            writeln!(out, "members = [{}]", list.join(", ")).unwrap();
            in_members = !trimmed.contains(']');
            continue;
        }
        if trimmed.starts_with("pushdown-") && trimmed.contains("path = ") {
            let shipped = MEMBERS
                .iter()
                .any(|m| trimmed.contains(&format!("path = \"{m}\"")));
            if !shipped {
                continue;
            }
        }
        if trimmed.starts_with("exclude = ") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}
