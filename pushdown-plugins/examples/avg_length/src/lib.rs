//! `avg_length(s VARCHAR) -> DOUBLE`: the mean length, in characters (Unicode scalar
//! values, as DuckDB's `length`), of the non-NULL strings; NULL when there are none.
//!
//! A pushdown aggregate plugin: storage nodes fold rows into `(sum, count)` partial
//! states, the intermediary merges them and divides.

use pushdown_plugin::array::{cast::AsArray, ArrayRef};
use pushdown_plugin::schema::DataType;
use pushdown_plugin::{AggregateFunction, Result};

/// The aggregate.
pub struct AvgLength;

impl AggregateFunction for AvgLength {
    const NAME: &'static str = "avg_length";
    /// (sum of lengths, number of non-NULL strings)
    type State = (u64, u64);
    type Output = Option<f64>;

    fn arguments() -> Vec<DataType> {
        vec![DataType::Utf8]
    }

    fn init() -> (u64, u64) {
        (0, 0)
    }

    fn update(state: &mut (u64, u64), args: &[ArrayRef]) -> Result<()> {
        for s in args[0].as_string::<i32>().iter().flatten() {
            state.0 += s.chars().count() as u64;
            state.1 += 1;
        }
        Ok(())
    }

    fn merge(state: &mut (u64, u64), other: (u64, u64)) -> Result<()> {
        state.0 += other.0;
        state.1 += other.1;
        Ok(())
    }

    fn finalize(state: (u64, u64)) -> Result<Option<f64>> {
        Ok((state.1 > 0).then(|| state.0 as f64 / state.1 as f64))
    }
}

pushdown_plugin::export!(aggregate AvgLength);

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use pushdown_plugin::array::{types::Float64Type, Array, StringArray};
    use pushdown_plugin::testing;

    use super::*;

    #[test]
    fn averages_characters_over_partial_states_and_skips_nulls() {
        let words: ArrayRef = Arc::new(StringArray::from(vec![
            Some("a"),
            Some("héllo"),
            None,
            Some(""),
            Some("abc"),
        ]));
        for parts in [1, 2, 5] {
            let out = testing::aggregate::<AvgLength>(&[words.clone()], parts).unwrap();
            assert_eq!(out.as_primitive::<Float64Type>().value(0), 9.0 / 4.0);
        }
        let none: ArrayRef = Arc::new(StringArray::from(vec![None::<&str>]));
        assert!(testing::aggregate::<AvgLength>(&[none], 1)
            .unwrap()
            .is_null(0));
    }
}
