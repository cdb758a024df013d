//! On-disk cache of compiled modules, keyed by the module's SHA-256 and the engine's
//! compatibility hash, so a module is compiled once per engine configuration.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::{Engine, Module};

/// Hex SHA-256 of `bytes`.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The cache folder: `$PUSHDOWN_CACHE_DIR/modules`, else `$XDG_CACHE_HOME/pushdown/modules`,
/// else `~/.cache/pushdown/modules`.
fn cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("PUSHDOWN_CACHE_DIR") {
        return Some(PathBuf::from(dir).join("modules"));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("pushdown").join("modules"))
}

/// Most bytes of compiled modules the cache keeps (1 GiB); past it the least recently used
/// files are deleted.
pub(crate) const MAX_CACHE_BYTES: u64 = 1 << 30;

/// Bytes of the tag after each compiled module: SHA-256 of the cache's key, the file name
/// and the serialized module.
const TAG_BYTES: usize = 32;

/// `dir`, created private (mode 0700) when missing, when it is a directory this user owns
/// and no one else may write to or read; `None` (no caching) otherwise, with a warning.
fn private_dir(dir: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    if !dir.exists() {
        if let Some(parent) = dir.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let _ = std::fs::DirBuilder::new().mode(0o700).create(dir);
    }
    let meta = std::fs::symlink_metadata(dir).ok()?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if !meta.is_dir() || meta.uid() != me {
        log::warn!(
            "module cache {}: not a directory owned by this user; compiled modules are not cached",
            dir.display()
        );
        return None;
    }
    if meta.mode() & 0o077 != 0
        && std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).is_err()
    {
        log::warn!(
            "module cache {}: others may access it and it cannot be made private; compiled modules are not cached",
            dir.display()
        );
        return None;
    }
    Some(dir.to_path_buf())
}

/// The cache's secret key (32 random bytes in `dir/key`, mode 0600), made on first use.
fn cache_key(dir: &Path) -> Option<Vec<u8>> {
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("key");
    if let Ok(key) = std::fs::read(&path) {
        if key.len() == 32 {
            return Some(key);
        }
    }
    let mut key = vec![0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut key))
        .ok()?;
    let tmp = dir.join(format!("key.tmp{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .ok()?;
    file.write_all(&key).ok()?;
    drop(file);
    // Two processes starting at once: the first key written wins, and both read it back.
    if std::fs::hard_link(&tmp, &path).is_err() {
        let _ = std::fs::remove_file(&tmp);
        return std::fs::read(&path).ok().filter(|k| k.len() == 32);
    }
    let _ = std::fs::remove_file(&tmp);
    Some(key)
}

fn tag(key: &[u8], name: &str, body: &[u8]) -> [u8; TAG_BYTES] {
    let mut h = Sha256::new();
    h.update(key);
    h.update(name.as_bytes());
    h.update(body);
    h.finalize().into()
}

/// Deletes the least recently used compiled modules in `dir` until they hold at most
/// `budget` bytes.
fn evict(dir: &Path, budget: u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut files: Vec<(std::time::SystemTime, u64, PathBuf)> = entries
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            Some((meta.modified().ok()?, meta.len(), e.path()))
        })
        .collect();
    let mut total: u64 = files.iter().map(|f| f.1).sum();
    files.sort();
    for (_, len, path) in files {
        if total <= budget {
            break;
        }
        if std::fs::remove_file(&path).is_ok() {
            total -= len;
        }
    }
}

/// Compiles `bytes` (binary or text), or loads the artefact compiled earlier. A cache that
/// cannot be read or written is skipped, never an error. A cached file is deserialized
/// only when its tag (a SHA-256 keyed with the cache's secret key) matches, so a file
/// written by anyone but this cache is compiled afresh, never loaded. Call only after
/// the module was validated (`Sandbox::validate_module`): what is cached compiled.
/// `sha256` is the hex SHA-256 of `bytes`; `dir` the cache folder (default: [`cache_dir`]).
pub(crate) fn compile_cached(
    engine: &Engine,
    bytes: &[u8],
    sha256: &str,
    dir: Option<&Path>,
) -> wasmtime::Result<Module> {
    let mut hasher = DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    let name = format!("{sha256}-{:016x}.cwasm", hasher.finish());
    let dir = dir
        .map(Path::to_path_buf)
        .or_else(cache_dir)
        .and_then(|d| private_dir(&d));
    let key = dir.as_deref().and_then(cache_key);
    let (Some(dir), Some(key)) = (dir, key) else {
        return Module::new(engine, bytes);
    };
    let path = dir.join(&name);
    if let Ok(file) = std::fs::read(&path) {
        if file.len() > TAG_BYTES {
            let (body, stored) = file.split_at(file.len() - TAG_BYTES);
            if tag(&key, &name, body) == stored {
                // SAFETY: the tag proves the body was written by `Module::serialize` of an
                // engine with the same compatibility hash, through this function.
                if let Ok(module) = unsafe { Module::deserialize(engine, body) } {
                    // Most recently used: kept longest by `evict`.
                    if let Ok(f) = std::fs::File::options().append(true).open(&path) {
                        let _ = f.set_modified(std::time::SystemTime::now());
                    }
                    return Ok(module);
                }
            } else {
                log::warn!(
                    "module cache: {} does not carry this cache's tag; compiling afresh",
                    path.display()
                );
            }
        }
    }
    let module = Module::new(engine, bytes)?;
    if let Ok(mut serialized) = module.serialize() {
        let t = tag(&key, &name, &serialized);
        serialized.extend_from_slice(&t);
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::write(&tmp, serialized).is_ok() {
            let _ = std::fs::rename(&tmp, &path);
        }
        evict(&dir, MAX_CACHE_BYTES);
    }
    Ok(module)
}
