//! Group ids for GROUP BY keys.
//!
//! Two representations of a group key:
//!
//! * **packed** (the fast path): each key column's value fits in one 64-bit word —
//!   integers, dates, timestamps, Booleans, and strings of at most 7 bytes (TPC-H's flags,
//!   ship modes' short cousins, country codes). A key is one word per column plus a word of
//!   NULL bits, hashed and compared as words in a flat table; no per-row allocation;
//! * **rows**: any other key, encoded with `arrow-row` and hashed as bytes.
//!
//! The index starts packed when every key column's type packs, and turns to rows for good
//! (re-encoding the groups it has, keeping their ids) at the first value that does not.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::*;
use arrow_array::{Array, ArrayRef, ArrowPrimitiveType, BooleanArray, PrimitiveArray, StringArray};
use arrow_row::{RowConverter, Rows, SortField};
use arrow_schema::{DataType, TimeUnit};
use hashbrown::{HashMap, HashTable};

use crate::eval::cast_checked;

/// Most key columns the packed form takes (one NULL bit each in the first word).
const MAX_PACKED_COLUMNS: usize = 64;

/// Assigns dense group ids (0, 1, ... in order of first appearance) to group keys.
pub(crate) struct GroupIndex {
    types: Vec<DataType>,
    num_groups: usize,
    repr: Repr,
}

enum Repr {
    Packed(Packed),
    Rows(RowKeys),
}

/// Keys as words: per group `1 + columns` words (NULL bits, then one word per column).
struct Packed {
    words: Vec<u64>,
    table: HashTable<u32>,
    /// Scratch: the current batch's words, column by column.
    batch: Vec<Vec<u64>>,
    /// Scratch: the current batch's NULL bits, per row.
    nulls: Vec<u64>,
}

struct RowKeys {
    converter: RowConverter,
    rows: Rows,
    index: HashMap<Box<[u8]>, u32>,
}

/// Whether values of `t` can pack (strings only when short; checked per value).
fn packable(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64
            | DataType::Date32
            | DataType::Date64
            | DataType::Timestamp(_, _)
            | DataType::Boolean
            | DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
    )
}

/// A string of at most 7 bytes as a word: its bytes, then its length in the top byte.
#[inline]
fn pack_str(s: &[u8]) -> Option<u64> {
    if s.len() > 7 {
        return None;
    }
    // Byte by byte: a copy of a variable length would be a `memcpy` call per value.
    let mut word = (s.len() as u64) << 56;
    for (k, &b) in s.iter().enumerate() {
        word |= u64::from(b) << (8 * k);
    }
    Some(word)
}

fn unpack_str(word: u64) -> String {
    let bytes = word.to_le_bytes();
    let len = usize::from(bytes[7]).min(7);
    // Packed from valid UTF-8 strings, so the prefix is valid UTF-8.
    String::from_utf8_lossy(&bytes[..len]).into_owned()
}

/// The words of `column`'s values (0 for NULL), or `None` when a value does not pack.
fn pack_column(column: &ArrayRef, out: &mut Vec<u64>) -> Option<()> {
    out.clear();
    macro_rules! ints {
        ($t:ty) => {
            out.extend(
                column
                    .as_primitive::<$t>()
                    .values()
                    .iter()
                    .map(|&v| v as u64),
            )
        };
    }
    match column.data_type() {
        DataType::Int8 => ints!(Int8Type),
        DataType::Int16 => ints!(Int16Type),
        DataType::Int32 => ints!(Int32Type),
        DataType::Int64 => ints!(Int64Type),
        DataType::UInt8 => ints!(UInt8Type),
        DataType::UInt16 => ints!(UInt16Type),
        DataType::UInt32 => ints!(UInt32Type),
        DataType::UInt64 => ints!(UInt64Type),
        DataType::Date32 => ints!(Date32Type),
        DataType::Date64 => ints!(Date64Type),
        DataType::Timestamp(TimeUnit::Second, _) => ints!(TimestampSecondType),
        DataType::Timestamp(TimeUnit::Millisecond, _) => ints!(TimestampMillisecondType),
        DataType::Timestamp(TimeUnit::Microsecond, _) => ints!(TimestampMicrosecondType),
        DataType::Timestamp(TimeUnit::Nanosecond, _) => ints!(TimestampNanosecondType),
        DataType::Boolean => out.extend(column.as_boolean().values().iter().map(u64::from)),
        DataType::Dictionary(_, _) => {
            // Each distinct value packed once, then looked up by key.
            let dict = column.as_any_dictionary();
            let mut values = Vec::new();
            pack_column(dict.values(), &mut values)?;
            out.extend(
                dict.normalized_keys()
                    .iter()
                    .map(|&k| values.get(k).copied().unwrap_or(0)),
            );
        }
        DataType::Utf8 => {
            let a = column.as_string::<i32>();
            let (offsets, data) = (a.value_offsets(), a.values().as_slice());
            out.reserve(a.len());
            for w in offsets.windows(2) {
                let (start, end) = (w[0] as usize, w[1] as usize);
                let word = match data.get(start..end) {
                    Some(s) => pack_str(s).unwrap_or(u64::MAX),
                    None => return None,
                };
                out.push(word);
            }
        }
        DataType::LargeUtf8 => {
            let a = column.as_string::<i64>();
            for i in 0..a.len() {
                out.push(pack_str(a.value(i).as_bytes()).unwrap_or(u64::MAX));
            }
        }
        DataType::Utf8View => {
            let a = column.as_string_view();
            for i in 0..a.len() {
                out.push(pack_str(a.value(i).as_bytes()).unwrap_or(u64::MAX));
            }
        }
        _ => return None,
    }
    // A string too long to pack left u64::MAX (a packed string's top byte is at most 7);
    // NULL slots may hold anything and are zeroed below.
    let strings = matches!(
        column.data_type(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    );
    match column.logical_nulls() {
        Some(nulls) => {
            for (i, w) in out.iter_mut().enumerate() {
                if nulls.is_null(i) {
                    *w = 0;
                } else if strings && *w == u64::MAX {
                    return None;
                }
            }
        }
        None if strings && out.contains(&u64::MAX) => return None,
        None => {}
    }
    Some(())
}

/// The column of type `t` holding `words` (one per group, `None` for NULL).
fn unpack_column(
    t: &DataType,
    words: impl Iterator<Item = Option<u64>>,
) -> Result<ArrayRef, String> {
    fn ints<T: ArrowPrimitiveType>(
        t: &DataType,
        words: impl Iterator<Item = Option<u64>>,
        f: impl Fn(u64) -> T::Native,
    ) -> ArrayRef {
        let array: PrimitiveArray<T> = words.map(|w| w.map(&f)).collect();
        Arc::new(array.with_data_type(t.clone()))
    }
    Ok(match t {
        DataType::Int8 => ints::<Int8Type>(t, words, |w| w as i8),
        DataType::Int16 => ints::<Int16Type>(t, words, |w| w as i16),
        DataType::Int32 => ints::<Int32Type>(t, words, |w| w as i32),
        DataType::Int64 => ints::<Int64Type>(t, words, |w| w as i64),
        DataType::UInt8 => ints::<UInt8Type>(t, words, |w| w as u8),
        DataType::UInt16 => ints::<UInt16Type>(t, words, |w| w as u16),
        DataType::UInt32 => ints::<UInt32Type>(t, words, |w| w as u32),
        DataType::UInt64 => ints::<UInt64Type>(t, words, |w| w),
        DataType::Date32 => ints::<Date32Type>(t, words, |w| w as i32),
        DataType::Date64 => ints::<Date64Type>(t, words, |w| w as i64),
        DataType::Timestamp(TimeUnit::Second, _) => {
            ints::<TimestampSecondType>(t, words, |w| w as i64)
        }
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            ints::<TimestampMillisecondType>(t, words, |w| w as i64)
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            ints::<TimestampMicrosecondType>(t, words, |w| w as i64)
        }
        DataType::Timestamp(TimeUnit::Nanosecond, _) => {
            ints::<TimestampNanosecondType>(t, words, |w| w as i64)
        }
        DataType::Boolean => Arc::new(words.map(|w| w.map(|w| w != 0)).collect::<BooleanArray>()),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            let strings: StringArray = words.map(|w| w.map(unpack_str)).collect();
            cast_checked(&(Arc::new(strings) as ArrayRef), t)?
        }
        other => return Err(format!("group key of type {other} does not pack")),
    })
}

/// Most bits of a batch's small key codes (a table of 2^12 group ids, 16 KiB).
const MAX_CODE_BITS: u32 = 12;

/// When every key column's words in the batch span a small range: per row, the key as one
/// code (each column's word minus the column's minimum, the columns' bits side by side)
/// and the number of bits of the codes. The code is a bijection of the key within the batch.
fn small_codes(columns: &[Vec<u64>], n: usize) -> Option<(Vec<u32>, u32)> {
    let mut codes = vec![0u32; n];
    let mut shift = 0u32;
    for words in columns {
        let (min, max) = words
            .iter()
            .fold((u64::MAX, 0u64), |(lo, hi), &w| (lo.min(w), hi.max(w)));
        let bits = 64 - max.wrapping_sub(min).leading_zeros();
        if n == 0 || shift + bits > MAX_CODE_BITS {
            return None;
        }
        for (code, &w) in codes.iter_mut().zip(words) {
            *code |= ((w - min) as u32) << shift;
        }
        shift += bits;
    }
    Some((codes, shift))
}

/// Hash of a packed key: FxHash's multiply-rotate per word, then the high half folded
/// into the low so that hashbrown's bucket bits (low) and tag bits (high) both vary.
#[inline]
fn hash_words(key: &[u64]) -> u64 {
    const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
    let mut h = 0u64;
    for &w in key {
        h = (h.rotate_left(5) ^ w).wrapping_mul(K);
    }
    h ^ (h >> 32)
}

/// Equality of two keys of the same width, without a `memcmp` call per comparison (which
/// is what slice equality compiles to, and a function call in `wasm32`).
#[inline]
fn same_words(a: &[u64], b: &[u64]) -> bool {
    a.iter().zip(b).fold(0, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Packed {
    fn width(&self) -> usize {
        1 + self.batch.len()
    }

    /// The id of the group with `key`, a new one (`*num_groups`, then incremented) when
    /// the key is new.
    #[inline]
    fn find_or_insert(&mut self, key: &[u64], num_groups: &mut usize) -> u32 {
        let width = key.len();
        let hash = hash_words(key);
        let words = &self.words;
        if let Some(&id) = self.table.find(hash, |&id| {
            same_words(&words[id as usize * width..][..width], key)
        }) {
            return id;
        }
        let id = *num_groups as u32;
        self.words.extend_from_slice(key);
        let words = &self.words;
        self.table.insert_unique(hash, id, |&g| {
            hash_words(&words[g as usize * width..][..width])
        });
        *num_groups += 1;
        id
    }

    /// The key of group `id`.
    fn key(&self, id: u32) -> &[u64] {
        let w = self.width();
        &self.words[id as usize * w..][..w]
    }
}

impl GroupIndex {
    /// An index for keys of the given column types.
    ///
    /// # Errors
    /// A message when `arrow-row` cannot encode one of the types.
    pub(crate) fn try_new(types: Vec<DataType>) -> Result<Self, String> {
        // Dictionary-encoded keys are keyed by value, as their value type.
        let types: Vec<DataType> = types
            .into_iter()
            .map(|t| match t {
                DataType::Dictionary(_, value) => *value,
                t => t,
            })
            .collect();
        let repr = if types.len() <= MAX_PACKED_COLUMNS && types.iter().all(packable) {
            Repr::Packed(Packed {
                words: Vec::new(),
                table: HashTable::new(),
                batch: vec![Vec::new(); types.len()],
                nulls: Vec::new(),
            })
        } else {
            Repr::Rows(Self::row_keys(&types)?)
        };
        Ok(Self {
            types,
            num_groups: 0,
            repr,
        })
    }

    fn row_keys(types: &[DataType]) -> Result<RowKeys, String> {
        let fields = types.iter().map(|t| SortField::new(t.clone())).collect();
        let converter = RowConverter::new(fields).map_err(|e| e.to_string())?;
        let rows = converter.empty_rows(0, 0);
        Ok(RowKeys {
            converter,
            rows,
            index: HashMap::new(),
        })
    }

    /// Number of groups seen.
    pub(crate) fn num_groups(&self) -> usize {
        self.num_groups
    }

    /// Appends to `ids` the group id of each row of `columns` (the key columns, all of the
    /// same length), creating groups for new keys.
    ///
    /// # Errors
    /// A message when the key columns cannot be row-encoded.
    pub(crate) fn assign(
        &mut self,
        columns: &[ArrayRef],
        ids: &mut Vec<u32>,
    ) -> Result<(), String> {
        if self.assign_dictionary_keys(columns, ids) {
            return Ok(());
        }
        if let Repr::Packed(packed) = &mut self.repr {
            let mut all_pack = true;
            for (column, out) in columns.iter().zip(packed.batch.iter_mut()) {
                if pack_column(column, out).is_none() {
                    all_pack = false;
                    break;
                }
            }
            if all_pack {
                self.assign_packed(columns, ids);
                return Ok(());
            }
            self.to_rows()?;
        }
        let Repr::Rows(keys) = &mut self.repr else {
            unreachable!("turned to rows above")
        };
        let columns = columns
            .iter()
            .map(|c| match c.data_type() {
                DataType::Dictionary(_, value) => cast_checked(c, value),
                _ => Ok(c.clone()),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let rows = keys
            .converter
            .convert_columns(&columns)
            .map_err(|e| e.to_string())?;
        for row in rows.iter() {
            let key: &[u8] = row.as_ref();
            let id = match keys.index.get(key) {
                Some(&id) => id,
                None => {
                    let id = self.num_groups as u32;
                    keys.index.insert(key.into(), id);
                    keys.rows.push(row);
                    self.num_groups += 1;
                    id
                }
            };
            ids.push(id);
        }
        Ok(())
    }

    /// The fast path for keys that are all dictionary-encoded (Int32 keys), without NULLs,
    /// whose dictionaries' sizes multiply to at most 2^[`MAX_CODE_BITS`]: the dictionary
    /// keys themselves form each row's code into a table of group ids, and a key's words
    /// are looked up once per distinct code. False (nothing assigned) when it does not apply.
    fn assign_dictionary_keys(&mut self, columns: &[ArrayRef], ids: &mut Vec<u32>) -> bool {
        let Repr::Packed(packed) = &mut self.repr else {
            return false;
        };
        let mut dictionaries = Vec::with_capacity(columns.len());
        let mut size = 1usize;
        for column in columns {
            let Some(dict) = column.as_dictionary_opt::<Int32Type>() else {
                return false;
            };
            if column.logical_null_count() > 0 {
                return false;
            }
            let mut words = Vec::new();
            if pack_column(dict.values(), &mut words).is_none() {
                return false;
            }
            size = size.saturating_mul(words.len().max(1));
            if size > 1 << MAX_CODE_BITS {
                return false;
            }
            dictionaries.push((dict.keys().values(), words));
        }
        let n = columns.first().map_or(0, |c| c.len());
        let mut codes = vec![0u32; n];
        let mut stride = 1u32;
        for (keys, words) in &dictionaries {
            let len = words.len() as u32;
            // Arrow validates keys against the dictionary; check anyway, without a branch.
            let mut in_range = true;
            for (code, &k) in codes.iter_mut().zip(keys.iter()) {
                let k = k as u32;
                in_range &= k < len;
                *code = code.wrapping_add(k.wrapping_mul(stride));
            }
            if !in_range {
                return false;
            }
            stride *= len.max(1);
        }
        let mut direct = vec![u32::MAX; size];
        let mut key = vec![0u64; 1 + columns.len()];
        ids.reserve(n);
        for (i, &code) in codes.iter().enumerate() {
            let slot = &mut direct[code as usize];
            if *slot == u32::MAX {
                for (c, (keys, words)) in dictionaries.iter().enumerate() {
                    key[c + 1] = words.get(keys[i] as usize).copied().unwrap_or(0);
                }
                *slot = packed.find_or_insert(&key, &mut self.num_groups);
            }
            ids.push(*slot);
        }
        true
    }

    fn assign_packed(&mut self, columns: &[ArrayRef], ids: &mut Vec<u32>) {
        let Repr::Packed(packed) = &mut self.repr else {
            return;
        };
        let n = columns.first().map_or(0, |c| c.len());
        packed.nulls.clear();
        packed.nulls.resize(n, 0);
        for (c, column) in columns.iter().enumerate() {
            if let Some(nulls) = column.logical_nulls() {
                for (i, bits) in packed.nulls.iter_mut().enumerate() {
                    if nulls.is_null(i) {
                        *bits |= 1 << c;
                    }
                }
            }
        }
        let width = packed.width();
        let mut key = vec![0u64; width];
        if packed.nulls.iter().all(|&b| b == 0) {
            if let Some((codes, bits)) = small_codes(&packed.batch, n) {
                // Few distinct keys: each row's code indexes a table of this batch's group
                // ids; the hash table is probed once per distinct key, not once per row.
                let mut direct = vec![u32::MAX; 1 << bits];
                ids.reserve(n);
                for (i, &code) in codes.iter().enumerate() {
                    let slot = &mut direct[code as usize];
                    if *slot == u32::MAX {
                        key[0] = 0;
                        for (c, words) in packed.batch.iter().enumerate() {
                            key[c + 1] = words[i];
                        }
                        *slot = packed.find_or_insert(&key, &mut self.num_groups);
                    }
                    ids.push(*slot);
                }
                return;
            }
        }
        let mut last = vec![0u64; width];
        let mut last_id = None;
        ids.reserve(n);
        for i in 0..n {
            key[0] = packed.nulls[i];
            for (c, words) in packed.batch.iter().enumerate() {
                key[c + 1] = words[i];
            }
            // Runs of equal keys (sorted or clustered data) skip the hash.
            if let Some(id) = last_id {
                if same_words(&last, &key) {
                    ids.push(id);
                    continue;
                }
            }
            let id = packed.find_or_insert(&key, &mut self.num_groups);
            ids.push(id);
            last.copy_from_slice(&key);
            last_id = Some(id);
        }
    }

    /// The packed groups' key columns.
    fn packed_columns(&self, packed: &Packed) -> Result<Vec<ArrayRef>, String> {
        self.types
            .iter()
            .enumerate()
            .map(|(c, t)| {
                let words = (0..self.num_groups as u32).map(|id| {
                    let key = packed.key(id);
                    (key[0] & (1 << c) == 0).then_some(key[c + 1])
                });
                unpack_column(t, words)
            })
            .collect()
    }

    /// Turns a packed index into a row index with the same group ids.
    fn to_rows(&mut self) -> Result<(), String> {
        let Repr::Packed(packed) = &self.repr else {
            return Ok(());
        };
        let columns = self.packed_columns(packed)?;
        let mut keys = Self::row_keys(&self.types)?;
        let rows = keys
            .converter
            .convert_columns(&columns)
            .map_err(|e| e.to_string())?;
        for (id, row) in rows.iter().enumerate() {
            keys.index.insert(row.as_ref().into(), id as u32);
            keys.rows.push(row);
        }
        self.repr = Repr::Rows(keys);
        Ok(())
    }

    /// The key columns, one row per group in id order.
    ///
    /// # Errors
    /// A message when the rows do not decode.
    pub(crate) fn columns(&self) -> Result<Vec<ArrayRef>, String> {
        match &self.repr {
            Repr::Packed(packed) => self.packed_columns(packed),
            Repr::Rows(keys) => keys
                .converter
                .convert_rows(&keys.rows)
                .map_err(|e| e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::Int32Array;

    fn strings(v: &[Option<&str>]) -> ArrayRef {
        Arc::new(StringArray::from(v.to_vec()))
    }

    fn ints(v: &[Option<i32>]) -> ArrayRef {
        Arc::new(Int32Array::from(v.to_vec()))
    }

    fn is_packed(index: &GroupIndex) -> bool {
        matches!(index.repr, Repr::Packed(_))
    }

    #[test]
    fn packed_keys_get_ids_in_order_of_first_appearance_and_come_back() {
        let mut index = GroupIndex::try_new(vec![DataType::Utf8, DataType::Int32]).unwrap();
        let mut ids = Vec::new();
        let a = strings(&[Some("A"), Some("B"), None, Some("A"), Some(""), Some("A")]);
        let b = ints(&[Some(1), Some(2), Some(1), Some(1), Some(1), None]);
        index.assign(&[a, b], &mut ids).unwrap();
        assert_eq!(ids, [0, 1, 2, 0, 3, 4]);
        assert!(is_packed(&index));
        // NULL and "" are different keys; so are NULL and 0.
        let a = strings(&[None, Some(""), Some("A")]);
        let b = ints(&[Some(1), Some(1), Some(0)]);
        index.assign(&[a, b], &mut ids).unwrap();
        assert_eq!(ids[6..], [2, 3, 5]);
        let columns = index.columns().unwrap();
        assert_eq!(
            columns[0].as_ref(),
            &StringArray::from(vec![
                Some("A"),
                Some("B"),
                None,
                Some(""),
                Some("A"),
                Some("A")
            ]) as &dyn Array
        );
        assert_eq!(
            columns[1].as_ref(),
            &Int32Array::from(vec![Some(1), Some(2), Some(1), Some(1), None, Some(0)])
                as &dyn Array
        );
    }

    #[test]
    fn a_long_string_turns_the_index_to_rows_keeping_ids() {
        let mut index = GroupIndex::try_new(vec![DataType::Utf8]).unwrap();
        let mut ids = Vec::new();
        index
            .assign(&[strings(&[Some("R"), Some("N"), Some("R")])], &mut ids)
            .unwrap();
        assert!(is_packed(&index));
        index
            .assign(
                &[strings(&[
                    Some("a longer string"),
                    Some("N"),
                    None,
                    Some("R"),
                ])],
                &mut ids,
            )
            .unwrap();
        assert!(!is_packed(&index));
        assert_eq!(ids, [0, 1, 0, 2, 1, 3, 0]);
        assert_eq!(
            index.columns().unwrap()[0].as_ref(),
            &StringArray::from(vec![Some("R"), Some("N"), Some("a longer string"), None])
                as &dyn Array
        );
    }

    #[test]
    fn small_and_wide_key_ranges_give_first_appearance_ids() {
        // Batches whose keys span few values (the direct table) and many (the hash table),
        // against ids numbered by first appearance.
        let mut index = GroupIndex::try_new(vec![DataType::Int32, DataType::Utf8]).unwrap();
        let mut reference = std::collections::HashMap::new();
        let mut expected = Vec::new();
        let mut ids = Vec::new();
        let mut state = 7u64;
        for spread in [3, 5, 1_000_000, 4] {
            let mut a = Vec::new();
            let mut b = Vec::new();
            for _ in 0..1000 {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let x = ((state >> 33) % spread) as i32 - 2;
                let y = ["A", "F", "O", "N"][(state >> 20) as usize % 4];
                let next = reference.len() as u32;
                expected.push(*reference.entry((x, y)).or_insert(next));
                a.push(Some(x));
                b.push(Some(y));
            }
            index.assign(&[ints(&a), strings(&b)], &mut ids).unwrap();
        }
        assert!(is_packed(&index));
        assert_eq!(ids, expected);
        assert_eq!(index.num_groups(), reference.len());
        let columns = index.columns().unwrap();
        for ((x, y), id) in reference {
            assert_eq!(columns[0].as_primitive::<Int32Type>().value(id as usize), x);
            assert_eq!(columns[1].as_string::<i32>().value(id as usize), y);
        }
    }

    #[test]
    fn dictionary_keys_group_by_value() {
        use arrow_array::DictionaryArray;
        let mut index = GroupIndex::try_new(vec![DataType::Dictionary(
            Box::new(DataType::Int32),
            Box::new(DataType::Utf8),
        )])
        .unwrap();
        let mut ids = Vec::new();
        // Two batches with different dictionaries for the same values, and a NULL key.
        let a: DictionaryArray<Int32Type> = vec![Some("N"), Some("R"), None, Some("N")]
            .into_iter()
            .collect();
        let b: DictionaryArray<Int32Type> =
            vec![Some("R"), Some("A"), Some("N")].into_iter().collect();
        index.assign(&[Arc::new(a)], &mut ids).unwrap();
        index.assign(&[Arc::new(b)], &mut ids).unwrap();
        assert_eq!(ids, [0, 1, 2, 0, 1, 3, 0]);
        // Long values turn the index to rows, which key dictionaries by value too.
        let c: DictionaryArray<Int32Type> =
            vec![Some("a long value"), Some("R")].into_iter().collect();
        index.assign(&[Arc::new(c)], &mut ids).unwrap();
        assert!(!is_packed(&index));
        assert_eq!(ids[7..], [4, 1]);
        assert_eq!(
            index.columns().unwrap()[0].as_ref(),
            &StringArray::from(vec![
                Some("N"),
                Some("R"),
                None,
                Some("A"),
                Some("a long value")
            ]) as &dyn Array
        );
    }

    #[test]
    fn seven_byte_strings_pack_eight_do_not() {
        assert_eq!(
            pack_str(b"1234567").map(unpack_str).as_deref(),
            Some("1234567")
        );
        assert_eq!(
            pack_str("é".as_bytes()).map(unpack_str).as_deref(),
            Some("é")
        );
        assert_eq!(pack_str(b"12345678"), None);
    }
}
