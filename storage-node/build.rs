//! Builds the built-in Wasm plugins (`pushdown-plugins/builtin`) for `wasm32-wasip1` with a
//! nested cargo in its own target directory, and hands the module's path to the crate
//! (`PUSHDOWN_BUILTIN_WASM_PATH`), which embeds it. Set `PUSHDOWN_BUILTIN_WASM` to a
//! prebuilt module to skip the nested build.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=PUSHDOWN_BUILTIN_WASM");
    if let Ok(path) = env::var("PUSHDOWN_BUILTIN_WASM") {
        println!("cargo:rustc-env=PUSHDOWN_BUILTIN_WASM_PATH={path}");
        export_sha256(Path::new(&path));
        return;
    }
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let workspace = manifest_dir.parent().unwrap().to_path_buf();
    // Relative to this package, so a target directory shared by two checkouts watches the
    // checkout being built.
    for watched in [
        "../pushdown-plugins/builtin/src",
        "../pushdown-plugins/builtin/Cargo.toml",
        "../protocol/src",
        "../protocol/Cargo.toml",
        "../Cargo.toml",
        "../Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={watched}");
    }
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());
    // OUT_DIR is <target>/<profile>/build/<crate>-<hash>/out.
    let target_dir = out_dir
        .ancestors()
        .nth(4)
        .map(Path::to_path_buf)
        .unwrap_or(out_dir.clone())
        .join("wasm-guest");
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&workspace)
        .args([
            "build",
            "--profile",
            "wasm-guest",
            "--target",
            "wasm32-wasip1",
            "-p",
            "pushdown-plugins-builtin",
            "--target-dir",
        ])
        .arg(&target_dir);
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_PROFILE_RELEASE_DEBUG",
    ] {
        cmd.env_remove(var);
    }
    // 128-bit SIMD lets the Arrow kernels vectorise inside the sandbox (wasmtime enables
    // the proposal by default).
    cmd.env("CARGO_ENCODED_RUSTFLAGS", "-Ctarget-feature=+simd128");
    // The zstd codec compiles C for the guest with clang and wasi-libc (Debian: clang, lld, wasi-libc).
    for (var, value) in [
        ("CC_wasm32_wasip1", "clang"),
        ("AR_wasm32_wasip1", "llvm-ar"),
        ("CFLAGS_wasm32_wasip1", "-isystem /usr/include/wasm32-wasi"),
    ] {
        if env::var_os(var).is_none() {
            cmd.env(var, value);
        }
    }
    let status = cmd.status().expect("cargo runs");
    if !status.success() {
        panic!(
            "building the built-in Wasm plugins for wasm32-wasip1 failed. \
             Is the target installed (`rustup target add wasm32-wasip1`) and are clang, lld, llvm-ar \
             and wasi-libc installed (`scripts/setup.sh` installs them)?"
        );
    }
    let wasm = target_dir.join("wasm32-wasip1/wasm-guest/pushdown_plugins_builtin.wasm");
    println!(
        "cargo:rustc-env=PUSHDOWN_BUILTIN_WASM_PATH={}",
        wasm.display()
    );
    export_sha256(&wasm);
}

/// Hands the module's SHA-256 to the crate (`PUSHDOWN_BUILTIN_WASM_SHA256`), so a process
/// does not hash 15 MiB at every start.
fn export_sha256(wasm: &Path) {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(wasm)
        .unwrap_or_else(|e| panic!("reading the built-in module {}: {e}", wasm.display()));
    let hex: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    println!("cargo:rustc-env=PUSHDOWN_BUILTIN_WASM_SHA256={hex}");
}
