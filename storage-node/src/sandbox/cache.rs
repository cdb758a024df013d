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

/// pushdown's cache folder: `$PUSHDOWN_CACHE_DIR`, else `$XDG_CACHE_HOME/pushdown`, else
/// `~/.cache/pushdown` (XDG Base Directory Specification); `None` without any of them.
/// Compiled modules live in its `modules/`, the unpacked plugin SDK in its `sdk/`.
pub fn cache_root() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("PUSHDOWN_CACHE_DIR") {
        return Some(PathBuf::from(dir));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("pushdown"))
}

/// The compiled-module cache folder: `modules/` of [`cache_root`].
fn cache_dir() -> Option<PathBuf> {
    cache_root().map(|d| d.join("modules"))
}

/// Why [`compile_cached`] has no module.
pub(crate) enum Compile {
    /// The module did not validate (nothing was compiled).
    Invalid(crate::Error),
    /// Compilation failed.
    Failed(wasmtime::Error),
}

/// Most bytes of compiled modules the cache keeps (1 GiB); past it the least recently used
/// files are deleted.
pub(crate) const MAX_CACHE_BYTES: u64 = 1 << 30;

/// Bytes of a tag: a SHA-256 keyed with the cache's secret key.
const TAG_BYTES: usize = 32;

/// Bytes of a file's stamp: device, inode, size, modification and change times.
const STAMP_BYTES: usize = 56;

/// Bytes of a sidecar `.tag` file: the content tag, the stamp, and the seal over both.
const SIDECAR_BYTES: usize = TAG_BYTES + STAMP_BYTES + TAG_BYTES;

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

fn tag(key: &[u8], name: &str, parts: &[&[u8]]) -> [u8; TAG_BYTES] {
    let mut h = Sha256::new();
    h.update(key);
    h.update(name.as_bytes());
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// What changes whenever a file's content can have changed: its device, inode, size,
/// modification time and change time (the change time cannot be set by a user).
pub(crate) fn stamp(meta: &std::fs::Metadata) -> [u8; STAMP_BYTES] {
    use std::os::unix::fs::MetadataExt;
    let mut out = [0u8; STAMP_BYTES];
    let fields = [
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime() as u64,
        meta.mtime_nsec() as u64,
        meta.ctime() as u64,
        meta.ctime_nsec() as u64,
    ];
    for (i, f) in fields.iter().enumerate() {
        out[i * 8..i * 8 + 8].copy_from_slice(&f.to_le_bytes());
    }
    out
}

/// Writes the sidecar of `file` (named `name`, holding `body`): the content's tag, the
/// file's stamp, and a seal over both.
fn write_sidecar(
    key: &[u8],
    name: &str,
    sidecar: &Path,
    content: &[u8; TAG_BYTES],
    file: &std::fs::File,
) {
    let Ok(meta) = file.metadata() else {
        return;
    };
    let stamp = stamp(&meta);
    let seal = tag(key, name, &[content, &stamp]);
    let mut bytes = Vec::with_capacity(SIDECAR_BYTES);
    bytes.extend_from_slice(content);
    bytes.extend_from_slice(&stamp);
    bytes.extend_from_slice(&seal);
    let tmp = sidecar.with_extension(format!("tmp{}", std::process::id()));
    if std::fs::write(&tmp, bytes).is_ok() {
        let _ = std::fs::rename(&tmp, sidecar);
    }
}

/// Whether the open compiled file `file` is the one this cache wrote under `name`: its
/// sidecar's seal holds and the file's stamp is unchanged since (no read needed), or its
/// whole content hashes to the sidecar's content tag (then the sidecar is renewed).
fn verified(key: &[u8], name: &str, sidecar: &Path, file: &std::fs::File) -> bool {
    use std::io::Read;
    let Ok(side) = std::fs::read(sidecar) else {
        return false;
    };
    if side.len() != SIDECAR_BYTES {
        return false;
    }
    let (content, rest) = side.split_at(TAG_BYTES);
    let (stamp_then, seal) = rest.split_at(STAMP_BYTES);
    if tag(key, name, &[content, stamp_then]) != seal {
        return false;
    }
    let Ok(meta) = file.metadata() else {
        return false;
    };
    if stamp(&meta) == stamp_then {
        return true;
    }
    let mut body = Vec::new();
    if (&*file).read_to_end(&mut body).is_err() || tag(key, name, &[&body]) != content {
        return false;
    }
    let content: [u8; TAG_BYTES] = content.try_into().expect("32 bytes");
    write_sidecar(key, name, sidecar, &content, file);
    true
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
            // Last used: the sidecar's modification time, else the file's.
            let used = std::fs::metadata(e.path().with_extension("tag"))
                .and_then(|m| m.modified())
                .or_else(|_| meta.modified())
                .ok()?;
            Some((used, meta.len(), e.path()))
        })
        .collect();
    let mut total: u64 = files.iter().map(|f| f.1).sum();
    files.sort();
    for (_, len, path) in files {
        if total <= budget {
            break;
        }
        if std::fs::remove_file(&path).is_ok() {
            let _ = std::fs::remove_file(path.with_extension("tag"));
            total -= len;
        }
    }
}

/// Compiles `bytes` (binary or text), or loads the artefact compiled earlier. A cache that
/// cannot be read or written is skipped, never an error. A cached file is deserialized
/// only when its sidecar `.tag` verifies: a SHA-256 keyed with the cache's secret key over
/// the content, and a keyed seal over that tag and the file's stamp (device, inode, size,
/// modification and change times). An unchanged stamp needs no read of the file (it is
/// then mapped, not copied); a changed one needs the whole content to hash to the tag. A
/// file written by anyone but this cache is compiled afresh, never loaded. Call only after
/// `validate` runs before anything is compiled (a cache hit needs none: the tag proves
/// these bytes validated and compiled before).
/// `sha256` is the hex SHA-256 of `bytes`; `dir` the cache folder (default: [`cache_dir`]).
pub(crate) fn compile_cached(
    engine: &Engine,
    bytes: &[u8],
    sha256: &str,
    dir: Option<&Path>,
    validate: impl FnOnce() -> crate::Result<()>,
) -> Result<Module, Compile> {
    let mut hasher = DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    let name = format!("{sha256}-{:016x}.cwasm", hasher.finish());
    let dir = dir
        .map(Path::to_path_buf)
        .or_else(cache_dir)
        .and_then(|d| private_dir(&d));
    let key = dir.as_deref().and_then(cache_key);
    let (Some(dir), Some(key)) = (dir, key) else {
        validate().map_err(Compile::Invalid)?;
        return Module::new(engine, bytes).map_err(Compile::Failed);
    };
    let path = dir.join(&name);
    let sidecar = path.with_extension("tag");
    if let Ok(file) = std::fs::File::open(&path) {
        if verified(&key, &name, &sidecar, &file) {
            // Most recently used (the sidecar's modification time): kept longest by `evict`.
            if let Ok(f) = std::fs::File::options().append(true).open(&sidecar) {
                let _ = f.set_modified(std::time::SystemTime::now());
            }
            // SAFETY: the sidecar's seal and the unchanged stamp (or a full hash) prove
            // the file is what `Module::serialize` of an engine with the same compatibility
            // hash wrote through this function, in a folder only this user can write.
            match unsafe { Module::deserialize_open_file(engine, file) } {
                Ok(module) => return Ok(module),
                Err(e) => log::warn!("module cache: {}: {e:#}; compiling afresh", path.display()),
            }
        } else {
            log::warn!(
                "module cache: {} does not carry this cache's tag; compiling afresh",
                path.display()
            );
        }
    }
    // Only what validates is compiled, and only what compiled is cached.
    validate().map_err(Compile::Invalid)?;
    let module = Module::new(engine, bytes).map_err(Compile::Failed)?;
    if let Ok(serialized) = module.serialize() {
        let content = tag(&key, &name, &[&serialized]);
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::write(&tmp, &serialized).is_ok() && std::fs::rename(&tmp, &path).is_ok() {
            if let Ok(file) = std::fs::File::open(&path) {
                write_sidecar(&key, &name, &sidecar, &content, &file);
            }
        }
        evict(&dir, MAX_CACHE_BYTES);
    }
    Ok(module)
}
