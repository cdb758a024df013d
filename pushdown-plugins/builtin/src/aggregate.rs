//! Partial aggregation with GROUP BY: group keys get dense ids ([`GroupIndex`]); each
//! state column keeps one slot per group.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::*;
use arrow_array::ArrowNativeTypeOp;
use arrow_array::{
    Array, ArrayRef, ArrowPrimitiveType, BooleanArray, Int64Array, PrimitiveArray, RecordBatch,
    StringArray,
};
use arrow_buffer::NullBuffer;
use arrow_schema::{DataType, SchemaRef, TimeUnit};
use pushdown_protocol::plugin::NUM_GROUPS_KEY;
use pushdown_protocol::{AggregateFunction, Expr, PartialAggregate, PluginRef};

use crate::eval::{cast_checked, evaluate, evaluate_memo, Memo, Value};
use crate::groups::GroupIndex;

/// One state column, updated batch by batch.
trait Accumulator {
    /// Folds `values` (already of the state type) into the groups `groups[i]`; `rows[g]`
    /// is the number of rows of group `g` in the batch.
    fn update(
        &mut self,
        values: &ArrayRef,
        groups: &[u32],
        num_groups: usize,
        rows: &[i64],
    ) -> Result<(), String>;
    /// The state, one row per group.
    fn finish(&mut self, num_groups: usize) -> Result<ArrayRef, String>;
    /// Adds `rows[g]` non-NULL values to each group `g`, for a COUNT whose argument has no
    /// NULL in the batch. False when the accumulator is not a COUNT.
    fn add_rows(&mut self, _rows: &[i64]) -> bool {
        false
    }
    /// True when the accumulator can take rows assigned to a spare slot (one past the
    /// groups) that [`Accumulator::clear_slot`] then resets: how rows a mask leaves out
    /// are skipped without copying the columns.
    fn takes_mask(&self) -> bool {
        false
    }
    /// Resets slot `g` to the state of a group that has seen no row.
    fn clear_slot(&mut self, _g: usize) {}
    /// The exact per-slot sums the last [`Accumulator::update`] added, when it summed
    /// `Decimal64` values without NULLs of this scale (see [`sum_narrow`]).
    fn batch_sums(&self) -> Option<(&[i128], i8)> {
        None
    }
    /// Adds per-slot sums another accumulator computed from the same values
    /// ([`Accumulator::batch_sums`]) instead of summing them again: TPC-H Q1's
    /// `SUM(l_quantity)` and `AVG(l_quantity)`'s sum. False (nothing changed) when this
    /// accumulator would not have summed them exactly at that scale.
    fn add_batch_sums(&mut self, _sums: &[i128], _scale: i8, _rows: &[i64]) -> bool {
        false
    }
}

struct Count {
    counts: Vec<i64>,
}

impl Accumulator for Count {
    fn update(
        &mut self,
        values: &ArrayRef,
        groups: &[u32],
        num_groups: usize,
        _rows: &[i64],
    ) -> Result<(), String> {
        self.counts.resize(num_groups, 0);
        match values.logical_nulls() {
            None => {
                for &g in groups {
                    self.counts[g as usize] += 1;
                }
            }
            Some(nulls) => {
                for (i, &g) in groups.iter().enumerate() {
                    if nulls.is_valid(i) {
                        self.counts[g as usize] += 1;
                    }
                }
            }
        }
        Ok(())
    }

    fn finish(&mut self, num_groups: usize) -> Result<ArrayRef, String> {
        self.counts.resize(num_groups, 0);
        Ok(Arc::new(Int64Array::from(std::mem::take(&mut self.counts))))
    }

    fn add_rows(&mut self, rows: &[i64]) -> bool {
        self.counts.resize(rows.len().max(self.counts.len()), 0);
        for (count, n) in self.counts.iter_mut().zip(rows) {
            *count += n;
        }
        true
    }

    fn takes_mask(&self) -> bool {
        true
    }

    fn clear_slot(&mut self, g: usize) {
        if let Some(count) = self.counts.get_mut(g) {
            *count = 0;
        }
    }
}

/// SUM, MIN or MAX over a primitive type (integers, floats, decimals, dates, timestamps).
struct Primitive<T: ArrowPrimitiveType> {
    function: AggregateFunction,
    values: Vec<T::Native>,
    seen: Vec<bool>,
    data_type: DataType,
    /// A DOUBLE SUM of decimals cast to DOUBLE: the decimals' exact sums and their scale,
    /// added to `values` once per group when finished (see [`Primitive::update`]).
    exact: Vec<i128>,
    exact_scale: Option<i8>,
    /// [`Accumulator::batch_sums`]: the last batch's sums per slot and their scale.
    batch_sums: Vec<i128>,
    batch_scale: Option<i8>,
}

impl<T: ArrowPrimitiveType> Accumulator for Primitive<T> {
    fn update(
        &mut self,
        values: &ArrayRef,
        groups: &[u32],
        num_groups: usize,
        rows: &[i64],
    ) -> Result<(), String> {
        self.values.resize(num_groups, T::Native::default());
        self.seen.resize(num_groups, false);
        self.batch_scale = None;
        if let (DataType::Decimal64(_, scale), DataType::Float64, AggregateFunction::Sum) =
            (values.data_type(), &self.data_type, &self.function)
        {
            // SUM(CAST(decimal AS DOUBLE)): the decimals are summed exactly and each
            // group's sum is rounded to a double once, when finished. DataFusion rounds
            // after every addition, in an order that depends on the partitioning; the
            // two agree to within that rounding, and this one is the closer to the exact
            // sum.
            if self.exact_scale.is_some_and(|s| s != *scale) {
                // A batch of another scale than the sums so far (the same argument has one
                // scale, so this does not happen): add it as doubles.
                let doubles = cast_checked(values, &DataType::Float64)?;
                return self.update(&doubles, groups, num_groups, rows);
            }
            self.exact_scale = Some(*scale);
            self.exact.resize(num_groups, 0);
            let decimals = values.as_primitive::<Decimal64Type>();
            match decimals.nulls().filter(|n| n.null_count() > 0) {
                None => {
                    let DataType::Decimal64(precision, _) = *values.data_type() else {
                        unreachable!("matched above")
                    };
                    sum_narrow(
                        &mut self.exact,
                        &mut self.batch_sums,
                        groups,
                        decimals.values(),
                        precision,
                    );
                    self.batch_scale = Some(*scale);
                    for (seen, &n) in self.seen.iter_mut().zip(rows) {
                        *seen |= n > 0;
                    }
                }
                Some(nulls) => {
                    for (i, (&g, &v)) in groups.iter().zip(decimals.values()).enumerate() {
                        if nulls.is_valid(i) {
                            let slot = &mut self.exact[g as usize];
                            *slot = slot.wrapping_add(i128::from(v));
                            self.seen[g as usize] = true;
                        }
                    }
                }
            }
            return Ok(());
        }
        if let DataType::Decimal64(..) = values.data_type() {
            // The 64-bit values of a Decimal128 state's argument ([`decimal_widens`]).
            let narrow = values.as_primitive::<Decimal64Type>();
            let slots = (&mut self.values as &mut dyn std::any::Any).downcast_mut::<Vec<i128>>();
            if let (Some(slots), AggregateFunction::Sum, 0) =
                (slots, &self.function, narrow.null_count())
            {
                let DataType::Decimal64(precision, scale) = *values.data_type() else {
                    unreachable!("matched above")
                };
                sum_narrow(
                    slots,
                    &mut self.batch_sums,
                    groups,
                    narrow.values(),
                    precision,
                );
                self.batch_scale = Some(scale);
                for (seen, &n) in self.seen.iter_mut().zip(rows) {
                    *seen |= n > 0;
                }
                return Ok(());
            }
            let wide = crate::eval::widen_decimal(values)?;
            return self.update(&wide, groups, num_groups, rows);
        }
        let array = values.as_primitive_opt::<T>().ok_or_else(|| {
            format!(
                "state column expected {}, got {}",
                self.data_type,
                values.data_type()
            )
        })?;
        let data = array.values();
        let nulls = array.nulls().filter(|n| n.null_count() > 0);
        if nulls.is_none() && self.function == AggregateFunction::Sum {
            // The common case, without a branch per row: a slot not yet seen holds zero.
            let exact = !matches!(
                self.data_type,
                DataType::Float16 | DataType::Float32 | DataType::Float64
            );
            if exact && num_groups <= LANE_GROUPS && groups.len() >= 4 * num_groups {
                sum_in_lanes(&mut self.values, groups, data);
            } else {
                for (&g, &v) in groups.iter().zip(data.iter()) {
                    let slot = &mut self.values[g as usize];
                    *slot = slot.add_wrapping(v);
                }
            }
            for (seen, &n) in self.seen.iter_mut().zip(rows) {
                *seen |= n > 0;
            }
            return Ok(());
        }
        for (i, &g) in groups.iter().enumerate() {
            if nulls.is_some_and(|n| n.is_null(i)) {
                continue;
            }
            let (slot, v) = (g as usize, data[i]);
            if !self.seen[slot] {
                self.values[slot] = v;
                self.seen[slot] = true;
                continue;
            }
            let current = self.values[slot];
            self.values[slot] = match self.function {
                AggregateFunction::Sum => current.add_wrapping(v),
                AggregateFunction::Min if v.is_lt(current) => v,
                AggregateFunction::Max if v.is_gt(current) => v,
                _ => current,
            };
        }
        Ok(())
    }

    fn finish(&mut self, num_groups: usize) -> Result<ArrayRef, String> {
        self.values.resize(num_groups, T::Native::default());
        self.seen.resize(num_groups, false);
        if let Some(scale) = self.exact_scale.take() {
            let doubles = (&mut self.values as &mut dyn std::any::Any)
                .downcast_mut::<Vec<f64>>()
                .ok_or("exact sums in a state that is not DOUBLE")?;
            // As the cast from Decimal128 to DOUBLE computes it: x as f64 / 10^scale.
            let divisor = 10_f64.powi(i32::from(scale));
            for (d, &x) in doubles.iter_mut().zip(&self.exact) {
                *d += x as f64 / divisor;
            }
            self.exact.clear();
        }
        let nulls = NullBuffer::from(std::mem::take(&mut self.seen));
        let array = PrimitiveArray::<T>::new(std::mem::take(&mut self.values).into(), Some(nulls))
            .with_data_type(self.data_type.clone());
        Ok(Arc::new(array))
    }

    fn takes_mask(&self) -> bool {
        true
    }

    fn clear_slot(&mut self, g: usize) {
        if let (Some(value), Some(seen)) = (self.values.get_mut(g), self.seen.get_mut(g)) {
            *value = T::Native::default();
            *seen = false;
        }
        if let Some(exact) = self.exact.get_mut(g) {
            *exact = 0;
        }
    }

    fn batch_sums(&self) -> Option<(&[i128], i8)> {
        self.batch_scale
            .map(|scale| (self.batch_sums.as_slice(), scale))
    }

    fn add_batch_sums(&mut self, sums: &[i128], scale: i8, rows: &[i64]) -> bool {
        if self.function != AggregateFunction::Sum {
            return false;
        }
        let slots = sums.len();
        let target = match &self.data_type {
            // The exact sums of a DOUBLE SUM of decimals, as `update` keeps them.
            DataType::Float64 if self.exact_scale.is_none_or(|s| s == scale) => {
                self.exact_scale = Some(scale);
                self.exact.resize(slots, 0);
                &mut self.exact
            }
            // A Decimal128 SUM of the same scale ([`decimal_widens`]).
            DataType::Decimal128(_, s) if *s == scale => {
                match (&mut self.values as &mut dyn std::any::Any).downcast_mut::<Vec<i128>>() {
                    Some(values) => {
                        values.resize(slots, 0);
                        values
                    }
                    None => return false,
                }
            }
            _ => return false,
        };
        for (slot, &sum) in target.iter_mut().zip(sums) {
            *slot = slot.wrapping_add(sum);
        }
        self.values.resize(slots, T::Native::default());
        self.seen.resize(slots, false);
        for (seen, &n) in self.seen.iter_mut().zip(rows) {
            *seen |= n > 0;
        }
        self.batch_scale = None;
        true
    }
}

/// Most groups for which [`sum_in_lanes`] is used.
const LANE_GROUPS: usize = 256;

/// `values[groups[i]] += data[i]` for every row, with wrapping integer addition (which is
/// associative, so the order does not change the sums): four rows at a time into four
/// copies of the slots, added up at the end. With few groups, consecutive rows hit the same
/// slot, and each addition would wait for the previous one's store (TPC-H Q1 has four
/// groups); four copies make four independent chains.
fn sum_in_lanes<N: ArrowNativeTypeOp>(values: &mut [N], groups: &[u32], data: &[N]) {
    let g = values.len();
    let mut lanes = vec![N::default(); 4 * g];
    let (l0, rest) = lanes.split_at_mut(g);
    let (l1, rest) = rest.split_at_mut(g);
    let (l2, l3) = rest.split_at_mut(g);
    let rows = groups.chunks_exact(4).zip(data.chunks_exact(4));
    for (k, v) in rows {
        let (k0, k1, k2, k3) = (k[0] as usize, k[1] as usize, k[2] as usize, k[3] as usize);
        l0[k0] = l0[k0].add_wrapping(v[0]);
        l1[k1] = l1[k1].add_wrapping(v[1]);
        l2[k2] = l2[k2].add_wrapping(v[2]);
        l3[k3] = l3[k3].add_wrapping(v[3]);
    }
    let tail = groups.len() / 4 * 4;
    for (&k, &v) in groups[tail..].iter().zip(&data[tail..]) {
        l0[k as usize] = l0[k as usize].add_wrapping(v);
    }
    for (i, slot) in values.iter_mut().enumerate() {
        *slot = slot
            .add_wrapping(l0[i])
            .add_wrapping(l1[i])
            .add_wrapping(l2[i])
            .add_wrapping(l3[i]);
    }
}

/// The number of rows of each of `slots` slots in `groups`, counted in four lanes as
/// [`sum_in_lanes`] sums (a count per slot incremented row by row waits on the previous
/// increment of the same slot).
fn rows_per_slot(groups: &[u32], slots: usize) -> Vec<i64> {
    let mut lanes = vec![0u32; 4 * slots];
    let (l0, rest) = lanes.split_at_mut(slots);
    let (l1, rest) = rest.split_at_mut(slots);
    let (l2, l3) = rest.split_at_mut(slots);
    for k in groups.chunks_exact(4) {
        l0[k[0] as usize] += 1;
        l1[k[1] as usize] += 1;
        l2[k[2] as usize] += 1;
        l3[k[3] as usize] += 1;
    }
    for &k in &groups[groups.len() / 4 * 4..] {
        l0[k as usize] += 1;
    }
    (0..slots)
        .map(|i| i64::from(l0[i]) + i64::from(l1[i]) + i64::from(l2[i]) + i64::from(l3[i]))
        .collect()
}

/// `slots[groups[i]] += data[i]` for every row (wrapping, as the 128-bit SUM): in 64
/// bits per batch when no partial sum can overflow them (by the values' `precision`, or
/// failing that their largest magnitude), widened once per group. `batch` gets what was
/// added to each slot.
fn sum_narrow(
    slots: &mut [i128],
    batch: &mut Vec<i128>,
    groups: &[u32],
    data: &[i64],
    precision: u8,
) {
    batch.clear();
    batch.resize(slots.len(), 0);
    let rows_bits = usize::BITS - data.len().leading_zeros();
    let fits = |bits: u32| bits + rows_bits <= 63;
    let by_precision = crate::narrow::precision_bits(precision).is_some_and(fits);
    if !by_precision && !fits(crate::narrow::significant_bits(data)) {
        for (&g, &v) in groups.iter().zip(data) {
            batch[g as usize] = batch[g as usize].wrapping_add(i128::from(v));
        }
    } else {
        let mut partial = vec![0i64; slots.len()];
        if slots.len() <= LANE_GROUPS && groups.len() >= 4 * slots.len() {
            sum_in_lanes(&mut partial, groups, data);
        } else {
            for (&g, &v) in groups.iter().zip(data) {
                partial[g as usize] += v;
            }
        }
        for (b, p) in batch.iter_mut().zip(partial) {
            *b = i128::from(p);
        }
    }
    for (slot, &b) in slots.iter_mut().zip(batch.iter()) {
        *slot = slot.wrapping_add(b);
    }
}

/// MIN or MAX over strings (compared as UTF-8 bytes) or Booleans (false < true).
struct Ordered {
    is_min: bool,
    strings: Vec<Option<String>>,
    bools: Vec<Option<bool>>,
    data_type: DataType,
}

impl Ordered {
    fn better<V: PartialOrd>(&self, new: &V, current: &V) -> bool {
        if self.is_min {
            new < current
        } else {
            new > current
        }
    }
}

impl Accumulator for Ordered {
    fn update(
        &mut self,
        values: &ArrayRef,
        groups: &[u32],
        num_groups: usize,
        _rows: &[i64],
    ) -> Result<(), String> {
        if self.data_type == DataType::Boolean {
            self.bools.resize(num_groups, None);
            let array = values.as_boolean();
            for (i, &g) in groups.iter().enumerate() {
                if array.is_valid(i) {
                    let v = array.value(i);
                    let slot = &self.bools[g as usize];
                    if slot.is_none_or(|c| self.better(&v, &c)) {
                        self.bools[g as usize] = Some(v);
                    }
                }
            }
            return Ok(());
        }
        self.strings.resize(num_groups, None);
        let utf8 = cast_checked(values, &DataType::Utf8)?;
        let array = utf8.as_string::<i32>();
        for (i, &g) in groups.iter().enumerate() {
            if array.is_valid(i) {
                let v = array.value(i);
                let replace = match &self.strings[g as usize] {
                    None => true,
                    Some(c) => self.better(&v, &c.as_str()),
                };
                if replace {
                    self.strings[g as usize] = Some(v.to_string());
                }
            }
        }
        Ok(())
    }

    fn finish(&mut self, num_groups: usize) -> Result<ArrayRef, String> {
        if self.data_type == DataType::Boolean {
            self.bools.resize(num_groups, None);
            return Ok(Arc::new(BooleanArray::from(std::mem::take(
                &mut self.bools,
            ))));
        }
        self.strings.resize(num_groups, None);
        let array: ArrayRef = Arc::new(StringArray::from(std::mem::take(&mut self.strings)));
        cast_checked(&array, &self.data_type)
    }
}

/// A user aggregate plugin: the argument values and group ids are kept, and the plugin's
/// update runs once over all of them when the state is finished (one call per task).
struct Plugin {
    plugin: PluginRef,
    values: Vec<ArrayRef>,
    groups: Vec<u32>,
}

impl Accumulator for Plugin {
    fn update(
        &mut self,
        values: &ArrayRef,
        groups: &[u32],
        _num_groups: usize,
        _rows: &[i64],
    ) -> Result<(), String> {
        self.values.push(values.clone());
        self.groups.extend_from_slice(groups);
        Ok(())
    }

    fn finish(&mut self, num_groups: usize) -> Result<ArrayRef, String> {
        if self.values.is_empty() {
            // No row: NULL states, which merge as the plugin's initial state.
            return Ok(arrow_array::new_null_array(&DataType::Binary, num_groups));
        }
        let parts: Vec<&dyn Array> = self.values.iter().map(|a| a.as_ref()).collect();
        let values = arrow_select::concat::concat(&parts).map_err(|e| e.to_string())?;
        let n = values.len();
        let groups: ArrayRef = Arc::new(arrow_array::UInt32Array::from(std::mem::take(
            &mut self.groups,
        )));
        self.values.clear();
        let metadata = [(NUM_GROUPS_KEY.to_string(), num_groups.to_string())].into();
        let input = crate::host::encode(vec![groups, values], n, metadata)?;
        crate::host::call_column(
            &self.plugin,
            crate::host::PluginOp::Update,
            &input,
            &DataType::Binary,
            num_groups,
        )
    }
}

/// True when a decimal of type `from` casts to the Decimal128 `to` without changing any
/// value: same scale, no smaller precision. A `Decimal64` argument holds the values of
/// a 128-bit SQL type of that scale ([`crate::narrow`]), whose precision the state's
/// never falls below.
fn decimal_widens(from: &DataType, to: &DataType) -> bool {
    match (from, to) {
        (DataType::Decimal128(p1, s1), DataType::Decimal128(p2, s2)) => s1 == s2 && p1 <= p2,
        (DataType::Decimal64(_, s1), DataType::Decimal128(_, s2)) => s1 == s2,
        _ => false,
    }
}

/// Merges a user aggregate plugin's partial states (a `Binary` column) with its
/// `pushdown_aggregate_merge`, one call per batch: the states so far (group `g` at row
/// `g`) and the batch's states with their group ids go in, one state per group comes out.
struct PluginMerge {
    plugin: PluginRef,
    states: Option<ArrayRef>,
}

impl Accumulator for PluginMerge {
    fn update(
        &mut self,
        values: &ArrayRef,
        groups: &[u32],
        num_groups: usize,
        _rows: &[i64],
    ) -> Result<(), String> {
        let values = cast_checked(values, &DataType::Binary)?;
        let mut ids: Vec<u32> = Vec::with_capacity(num_groups + groups.len());
        let mut parts: Vec<&dyn Array> = Vec::with_capacity(2);
        if let Some(states) = &self.states {
            ids.extend(0..states.len() as u32);
            parts.push(states.as_ref());
        }
        ids.extend_from_slice(groups);
        parts.push(values.as_ref());
        let states = arrow_select::concat::concat(&parts).map_err(|e| e.to_string())?;
        let n = states.len();
        let ids: ArrayRef = Arc::new(arrow_array::UInt32Array::from(ids));
        let metadata = [(NUM_GROUPS_KEY.to_string(), num_groups.to_string())].into();
        let input = crate::host::encode(vec![ids, states], n, metadata)?;
        self.states = Some(crate::host::call_column(
            &self.plugin,
            crate::host::PluginOp::Merge,
            &input,
            &DataType::Binary,
            num_groups,
        )?);
        Ok(())
    }

    fn finish(&mut self, num_groups: usize) -> Result<ArrayRef, String> {
        match self.states.take() {
            Some(states) if states.len() == num_groups => Ok(states),
            // Groups the plugin has not seen yet hold its initial state (NULL).
            Some(states) => {
                let pad = arrow_array::new_null_array(&DataType::Binary, num_groups - states.len());
                arrow_select::concat::concat(&[states.as_ref(), pad.as_ref()])
                    .map_err(|e| e.to_string())
            }
            None => Ok(arrow_array::new_null_array(&DataType::Binary, num_groups)),
        }
    }
}

/// The accumulator of one aggregate: of rows, or with `merging` of partial states of the
/// same aggregate (a user plugin's states then go through its merge).
fn accumulator(
    aggregate: &PartialAggregate,
    merging: bool,
) -> Result<Box<dyn Accumulator>, String> {
    if let (AggregateFunction::Plugin(plugin), true) = (&aggregate.function, merging) {
        return Ok(Box::new(PluginMerge {
            plugin: plugin.clone(),
            states: None,
        }));
    }
    if let AggregateFunction::Plugin(plugin) = &aggregate.function {
        return Ok(Box::new(Plugin {
            plugin: plugin.clone(),
            values: Vec::new(),
            groups: Vec::new(),
        }));
    }
    let f = aggregate.function.clone();
    let t = aggregate.state_type.clone();
    macro_rules! primitive {
        ($ty:ty) => {
            Box::new(Primitive::<$ty> {
                function: f.clone(),
                values: Vec::new(),
                seen: Vec::new(),
                data_type: t.clone(),
                exact: Vec::new(),
                exact_scale: None,
                batch_sums: Vec::new(),
                batch_scale: None,
            })
        };
    }
    if f == AggregateFunction::Count {
        return Ok(Box::new(Count { counts: Vec::new() }));
    }
    Ok(match &t {
        DataType::Int8 => primitive!(Int8Type),
        DataType::Int16 => primitive!(Int16Type),
        DataType::Int32 => primitive!(Int32Type),
        DataType::Int64 => primitive!(Int64Type),
        DataType::UInt8 => primitive!(UInt8Type),
        DataType::UInt16 => primitive!(UInt16Type),
        DataType::UInt32 => primitive!(UInt32Type),
        DataType::UInt64 => primitive!(UInt64Type),
        DataType::Float32 => primitive!(Float32Type),
        DataType::Float64 => primitive!(Float64Type),
        DataType::Decimal128(_, _) => primitive!(Decimal128Type),
        DataType::Date32 => primitive!(Date32Type),
        DataType::Date64 => primitive!(Date64Type),
        DataType::Timestamp(TimeUnit::Second, _) => primitive!(TimestampSecondType),
        DataType::Timestamp(TimeUnit::Millisecond, _) => primitive!(TimestampMillisecondType),
        DataType::Timestamp(TimeUnit::Microsecond, _) => primitive!(TimestampMicrosecondType),
        DataType::Timestamp(TimeUnit::Nanosecond, _) => primitive!(TimestampNanosecondType),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Boolean
            if f != AggregateFunction::Sum =>
        {
            Box::new(Ordered {
                is_min: f == AggregateFunction::Min,
                strings: Vec::new(),
                bools: Vec::new(),
                data_type: t.clone(),
            })
        }
        other => {
            return Err(format!(
                "{f:?} over {other} is not supported in the sandbox"
            ))
        }
    })
}

/// Accumulates partial aggregate states over record batches.
///
/// Output: one row per group; the group columns (in `group_by` order) followed by one
/// column per aggregate, cast to `output_schema`. Without GROUP BY there is exactly one
/// row, even for no input rows (COUNT 0, other states NULL), as DataFusion's partial
/// aggregate produces.
pub struct GroupedAggregator {
    group_by: Vec<(String, Expr)>,
    aggregates: Vec<(String, PartialAggregate)>,
    accumulators: Vec<Box<dyn Accumulator>>,
    output_schema: SchemaRef,
    groups: Option<GroupIndex>,
    num_groups: usize,
    group_ids: Vec<u32>,
    /// Selected rows per group so far: a group that only rows a mask left out created
    /// (its keys were assigned before the mask applied) has none and is not returned.
    group_rows: Vec<i64>,
    memo: Memo,
}

impl GroupedAggregator {
    /// Creates the accumulators.
    ///
    /// # Errors
    /// A message when an aggregate's state type is not supported.
    pub fn try_new(
        group_by: Vec<(String, Expr)>,
        aggregates: Vec<(String, PartialAggregate)>,
        output_schema: SchemaRef,
    ) -> Result<Self, String> {
        Self::with_mode(group_by, aggregates, output_schema, false)
    }

    /// An aggregator of partial states: each aggregate's argument is a state column of
    /// the same aggregate, which is folded with the merge step (a user plugin's
    /// `pushdown_aggregate_merge`; the built-in functions as [`crate::merge_aggregator`]
    /// arranges them).
    ///
    /// # Errors
    /// As [`GroupedAggregator::try_new`].
    pub fn merging(
        group_by: Vec<(String, Expr)>,
        aggregates: Vec<(String, PartialAggregate)>,
        output_schema: SchemaRef,
    ) -> Result<Self, String> {
        Self::with_mode(group_by, aggregates, output_schema, true)
    }

    fn with_mode(
        group_by: Vec<(String, Expr)>,
        aggregates: Vec<(String, PartialAggregate)>,
        output_schema: SchemaRef,
        merging: bool,
    ) -> Result<Self, String> {
        let accumulators = aggregates
            .iter()
            .map(|(_, a)| accumulator(a, merging))
            .collect::<Result<_, _>>()?;
        let num_groups = if group_by.is_empty() { 1 } else { 0 };
        Ok(Self {
            group_by,
            aggregates,
            accumulators,
            output_schema,
            groups: None,
            num_groups,
            group_ids: Vec::new(),
            group_rows: Vec::new(),
            memo: Memo::default(),
        })
    }

    /// True when [`GroupedAggregator::update_selected`] takes a mask (every aggregate is a
    /// built-in COUNT, SUM, MIN or MAX over a primitive type).
    pub fn takes_mask(&self) -> bool {
        self.accumulators.iter().all(|a| a.takes_mask())
    }

    /// Folds one (already filtered) batch into the states.
    ///
    /// # Errors
    /// A message when an expression fails to evaluate.
    pub fn update(&mut self, batch: &RecordBatch) -> Result<(), String> {
        self.update_selected(batch, None)
    }

    /// Folds the rows of `batch` that `mask` selects (all rows without one) into the
    /// states, the same states as [`GroupedAggregator::update`] of the filtered batch.
    /// With a mask, group keys and aggregate arguments are evaluated over every row, and
    /// the rows left out go to a spare slot past the groups, reset afterwards; if an
    /// argument fails to evaluate (on a row left out, perhaps: `1 / x` where `x <> 0`
    /// was the predicate), the batch is filtered and folded the plain way, which fails
    /// only when a selected row fails.
    ///
    /// # Errors
    /// A message when an expression fails to evaluate over a selected row.
    pub fn update_selected(
        &mut self,
        batch: &RecordBatch,
        mask: Option<&BooleanArray>,
    ) -> Result<(), String> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(());
        }
        let filtered = |mask: &BooleanArray| {
            arrow_select::filter::filter_record_batch(batch, mask).map_err(|e| e.to_string())
        };
        if let Some(mask) = mask.filter(|_| !self.takes_mask()) {
            return self.update_selected(&filtered(mask)?, None);
        }
        let assigned = self.assign_groups(batch);
        if let (Err(_), Some(mask)) = (&assigned, mask) {
            return self.update_selected(&filtered(mask)?, None);
        }
        assigned?;
        // Slots: one per group, and with a mask one more for the rows it leaves out.
        let spare = self.num_groups;
        let slots = match mask {
            Some(mask) => {
                let left_out = !mask.values();
                for i in left_out.set_indices() {
                    self.group_ids[i] = spare as u32;
                }
                spare + 1
            }
            None => spare,
        };
        self.memo.clear();
        // Every argument is evaluated (and cast to its state type) before any state
        // changes, so a failure leaves the states as they were.
        let mut arguments = Vec::with_capacity(self.aggregates.len());
        for (_, aggregate) in &self.aggregates {
            // A decimal argument in 64 bits when its values fit (user plugins get the
            // 128-bit type SQL gives it).
            let narrow = match (&aggregate.function, &aggregate.state_type) {
                (AggregateFunction::Plugin(_), _) => None,
                // A COUNT reads only NULLs, and a SUM of DOUBLEs adds decimals exactly:
                // both take the decimals under a cast to DOUBLE.
                (AggregateFunction::Count, _) | (AggregateFunction::Sum, DataType::Float64) => {
                    crate::narrow::evaluate(&aggregate.argument, batch, &mut self.memo, true)
                }
                _ => crate::narrow::evaluate(&aggregate.argument, batch, &mut self.memo, false),
            };
            let value = match narrow {
                Some(v) => Ok(v),
                None => evaluate_memo(&aggregate.argument, batch, &mut self.memo),
            };
            let value = value.and_then(|v| {
                match (&aggregate.function, v) {
                    (AggregateFunction::Count | AggregateFunction::Plugin(_), v) => Ok(v),
                    (_, v) => {
                        let values = v.into_array(n)?;
                        let exact_double = aggregate.function == AggregateFunction::Sum
                            && aggregate.state_type == DataType::Float64
                            && matches!(values.data_type(), DataType::Decimal64(..));
                        if exact_double || decimal_widens(values.data_type(), &aggregate.state_type)
                        {
                            // The accumulator reads the same 128-bit values; the state gets
                            // its type when finished.
                            Ok(Value::Array(values))
                        } else {
                            cast_checked(&values, &aggregate.state_type).map(Value::Array)
                        }
                    }
                }
            });
            match (value, mask) {
                (Ok(v), _) => arguments.push(v),
                (Err(_), Some(mask)) => return self.update_selected(&filtered(mask)?, None),
                (Err(e), None) => return Err(e),
            }
        }
        // Rows per slot in this batch: every COUNT over values without NULLs is this (TPC-H
        // Q1 has four), and a SUM without NULLs has seen exactly these groups.
        let rows = rows_per_slot(&self.group_ids, slots);
        self.group_rows.resize(self.num_groups, 0);
        for (total, n) in self.group_rows.iter_mut().zip(&rows) {
            *total += n;
        }
        // The accumulators that summed each `Decimal64` argument array (by its buffer), whose
        // sums a later SUM of the same array adds instead of summing again.
        let mut summed: Vec<((usize, usize, i8), usize)> = Vec::new();
        for (i, (aggregate, value)) in self
            .aggregates
            .iter()
            .map(|(_, a)| a)
            .zip(arguments)
            .enumerate()
        {
            let no_nulls = match &value {
                Value::Scalar(s) => s.is_valid(0),
                Value::Array(a) => a.logical_null_count() == 0,
            };
            let (earlier, rest) = self.accumulators.split_at_mut(i);
            let acc = &mut rest[0];
            if aggregate.function == AggregateFunction::Count && no_nulls && acc.add_rows(&rows) {
                continue;
            }
            let buffer = match &value {
                Value::Array(a) if aggregate.function == AggregateFunction::Sum && no_nulls => a
                    .as_primitive_opt::<Decimal64Type>()
                    .map(|d| (d.values().as_ptr() as usize, d.len(), d.scale())),
                _ => None,
            };
            if let Some(key) = buffer {
                let shared = summed
                    .iter()
                    .filter(|(k, _)| *k == key)
                    .find_map(|&(_, j)| earlier[j].batch_sums());
                if let Some((sums, scale)) = shared {
                    if scale == key.2 && acc.add_batch_sums(sums, scale, &rows) {
                        continue;
                    }
                }
            }
            match (&aggregate.function, value) {
                (AggregateFunction::Count, Value::Scalar(s)) => {
                    if s.is_valid(0) {
                        // COUNT(<constant>): every row counts.
                        let values: ArrayRef = Arc::new(BooleanArray::new(
                            arrow_buffer::BooleanBuffer::new_set(n),
                            None,
                        ));
                        acc.update(&values, &self.group_ids, slots, &rows)?;
                    }
                }
                (_, value) => acc.update(&value.into_array(n)?, &self.group_ids, slots, &rows)?,
            }
            if let Some(key) = buffer {
                summed.push((key, i));
            }
        }
        if mask.is_some() {
            for acc in &mut self.accumulators {
                acc.clear_slot(spare);
            }
        }
        Ok(())
    }

    fn assign_groups(&mut self, batch: &RecordBatch) -> Result<(), String> {
        let n = batch.num_rows();
        self.group_ids.clear();
        if self.group_by.is_empty() {
            self.group_ids.resize(n, 0);
            return Ok(());
        }
        let columns: Vec<ArrayRef> = self
            .group_by
            .iter()
            .map(|(_, e)| evaluate(e, batch)?.into_array(n))
            .collect::<Result<_, _>>()?;
        if self.groups.is_none() {
            let types = columns.iter().map(|c| c.data_type().clone()).collect();
            self.groups = Some(GroupIndex::try_new(types)?);
        }
        let index = self.groups.as_mut().expect("set above");
        index.assign(&columns, &mut self.group_ids)?;
        self.num_groups = index.num_groups();
        Ok(())
    }

    /// The states as one record batch of `output_schema`.
    ///
    /// # Errors
    /// A message when a state does not cast to its declared output type.
    pub fn finish(mut self) -> Result<RecordBatch, String> {
        let mut columns: Vec<ArrayRef> = Vec::new();
        if let Some(index) = &self.groups {
            columns.extend(index.columns()?);
        } else if !self.group_by.is_empty() {
            // No input row: no group. Build empty group columns of the declared types.
            for field in self.output_schema.fields().iter().take(self.group_by.len()) {
                columns.push(arrow_array::new_empty_array(field.data_type()));
            }
        }
        for acc in &mut self.accumulators {
            columns.push(acc.finish(self.num_groups)?);
        }
        let columns = columns
            .iter()
            .zip(self.output_schema.fields())
            .map(|(c, f)| cast_checked(c, f.data_type()))
            .collect::<Result<Vec<_>, _>>()?;
        let batch =
            RecordBatch::try_new(self.output_schema.clone(), columns).map_err(|e| e.to_string())?;
        // Groups that only rows a mask left out created.
        self.group_rows.resize(self.num_groups, 0);
        if self.groups.is_some() && self.group_rows.contains(&0) {
            let keep: BooleanArray = self.group_rows.iter().map(|&r| Some(r > 0)).collect();
            return arrow_select::filter::filter_record_batch(&batch, &keep)
                .map_err(|e| e.to_string());
        }
        Ok(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn narrow_sums_equal_128_bit_sums_row_by_row() {
        // 47-bit values over 8192 rows: the precision (15 digits, 50 bits) does not prove
        // the 64-bit partials safe, the largest magnitude does; 2^59 - 1 over 100 rows:
        // neither, 128-bit sums; small values: the precision does.
        for (rows, big, precision) in [
            (8192, (1i64 << 47) - 1, 15),
            (100, (1 << 59) - 1, 18),
            (1000, 999, 3),
        ] {
            for groups in [1usize, 3, 300] {
                let ids: Vec<u32> = (0..rows).map(|i| ((i * 7919) % groups) as u32).collect();
                let data: Vec<i64> = (0..rows)
                    .map(|i| if i % 3 == 0 { -big } else { big - i as i64 })
                    .collect();
                let mut expected = vec![7i128; groups];
                for (&g, &v) in ids.iter().zip(&data) {
                    expected[g as usize] += i128::from(v);
                }
                let mut got = vec![7i128; groups];
                let mut batch = Vec::new();
                sum_narrow(&mut got, &mut batch, &ids, &data, precision);
                assert_eq!(got, expected, "{rows} rows of {big}, {groups} groups");
                let added: Vec<i128> = expected.iter().map(|e| e - 7).collect();
                assert_eq!(batch, added);
            }
        }
        assert_eq!(rows_per_slot(&[0, 2, 2, 1, 2, 0, 2], 4), [2, 1, 4, 0]);
    }

    #[test]
    fn sums_in_lanes_equal_sums_row_by_row() {
        // A deterministic scramble of group ids and values, the tail included, i128
        // values near the wrapping edge included.
        for (rows, groups) in [(4, 1), (37, 3), (1000, 4), (8191, 256)] {
            let ids: Vec<u32> = (0..rows)
                .map(|i| ((i * 7919 + i / 3) % groups) as u32)
                .collect();
            let data: Vec<i128> = (0..rows)
                .map(|i| match i % 5 {
                    0 => i128::MAX - i as i128,
                    1 => -(i as i128) * 1_000_003,
                    _ => (i as i128) << 70,
                })
                .collect();
            let mut expected = vec![5i128; groups];
            for (&g, &v) in ids.iter().zip(&data) {
                expected[g as usize] = expected[g as usize].wrapping_add(v);
            }
            let mut got = vec![5i128; groups];
            sum_in_lanes(&mut got, &ids, &data);
            assert_eq!(got, expected, "{rows} rows, {groups} groups");
        }
    }
}
