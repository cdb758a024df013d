//! On-disk cache of compiled modules, keyed by the module's SHA-256 and the engine's
//! compatibility hash, so a module is compiled once per engine configuration.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::PathBuf;

use sha2::{Digest, Sha256};
use wasmtime::{Engine, Module};

/// Hex SHA-256 of `bytes`.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The cache folder: `$PUSHDOWN_CACHE_DIR`, else `$XDG_CACHE_HOME/pushdown/modules`, else
/// `~/.cache/pushdown/modules`.
fn cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("PUSHDOWN_CACHE_DIR") {
        return Some(PathBuf::from(dir).join("modules"));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("pushdown").join("modules"))
}

/// Compiles `bytes` (binary or text), or loads the artefact compiled earlier. A cache that
/// cannot be read or written is skipped, never an error.
/// `sha256` is the hex SHA-256 of `bytes`.
pub(crate) fn compile_cached(
    engine: &Engine,
    bytes: &[u8],
    sha256: &str,
) -> wasmtime::Result<Module> {
    let mut hasher = DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    let key = format!("{sha256}-{:016x}.cwasm", hasher.finish());
    let path = cache_dir().map(|d| d.join(key));
    if let Some(path) = &path {
        if path.exists() {
            // SAFETY: the file was written by `Module::serialize` of an engine with the same
            // compatibility hash, into a folder only this user writes.
            if let Ok(module) = unsafe { Module::deserialize_file(engine, path) } {
                return Ok(module);
            }
        }
    }
    let module = Module::new(engine, bytes)?;
    if let Some(path) = &path {
        if let (Some(dir), Ok(serialized)) = (path.parent(), module.serialize()) {
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            if std::fs::create_dir_all(dir).is_ok() && std::fs::write(&tmp, serialized).is_ok() {
                let _ = std::fs::rename(&tmp, path);
            }
        }
    }
    Ok(module)
}
