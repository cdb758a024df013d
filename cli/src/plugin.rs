//! `pushdown plugin new|build|register|list|remove`: from a new crate to a registered
//! plugin that SQL can call.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use pushdown_protocol::{PluginKind, PluginRef};
use pushdown_storage_node::{Registry, Sandbox, SandboxConfig};

/// The plugin SDKs this binary carries (see `cli/build.rs`): `SDK_FILES`.
mod embedded {
    include!(concat!(env!("OUT_DIR"), "/sdk_files.rs"));
}

#[derive(Subcommand)]
pub enum PluginCommand {
    /// Create a plugin crate NAME/ that builds and has a passing test.
    New {
        /// The plugin's name (an identifier; SQL calls it by this name).
        name: String,
        /// What it provides.
        #[arg(long, value_enum)]
        kind: Kind,
        /// Folder to create the crate in.
        #[arg(long, value_name = "DIR", default_value = ".")]
        dir: PathBuf,
        /// The language: a Rust crate on the `pushdown-plugin` SDK, or C on
        /// `pushdown_plugin.h` (scalar and aggregate plugins).
        #[arg(long, value_enum, default_value = "rust")]
        lang: Lang,
        /// The pushdown-plugin SDK crate, for SDK development [default: the SDK inside
        /// this binary, unpacked to $PUSHDOWN_CACHE_DIR/sdk, else ~/.cache/pushdown/sdk].
        #[arg(long, value_name = "DIR")]
        sdk: Option<PathBuf>,
    },
    /// Build a plugin for wasm32-wasip1 and print the module's path: a Rust crate (cargo,
    /// release), or a folder of C files (clang --target=wasm32-wasi with wasi-libc).
    Build {
        /// The plugin's folder.
        #[arg(default_value = ".")]
        path: PathBuf,
    },
    /// Validate a module (.wasm or WebAssembly text .wat) and store it in the registry.
    Register {
        /// The module.
        file: PathBuf,
        /// Register under this name instead of the one the plugin declares.
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        registry: RegistryArg,
    },
    /// List the registered plugins.
    List {
        #[command(flatten)]
        registry: RegistryArg,
    },
    /// Remove a registered plugin.
    Remove {
        /// Its name.
        name: String,
        #[command(flatten)]
        registry: RegistryArg,
    },
}

/// Where the plugin registry lives.
#[derive(Parser)]
pub struct RegistryArg {
    /// The plugin registry folder [default: $PUSHDOWN_REGISTRY, else
    /// $XDG_DATA_HOME/pushdown, else ~/.local/share/pushdown].
    #[arg(long, value_name = "DIR")]
    pub registry: Option<PathBuf>,
}

impl RegistryArg {
    /// The folder.
    pub fn dir(&self) -> PathBuf {
        self.registry.clone().unwrap_or_else(Registry::default_dir)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Lang {
    /// A Rust crate on the `pushdown-plugin` SDK, with a native test.
    Rust,
    /// C on `pushdown_plugin.h`, built with clang and wasi-libc.
    C,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Kind {
    /// A scalar function (SELECT, WHERE).
    Scalar,
    /// An aggregate (init, update, merge, finalize).
    Aggregate,
    /// A parser that makes a file format queryable.
    Parser,
}

pub fn run(command: PluginCommand) -> Result<()> {
    match command {
        PluginCommand::New {
            name,
            kind,
            dir,
            lang,
            sdk,
        } => match lang {
            Lang::Rust => new(&name, kind, &dir, sdk),
            Lang::C => new_c(&name, kind, &dir),
        },
        PluginCommand::Build { path } => {
            let wasm = build(&path)?;
            eprintln!("{}", check_built(&wasm)?);
            println!("{}", wasm.display());
            Ok(())
        }
        PluginCommand::Register {
            file,
            name,
            registry,
        } => register(&file, name.as_deref(), &registry.dir()),
        PluginCommand::List { registry } => list(&registry.dir()),
        PluginCommand::Remove { name, registry } => {
            let registry = Registry::open(registry.dir())?;
            if !registry.remove(&name)? {
                bail!("no plugin named {name} (registered: {})", names(&registry)?);
            }
            println!("removed plugin {name}");
            Ok(())
        }
    }
}

fn names(registry: &Registry) -> Result<String> {
    let all: Vec<String> = registry.list()?.into_iter().map(|p| p.name).collect();
    Ok(if all.is_empty() {
        "none".into()
    } else {
        all.join(", ")
    })
}

fn register(file: &Path, name: Option<&str>, dir: &Path) -> Result<()> {
    let sandbox = Sandbox::new(SandboxConfig::default())?;
    let (bytes, signature) = pushdown_storage_node::registry::validate(&sandbox, file, name)?;
    // The core aggregates the pushdown split relies on cannot be replaced; any other
    // built-in function may be, with a note (checked before anything is stored).
    if ["count", "sum", "min", "max", "avg"].contains(&signature.name.as_str()) {
        bail!(
            "{}: plugin {}: {} is a core SQL aggregate and cannot be replaced; register it under another name with --name",
            file.display(),
            signature.name,
            signature.name
        );
    }
    if pushdown_intermediary::builtin_function_names().contains(&signature.name) {
        eprintln!(
            "note: plugin {} replaces the built-in SQL function of that name in queries",
            signature.name
        );
    }
    let registry = Registry::open(dir)?;
    let registered = registry.store(&bytes, signature, &file.display().to_string())?;
    println!(
        "registered {} plugin {} {}\n  sha256 {}, {} bytes, in {}",
        registered.kind,
        registered.name,
        registered.signature.describe(),
        registered.sha256,
        registered.size,
        registry.dir().display()
    );
    Ok(())
}

fn list(dir: &Path) -> Result<()> {
    let registry = Registry::open(dir)?;
    let plugins = registry.list()?;
    if plugins.is_empty() {
        println!("no plugins registered in {}", registry.dir().display());
        return Ok(());
    }
    let rows: Vec<[String; 4]> = plugins
        .iter()
        .map(|p| {
            [
                p.name.clone(),
                p.kind.to_string(),
                p.signature.describe(),
                p.sha256[..16].to_string(),
            ]
        })
        .collect();
    let header = ["name", "kind", "signature", "sha256"];
    let width = |i: usize| {
        rows.iter()
            .map(|r| r[i].chars().count())
            .chain([header[i].len()])
            .max()
            .unwrap_or(0)
    };
    let widths = [width(0), width(1), width(2), width(3)];
    let line = |r: [&str; 4]| {
        format!(
            "{:w0$}  {:w1$}  {:w2$}  {}",
            r[0],
            r[1],
            r[2],
            r[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        )
    };
    println!("{}", line(header));
    for r in &rows {
        println!("{}", line([&r[0], &r[1], &r[2], &r[3]]));
    }
    Ok(())
}

/// Resolves `--format TABLE=PARSER` against the registry.
pub fn formats(specs: &[String], dir: &Path) -> Result<BTreeMap<String, PluginRef>> {
    let mut out = BTreeMap::new();
    if specs.is_empty() {
        return Ok(out);
    }
    let registry = Registry::open(dir)?;
    for spec in specs {
        let Some((table, parser)) = spec.split_once('=') else {
            bail!("--format {spec}: expected TABLE=PARSER, e.g. access=access_log");
        };
        let parsers: Vec<String> = registry
            .list()?
            .into_iter()
            .filter(|p| p.kind == PluginKind::Parser)
            .map(|p| p.name)
            .collect();
        match registry.get(parser)? {
            Some(p) if p.kind == PluginKind::Parser => {
                out.insert(table.to_string(), p.reference());
            }
            Some(p) => bail!(
                "--format {spec}: plugin {parser} is a {} plugin, not a parser",
                p.kind
            ),
            None => bail!(
                "--format {spec}: no parser plugin named {parser} (registered parsers: {})",
                if parsers.is_empty() {
                    "none".into()
                } else {
                    parsers.join(", ")
                }
            ),
        }
    }
    Ok(out)
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Scalar => "scalar",
        Kind::Aggregate => "aggregate",
        Kind::Parser => "parser",
    }
}

/// Refuses a name SQL could not call (the signature's rules, ABI.md).
fn check_name(name: &str, kind: Kind) -> Result<()> {
    let probe = pushdown_protocol::PluginSignature {
        kind: kind_name(kind).parse().map_err(anyhow::Error::msg)?,
        name: name.to_string(),
        arguments: vec!["Float64".into()],
        returns: Some("Float64".into()),
        columns: vec![],
    };
    match probe.check() {
        Err(m) if m.contains("name") => bail!("plugin new {name}: {m}"),
        _ => Ok(()),
    }
}

fn new(name: &str, kind: Kind, dir: &Path, sdk: Option<PathBuf>) -> Result<()> {
    let kind_name = kind_name(kind);
    check_name(name, kind)?;
    let sdk = match sdk {
        Some(dir) => dir,
        None => unpacked_sdk()?.join("pushdown-plugins/sdk"),
    };
    let sdk = sdk
        .canonicalize()
        .with_context(|| format!("the SDK crate {} is missing; pass --sdk DIR", sdk.display()))?;
    let root = dir.join(name);
    if root.exists() {
        bail!("{} already exists", root.display());
    }
    std::fs::create_dir_all(root.join("src"))
        .with_context(|| format!("creating {}", root.display()))?;
    let type_name: String = name
        .split('_')
        .filter(|s| !s.is_empty())
        .map(|s| {
            let mut c = s.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect();
    let manifest = format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2021"
publish = false

[lib]
# cdylib: the Wasm module (`pushdown plugin build`); rlib: the same code natively for tests.
crate-type = ["cdylib", "rlib"]

[dependencies]
pushdown-plugin = {{ path = "{sdk}" }}

# A crate of its own, not a member of an enclosing workspace.
[workspace]
"#,
        sdk = sdk.display()
    );
    let template = match kind {
        Kind::Scalar => SCALAR_TEMPLATE,
        Kind::Aggregate => AGGREGATE_TEMPLATE,
        Kind::Parser => PARSER_TEMPLATE,
    };
    let source = template
        .replace("__NAME__", name)
        .replace("__TYPE__", &type_name);
    std::fs::write(root.join("Cargo.toml"), manifest)?;
    std::fs::write(root.join("src/lib.rs"), source)?;
    std::fs::write(root.join(".gitignore"), "/target\n")?;
    // Pin the dependency versions pushdown itself was built and tested with.
    let lock = sdk.join("../../Cargo.lock");
    if lock.is_file() {
        std::fs::copy(&lock, root.join("Cargo.lock"))?;
    }
    println!(
        "created {kind_name} plugin {name} in {}\n  cd {} && cargo test && pushdown plugin build && pushdown plugin register <the .wasm it prints>",
        root.display(),
        root.display()
    );
    Ok(())
}

/// Loads a freshly built module as `plugin register` would (compiles, links against WASI
/// preview 1 and the host calls only, checks exports and signature) and describes it:
/// `built scalar plugin twice: 2.9 MiB, exports pushdown_abi_version, …; imports 4 WASI
/// preview 1 functions`.
///
/// # Errors
/// What `plugin register` would refuse, naming the module and saying it is not registered.
fn check_built(wasm: &Path) -> Result<String> {
    let bytes = std::fs::read(wasm).with_context(|| format!("{}", wasm.display()))?;
    let sandbox = Sandbox::new(SandboxConfig::default())?;
    let label = wasm.file_name().map_or_else(
        || wasm.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let (module, signature) = sandbox
        .load_plugin(&label, &bytes)
        .map_err(|e| anyhow::anyhow!("{e} (built at {}; not registered)", wasm.display()))?;
    let imports = module.imports();
    let (wasi, host): (Vec<&String>, Vec<&String>) = imports
        .iter()
        .partition(|i| i.starts_with("wasi_snapshot_preview1::"));
    let host = if host.is_empty() {
        String::new()
    } else {
        format!(
            " and {}",
            host.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    Ok(format!(
        "built {} plugin {} {}: {:.1} MiB, exports {}; imports {} WASI preview 1 function(s){host}",
        signature.kind,
        signature.name,
        signature.describe(),
        bytes.len() as f64 / f64::from(1 << 20),
        module.exports().join(", "),
        wasi.len(),
    ))
}

/// Builds the plugin at `path` for wasm32-wasip1 and returns the module's path: a crate
/// (`Cargo.toml`) with cargo, else the folder's `.c` files with clang.
pub fn build(path: &Path) -> Result<PathBuf> {
    if path.is_file() {
        bail!(
            "{}: plugin build takes the plugin's folder (a Rust crate or a folder of .c files), not a file",
            path.display()
        );
    }
    if path.join("Cargo.toml").is_file() {
        return Ok(pushdown_storage_node::registry::build_crate(path)?);
    }
    if c_sources(path)?.is_empty() {
        bail!(
            "{}: neither a Rust crate (Cargo.toml) nor C sources (*.c): not a plugin folder",
            path.display()
        );
    }
    build_c(path)
}

/// The `.c` files of `dir`, sorted.
fn c_sources(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("{}", dir.display()))?;
    let mut sources: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "c"))
        .collect();
    sources.sort();
    Ok(sources)
}

/// How to get the C toolchain on Debian.
const C_TOOLCHAIN_HINT: &str =
    "the C plugin toolchain is clang, lld, wasi-libc and libclang-rt-dev-wasm32 (Debian: apt-get install clang lld wasi-libc libclang-rt-dev-wasm32; scripts/setup.sh installs them)";

/// Compiles the `.c` files of `dir` into one reactor module, `dir/target/NAME.wasm` (NAME:
/// the folder's name), with `clang --target=wasm32-wasi -O2 -mexec-model=reactor` and
/// wasi-libc (`$PUSHDOWN_CLANG` names another clang). The include path is the folder, then
/// the `pushdown_plugin.h` inside this binary (see [`unpacked_sdk`]).
///
/// # Errors
/// clang missing or failing (its diagnostics are on stderr), with the packages to install.
fn build_c(dir: &Path) -> Result<PathBuf> {
    let sources = c_sources(dir)?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("{}", dir.display()))?;
    let name = dir
        .file_name()
        .map_or_else(|| "plugin".into(), |n| n.to_string_lossy().into_owned());
    let out_dir = dir.join("target");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("{}", out_dir.display()))?;
    let wasm = out_dir.join(format!("{name}.wasm"));
    let clang = std::env::var_os("PUSHDOWN_CLANG").unwrap_or_else(|| "clang".into());
    let status = std::process::Command::new(&clang)
        .args([
            "--target=wasm32-wasi",
            "-O2",
            "-mexec-model=reactor",
            "-Wall",
        ])
        .arg("-I")
        .arg(&dir)
        // Then the header this binary carries, for a folder without its own copy.
        .arg("-I")
        .arg(unpacked_sdk()?.join("pushdown-plugins/c"))
        .arg("-o")
        .arg(&wasm)
        .args(&sources)
        .arg("-lm")
        .status()
        .map_err(|e| {
            anyhow::anyhow!(
                "{}: running {}: {e}; {C_TOOLCHAIN_HINT}",
                dir.display(),
                clang.to_string_lossy()
            )
        })?;
    if !status.success() {
        bail!(
            "{}: clang failed ({status}; its messages are above); if it names a missing header or libclang_rt.builtins-wasm32.a, {C_TOOLCHAIN_HINT}",
            dir.display()
        );
    }
    Ok(wasm)
}

/// The SDK inside this binary, unpacked (once per content) to `sdk/` of the cache folder
/// ([`pushdown_storage_node::cache_root`]) as
/// `pushdown-plugin-VERSION-abiN-HASH/` (HASH: the first 12 hex digits of the SHA-256 of
/// the files), a workspace of `protocol/` and `pushdown-plugins/sdk/` with `Cargo.lock`.
/// A folder of another version or content is left alone; an interrupted unpack never
/// leaves a folder of that name.
///
/// # Errors
/// No cache folder (neither `$PUSHDOWN_CACHE_DIR`, `$XDG_CACHE_HOME` nor `$HOME`), or a
/// write that fails.
pub fn unpacked_sdk() -> Result<PathBuf> {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for (name, bytes) in embedded::SDK_FILES {
        hash.update((name.len() as u64).to_le_bytes());
        hash.update(name.as_bytes());
        hash.update((bytes.len() as u64).to_le_bytes());
        hash.update(bytes);
    }
    let hex: String = hash.finalize()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let root = pushdown_storage_node::cache_root().context(
        "no cache folder for the plugin SDK: set PUSHDOWN_CACHE_DIR (or HOME), or pass --sdk DIR",
    )?;
    let parent = root.join("sdk");
    let dir = parent.join(format!(
        "pushdown-plugin-{}-abi{}-{hex}",
        env!("CARGO_PKG_VERSION"),
        pushdown_storage_node::ABI_VERSION
    ));
    if dir.join("Cargo.toml").is_file() {
        return Ok(dir);
    }
    std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    let staging = tempfile::Builder::new()
        .prefix(".unpacking-")
        .tempdir_in(&parent)
        .with_context(|| format!("creating a folder in {}", parent.display()))?;
    for (name, bytes) in embedded::SDK_FILES {
        let path = staging.path().join(name);
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
        }
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    let staged = staging.keep();
    if let Err(e) = std::fs::rename(&staged, &dir) {
        let _ = std::fs::remove_dir_all(&staged);
        // Another process unpacked the same content first.
        if !dir.join("Cargo.toml").is_file() {
            return Err(e)
                .with_context(|| format!("unpacking the plugin SDK to {}", dir.display()));
        }
    }
    Ok(dir)
}

/// The file `name` of the embedded SDK (e.g. `pushdown-plugins/c/pushdown_plugin.h`).
fn embedded_file(name: &str) -> &'static [u8] {
    embedded::SDK_FILES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, b)| *b)
        .expect("build.rs embeds it")
}

/// `plugin new --lang c`: `NAME/NAME.c`, the header `pushdown_plugin.h` and `ABI.md` from
/// this binary, and a `.gitignore`.
fn new_c(name: &str, kind: Kind, dir: &Path) -> Result<()> {
    check_name(name, kind)?;
    let template = match kind {
        Kind::Scalar => C_SCALAR_TEMPLATE,
        Kind::Aggregate => C_AGGREGATE_TEMPLATE,
        Kind::Parser => bail!(
            "plugin new {name} --lang c: the C skeletons are scalar and aggregate plugins; start a parser from --lang rust, or write pushdown_parse against ABI.md"
        ),
    };
    let root = dir.join(name);
    if root.exists() {
        bail!("{} already exists", root.display());
    }
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    std::fs::write(
        root.join(format!("{name}.c")),
        template.replace("__NAME__", name),
    )?;
    std::fs::write(
        root.join("pushdown_plugin.h"),
        embedded_file("pushdown-plugins/c/pushdown_plugin.h"),
    )?;
    std::fs::write(
        root.join("ABI.md"),
        embedded_file("pushdown-plugins/ABI.md"),
    )?;
    std::fs::write(root.join(".gitignore"), "/target\n")?;
    println!(
        "created {} plugin {name} (C) in {}\n  pushdown plugin build {} && pushdown plugin register <the .wasm it prints>",
        kind_name(kind),
        root.display(),
        root.display()
    );
    Ok(())
}

const SCALAR_TEMPLATE: &str = r#"//! Scalar plugin `__NAME__(x DOUBLE) -> DOUBLE`: twice its argument (NULL stays NULL).
//! Replace `evaluate` with your function; `pushdown-plugin`'s crate doc has more.

use std::sync::Arc;

use pushdown_plugin::array::{cast::AsArray, types::Float64Type, ArrayRef, Float64Array};
use pushdown_plugin::schema::DataType;
use pushdown_plugin::{Result, ScalarFunction, SkipRequest};

pub struct __TYPE__;

impl ScalarFunction for __TYPE__ {
    const NAME: &'static str = "__NAME__";

    fn arguments() -> Vec<DataType> {
        vec![DataType::Float64]
    }

    fn returns() -> DataType {
        DataType::Float64
    }

    fn evaluate(args: &[ArrayRef]) -> Result<ArrayRef> {
        let x = args[0].as_primitive::<Float64Type>();
        let out: Float64Array = x.unary(|v| 2.0 * v);
        Ok(Arc::new(out))
    }

    /// Optional, for Parquet: skip a row group when no row can pass the predicate's test
    /// of this call (`WHERE __NAME__(x) < 10`). `2x` is increasing, so over the row group it
    /// is at least `2 min(x)`. (NaN, which statistics leave out, sorts above every number:
    /// with no upper bound a `>` test is never skipped.) Delete it to never skip.
    fn can_skip(row_group: &SkipRequest) -> bool {
        match row_group.arguments[0].range_f64() {
            Some((min, _)) => row_group.test.excludes_range(2.0 * min, f64::INFINITY),
            None => false,
        }
    }
}

pushdown_plugin::export!(scalar __TYPE__);

#[cfg(test)]
mod tests {
    use pushdown_plugin::array::Array;
    use pushdown_plugin::{testing, ArgumentStats, ResultTest};

    use super::*;

    #[test]
    fn doubles_and_keeps_nulls() {
        let x: ArrayRef = Arc::new(Float64Array::from(vec![Some(1.5), None]));
        let out = testing::call_scalar::<__TYPE__>(&[x]).unwrap();
        assert_eq!(out.as_primitive::<Float64Type>().value(0), 3.0);
        assert!(out.is_null(1));
    }

    #[test]
    fn skips_a_row_group_only_when_no_row_can_pass() {
        let ask = |min: f64, max: f64, below: f64| {
            testing::can_skip::<__TYPE__>(&SkipRequest {
                rows: 10,
                arguments: vec![ArgumentStats {
                    min: Some(min.into()),
                    max: Some(max.into()),
                    ..Default::default()
                }],
                test: ResultTest::Lt { value: below.into() },
            })
            .unwrap()
        };
        assert!(ask(5.0, 9.0, 10.0)); // 2x >= 10: none is < 10
        assert!(!ask(4.0, 9.0, 10.0)); // 2 * 4 = 8 < 10
    }
}
"#;

const AGGREGATE_TEMPLATE: &str = r#"//! Aggregate plugin `__NAME__(x DOUBLE) -> DOUBLE`: the sum of squares of the non-NULL
//! values, NULL when there are none. Storage nodes fold rows into partial states (`update`),
//! the intermediary merges them (`merge`) and finalizes; `pushdown-plugin`'s crate doc has more.

use pushdown_plugin::array::{cast::AsArray, types::Float64Type, ArrayRef};
use pushdown_plugin::schema::DataType;
use pushdown_plugin::{AggregateFunction, Result};

pub struct __TYPE__;

impl AggregateFunction for __TYPE__ {
    const NAME: &'static str = "__NAME__";
    /// (sum of squares, values seen)
    type State = (f64, u64);
    type Output = Option<f64>;

    fn arguments() -> Vec<DataType> {
        vec![DataType::Float64]
    }

    fn init() -> (f64, u64) {
        (0.0, 0)
    }

    fn update(state: &mut (f64, u64), args: &[ArrayRef]) -> Result<()> {
        for v in args[0].as_primitive::<Float64Type>().iter().flatten() {
            state.0 += v * v;
            state.1 += 1;
        }
        Ok(())
    }

    fn merge(state: &mut (f64, u64), other: (f64, u64)) -> Result<()> {
        state.0 += other.0;
        state.1 += other.1;
        Ok(())
    }

    fn finalize(state: (f64, u64)) -> Result<Option<f64>> {
        Ok((state.1 > 0).then_some(state.0))
    }
}

pushdown_plugin::export!(aggregate __TYPE__);

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use pushdown_plugin::array::{Array, Float64Array};
    use pushdown_plugin::testing;

    use super::*;

    #[test]
    fn sums_squares_across_partial_states() {
        let x: ArrayRef = Arc::new(Float64Array::from(vec![Some(1.0), None, Some(2.0), Some(3.0)]));
        let out = testing::aggregate::<__TYPE__>(&[x], 2).unwrap();
        assert_eq!(out.as_primitive::<Float64Type>().value(0), 14.0);
        let none: ArrayRef = Arc::new(Float64Array::from(vec![None]));
        assert!(testing::aggregate::<__TYPE__>(&[none], 1).unwrap().is_null(0));
    }
}
"#;

const PARSER_TEMPLATE: &str = r#"//! Parser plugin `__NAME__`: lines of `key=value`, columns `key VARCHAR, value BIGINT`.
//! Query with `pushdown query --format TABLE=__NAME__ ...`; `pushdown-plugin`'s crate doc has more.

use std::sync::Arc;

use pushdown_plugin::array::builder::{Int64Builder, StringBuilder};
use pushdown_plugin::array::RecordBatch;
use pushdown_plugin::schema::{DataType, Field, Schema};
use pushdown_plugin::{Error, Parser, Result};

pub struct __TYPE__;

impl Parser for __TYPE__ {
    const NAME: &'static str = "__NAME__";

    fn schema() -> Schema {
        Schema::new(vec![
            Field::new("key", DataType::Utf8, false),
            Field::new("value", DataType::Int64, false),
        ])
    }

    fn parse(chunk: &[u8], first_line: u64) -> Result<Vec<RecordBatch>> {
        let text = std::str::from_utf8(chunk).map_err(|e| Error::new(format!("not UTF-8: {e}")))?;
        let (mut keys, mut values) = (StringBuilder::new(), Int64Builder::new());
        for (i, line) in text.lines().enumerate() {
            let number = first_line + i as u64;
            if line.trim().is_empty() {
                continue;
            }
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| Error::new(format!("line {number}: expected key=value")))?;
            let v: i64 = v
                .trim()
                .parse()
                .map_err(|e| Error::new(format!("line {number}: value {v:?}: {e}")))?;
            keys.append_value(k.trim());
            values.append_value(v);
        }
        let batch = RecordBatch::try_new(
            Arc::new(Self::schema()),
            vec![Arc::new(keys.finish()), Arc::new(values.finish())],
        )?;
        Ok(vec![batch])
    }
}

pushdown_plugin::export!(parser __TYPE__);

#[cfg(test)]
mod tests {
    use pushdown_plugin::testing;

    use super::*;

    #[test]
    fn parses_lines_and_names_a_bad_one() {
        let batches = testing::parse::<__TYPE__>(b"a=1\nb = 2\n", 1).unwrap();
        assert_eq!(batches[0].num_rows(), 2);
        let err = testing::parse::<__TYPE__>(b"a=1\nnope\n", 10).unwrap_err();
        assert_eq!(err.message(), "line 11: expected key=value");
    }
}
"#;

/// `plugin new --lang c --kind scalar`: `__NAME__` is replaced.
const C_SCALAR_TEMPLATE: &str = include_str!("../templates/scalar.c");
/// `plugin new --lang c --kind aggregate`: `__NAME__` is replaced.
const C_AGGREGATE_TEMPLATE: &str = include_str!("../templates/aggregate.c");
