//! A fast reader for CSV chunks of plain records: delimiters and line ends are found 16
//! bytes at a time (SIMD128 in the sandbox, SSE2 natively, the same algorithm), and each
//! projected field is parsed straight from the chunk into its Arrow column, with no string
//! record in between. This is the approach of `simd-csv` and of DuckDB's CSV scanner: a
//! byte-class bitmask per block, then one step per delimiter rather than one per byte (the
//! state machine of `csv-core`, which arrow-csv uses, takes a step per byte).
//!
//! It reads a chunk only when the answer is exactly arrow-csv's: the same values, NULLs,
//! types and batch boundaries. Anything else returns `None` and the caller reads the chunk
//! with arrow-csv, which then gives the answer or the error with its line number: a quote
//! that does not enclose a whole field (`a"b`, an escaped `""`), a carriage return outside
//! quotes, an empty line, a record with the wrong number of fields, bytes that are not
//! UTF-8, a value that does not parse, or a column type this reader does not convert.
//! Quoted fields without quotes inside (TPC-H's comments with commas) are read here.

use std::sync::Arc;

use arrow_array::builder::StringBuilder;
use arrow_array::types::*;
use arrow_array::{ArrayRef, ArrowPrimitiveType, PrimitiveArray, RecordBatch};
use arrow_buffer::{BooleanBufferBuilder, NullBuffer};
use arrow_cast::parse::{parse_decimal, Parser};
use arrow_schema::{DataType, Schema};

/// Which field text is NULL, as arrow-csv decides it (its `NullRegex`).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Nulls<'a> {
    /// The empty field (arrow-csv without a NULL pattern).
    Empty,
    /// Exactly this text (a pattern `^text$`).
    Exact(&'a str),
    /// No field.
    Never,
}

impl Nulls<'_> {
    #[inline]
    fn is_null(self, s: &str) -> bool {
        match self {
            Nulls::Empty => s.is_empty(),
            Nulls::Exact(t) => s == t,
            Nulls::Never => false,
        }
    }
}

/// The chunk's record batches of the `projection` columns of `schema` (in projection
/// order, at most `batch_size` rows each), as arrow-csv's reader with `delimiter`, `quote`
/// (arrow-csv's byte 0 when the dialect has none), no header, no comment, no escape and
/// strict field counts would return them; `None` when this reader cannot tell (see the
/// module documentation), and then only arrow-csv can.
pub(crate) fn read_unquoted(
    input: &[u8],
    schema: &Schema,
    projection: &[usize],
    batch_size: usize,
    nulls: Nulls<'_>,
    delimiter: u8,
    quote: u8,
) -> Option<Vec<RecordBatch>> {
    let n_fields = schema.fields().len();
    if n_fields == 0
        || batch_size == 0
        || [b'\n', b'\r', quote].contains(&delimiter)
        || u32::try_from(input.len()).is_err()
        || !projection
            .iter()
            .all(|&i| i < n_fields && supported(schema.field(i).data_type()))
    {
        return None;
    }
    let text = std::str::from_utf8(input).ok()?;
    let (bounds, rows) = tokenize(input, n_fields, projection, delimiter, quote)?;
    let projected = Arc::new(schema.project(projection).ok()?);
    let mut batches = Vec::with_capacity(rows.div_ceil(batch_size));
    let mut first = 0;
    while first < rows {
        let end = (first + batch_size).min(rows);
        let columns = projection
            .iter()
            .zip(&bounds)
            .map(|(&i, b)| column(text, &b[first..end], schema.field(i).data_type(), nulls))
            .collect::<Option<Vec<_>>>()?;
        let options = arrow_array::RecordBatchOptions::new().with_row_count(Some(end - first));
        batches.push(RecordBatch::try_new_with_options(projected.clone(), columns, &options).ok()?);
        first = end;
    }
    Some(batches)
}

/// Column types read here: those whose arrow-csv conversion is `Parser::parse` or
/// `parse_decimal` per field, or the text itself.
fn supported(ty: &DataType) -> bool {
    matches!(
        ty,
        DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64
            | DataType::Float32
            | DataType::Float64
            | DataType::Date32
            | DataType::Decimal128(..)
            | DataType::Utf8
    )
}

/// Byte ranges `[start, end)` of each projected field (inside its quotes, if quoted), one
/// vector per projected column in projection order, one entry per record; and the number
/// of records. `None` at a quote that is not a whole field's (`a"b`, `"a""b"`, `"a"b`), a
/// CR outside quotes, a quote left open, an empty line or a record whose field count is
/// not `n_fields`.
fn tokenize(
    input: &[u8],
    n_fields: usize,
    projection: &[usize],
    delimiter: u8,
    quote: u8,
) -> Option<(Vec<Vec<(u32, u32)>>, usize)> {
    let mut slot = vec![usize::MAX; n_fields];
    for (j, &i) in projection.iter().enumerate() {
        slot[i] = j;
    }
    let estimate = input.len() / (8 * n_fields).max(16) + 1;
    let bounds: Vec<Vec<(u32, u32)>> = projection
        .iter()
        .map(|_| Vec::with_capacity(estimate))
        .collect();
    let mut state = Fields {
        slot,
        bounds,
        last: n_fields - 1,
        field: 0,
        start: 0,
        delimiter,
        quote,
        quoted: false,
        closed: None,
        rows: 0,
    };
    let blocks = input.chunks_exact(16);
    let tail = blocks.remainder();
    for (b, block) in blocks.enumerate() {
        let mut mask = special_bytes(block.try_into().expect("16 bytes"), delimiter, quote);
        while mask != 0 {
            let p = b * 16 + mask.trailing_zeros() as usize;
            mask &= mask - 1;
            if !state.step(p, input[p]) {
                return None;
            }
        }
    }
    let base = input.len() - tail.len();
    for (i, &byte) in tail.iter().enumerate() {
        if matches!(byte, b'\n' | b'\r') || byte == delimiter || byte == quote {
            if !state.step(base + i, byte) {
                return None;
            }
        }
    }
    // A last record without a line end.
    if (state.start < input.len() || state.field > 0) && !state.step(input.len(), b'\n') {
        return None;
    }
    // A quote still open at the end of the chunk.
    if state.quoted {
        return None;
    }
    Some((state.bounds, state.rows))
}

/// The tokenizer's position in the record being read.
struct Fields {
    /// `slot[k]`: the projected column that field k feeds, or `usize::MAX`.
    slot: Vec<usize>,
    bounds: Vec<Vec<(u32, u32)>>,
    /// Index of a record's last field.
    last: usize,
    /// The field being read: its index in the record and its first byte.
    field: usize,
    start: usize,
    delimiter: u8,
    quote: u8,
    /// Between a field's opening and closing quote.
    quoted: bool,
    /// Where the field being read closed its quotes.
    closed: Option<usize>,
    /// Records read.
    rows: usize,
}

impl Fields {
    /// One step at a special byte at position `p`; false ends the fast path.
    #[inline(always)]
    fn step(&mut self, p: usize, byte: u8) -> bool {
        if self.quoted {
            // Delimiters, line ends and CR between quotes are text; a quote closes.
            if byte == self.quote {
                self.quoted = false;
                self.closed = Some(p);
            }
            return true;
        }
        if byte == self.quote {
            // A quote opens only at the start of a field; one elsewhere (inside a field,
            // or a doubled quote `""` in a quoted one) needs arrow-csv.
            if p == self.start && self.closed.is_none() {
                self.quoted = true;
                return true;
            }
            return false;
        }
        let (start, end) = match self.closed.take() {
            Some(c) if c + 1 == p => (self.start + 1, c),
            // Text after a closing quote.
            Some(_) => return false,
            None => (self.start, p),
        };
        if byte == self.delimiter {
            if self.field == self.last {
                return false;
            }
        } else if byte != b'\n' || self.field != self.last || (self.field == 0 && self.start == p) {
            // A CR, a record with too few fields, or an empty line.
            return false;
        }
        if let Some(column) = self.bounds.get_mut(self.slot[self.field]) {
            column.push((start as u32, end as u32));
        }
        if byte == self.delimiter {
            self.field += 1;
        } else {
            self.field = 0;
            self.rows += 1;
        }
        self.start = p + 1;
        true
    }
}

/// Bit i is set when `block[i]` is the delimiter, a line feed, a carriage return or the
/// quote byte.
#[inline(always)]
fn special_bytes(block: &[u8; 16], delimiter: u8, quote: u8) -> u32 {
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    {
        use core::arch::wasm32::*;
        // SAFETY: `block` is 16 readable bytes; v128_load has no alignment requirement.
        let v = unsafe { v128_load(block.as_ptr().cast::<v128>()) };
        let hits = v128_or(
            v128_or(
                u8x16_eq(v, u8x16_splat(delimiter)),
                u8x16_eq(v, u8x16_splat(b'\n')),
            ),
            v128_or(
                u8x16_eq(v, u8x16_splat(b'\r')),
                u8x16_eq(v, u8x16_splat(quote)),
            ),
        );
        u32::from(u8x16_bitmask(hits))
    }
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    {
        use core::arch::x86_64::*;
        // SAFETY: `block` is 16 readable bytes; _mm_loadu_si128 has no alignment
        // requirement; SSE2 is enabled for this build (checked by the cfg).
        unsafe {
            let v = _mm_loadu_si128(block.as_ptr().cast::<__m128i>());
            let eq = |b: u8| _mm_cmpeq_epi8(v, _mm_set1_epi8(b as i8));
            let hits = _mm_or_si128(
                _mm_or_si128(eq(delimiter), eq(b'\n')),
                _mm_or_si128(eq(b'\r'), eq(quote)),
            );
            _mm_movemask_epi8(hits) as u32
        }
    }
    #[cfg(not(any(
        all(target_arch = "wasm32", target_feature = "simd128"),
        all(target_arch = "x86_64", target_feature = "sse2")
    )))]
    {
        block.iter().enumerate().fold(0u32, |mask, (i, &b)| {
            let hit = b == delimiter || b == b'\n' || b == b'\r' || b == quote;
            mask | (u32::from(hit) << i)
        })
    }
}

/// One column of `ty` from the fields at `bounds` of `text`; `None` when a field does not
/// parse (arrow-csv then reports it).
fn column(text: &str, bounds: &[(u32, u32)], ty: &DataType, nulls: Nulls<'_>) -> Option<ArrayRef> {
    let field = |&(s, e): &(u32, u32)| &text[s as usize..e as usize];
    Some(match ty {
        DataType::Utf8 => {
            let bytes = bounds.iter().map(|&(s, e)| (e - s) as usize).sum();
            let mut builder = StringBuilder::with_capacity(bounds.len(), bytes);
            for b in bounds {
                let s = field(b);
                if nulls.is_null(s) {
                    builder.append_null();
                } else {
                    builder.append_value(s);
                }
            }
            Arc::new(builder.finish())
        }
        DataType::Int8 => primitive::<Int8Type>(text, bounds, nulls, Int8Type::parse)?,
        DataType::Int16 => primitive::<Int16Type>(text, bounds, nulls, Int16Type::parse)?,
        DataType::Int32 => primitive::<Int32Type>(text, bounds, nulls, Int32Type::parse)?,
        DataType::Int64 => primitive::<Int64Type>(text, bounds, nulls, Int64Type::parse)?,
        DataType::UInt8 => primitive::<UInt8Type>(text, bounds, nulls, UInt8Type::parse)?,
        DataType::UInt16 => primitive::<UInt16Type>(text, bounds, nulls, UInt16Type::parse)?,
        DataType::UInt32 => primitive::<UInt32Type>(text, bounds, nulls, UInt32Type::parse)?,
        DataType::UInt64 => primitive::<UInt64Type>(text, bounds, nulls, UInt64Type::parse)?,
        DataType::Float32 => primitive::<Float32Type>(text, bounds, nulls, Float32Type::parse)?,
        DataType::Float64 => primitive::<Float64Type>(text, bounds, nulls, parse_f64)?,
        DataType::Date32 => primitive::<Date32Type>(text, bounds, nulls, Date32Type::parse)?,
        DataType::Decimal128(p, s) => {
            let (p, s) = (*p, *s);
            let array = primitive::<Decimal128Type>(text, bounds, nulls, |v| {
                parse_decimal::<Decimal128Type>(v, p, s).ok()
            })?;
            let array = array
                .as_any()
                .downcast_ref::<PrimitiveArray<Decimal128Type>>()?
                .clone()
                .with_precision_and_scale(p, s)
                .ok()?;
            Arc::new(array)
        }
        _ => return None,
    })
}

/// A primitive column: `parse` of each non-NULL field.
fn primitive<T: ArrowPrimitiveType>(
    text: &str,
    bounds: &[(u32, u32)],
    nulls: Nulls<'_>,
    parse: impl Fn(&str) -> Option<T::Native>,
) -> Option<ArrayRef> {
    let mut values = Vec::with_capacity(bounds.len());
    let mut validity: Option<BooleanBufferBuilder> = None;
    for (i, &(s, e)) in bounds.iter().enumerate() {
        let s = &text[s as usize..e as usize];
        if nulls.is_null(s) {
            let v = validity.get_or_insert_with(|| {
                let mut v = BooleanBufferBuilder::new(bounds.len());
                v.append_n(i, true);
                v
            });
            v.append(false);
            values.push(T::Native::default());
            continue;
        }
        values.push(parse(s)?);
        if let Some(v) = validity.as_mut() {
            v.append(true);
        }
    }
    let nulls = validity.map(|mut v| NullBuffer::new(v.finish()));
    Some(Arc::new(PrimitiveArray::<T>::new(values.into(), nulls)))
}

/// `Float64Type::parse` (arrow-csv's conversion), with a shortcut for plain decimals of at
/// most 15 significant digits (`123.45`, `-0.07`): their mantissa and the power of ten are
/// exact in f64, so one correctly rounded division gives the correctly rounded value, the
/// one `lexical-core` returns (Clinger's fast path, "How to Read Floating Point Numbers
/// Accurately", PLDI 1990).
#[inline]
fn parse_f64(s: &str) -> Option<f64> {
    const POW10: [f64; 16] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
    ];
    let bytes = s.as_bytes();
    let (negative, digits) = match bytes.first() {
        Some(b'-') => (true, &bytes[1..]),
        _ => (false, bytes),
    };
    if !digits.is_empty() && digits.len() <= 16 {
        let mut mantissa: u64 = 0;
        let mut point: Option<usize> = None;
        let mut plain = true;
        for (i, &b) in digits.iter().enumerate() {
            match b {
                b'0'..=b'9' => mantissa = mantissa * 10 + u64::from(b - b'0'),
                b'.' if point.is_none() => point = Some(i),
                _ => {
                    plain = false;
                    break;
                }
            }
        }
        let fraction = point.map_or(0, |p| digits.len() - p - 1);
        let has_digit = digits.len() > usize::from(point.is_some());
        // At most 15 digits in all, so the mantissa is below 2^53.
        if plain
            && has_digit
            && fraction < POW10.len()
            && digits.len() - usize::from(point.is_some()) <= 15
        {
            let value = mantissa as f64 / POW10[fraction];
            return Some(if negative { -value } else { value });
        }
    }
    Float64Type::parse(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::cast::AsArray;
    use arrow_array::Array;
    use arrow_schema::Field;

    fn arrow_csv(
        input: &[u8],
        schema: &Schema,
        projection: &[usize],
        batch_size: usize,
    ) -> Vec<RecordBatch> {
        arrow_csv::ReaderBuilder::new(Arc::new(schema.clone()))
            .with_header(false)
            .with_batch_size(batch_size)
            .with_projection(projection.to_vec())
            .build_buffered(std::io::Cursor::new(input.to_vec()))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    fn schema() -> Schema {
        Schema::new(vec![
            Field::new("i", DataType::Int64, true),
            Field::new("f", DataType::Float64, true),
            Field::new("s", DataType::Utf8, true),
            Field::new("d", DataType::Date32, true),
            Field::new("m", DataType::Decimal128(15, 2), true),
        ])
    }

    #[test]
    fn reads_what_arrow_csv_reads() {
        let input = b"1,0.07,abc,1998-09-02,12.34\n-5,,,1992-01-01,\n7,105000.01,x y,2000-02-29,-0.5\n,-3,\xc3\xa9t\xc3\xa9,1970-01-01,99\n8,1e3,\"z, \nand \r\",1999-12-31,1\n10,\"2.5\",\"\",1999-12-31,\"3\"\n9,0.1234567890123456789,w,1999-12-31,0.01";
        let schema = schema();
        for projection in [vec![0, 1, 2, 3, 4], vec![4, 1], vec![2], vec![]] {
            for batch_size in [1, 2, 3, 1024] {
                let fast = read_unquoted(
                    input,
                    &schema,
                    &projection,
                    batch_size,
                    Nulls::Empty,
                    b',',
                    b'"',
                )
                .expect("fast path");
                let slow = arrow_csv(input, &schema, &projection, batch_size);
                assert_eq!(fast.len(), slow.len(), "{projection:?} {batch_size}");
                for (f, s) in fast.iter().zip(&slow) {
                    assert_eq!(f, s, "{projection:?} {batch_size}");
                }
            }
        }
    }

    #[test]
    fn leaves_to_arrow_csv_what_it_cannot_read_the_same() {
        let schema = schema();
        let all = [0, 1, 2, 3, 4];
        for input in [
            &b"1,2,a\"b,1998-09-02,1\n"[..],
            b"1,2,\"a\"\"b\",1998-09-02,1\n",
            b"1,2,\"a\"b,1998-09-02,1\n",
            b"1,2,\"a,1998-09-02,1\n",
            b"1,2,a,1998-09-02,1\r\n",
            b"1,2,a,1998-09-02\n",
            b"1,2,a,1998-09-02,1,6\n",
            b"1,2,a,1998-09-02,1\n\n2,3,b,1998-09-02,1\n",
            b"x,2,a,1998-09-02,1\n",
            b"1,2,a,1998-13-02,1\n",
            b"1,2,\xff,1998-09-02,1\n",
        ] {
            assert!(
                read_unquoted(input, &schema, &all, 8, Nulls::Empty, b',', b'"').is_none(),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn nulls_follow_the_dialect() {
        let schema = Schema::new(vec![
            Field::new("s", DataType::Utf8, true),
            Field::new("i", DataType::Int32, true),
        ]);
        let input = b"NA,NA\n,1\n";
        let exact = read_unquoted(input, &schema, &[0], 8, Nulls::Exact("NA"), b',', 0).unwrap();
        let s = exact[0].column(0).as_string::<i32>();
        assert!(s.is_null(0) && s.is_valid(1) && s.value(1).is_empty());
        let never =
            read_unquoted(b"a,1\n,2\n", &schema, &[0, 1], 8, Nulls::Never, b',', 0).unwrap();
        assert_eq!(never[0].column(0).null_count(), 0);
        // An empty number is not NULL there, so it does not parse: arrow-csv says so.
        assert!(read_unquoted(b"a,\n", &schema, &[1], 8, Nulls::Never, b',', 0).is_none());
    }

    #[test]
    fn plain_decimals_parse_as_lexical_core_does() {
        for s in [
            "0",
            "-0",
            "0.07",
            "105000.01",
            "123456789012345",
            "1234567890.12345",
            "0.000000000000001",
            "99999.99",
            "-17.5",
            "1.",
            ".5",
            "12345678901234567",
            "1e5",
            "-",
            ".",
            "inf",
            "+3",
        ] {
            let ours = parse_f64(s).map(f64::to_bits);
            let theirs = Float64Type::parse(s).map(f64::to_bits);
            assert_eq!(ours, theirs, "{s}");
        }
        // Every cent value from 0 to 1000.00.
        for cents in 0..100_000u32 {
            let s = format!("{}.{:02}", cents / 100, cents % 100);
            assert_eq!(
                parse_f64(&s).map(f64::to_bits),
                Float64Type::parse(&s).map(f64::to_bits),
                "{s}"
            );
        }
    }
}
