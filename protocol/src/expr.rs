//! Scalar expressions and partial aggregates evaluated inside the sandbox.

use std::fmt;

use arrow_schema::DataType;
use serde::{Deserialize, Serialize};

use crate::plugin::PluginRef;

/// A scalar expression over the columns of one file, evaluated per row with SQL
/// three-valued logic. Column references are by name in the file's schema.
///
/// The operators follow the Arrow compute kernels (`arrow-ord`, `arrow-arith`,
/// `arrow-string`) so that an expression evaluated in the sandbox gives the same
/// answer as DataFusion evaluating it in the intermediary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Expr {
    /// A column of the file, by name.
    Column(String),
    /// A constant of a given Arrow type.
    Literal(Literal),
    /// `left <op> right`, a comparison returning Boolean.
    Cmp(CmpOp, Box<Expr>, Box<Expr>),
    /// `left <op> right`, wrapping arithmetic (as DataFusion's default).
    Arithmetic(ArithmeticOp, Box<Expr>, Box<Expr>),
    /// Kleene conjunction of the operands.
    And(Vec<Expr>),
    /// Kleene disjunction of the operands.
    Or(Vec<Expr>),
    /// Boolean negation.
    Not(Box<Expr>),
    /// `expr IS NULL` (or `IS NOT NULL` when `negated`).
    IsNull {
        /// The operand.
        expr: Box<Expr>,
        /// `IS NOT NULL` when true.
        negated: bool,
    },
    /// `expr [NOT] IN (list)`.
    InList {
        /// The operand.
        expr: Box<Expr>,
        /// The values; each has the operand's type. In JSON, more than 8 integer literals of
        /// one type travel as `{"ints": [...], "type": T}` (see [`compact_list`]).
        #[serde(with = "compact_list")]
        list: Vec<Expr>,
        /// `NOT IN` when true.
        negated: bool,
    },
    /// `expr [NOT] [I]LIKE pattern` with SQL `%` and `_` wildcards.
    Like {
        /// The string operand.
        expr: Box<Expr>,
        /// The pattern, usually a literal.
        pattern: Box<Expr>,
        /// `NOT LIKE` when true.
        negated: bool,
        /// `ILIKE` (case-insensitive) when true.
        case_insensitive: bool,
    },
    /// `CAST(expr AS data_type)`; an unrepresentable value is an error, as in DataFusion.
    Cast(Box<Expr>, DataType),
    /// `expr` is probably one of a hash join's build-side keys: a split-block Bloom filter
    /// (SBBF) as the Parquet format specifies it (`BloomFilter.md`: 256-bit blocks of eight
    /// 32-bit words, the block chosen by the upper 32 bits of the xxHash64 (seed 0) of the
    /// value, one bit per word set by the salted lower 32 bits). An integer operand (Int8 to
    /// Int64, UInt8 to UInt32, Date32) is hashed as its 8-byte little-endian `i64`. True for
    /// every key inserted and for a few others (false positives); false for NULL.
    /// A join filter, so it only ever makes a scan return fewer rows that the join would
    /// drop anyway.
    BloomFilter {
        /// The integer operand.
        expr: Box<Expr>,
        /// The filter's bitset.
        bitset: BloomBits,
    },
    /// A registered scalar function plugin applied to `args`, returning `return_type`
    /// (see `pushdown-plugins/ABI.md`).
    Call {
        /// The plugin.
        plugin: PluginRef,
        /// The arguments, one column each.
        args: Vec<Expr>,
        /// The type of the column it returns.
        return_type: DataType,
    },
}

/// The JSON of an [`Expr::InList`]'s values: a list of more than 8 integer literals of one
/// type (a join filter's keys, up to 1024) as `{"ints": [1, 2, ...], "type": "Int64"}`
/// instead of one `{"Literal": {"Int": [1, "Int64"]}}` object each: a fifth of the bytes,
/// and each task decodes it (in the sandbox). Any other list is a JSON array of [`Expr`]s;
/// both forms are read.
pub mod compact_list {
    use super::{Expr, Literal};
    use arrow_schema::DataType;
    use serde::de::{Error as _, MapAccess, SeqAccess, Visitor};
    use serde::ser::SerializeMap;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serialises `list` (see the module doc).
    ///
    /// # Errors
    /// The serializer's.
    pub fn serialize<S: Serializer>(list: &[Expr], s: S) -> Result<S::Ok, S::Error> {
        let common = match list.first() {
            Some(Expr::Literal(Literal::Int(_, t))) if list.len() > 8 => Some(t),
            _ => None,
        };
        let ints: Option<Vec<i64>> = common.and_then(|t| {
            list.iter()
                .map(|e| match e {
                    Expr::Literal(Literal::Int(v, u)) if u == t => Some(*v),
                    _ => None,
                })
                .collect()
        });
        match (ints, common) {
            (Some(ints), Some(t)) if s.is_human_readable() => {
                let mut map = s.serialize_map(Some(2))?;
                map.serialize_entry("ints", &ints)?;
                map.serialize_entry("type", t)?;
                map.end()
            }
            _ => s.collect_seq(list),
        }
    }

    /// Reads either form (see the module doc).
    ///
    /// # Errors
    /// When the JSON is neither, or an `ints` object lacks a field.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Expr>, D::Error> {
        struct List;
        impl<'de> Visitor<'de> for List {
            type Value = Vec<Expr>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an array of expressions or {\"ints\": [...], \"type\": ...}")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Expr>, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
                while let Some(e) = seq.next_element()? {
                    out.push(e);
                }
                Ok(out)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<Expr>, A::Error> {
                let (mut ints, mut data_type): (Option<Vec<i64>>, Option<DataType>) = (None, None);
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    match key.as_ref() {
                        "ints" => ints = Some(map.next_value()?),
                        "type" => data_type = Some(map.next_value()?),
                        other => return Err(A::Error::unknown_field(other, &["ints", "type"])),
                    }
                }
                let ints = ints.ok_or_else(|| A::Error::missing_field("ints"))?;
                let data_type = data_type.ok_or_else(|| A::Error::missing_field("type"))?;
                Ok(ints
                    .into_iter()
                    .map(|v| Expr::Literal(Literal::Int(v, data_type.clone())))
                    .collect())
            }
        }
        if d.is_human_readable() {
            d.deserialize_any(List)
        } else {
            Vec::<Expr>::deserialize(d)
        }
    }
}

/// The bitset of an [`Expr::BloomFilter`]: a power of two of bytes, at least 32 (one block)
/// and at most [`BloomBits::MAX_BYTES`]; base64 in JSON. In a [`crate::GuestRequest`] with
/// [`blobs`](crate::GuestRequest::blobs) it is empty (`""`): its bytes follow the input.
#[derive(Clone, PartialEq)]
pub struct BloomBits(pub Vec<u8>);

impl BloomBits {
    /// The largest bitset a task may carry (1 MiB: about 800 000 keys at a 1% false
    /// positive rate).
    pub const MAX_BYTES: usize = 1 << 20;

    /// Checks the size rules above.
    ///
    /// # Errors
    /// A one-line message giving the size when it breaks them.
    pub fn check(&self) -> Result<(), String> {
        let n = self.0.len();
        if n < 32 || !n.is_power_of_two() || n > Self::MAX_BYTES {
            return Err(format!(
                "a Bloom filter's bitset is {n} bytes; it must be a power of two from 32 to {}",
                Self::MAX_BYTES
            ));
        }
        Ok(())
    }
}

impl fmt::Debug for BloomBits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BloomBits({} bytes)", self.0.len())
    }
}

impl Serialize for BloomBits {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use base64::Engine as _;
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for BloomBits {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use base64::Engine as _;
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        if text.is_empty() {
            // A bitset moved out of a guest request's JSON (`GuestRequest::blobs`); one
            // left empty fails where it is probed, naming its size.
            return Ok(BloomBits(Vec::new()));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map_err(serde::de::Error::custom)?;
        let bits = BloomBits(bytes);
        bits.check().map_err(serde::de::Error::custom)?;
        Ok(bits)
    }
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CmpOp {
    /// `=`
    Eq,
    /// `<>`
    NotEq,
    /// `<`
    Lt,
    /// `<=`
    LtEq,
    /// `>`
    Gt,
    /// `>=`
    GtEq,
}

impl CmpOp {
    /// The operator with its operands swapped: `c < x` is `x > c`.
    pub fn flipped(self) -> CmpOp {
        match self {
            CmpOp::Lt => CmpOp::Gt,
            CmpOp::LtEq => CmpOp::GtEq,
            CmpOp::Gt => CmpOp::Lt,
            CmpOp::GtEq => CmpOp::LtEq,
            other => other,
        }
    }
}

/// An arithmetic operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ArithmeticOp {
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
    /// `%`
    Rem,
}

/// A constant. `value` is interpreted in `data_type`:
/// integers, dates (days since the epoch), timestamps (in the type's unit) and
/// decimals (the unscaled value, as a decimal string so that `i128` survives JSON)
/// are [`Literal::Int`] / [`Literal::Decimal`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Literal {
    /// NULL of the given type.
    Null(DataType),
    /// A Boolean.
    Bool(bool),
    /// A signed integer stored in `data_type` (any integer, date, time, timestamp or duration type).
    Int(i64, DataType),
    /// An unsigned integer stored in `data_type`.
    UInt(u64, DataType),
    /// A float stored in `data_type` (Float32 or Float64).
    Float(f64, DataType),
    /// An unscaled decimal value (decimal digits) of the given `Decimal128(precision, scale)` type.
    Decimal(String, DataType),
    /// A string stored in `data_type` (Utf8, LargeUtf8 or Utf8View).
    Utf8(String, DataType),
}

impl Literal {
    /// The Arrow type of the constant.
    pub fn data_type(&self) -> DataType {
        match self {
            Literal::Null(t)
            | Literal::Int(_, t)
            | Literal::UInt(_, t)
            | Literal::Float(_, t)
            | Literal::Decimal(_, t)
            | Literal::Utf8(_, t) => t.clone(),
            Literal::Bool(_) => DataType::Boolean,
        }
    }
}

/// An aggregate function whose partial state the storage node computes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AggregateFunction {
    /// Number of non-null values (or of rows, when the argument is a literal).
    Count,
    /// Sum of non-null values; NULL when there are none.
    Sum,
    /// Smallest non-null value; NULL when there are none.
    Min,
    /// Largest non-null value; NULL when there are none.
    Max,
    /// A registered aggregate plugin; the state is its opaque `Binary` partial state.
    Plugin(PluginRef),
}

/// One column of a partial aggregate state: `function(argument)` per group,
/// returned as `state_type`. AVG travels as a `Count` and a `Sum` column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartialAggregate {
    /// The function whose state this column carries.
    pub function: AggregateFunction,
    /// The argument, evaluated per row.
    pub argument: Expr,
    /// The Arrow type of the state column; the argument is cast to it before a `Sum`.
    pub state_type: DataType,
}

impl Expr {
    /// Adds the plugins the expression calls to `out`.
    pub fn collect_plugins(&self, out: &mut std::collections::BTreeSet<PluginRef>) {
        match self {
            Expr::Column(_) | Expr::Literal(_) => {}
            Expr::Cmp(_, l, r) | Expr::Arithmetic(_, l, r) => {
                l.collect_plugins(out);
                r.collect_plugins(out);
            }
            Expr::And(items) | Expr::Or(items) => items.iter().for_each(|e| e.collect_plugins(out)),
            Expr::Not(e)
            | Expr::Cast(e, _)
            | Expr::IsNull { expr: e, .. }
            | Expr::BloomFilter { expr: e, .. } => e.collect_plugins(out),
            Expr::InList { expr, list, .. } => {
                expr.collect_plugins(out);
                list.iter().for_each(|e| e.collect_plugins(out));
            }
            Expr::Like { expr, pattern, .. } => {
                expr.collect_plugins(out);
                pattern.collect_plugins(out);
            }
            Expr::Call { plugin, args, .. } => {
                out.insert(plugin.clone());
                args.iter().for_each(|e| e.collect_plugins(out));
            }
        }
    }

    /// The bitsets of the expression's [`Expr::BloomFilter`]s, depth first in operand
    /// order (the order [`GuestRequest::blobs`](crate::GuestRequest::blobs) lists them in).
    pub fn bloom_bitsets_mut<'a>(&'a mut self, out: &mut Vec<&'a mut BloomBits>) {
        match self {
            Expr::Column(_) | Expr::Literal(_) => {}
            Expr::Cmp(_, l, r) | Expr::Arithmetic(_, l, r) => {
                l.bloom_bitsets_mut(out);
                r.bloom_bitsets_mut(out);
            }
            Expr::And(items) | Expr::Or(items) => {
                items.iter_mut().for_each(|e| e.bloom_bitsets_mut(out))
            }
            Expr::Not(e) | Expr::Cast(e, _) | Expr::IsNull { expr: e, .. } => {
                e.bloom_bitsets_mut(out)
            }
            Expr::BloomFilter { expr, bitset } => {
                expr.bloom_bitsets_mut(out);
                out.push(bitset);
            }
            Expr::InList { expr, list, .. } => {
                expr.bloom_bitsets_mut(out);
                list.iter_mut().for_each(|e| e.bloom_bitsets_mut(out));
            }
            Expr::Like { expr, pattern, .. } => {
                expr.bloom_bitsets_mut(out);
                pattern.bloom_bitsets_mut(out);
            }
            Expr::Call { args, .. } => args.iter_mut().for_each(|e| e.bloom_bitsets_mut(out)),
        }
    }

    /// Adds the names of the columns the expression reads to `out`.
    pub fn collect_columns(&self, out: &mut std::collections::BTreeSet<String>) {
        match self {
            Expr::Column(c) => {
                out.insert(c.clone());
            }
            Expr::Literal(_) => {}
            Expr::Cmp(_, l, r) | Expr::Arithmetic(_, l, r) => {
                l.collect_columns(out);
                r.collect_columns(out);
            }
            Expr::And(items) | Expr::Or(items) => items.iter().for_each(|e| e.collect_columns(out)),
            Expr::Not(e)
            | Expr::Cast(e, _)
            | Expr::IsNull { expr: e, .. }
            | Expr::BloomFilter { expr: e, .. } => e.collect_columns(out),
            Expr::InList { expr, list, .. } => {
                expr.collect_columns(out);
                list.iter().for_each(|e| e.collect_columns(out));
            }
            Expr::Call { args, .. } => args.iter().for_each(|e| e.collect_columns(out)),
            Expr::Like { expr, pattern, .. } => {
                expr.collect_columns(out);
                pattern.collect_columns(out);
            }
        }
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn join(f: &mut fmt::Formatter<'_>, items: &[Expr], sep: &str) -> fmt::Result {
            write!(f, "(")?;
            for (i, e) in items.iter().enumerate() {
                if i > 0 {
                    write!(f, " {sep} ")?;
                }
                write!(f, "{e}")?;
            }
            write!(f, ")")
        }
        match self {
            Expr::Column(c) => write!(f, "{c}"),
            Expr::Literal(l) => write!(f, "{l}"),
            Expr::Cmp(op, l, r) => {
                let s = match op {
                    CmpOp::Eq => "=",
                    CmpOp::NotEq => "<>",
                    CmpOp::Lt => "<",
                    CmpOp::LtEq => "<=",
                    CmpOp::Gt => ">",
                    CmpOp::GtEq => ">=",
                };
                write!(f, "{l} {s} {r}")
            }
            Expr::Arithmetic(op, l, r) => {
                let s = match op {
                    ArithmeticOp::Add => "+",
                    ArithmeticOp::Sub => "-",
                    ArithmeticOp::Mul => "*",
                    ArithmeticOp::Div => "/",
                    ArithmeticOp::Rem => "%",
                };
                write!(f, "({l} {s} {r})")
            }
            Expr::And(items) => join(f, items, "AND"),
            Expr::Or(items) => join(f, items, "OR"),
            Expr::Not(e) => write!(f, "NOT {e}"),
            Expr::IsNull { expr, negated } => {
                write!(f, "{expr} IS {}NULL", if *negated { "NOT " } else { "" })
            }
            Expr::InList {
                expr,
                list,
                negated,
            } => {
                write!(f, "{expr} {}IN ", if *negated { "NOT " } else { "" })?;
                join(f, list, ",")
            }
            Expr::Like {
                expr,
                pattern,
                negated,
                case_insensitive,
            } => write!(
                f,
                "{expr} {}{} {pattern}",
                if *negated { "NOT " } else { "" },
                if *case_insensitive { "ILIKE" } else { "LIKE" }
            ),
            Expr::Cast(e, t) => write!(f, "CAST({e} AS {t})"),
            Expr::BloomFilter { expr, bitset } => {
                write!(f, "{expr} IN bloom_filter({} bytes)", bitset.0.len())
            }
            Expr::Call { plugin, args, .. } => {
                let args: Vec<String> = args.iter().map(ToString::to_string).collect();
                write!(f, "{plugin}({})", args.join(", "))
            }
        }
    }
}

impl fmt::Display for Literal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Literal::Null(_) => write!(f, "NULL"),
            Literal::Bool(b) => write!(f, "{b}"),
            Literal::Int(v, t) => match t {
                DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => {
                    write!(f, "{v}")
                }
                DataType::Date32 => {
                    let (y, m, d) = civil_from_days(*v);
                    write!(f, "DATE '{y:04}-{m:02}-{d:02}'")
                }
                _ => write!(f, "{v}::{t}"),
            },
            Literal::UInt(v, _) => write!(f, "{v}"),
            Literal::Float(v, _) => write!(f, "{v}"),
            Literal::Decimal(v, t) => match t {
                DataType::Decimal128(_, scale) if *scale > 0 => {
                    let (sign, digits) = v.strip_prefix('-').map_or(("", v.as_str()), |d| ("-", d));
                    let scale = *scale as usize;
                    let padded = format!("{digits:0>width$}", width = scale + 1);
                    let (int, frac) = padded.split_at(padded.len() - scale);
                    write!(f, "{sign}{int}.{frac}")
                }
                _ => write!(f, "{v}"),
            },
            Literal::Utf8(s, _) => write!(f, "'{}'", s.replace('\'', "''")),
        }
    }
}

/// Year, month, day of a count of days since 1970-01-01 in the proleptic Gregorian
/// calendar (H. Hinnant, "chrono-Compatible Low-Level Date Algorithms", `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

impl fmt::Display for PartialAggregate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match &self.function {
            AggregateFunction::Count => "count",
            AggregateFunction::Sum => "sum",
            AggregateFunction::Min => "min",
            AggregateFunction::Max => "max",
            AggregateFunction::Plugin(p) => p.name.as_str(),
        };
        write!(f, "{name}({}) -> {}", self.argument, self.state_type)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_integer_in_list_travels_as_one_array_of_numbers() {
        let column = || Box::new(Expr::Column("k".into()));
        let ints = |n: i64, t: DataType| -> Vec<Expr> {
            (0..n)
                .map(|v| Expr::Literal(Literal::Int(v * 7 - 3, t.clone())))
                .collect()
        };
        let long = Expr::InList {
            expr: column(),
            list: ints(20, DataType::Date32),
            negated: true,
        };
        let json = serde_json::to_string(&long).unwrap();
        assert!(json.contains(r#""list":{"ints":[-3,4,11,"#), "{json}");
        assert!(json.contains(r#""type":"Date32""#), "{json}");
        assert_eq!(serde_json::from_str::<Expr>(&json).unwrap(), long);
        // The array form of the same list still reads.
        let array = json.replace(
            &json[json.find(r#"{"ints""#).unwrap()..json.find(r#","negated""#).unwrap()],
            &serde_json::to_string(&ints(20, DataType::Date32)).unwrap(),
        );
        assert!(array.contains(r#""list":[{"Literal""#), "{array}");
        assert_eq!(serde_json::from_str::<Expr>(&array).unwrap(), long);
        // Short lists, mixed types and other literals stay arrays.
        let mut mixed = ints(20, DataType::Int64);
        mixed.push(Expr::Literal(Literal::Int(1, DataType::Int32)));
        let mut strings = vec![Expr::Literal(Literal::Utf8("a".into(), DataType::Utf8))];
        strings.extend(ints(10, DataType::Int64));
        for list in [ints(8, DataType::Int64), mixed, strings] {
            let e = Expr::InList {
                expr: column(),
                list,
                negated: false,
            };
            let json = serde_json::to_string(&e).unwrap();
            assert!(!json.contains("ints"), "{json}");
            assert_eq!(serde_json::from_str::<Expr>(&json).unwrap(), e);
        }
        for bad in [
            r#"{"InList":{"expr":{"Column":"k"},"list":{"ints":[1]},"negated":false}}"#,
            r#"{"InList":{"expr":{"Column":"k"},"list":{"ints":[1],"type":"Int64","x":1},"negated":false}}"#,
            r#"{"InList":{"expr":{"Column":"k"},"list":{"ints":["1"],"type":"Int64"},"negated":false}}"#,
        ] {
            assert!(serde_json::from_str::<Expr>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_bloom_filter_travels_as_base64_and_a_bitset_of_the_wrong_size_is_refused() {
        let bloom = Expr::BloomFilter {
            expr: Box::new(Expr::Column("l_orderkey".into())),
            bitset: BloomBits((0..64u8).collect()),
        };
        let json = serde_json::to_string(&bloom).unwrap();
        assert!(json.contains("\"bitset\":\"AAECAwQF"), "{json}");
        assert_eq!(serde_json::from_str::<Expr>(&json).unwrap(), bloom);
        assert_eq!(bloom.to_string(), "l_orderkey IN bloom_filter(64 bytes)");
        for bad in [
            vec![0u8; 48],
            vec![0u8; 16],
            vec![0u8; BloomBits::MAX_BYTES * 2],
        ] {
            let n = bad.len();
            let json = serde_json::to_string(&Expr::BloomFilter {
                expr: Box::new(Expr::Column("k".into())),
                bitset: BloomBits(bad),
            })
            .unwrap();
            let err = serde_json::from_str::<Expr>(&json).unwrap_err().to_string();
            assert!(err.contains(&format!("bitset is {n} bytes")), "{err}");
        }
        assert!(serde_json::from_str::<Expr>(
            r#"{"BloomFilter":{"expr":{"Column":"k"},"bitset":"not base64!"}}"#
        )
        .is_err());
    }

    #[test]
    fn literals_display_as_sql() {
        let date = |d| Literal::Int(d, DataType::Date32).to_string();
        assert_eq!(date(0), "DATE '1970-01-01'");
        assert_eq!(date(8766), "DATE '1994-01-01'");
        assert_eq!(date(-1), "DATE '1969-12-31'");
        assert_eq!(date(11_016), "DATE '2000-02-29'");
        let dec = |v: &str, s| Literal::Decimal(v.into(), DataType::Decimal128(15, s)).to_string();
        assert_eq!(dec("5", 2), "0.05");
        assert_eq!(dec("-2400", 2), "-24.00");
        assert_eq!(dec("123", 0), "123");
        assert_eq!(
            Literal::Utf8("it's".into(), DataType::Utf8).to_string(),
            "'it''s'"
        );
    }

    #[test]
    fn columns_are_collected_from_every_operand() {
        let e = Expr::And(vec![
            Expr::Cmp(
                CmpOp::Lt,
                Box::new(Expr::Column("a".into())),
                Box::new(Expr::Column("b".into())),
            ),
            Expr::InList {
                expr: Box::new(Expr::Column("c".into())),
                list: vec![],
                negated: false,
            },
            Expr::Like {
                expr: Box::new(Expr::Cast(
                    Box::new(Expr::Column("d".into())),
                    DataType::Utf8,
                )),
                pattern: Box::new(Expr::Literal(Literal::Utf8("x%".into(), DataType::Utf8))),
                negated: false,
                case_insensitive: false,
            },
        ]);
        let mut out = std::collections::BTreeSet::new();
        e.collect_columns(&mut out);
        assert_eq!(out.into_iter().collect::<Vec<_>>(), ["a", "b", "c", "d"]);
    }
}
