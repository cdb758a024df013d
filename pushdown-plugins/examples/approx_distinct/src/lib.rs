//! `approx_distinct(x BIGINT) -> BIGINT`: the approximate number of distinct non-NULL
//! values, by HyperLogLog (P. Flajolet, É. Fusy, O. Gandouet, F. Meunier, "HyperLogLog:
//! the analysis of a near-optimal cardinality estimation algorithm", AofA 2007) with
//! 2^14 registers (standard error 1.04 / 128 ≈ 0.81%) and the small-range correction
//! (linear counting) of the paper.
//!
//! Storage nodes build one sketch per group and row group; the intermediary merges
//! sketches (register-wise maximum) and estimates.

use pushdown_plugin::array::{cast::AsArray, types::Int64Type, Array, ArrayRef};
use pushdown_plugin::schema::DataType;
use pushdown_plugin::{AggregateFunction, Error, Result};

/// log2 of the number of registers.
pub const PRECISION: u32 = 14;
/// Number of registers.
pub const REGISTERS: usize = 1 << PRECISION;

/// 64-bit finalizer of MurmurHash3 (A. Appleby): a bijective mix of the value's bits.
fn mix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// Adds a hashed value to the registers.
fn insert(registers: &mut [u8], hash: u64) {
    let index = (hash >> (64 - PRECISION)) as usize;
    // The remaining 50 bits, with a guard bit so the rank is at most 51.
    let rest = (hash << PRECISION) | (1 << (PRECISION - 1));
    let rank = rest.leading_zeros() as u8 + 1;
    if registers[index] < rank {
        registers[index] = rank;
    }
}

/// The cardinality estimate of a sketch.
pub fn estimate(registers: &[u8]) -> f64 {
    if registers.is_empty() {
        return 0.0;
    }
    let m = registers.len() as f64;
    let alpha = 0.7213 / (1.0 + 1.079 / m);
    let sum: f64 = registers.iter().map(|&r| 2f64.powi(-i32::from(r))).sum();
    let raw = alpha * m * m / sum;
    let zeros = registers.iter().filter(|&&r| r == 0).count();
    if raw <= 2.5 * m && zeros > 0 {
        m * (m / zeros as f64).ln()
    } else {
        raw
    }
}

/// The aggregate.
pub struct ApproxDistinct;

impl AggregateFunction for ApproxDistinct {
    const NAME: &'static str = "approx_distinct";
    /// The registers; empty until the first value (so empty groups cost nothing).
    type State = Vec<u8>;
    type Output = i64;

    fn arguments() -> Vec<DataType> {
        vec![DataType::Int64]
    }

    fn init() -> Vec<u8> {
        Vec::new()
    }

    fn update(state: &mut Vec<u8>, args: &[ArrayRef]) -> Result<()> {
        let values = args[0].as_primitive::<Int64Type>();
        if values.null_count() == values.len() {
            return Ok(());
        }
        state.resize(REGISTERS, 0);
        for v in values.iter().flatten() {
            insert(state, mix64(v as u64));
        }
        Ok(())
    }

    fn merge(state: &mut Vec<u8>, other: Vec<u8>) -> Result<()> {
        if other.is_empty() {
            return Ok(());
        }
        if other.len() != REGISTERS {
            return Err(Error::new(format!(
                "a sketch has {} registers, expected {REGISTERS}",
                other.len()
            )));
        }
        state.resize(REGISTERS, 0);
        for (a, b) in state.iter_mut().zip(other) {
            *a = (*a).max(b);
        }
        Ok(())
    }

    fn finalize(state: Vec<u8>) -> Result<i64> {
        Ok(estimate(&state).round() as i64)
    }
}

pushdown_plugin::export!(aggregate ApproxDistinct);

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use pushdown_plugin::array::Int64Array;
    use pushdown_plugin::testing;

    use super::*;

    fn count(values: Vec<Option<i64>>, parts: usize) -> i64 {
        let a: ArrayRef = Arc::new(Int64Array::from(values));
        let out = testing::aggregate::<ApproxDistinct>(&[a], parts).unwrap();
        out.as_primitive::<Int64Type>().value(0)
    }

    #[test]
    fn estimates_within_two_percent_and_merging_equals_one_pass() {
        for n in [1_000i64, 150_000] {
            // Each value three times, in an order that spreads duplicates over partitions.
            let values: Vec<Option<i64>> = (0..3 * n).map(|i| Some((i * 7919) % n)).collect();
            let one = count(values.clone(), 1);
            assert_eq!(one, count(values, 7), "merge must equal a single pass");
            let error = (one - n).abs() as f64 / n as f64;
            assert!(error < 0.02, "n={n} estimate={one}");
        }
        assert_eq!(count(vec![None, None], 2), 0);
        assert_eq!(count(vec![Some(5), Some(5), None], 3), 1);
    }
}
