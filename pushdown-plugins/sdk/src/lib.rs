#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod entry;
mod ipc;
mod state;
pub mod testing;

use std::fmt;

pub use arrow_array as array;
pub use arrow_buffer as buffer;
pub use arrow_schema as schema;
pub use pushdown_protocol::plugin::{ArgumentStats, ResultTest, SkipRequest};
pub use state::{State, Value};

use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Schema};

/// The plugin ABI version the SDK's exports speak (`pushdown-plugins/ABI.md`).
pub const ABI_VERSION: u32 = 1;

/// The error a plugin returns; its message reaches the user as
/// `<file>: <unit>: plugin <name>: <message>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(String);

impl Error {
    /// An error with this message (one line, no trailing period).
    pub fn new(message: impl Into<String>) -> Self {
        Error(message.into())
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl From<arrow_schema::ArrowError> for Error {
    fn from(e: arrow_schema::ArrowError) -> Self {
        Error(e.to_string())
    }
}

impl From<String> for Error {
    fn from(message: String) -> Self {
        Error(message)
    }
}

impl From<&str> for Error {
    fn from(message: &str) -> Self {
        Error(message.to_string())
    }
}

/// The result type of plugin code.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A scalar function: Arrow columns in, one column of the same length out.
///
/// Usable in `SELECT` and, when it returns `Boolean`, in `WHERE`; the storage node runs it
/// next to the data. NULL handling is the function's own: it sees the arguments' null
/// masks and decides what a NULL input gives (usually NULL).
pub trait ScalarFunction {
    /// The name SQL calls it by (an identifier).
    const NAME: &'static str;
    /// The argument types, in order. The engine casts SQL arguments to these.
    fn arguments() -> Vec<DataType>;
    /// The result type.
    fn returns() -> DataType;
    /// Evaluates the function over one batch: `args[i]` has type `arguments()[i]`, all
    /// of the same length `n`; the result must have type `returns()` and length `n`.
    ///
    /// # Errors
    /// Any [`Error`]; the query fails with its message.
    fn evaluate(args: &[ArrayRef]) -> Result<ArrayRef>;

    /// Plugin-aware pruning: true when no row of a Parquet row group can pass
    /// `row_group.test` (e.g. `haversine_km(lat, lon, 48.85, 2.35) < 10`), judged from the
    /// row group's column statistics and the call's constant arguments alone. The storage
    /// node then skips the row group without reading it.
    ///
    /// Answer `true` only when sure: a wrong `true` drops rows from the answers of the
    /// queries that call this function (and no others). NULL never passes a test; a NaN
    /// result is greater than every number (Arrow's total order), so `>` tests must
    /// account for it. The default never skips. (`pushdown-plugins/ABI.md`, export
    /// `pushdown_can_skip`.)
    fn can_skip(row_group: &SkipRequest) -> bool {
        let _ = row_group;
        false
    }
}

/// A user-defined aggregate, following the model of CQL's user-defined aggregates (state
/// type, initial condition, state function, final function) plus the merge step that
/// distributed aggregation needs: storage nodes fold rows into partial states, the
/// intermediary merges the partial states and finalizes.
///
/// `merge` must be associative and commutative, and `init` its identity, because partial
/// states arrive in any order and grouping.
pub trait AggregateFunction {
    /// The name SQL calls it by (an identifier).
    const NAME: &'static str;
    /// The partial state (serialized between tiers with [`State`]).
    type State: State;
    /// What `finalize` returns per group; its Arrow type is the aggregate's result type.
    type Output: Value;
    /// The argument types, in order.
    fn arguments() -> Vec<DataType>;
    /// The initial condition: the state of a group with no rows.
    fn init() -> Self::State;
    /// The state function: folds a batch of one group's rows into `state`. `args[i]` has
    /// type `arguments()[i]`.
    ///
    /// # Errors
    /// Any [`Error`]; the query fails with its message.
    fn update(state: &mut Self::State, args: &[ArrayRef]) -> Result<()>;
    /// Merges the partial state `other` into `state`.
    ///
    /// # Errors
    /// Any [`Error`].
    fn merge(state: &mut Self::State, other: Self::State) -> Result<()>;
    /// The final function: the group's result from its merged state.
    ///
    /// # Errors
    /// Any [`Error`].
    fn finalize(state: Self::State) -> Result<Self::Output>;
}

/// A parser: the bytes of one chunk of whole lines in, record batches of a schema declared
/// up front out. Makes a file format queryable
/// (`pushdown query --format TABLE=NAME`).
pub trait Parser {
    /// The name `--format` refers to (an identifier).
    const NAME: &'static str;
    /// The schema of every batch `parse` returns.
    fn schema() -> Schema;
    /// Parses one chunk: whole lines (each ending in `\n`, except perhaps the file's
    /// last), the first of which is line `first_line` of the file (counted from 1).
    ///
    /// # Errors
    /// An [`Error`] naming the line (`line 42: ...`) for malformed input.
    fn parse(chunk: &[u8], first_line: u64) -> Result<Vec<RecordBatch>>;
}

/// Exports a plugin under the pushdown ABI when building for `wasm32`; natively it expands
/// to nothing (test the plugin with [`testing`]). Use it once per crate:
///
/// ```text
/// pushdown_plugin::export!(scalar HaversineKm);
/// pushdown_plugin::export!(aggregate ApproxDistinct);
/// pushdown_plugin::export!(parser AccessLog);
/// ```
#[macro_export]
macro_rules! export {
    (scalar $t:ty) => {
        $crate::__export_common!($crate::__private::scalar_signature::<$t>);
        #[cfg(target_arch = "wasm32")]
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn pushdown_scalar(ptr: u32, len: u32) -> u64 {
            // SAFETY: the host passes a buffer it got from `pushdown_alloc`, written in full.
            unsafe { $crate::__private::call(ptr, len, $crate::__private::scalar::<$t>) }
        }
        #[cfg(target_arch = "wasm32")]
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn pushdown_can_skip(ptr: u32, len: u32) -> u64 {
            // SAFETY: as for every entry point, a buffer from `pushdown_alloc`.
            unsafe { $crate::__private::call(ptr, len, $crate::__private::can_skip::<$t>) }
        }
    };
    (aggregate $t:ty) => {
        $crate::__export_common!($crate::__private::aggregate_signature::<$t>);
        #[cfg(target_arch = "wasm32")]
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn pushdown_aggregate_update(ptr: u32, len: u32) -> u64 {
            // SAFETY: as for every entry point, a buffer from `pushdown_alloc`.
            unsafe { $crate::__private::call(ptr, len, $crate::__private::update::<$t>) }
        }
        #[cfg(target_arch = "wasm32")]
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn pushdown_aggregate_merge(ptr: u32, len: u32) -> u64 {
            // SAFETY: as above.
            unsafe { $crate::__private::call(ptr, len, $crate::__private::merge::<$t>) }
        }
        #[cfg(target_arch = "wasm32")]
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn pushdown_aggregate_finalize(ptr: u32, len: u32) -> u64 {
            // SAFETY: as above.
            unsafe { $crate::__private::call(ptr, len, $crate::__private::finalize::<$t>) }
        }
    };
    (parser $t:ty) => {
        $crate::__export_common!($crate::__private::parser_signature::<$t>);
        #[cfg(target_arch = "wasm32")]
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn pushdown_parse(ptr: u32, len: u32, first_line: u64) -> u64 {
            // SAFETY: as above.
            unsafe {
                $crate::__private::call(ptr, len, |chunk| {
                    $crate::__private::parse::<$t>(chunk, first_line)
                })
            }
        }
    };
}

/// The exports every plugin has. Not public API.
#[doc(hidden)]
#[macro_export]
macro_rules! __export_common {
    ($signature:expr) => {
        #[cfg(target_arch = "wasm32")]
        #[unsafe(no_mangle)]
        pub extern "C" fn pushdown_abi_version() -> u32 {
            $crate::ABI_VERSION
        }
        #[cfg(target_arch = "wasm32")]
        #[unsafe(no_mangle)]
        pub extern "C" fn pushdown_alloc(len: u32) -> u32 {
            $crate::__private::alloc(len)
        }
        #[cfg(target_arch = "wasm32")]
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn pushdown_free(ptr: u32, len: u32) {
            // SAFETY: the host frees only buffers this module returned, once.
            unsafe { $crate::__private::free(ptr, len) }
        }
        #[cfg(target_arch = "wasm32")]
        #[unsafe(no_mangle)]
        pub extern "C" fn pushdown_signature() -> u64 {
            $crate::__private::leak($signature().into_bytes())
        }
    };
}

/// What the export macro expands to call. Not public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::entry::{
        aggregate_signature, can_skip, finalize, merge, parse, parser_signature, scalar,
        scalar_signature, update,
    };

    /// `pushdown_alloc`: `len` writable bytes owned by the guest.
    pub fn alloc(len: u32) -> u32 {
        let mut buf = Vec::<u8>::with_capacity(len as usize);
        let ptr = buf.as_mut_ptr();
        std::mem::forget(buf);
        ptr as usize as u32
    }

    /// `pushdown_free` of a buffer returned by [`leak`].
    ///
    /// # Safety
    /// `ptr`/`len` is a buffer from [`leak`], not freed yet.
    pub unsafe fn free(ptr: u32, len: u32) {
        // SAFETY: per the contract, a `Box<[u8]>` of exactly `len` bytes.
        drop(unsafe {
            Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                ptr as usize as *mut u8,
                len as usize,
            ))
        });
    }

    /// Hands `bytes` to the host: `(ptr << 32) | len`.
    pub fn leak(bytes: Vec<u8>) -> u64 {
        let bytes = bytes.into_boxed_slice();
        let len = bytes.len() as u64;
        let ptr = Box::into_raw(bytes) as *mut u8 as usize as u64;
        (ptr << 32) | len
    }

    /// Runs an entry point over the input buffer and packs its status and payload.
    ///
    /// # Safety
    /// `ptr`/`len` is a buffer from [`alloc`], written in full by the host.
    pub unsafe fn call(
        ptr: u32,
        len: u32,
        f: impl FnOnce(&[u8]) -> Result<Vec<u8>, String>,
    ) -> u64 {
        // SAFETY: per the contract; the guest owns the buffer from now on.
        let input =
            unsafe { Vec::from_raw_parts(ptr as usize as *mut u8, len as usize, len as usize) };
        let out = match f(&input) {
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
        leak(out)
    }
}
