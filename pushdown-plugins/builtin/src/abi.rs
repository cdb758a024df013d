//! The Wasm exports (ABI version [`crate::ABI_VERSION`]); see `pushdown-plugins/ABI.md`.
//!
//! The host calls `pushdown_alloc` twice to place the request and the input bytes in
//! linear memory, then `pushdown_run`, which returns `(ptr << 32) | len` of a result
//! buffer: a status byte (0 ok, 1 error) followed by the payload ([`crate::run_task`]'s
//! output, or a UTF-8 message). The instance is discarded after one task.

/// The ABI version; the host refuses a module whose version differs.
#[no_mangle]
pub extern "C" fn pushdown_abi_version() -> u32 {
    crate::ABI_VERSION
}

/// Allocates `len` bytes in linear memory for the host to fill; returns the pointer.
#[no_mangle]
pub extern "C" fn pushdown_alloc(len: u32) -> u32 {
    let mut buf = Vec::<u8>::with_capacity(len as usize);
    let ptr = buf.as_mut_ptr();
    std::mem::forget(buf);
    ptr as u32
}

/// Frees a result buffer returned by `pushdown_run`, so the host can reuse the instance.
///
/// # Safety
/// `ptr`/`len` must be a result buffer returned by `pushdown_run` and not freed yet.
#[no_mangle]
pub unsafe extern "C" fn pushdown_free(ptr: u32, len: u32) {
    // SAFETY: the buffer is a `Box<[u8]>` of exactly `len` bytes leaked by `pushdown_run`.
    drop(unsafe {
        Box::from_raw(std::ptr::slice_from_raw_parts_mut(
            ptr as *mut u8,
            len as usize,
        ))
    });
}

/// Runs one task. Takes ownership of both buffers, which must come from `pushdown_alloc`.
///
/// # Safety
/// `request_ptr`/`input_ptr` must be buffers returned by `pushdown_alloc` with the given
/// lengths, fully written by the host.
#[no_mangle]
pub unsafe extern "C" fn pushdown_run(
    request_ptr: u32,
    request_len: u32,
    input_ptr: u32,
    input_len: u32,
) -> u64 {
    // SAFETY: the host hands back the buffers it got from `pushdown_alloc`, written in full.
    let (request, input) = unsafe { (take(request_ptr, request_len), take(input_ptr, input_len)) };
    result_buffer(crate::run_task(&request, input))
}

/// Takes ownership of a buffer `pushdown_alloc` returned.
///
/// # Safety
/// `ptr`/`len` must be a buffer returned by `pushdown_alloc(len)`, fully written, not
/// taken before.
unsafe fn take(ptr: u32, len: u32) -> Vec<u8> {
    // SAFETY: `pushdown_alloc` leaked a `Vec<u8>` of capacity `len` at `ptr`.
    unsafe { Vec::from_raw_parts(ptr as *mut u8, len as usize, len as usize) }
}

/// Packs a result as the ABI's result buffer: status byte 0 and the payload, or 1 and
/// the message; returns `(ptr << 32) | len`, freed by `pushdown_free`.
fn result_buffer(result: Result<Vec<u8>, String>) -> u64 {
    let out = match result {
        Ok(payload) => {
            let mut out = Vec::with_capacity(payload.len() + 1);
            out.push(0u8);
            out.extend_from_slice(&payload);
            out
        }
        Err(message) => {
            let mut out = vec![1u8];
            out.extend_from_slice(message.as_bytes());
            out
        }
    };
    let out: Box<[u8]> = out.into_boxed_slice();
    let len = out.len() as u64;
    let ptr = Box::into_raw(out) as *mut u8 as u64;
    (ptr << 32) | len
}

/// Folds one task's partial aggregate into the states this instance holds
/// ([`crate::fold::fold`]): the request is JSON of `pushdown_protocol::FoldRequest`, the
/// input an Arrow IPC stream of its partial output schema. Takes ownership of both buffers.
///
/// # Safety
/// As [`pushdown_run`].
#[no_mangle]
pub unsafe extern "C" fn pushdown_fold(
    request_ptr: u32,
    request_len: u32,
    input_ptr: u32,
    input_len: u32,
) -> u64 {
    // SAFETY: the host hands back the buffers it got from `pushdown_alloc`, written in full.
    let (request, input) = unsafe { (take(request_ptr, request_len), take(input_ptr, input_len)) };
    result_buffer(crate::fold::fold(&request, &input))
}

/// The folded states as an Arrow IPC stream, emptying them ([`crate::fold::drain`]).
#[no_mangle]
pub extern "C" fn pushdown_drain() -> u64 {
    result_buffer(crate::fold::drain())
}
