//! The plugin registry: validated user plugins stored content-addressed by SHA-256, with
//! their name, kind and signature, in an embedded SQLite database.
//!
//! Layout: `<dir>/registry.sqlite3`, tables `modules(sha256 PRIMARY KEY, bytes)` and
//! `plugins(name PRIMARY KEY, kind, sha256 REFERENCES modules, signature, source,
//! registered_at)`. A registration is one transaction: it stores everything or nothing.
//! The directory is `$PUSHDOWN_REGISTRY`, else `$XDG_DATA_HOME/pushdown`, else
//! `~/.local/share/pushdown`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use pushdown_protocol::{PluginKind, PluginRef, PluginSignature};
use rusqlite::{params, Connection, OptionalExtension};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::sandbox::Sandbox;

/// One registered plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisteredPlugin {
    /// The name SQL uses.
    pub name: String,
    /// Its kind.
    pub kind: PluginKind,
    /// Hex SHA-256 of the module's binary bytes.
    pub sha256: String,
    /// The signature it declares (with `name` as registered).
    pub signature: PluginSignature,
    /// Size of the binary module in bytes.
    pub size: u64,
    /// The file it was registered from.
    pub source: String,
}

impl RegisteredPlugin {
    /// How tasks refer to it.
    pub fn reference(&self) -> PluginRef {
        PluginRef {
            name: self.name.clone(),
            sha256: self.sha256.clone(),
        }
    }
}

/// The registry; see the module doc.
pub struct Registry {
    dir: PathBuf,
    conn: Mutex<Connection>,
}

fn db_err(dir: &Path) -> impl Fn(rusqlite::Error) -> Error + '_ {
    move |e| Error::Internal(format!("plugin registry {}: {e}", dir.display()))
}

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Validates the module in `path` (`.wasm`, or WebAssembly text): it compiles in
/// `sandbox`, imports only WASI preview 1, exports what its kind needs, has the host's ABI
/// version, and declares a well-formed signature (see [`Sandbox::load_plugin`]). Returns
/// the binary module and the signature, renamed to `name` when given.
///
/// # Errors
/// [`Error::Io`] when the file cannot be read; [`Error::Plugin`] saying what is wrong.
pub fn validate(
    sandbox: &Sandbox,
    path: &Path,
    name: Option<&str>,
) -> Result<(Vec<u8>, PluginSignature)> {
    let source = path.display().to_string();
    let raw = std::fs::read(path).map_err(|error| Error::Io {
        path: source.clone(),
        error,
    })?;
    let label = name.map(str::to_string).unwrap_or_else(|| {
        path.file_name()
            .map_or_else(|| source.clone(), |s| s.to_string_lossy().into_owned())
    });
    let plugin_err = |message: String| Error::Plugin {
        plugin: label.clone(),
        message,
    };
    // Text is converted to binary first, so the hash names the bytes that run.
    let bytes = wat::parse_bytes(&raw)
        .map_err(|e| {
            plugin_err(format!(
                "is neither a Wasm module nor valid WebAssembly text: {e}"
            ))
        })?
        .into_owned();
    let (_, mut signature) = sandbox.load_plugin(&label, &bytes)?;
    if let Some(name) = name {
        signature.name = name.to_string();
        signature
            .check()
            .map_err(|m| plugin_err(format!("cannot be registered as {name:?}: {m}")))?;
    }
    Ok((bytes, signature))
}

impl Registry {
    /// The default directory; see the module doc.
    pub fn default_dir() -> PathBuf {
        if let Some(dir) = std::env::var_os("PUSHDOWN_REGISTRY") {
            return PathBuf::from(dir);
        }
        if let Some(data) = std::env::var_os("XDG_DATA_HOME") {
            return PathBuf::from(data).join("pushdown");
        }
        let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
        home.join(".local/share/pushdown")
    }

    /// Opens (creating when missing) the registry in `dir`.
    ///
    /// # Errors
    /// [`Error::Io`] when the directory cannot be created; [`Error::Internal`] when the
    /// database cannot be opened.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|error| Error::Io {
            path: dir.display().to_string(),
            error,
        })?;
        let conn = Connection::open(dir.join("registry.sqlite3")).map_err(db_err(&dir))?;
        conn.execute_batch(
            "PRAGMA foreign_keys = ON;
             PRAGMA busy_timeout = 5000;
             CREATE TABLE IF NOT EXISTS modules (
                 sha256 TEXT PRIMARY KEY,
                 bytes BLOB NOT NULL
             );
             CREATE TABLE IF NOT EXISTS plugins (
                 name TEXT PRIMARY KEY,
                 kind TEXT NOT NULL,
                 sha256 TEXT NOT NULL REFERENCES modules(sha256),
                 signature TEXT NOT NULL,
                 source TEXT NOT NULL,
                 registered_at TEXT NOT NULL DEFAULT (datetime('now'))
             );
             CREATE TABLE IF NOT EXISTS received (
                 sha256 TEXT PRIMARY KEY REFERENCES modules(sha256),
                 received_at TEXT NOT NULL DEFAULT (datetime('now'))
             );",
        )
        .map_err(db_err(&dir))?;
        Ok(Self {
            dir,
            conn: Mutex::new(conn),
        })
    }

    /// The registry's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Validates the module in `path` ([`validate`]) and stores it under its declared
    /// name, or `name` when given. A plugin of the same name is replaced.
    ///
    /// # Errors
    /// As [`validate`] (nothing is stored then) and [`Registry::store`].
    pub fn register(
        &self,
        sandbox: &Sandbox,
        path: &Path,
        name: Option<&str>,
    ) -> Result<RegisteredPlugin> {
        let (bytes, signature) = validate(sandbox, path, name)?;
        self.store(&bytes, signature, &path.display().to_string())
    }

    /// Stores validated module bytes with their signature, in one transaction.
    ///
    /// # Errors
    /// [`Error::Internal`] for database errors.
    pub fn store(
        &self,
        bytes: &[u8],
        signature: PluginSignature,
        source: &str,
    ) -> Result<RegisteredPlugin> {
        let sha256 = sha256_hex(bytes);
        let json = serde_json::to_string(&signature).expect("a signature serializes");
        let mut conn = self.conn.lock().expect("not poisoned");
        let tx = conn.transaction().map_err(db_err(&self.dir))?;
        tx.execute(
            "INSERT OR IGNORE INTO modules (sha256, bytes) VALUES (?1, ?2)",
            params![sha256, bytes],
        )
        .map_err(db_err(&self.dir))?;
        tx.execute(
            "INSERT OR REPLACE INTO plugins (name, kind, sha256, signature, source) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![signature.name, signature.kind.name(), sha256, json, source],
        )
        .map_err(db_err(&self.dir))?;
        tx.execute(
            "DELETE FROM modules WHERE sha256 NOT IN (SELECT sha256 FROM plugins)
                 AND sha256 NOT IN (SELECT sha256 FROM received)",
            [],
        )
        .map_err(db_err(&self.dir))?;
        tx.commit().map_err(db_err(&self.dir))?;
        Ok(RegisteredPlugin {
            name: signature.name.clone(),
            kind: signature.kind,
            sha256,
            signature,
            size: bytes.len() as u64,
            source: source.to_string(),
        })
    }

    /// Stores validated module bytes by their SHA-256 only, under no name: what a storage
    /// node keeps of the modules intermediaries send it. Never creates, renames or
    /// replaces a named plugin.
    ///
    /// Received modules are kept within `budget` bytes: the least recently received ones
    /// beyond it are forgotten (an intermediary sends a module again when a node no longer
    /// has it); modules registered under a name are never deleted. Returns the module's
    /// SHA-256 and the SHA-256s forgotten.
    ///
    /// # Errors
    /// [`Error::Internal`] for database errors.
    pub fn store_module(&self, bytes: &[u8], budget: u64) -> Result<(String, Vec<String>)> {
        let sha256 = sha256_hex(bytes);
        let mut conn = self.conn.lock().expect("not poisoned");
        let tx = conn.transaction().map_err(db_err(&self.dir))?;
        tx.execute(
            "INSERT OR IGNORE INTO modules (sha256, bytes) VALUES (?1, ?2)",
            params![sha256, bytes],
        )
        .map_err(db_err(&self.dir))?;
        // A new rowid each time: rowid order is receipt order, most recent last.
        tx.execute(
            "INSERT OR REPLACE INTO received (sha256) VALUES (?1)",
            params![sha256],
        )
        .map_err(db_err(&self.dir))?;
        let mut forgotten = Vec::new();
        {
            let mut stmt = tx
                .prepare(
                    "SELECT r.sha256, length(m.bytes) FROM received r JOIN modules m USING (sha256)
                     ORDER BY r.rowid DESC",
                )
                .map_err(db_err(&self.dir))?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
                .map_err(db_err(&self.dir))?;
            let mut total = 0u64;
            for row in rows {
                let (hash, len) = row.map_err(db_err(&self.dir))?;
                total = total.saturating_add(u64::try_from(len).unwrap_or(0));
                if total > budget && hash != sha256 {
                    forgotten.push(hash);
                }
            }
        }
        for hash in &forgotten {
            tx.execute("DELETE FROM received WHERE sha256 = ?1", params![hash])
                .map_err(db_err(&self.dir))?;
        }
        tx.execute(
            "DELETE FROM modules WHERE sha256 NOT IN (SELECT sha256 FROM plugins)
                 AND sha256 NOT IN (SELECT sha256 FROM received)",
            [],
        )
        .map_err(db_err(&self.dir))?;
        tx.commit().map_err(db_err(&self.dir))?;
        Ok((sha256, forgotten))
    }

    /// Every registered plugin, by name. A row that does not hold a valid plugin (a name
    /// that is not an identifier, a malformed signature) is skipped with a warning.
    ///
    /// # Errors
    /// [`Error::Internal`] for database errors.
    pub fn list(&self) -> Result<Vec<RegisteredPlugin>> {
        let conn = self.conn.lock().expect("not poisoned");
        let mut stmt = conn
            .prepare(
                "SELECT p.name, p.sha256, p.signature, length(m.bytes), p.source
                 FROM plugins p JOIN modules m USING (sha256) ORDER BY p.name",
            )
            .map_err(db_err(&self.dir))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, String>(4)?,
                ))
            })
            .map_err(db_err(&self.dir))?;
        let mut out = Vec::new();
        for row in rows {
            let (name, sha256, json, size, source) = row.map_err(db_err(&self.dir))?;
            let signature = PluginSignature::parse(json.as_bytes()).and_then(|signature| {
                pushdown_protocol::plugin::check_name(&name)?;
                Ok(signature)
            });
            let signature = match signature {
                Ok(signature) => signature,
                Err(m) => {
                    log::warn!(
                        "plugin registry {}: skipping plugin {name:?}: {m}",
                        self.dir.display()
                    );
                    continue;
                }
            };
            out.push(RegisteredPlugin {
                name,
                kind: signature.kind,
                sha256,
                signature,
                size: size as u64,
                source,
            });
        }
        Ok(out)
    }

    /// The plugin registered under `name`.
    ///
    /// # Errors
    /// As [`Registry::list`].
    pub fn get(&self, name: &str) -> Result<Option<RegisteredPlugin>> {
        Ok(self.list()?.into_iter().find(|p| p.name == name))
    }

    /// Removes the plugin `name` (and its module when no other name uses it). Returns
    /// whether it existed.
    ///
    /// # Errors
    /// [`Error::Internal`] for database errors.
    pub fn remove(&self, name: &str) -> Result<bool> {
        let mut conn = self.conn.lock().expect("not poisoned");
        let tx = conn.transaction().map_err(db_err(&self.dir))?;
        let n = tx
            .execute("DELETE FROM plugins WHERE name = ?1", params![name])
            .map_err(db_err(&self.dir))?;
        tx.execute(
            "DELETE FROM modules WHERE sha256 NOT IN (SELECT sha256 FROM plugins)
                 AND sha256 NOT IN (SELECT sha256 FROM received)",
            [],
        )
        .map_err(db_err(&self.dir))?;
        tx.commit().map_err(db_err(&self.dir))?;
        Ok(n > 0)
    }

    /// The module bytes whose SHA-256 is `sha256`, checked against it.
    ///
    /// # Errors
    /// [`Error::NotFound`] when no such module is stored; [`Error::Plugin`] when the stored
    /// bytes do not hash to `sha256` (they are never run).
    pub fn module(&self, plugin: &PluginRef) -> Result<Vec<u8>> {
        let conn = self.conn.lock().expect("not poisoned");
        let bytes: Option<Vec<u8>> = conn
            .query_row(
                "SELECT bytes FROM modules WHERE sha256 = ?1",
                params![plugin.sha256],
                |r| r.get(0),
            )
            .optional()
            .map_err(db_err(&self.dir))?;
        let bytes = bytes.ok_or_else(|| Error::NotFound {
            path: self.dir.display().to_string(),
            message: format!(
                "plugin {} (sha256 {}) is not in the registry",
                plugin.name, plugin.sha256
            ),
        })?;
        if sha256_hex(&bytes) != plugin.sha256 {
            return Err(Error::Plugin {
                plugin: plugin.name.clone(),
                message: format!(
                    "the stored module does not hash to {}; refusing to run it",
                    plugin.sha256
                ),
            });
        }
        Ok(bytes)
    }
}

/// Builds the plugin crate at `path` for `wasm32-wasip1` with cargo (release, no debug
/// info) and returns the module's path; cargo's progress goes to stderr.
///
/// # Errors
/// [`Error::NotFound`] when `path` has no `Cargo.toml` or the target is not installed
/// (the message says how to install it); [`Error::Internal`] when the build fails or makes
/// no `.wasm`.
pub fn build_crate(path: &Path) -> Result<PathBuf> {
    let manifest = path.join("Cargo.toml");
    if !manifest.is_file() {
        return Err(Error::NotFound {
            path: path.display().to_string(),
            message: "has no Cargo.toml: not a plugin crate".into(),
        });
    }
    if let Ok(out) = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
    {
        let installed = String::from_utf8_lossy(&out.stdout);
        if out.status.success() && !installed.lines().any(|l| l.trim() == "wasm32-wasip1") {
            return Err(Error::NotFound { path: "wasm32-wasip1".into(), message: "the Rust target is not installed; install it with `rustup target add wasm32-wasip1`".into() });
        }
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut child = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--lib",
            "--target",
            "wasm32-wasip1",
            "--message-format=json-render-diagnostics",
            "--manifest-path",
        ])
        .arg(&manifest)
        // A small module: no debug info (the name section stays for traps and profiles).
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "debuginfo")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| Error::Internal(format!("running cargo: {e}")))?;
    let manifest = manifest.canonicalize().map_err(|error| Error::Io {
        path: path.display().to_string(),
        error,
    })?;
    let mut wasm = None;
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let Ok(line) = line else { break };
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let ours = msg["manifest_path"]
            .as_str()
            .and_then(|p| Path::new(p).canonicalize().ok())
            .is_some_and(|p| p == manifest);
        if !ours {
            continue;
        }
        if let Some(files) = msg["filenames"].as_array() {
            wasm = files
                .iter()
                .filter_map(|f| f.as_str())
                .find(|f| f.ends_with(".wasm"))
                .map(PathBuf::from)
                .or(wasm);
        }
    }
    let status = child
        .wait()
        .map_err(|e| Error::Internal(format!("running cargo: {e}")))?;
    if !status.success() {
        return Err(Error::Internal(format!(
            "cargo build for wasm32-wasip1 failed in {}",
            path.display()
        )));
    }
    wasm.ok_or_else(|| {
        Error::Internal(format!(
            "{}: the build made no .wasm module; is crate-type \"cdylib\" set?",
            path.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn has(registry: &Registry, bytes: &[u8]) -> bool {
        let plugin = PluginRef {
            name: "m".into(),
            sha256: sha256_hex(bytes),
        };
        registry.module(&plugin).is_ok()
    }

    #[test]
    fn received_modules_beyond_the_budget_are_forgotten_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::open(dir.path()).unwrap();
        let (a, b, c) = (vec![1u8; 100], vec![2u8; 100], vec![3u8; 100]);
        assert!(registry.store_module(&a, 250).unwrap().1.is_empty());
        assert!(registry.store_module(&b, 250).unwrap().1.is_empty());
        // a was received again, so b is now the least recent.
        registry.store_module(&a, 250).unwrap();
        let (_, forgotten) = registry.store_module(&c, 250).unwrap();
        assert_eq!(forgotten, vec![sha256_hex(&b)]);
        assert!(has(&registry, &a) && !has(&registry, &b) && has(&registry, &c));
        // A budget of 0 keeps only the module just received.
        let (_, forgotten) = registry.store_module(&b, 0).unwrap();
        assert_eq!(forgotten.len(), 2);
        assert!(!has(&registry, &a) && has(&registry, &b) && !has(&registry, &c));
    }
}
