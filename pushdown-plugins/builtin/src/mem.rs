//! Byte comparison for the guest: `memcmp` and `bcmp` eight bytes at a time.
//!
//! In `wasm32-wasip1` every slice or string equality and ordering (`==` on `str`,
//! `Schema::column_with_name`, `DataType` equality, Arrow's string comparison kernels,
//! hash-table probes of byte keys) compiles to a call of libc's `memcmp` or `bcmp`.
//! wasi-libc's (musl's `src/string/memcmp.c`) compares one byte per loop iteration; the
//! module defines both symbols here, so the linker takes these and does not pull wasi-libc's
//! from its archive. Natively the system's are used. The contract is C's (ISO C 7.24.4.1):
//! the sign of the first differing byte's difference as `unsigned char`, zero when the `n`
//! bytes are equal; `bcmp` only tells equal (zero) from not.
//!
//! Measured on the merge stage (`cargo bench -p pushdown-benches --bench stages -- merge`),
//! where looking up state columns by name spent 12 % of the samples in wasi-libc's `memcmp`.

/// The order of `a` and `b` (the same length) as C's `memcmp` gives it: negative, zero or
/// positive as `a` sorts before, equal to or after `b` byte by byte.
///
/// Eight bytes per step as two little-endian words: the lowest differing byte of the two
/// words is the first differing byte in memory. Written without slice comparisons, which
/// would call `memcmp` again.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
#[inline]
pub(crate) fn compare(a: &[u8], b: &[u8]) -> i32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut wa = a.chunks_exact(8);
    let mut wb = b.chunks_exact(8);
    for (x, y) in (&mut wa).zip(&mut wb) {
        let x = u64::from_le_bytes([x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7]]);
        let y = u64::from_le_bytes([y[0], y[1], y[2], y[3], y[4], y[5], y[6], y[7]]);
        if x != y {
            let shift = (x ^ y).trailing_zeros() / 8 * 8;
            return i32::from((x >> shift) as u8) - i32::from((y >> shift) as u8);
        }
    }
    for (&x, &y) in wa.remainder().iter().zip(wb.remainder()) {
        if x != y {
            return i32::from(x) - i32::from(y);
        }
    }
    0
}

/// C's `memcmp` for the guest.
///
/// # Safety
/// `a` and `b` must be valid for reads of `n` bytes (C's precondition).
#[cfg(target_arch = "wasm32")]
#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    if n == 0 {
        return 0;
    }
    // SAFETY: the caller's precondition; `n > 0`, so the pointers are not dangling.
    let (a, b) = unsafe {
        (
            std::slice::from_raw_parts(a, n),
            std::slice::from_raw_parts(b, n),
        )
    };
    compare(a, b)
}

/// C's (POSIX) `bcmp`: zero when the `n` bytes are equal, nonzero otherwise.
///
/// # Safety
/// As [`memcmp`].
#[cfg(target_arch = "wasm32")]
#[no_mangle]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: the caller's precondition.
    unsafe { memcmp(a, b, n) }
}

#[cfg(test)]
mod tests {
    use super::compare;

    /// The sign `memcmp` must give, from Rust's own byte-slice order.
    fn expected(a: &[u8], b: &[u8]) -> i32 {
        a.cmp(b) as i32
    }

    #[test]
    fn agrees_with_the_byte_order_at_every_length_and_position() {
        for n in 0..40 {
            let a: Vec<u8> = (0..n).map(|i| (i * 37 + 11) as u8).collect();
            assert_eq!(compare(&a, &a), 0, "equal, n = {n}");
            for at in 0..n {
                for delta in [1u8, 0x7f, 0x80, 0xff] {
                    let mut b = a.clone();
                    b[at] = b[at].wrapping_add(delta);
                    // A later difference must not change the order the first one gives.
                    if at + 1 < n {
                        b[n - 1] ^= 0x55;
                    }
                    let got = compare(&a, &b);
                    assert_eq!(
                        got.signum(),
                        expected(&a, &b),
                        "n = {n}, at = {at}, +{delta}"
                    );
                    assert_eq!(compare(&b, &a).signum(), -got.signum());
                }
            }
        }
    }

    #[test]
    fn compares_bytes_as_unsigned() {
        assert!(compare(&[0x80], &[0x7f]) > 0);
        assert!(compare(b"abcdefgh\xff", b"abcdefgh\x00") > 0);
        assert!(compare(b"\x00bcdefgh", b"\xffbcdefgh") < 0);
    }
}
