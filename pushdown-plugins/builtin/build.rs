//! For `wasm32`, exports the module's stack pointer (`__stack_pointer`, a mutable global
//! the linker otherwise keeps internal), so that every mutable global of the instance is
//! visible to the host: a snapshot of linear memory and exported globals is then the whole
//! state of the instance between calls (checkpointed aggregates, `pushdown-plugins/ABI.md`).

fn main() {
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("wasm32") {
        println!("cargo:rustc-link-arg-cdylib=--export=__stack_pointer");
    }
}
