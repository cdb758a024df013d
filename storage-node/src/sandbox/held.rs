//! Instances held across calls and their snapshots: orthogonal persistence of Wasm state.
//!
//! A [`HeldInstance`] is one instance of a pipeline module kept by its owner (a fold job,
//! [`crate::fold`]) instead of the idle pool, so state the guest keeps in linear memory
//! survives from one call to the next. Between calls its whole state is its linear memory
//! and its mutable globals: [`HeldInstance::snapshot`] copies both, and
//! [`PluginModule::restore`] puts them into a fresh instance of the same module, which
//! then behaves exactly as the snapshotted one would have (the guest does not know it
//! was persisted).
//!
//! That holds when every mutable global is exported (a module built by LLVM keeps its
//! stack pointer internal unless linked with `--export=__stack_pointer`, as the built-in
//! pipeline is) and the module changes neither its tables nor its passive data segments
//! between calls; [`checkpointable`] checks the first from the module's bytes.

use std::collections::HashMap;
use std::sync::Arc;

use wasmtime::{Extern, Mutability, Val, ValType};

use super::{Live, PluginModule};
use crate::error::{Error, Result};

/// Linear-memory page size of WebAssembly 1.0, in bytes.
const PAGE: usize = 64 << 10;

/// Whether a module's state between calls is its linear memory and exported globals:
/// `Ok` when every mutable global it defines is exported, else a message naming how many
/// are not. Reads the global and export sections of the binary (`wasmparser`).
pub fn checkpointable(bytes: &[u8]) -> std::result::Result<(), String> {
    let mut mutable = Vec::new();
    let mut exported = std::collections::BTreeSet::new();
    let mut imported_globals = 0u32;
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        match payload.map_err(|e| e.to_string())? {
            wasmparser::Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    if let wasmparser::TypeRef::Global(_) = import.map_err(|e| e.to_string())?.ty {
                        imported_globals += 1;
                    }
                }
            }
            wasmparser::Payload::GlobalSection(reader) => {
                for (i, global) in reader.into_iter().enumerate() {
                    if global.map_err(|e| e.to_string())?.ty.mutable {
                        mutable.push(imported_globals + i as u32);
                    }
                }
            }
            wasmparser::Payload::ExportSection(reader) => {
                for export in reader {
                    let export = export.map_err(|e| e.to_string())?;
                    if export.kind == wasmparser::ExternalKind::Global {
                        exported.insert(export.index);
                    }
                }
            }
            _ => {}
        }
    }
    let hidden = mutable.iter().filter(|g| !exported.contains(g)).count();
    match hidden {
        0 => Ok(()),
        n => Err(format!(
            "{n} of its mutable globals are not exported (link with --export=__stack_pointer)"
        )),
    }
}

/// The state of an instance between calls.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceSnapshot {
    /// Hex SHA-256 of the module it was taken from; restored only into the same module.
    pub module_sha256: String,
    /// The whole linear memory (a multiple of 64 KiB).
    pub memory: Vec<u8>,
    /// Every exported mutable global: name and value.
    pub globals: Vec<(String, GlobalValue)>,
}

/// The value of a numeric global.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum GlobalValue {
    /// `i32`.
    I32(i32),
    /// `i64`.
    I64(i64),
    /// `f32`, as its bits.
    F32(u32),
    /// `f64`, as its bits.
    F64(u64),
}

/// One instance of a pipeline module, owned by its holder; see the module doc.
pub struct HeldInstance {
    module: PluginModule,
    live: Live,
}

impl PluginModule {
    /// A new instance for the caller to keep.
    ///
    /// # Errors
    /// [`Error::Plugin`] when the module is not [`checkpointable`] or does not instantiate.
    pub fn hold(&self) -> Result<HeldInstance> {
        if let Err(m) = self.snapshots.as_ref() {
            return Err(self.error(format!("its instances cannot be snapshotted: {m}")));
        }
        Ok(HeldInstance {
            module: self.clone(),
            live: self.instantiate()?,
        })
    }

    /// A new instance with `snapshot`'s linear memory and globals.
    ///
    /// # Errors
    /// [`Error::Plugin`] when the snapshot is of another module, does not fit under the
    /// memory cap, or names a global the module does not export with that type.
    pub fn restore(&self, snapshot: &InstanceSnapshot) -> Result<HeldInstance> {
        if snapshot.module_sha256 != self.sha256 {
            return Err(self.error(format!(
                "the snapshot is of module {}, not of this one ({})",
                snapshot.module_sha256, self.sha256
            )));
        }
        if snapshot.memory.len() % PAGE != 0 {
            return Err(self.error("the snapshot's memory is not whole pages".into()));
        }
        let mut held = self.hold()?;
        let live = &mut held.live;
        let have = live.memory.data_size(&live.store);
        if snapshot.memory.len() < have {
            return Err(self.error(format!(
                "the snapshot's memory ({} bytes) is smaller than a new instance's ({have})",
                snapshot.memory.len()
            )));
        }
        let grow = ((snapshot.memory.len() - have) / PAGE) as u64;
        if grow > 0 {
            live.memory
                .grow(&mut live.store, grow)
                .map_err(|e| self.error(format!("cannot restore its memory: {e:#}")))?;
        }
        live.memory
            .data_mut(&mut live.store)
            .copy_from_slice(&snapshot.memory);
        for (name, value) in &snapshot.globals {
            let global = live
                .instance
                .get_global(&mut live.store, name)
                .ok_or_else(|| {
                    self.error(format!("the snapshot's global {name} is not exported"))
                })?;
            let val = match value {
                GlobalValue::I32(v) => Val::I32(*v),
                GlobalValue::I64(v) => Val::I64(*v),
                GlobalValue::F32(v) => Val::F32(*v),
                GlobalValue::F64(v) => Val::F64(*v),
            };
            global
                .set(&mut live.store, val)
                .map_err(|e| self.error(format!("cannot restore global {name}: {e:#}")))?;
        }
        Ok(held)
    }
}

impl HeldInstance {
    /// The module.
    pub fn module(&self) -> &PluginModule {
        &self.module
    }

    /// Current size of its linear memory in bytes.
    pub fn memory_bytes(&self) -> usize {
        self.live.memory.data_size(&self.live.store)
    }

    /// Calls `export(ptr_a, len_a, ptr_b, len_b) -> i64` (`pushdown_fold`) with `a` and
    /// `b` written into linear memory, or `export() -> i64` (`pushdown_drain`) when both
    /// are `None`, with `plugins` reachable through the host calls; returns the payload
    /// and frees the result buffer. After an error the instance must not be used again.
    ///
    /// # Errors
    /// As [`PluginModule::call`].
    pub fn call(
        &mut self,
        export: &str,
        inputs: Option<(&[u8], &[u8])>,
        plugins: Arc<HashMap<String, PluginModule>>,
    ) -> Result<Vec<u8>> {
        let module = &self.module;
        let live = &mut self.live;
        module.arm_deadline(&mut live.store);
        live.store.data_mut().plugins = plugins;
        let result = (|| -> wasmtime::Result<Result<(Vec<u8>, u32, u32)>> {
            let packed = match inputs {
                Some((a, b)) => {
                    let mut ptrs = [0u32; 2];
                    for (slot, bytes) in ptrs.iter_mut().zip([a, b]) {
                        *slot = match live.write_input(module, bytes.len(), |s| {
                            s.copy_from_slice(bytes);
                            Ok(())
                        })? {
                            Ok(p) => p,
                            Err(e) => return Ok(Err(e)),
                        };
                    }
                    live.instance
                        .get_typed_func::<(u32, u32, u32, u32), u64>(&mut live.store, export)?
                        .call(
                            &mut live.store,
                            (ptrs[0], a.len() as u32, ptrs[1], b.len() as u32),
                        )?
                }
                None => live
                    .instance
                    .get_typed_func::<(), u64>(&mut live.store, export)?
                    .call(&mut live.store, ())?,
            };
            Ok(live
                .read_result(module, packed)
                .map(|(out, ptr, len)| (out.payload, ptr, len)))
        })();
        live.store.data_mut().plugins = Arc::default();
        let (payload, ptr, len) = match result {
            Ok(r) => r?,
            Err(e) => return Err(module.describe(e, &live.stdout, &live.stderr)),
        };
        if let Some(free) = live.free.clone() {
            free.call(&mut live.store, (ptr, len))
                .map_err(|e| module.describe(e, &live.stdout, &live.stderr))?;
        }
        Ok(payload)
    }

    /// Its linear memory and exported mutable globals, now (between calls).
    ///
    /// # Errors
    /// [`Error::Internal`] for a global of a type a snapshot does not hold (`v128`, references).
    pub fn snapshot(&mut self) -> Result<InstanceSnapshot> {
        let live = &mut self.live;
        let memory = live.memory.data(&live.store).to_vec();
        let exports: Vec<(String, Extern)> = live
            .instance
            .exports(&mut live.store)
            .map(|e| (e.name().to_string(), e.into_extern()))
            .collect();
        let mut globals = Vec::new();
        for (name, ext) in exports {
            let Extern::Global(global) = ext else {
                continue;
            };
            let ty = global.ty(&live.store);
            if ty.mutability() != Mutability::Var {
                continue;
            }
            let value = match (ty.content(), global.get(&mut live.store)) {
                (ValType::I32, Val::I32(v)) => GlobalValue::I32(v),
                (ValType::I64, Val::I64(v)) => GlobalValue::I64(v),
                (ValType::F32, Val::F32(v)) => GlobalValue::F32(v),
                (ValType::F64, Val::F64(v)) => GlobalValue::F64(v),
                (t, _) => {
                    return Err(Error::Internal(format!(
                        "global {name} of type {t} cannot be snapshotted"
                    )))
                }
            };
            globals.push((name, value));
        }
        Ok(InstanceSnapshot {
            module_sha256: self.module.sha256.clone(),
            memory,
            globals,
        })
    }
}
