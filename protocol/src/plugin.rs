//! User plugins: their kinds, the signature each declares, and how a task refers to one.
//!
//! The exports each kind needs and the data that crosses them are written down in
//! `pushdown-plugins/ABI.md`; the Rust SDK (`pushdown-plugins/sdk`, crate
//! `pushdown-plugin`) produces them.

use std::fmt;
use std::str::FromStr;

use arrow_schema::{DataType, Field, Schema};
use serde::{Deserialize, Serialize};

/// A registered plugin, as tasks name it: by name for messages and by the SHA-256 of its
/// module so that every tier runs exactly the registered bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PluginRef {
    /// The name SQL uses (`haversine_km`, `approx_distinct`, `access_log`).
    pub name: String,
    /// Hex SHA-256 of the module's binary bytes.
    pub sha256: String,
}

impl fmt::Display for PluginRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name)
    }
}

/// What a plugin provides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PluginKind {
    /// A scalar function: Arrow columns in, one column of the same length out.
    Scalar,
    /// An aggregate: update per group, merge partial states, finalize.
    Aggregate,
    /// A parser: the bytes of one chunk of whole lines in, record batches out.
    Parser,
}

impl PluginKind {
    /// `scalar`, `aggregate` or `parser`.
    pub fn name(self) -> &'static str {
        match self {
            PluginKind::Scalar => "scalar",
            PluginKind::Aggregate => "aggregate",
            PluginKind::Parser => "parser",
        }
    }

    /// The exports a module of this kind must have besides the common ones
    /// ([`COMMON_EXPORTS`]).
    pub fn exports(self) -> &'static [&'static str] {
        match self {
            PluginKind::Scalar => &[EXPORT_SCALAR],
            PluginKind::Aggregate => &[EXPORT_UPDATE, EXPORT_MERGE, EXPORT_FINALIZE],
            PluginKind::Parser => &[EXPORT_PARSE],
        }
    }
}

impl fmt::Display for PluginKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for PluginKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "scalar" => Ok(PluginKind::Scalar),
            "aggregate" => Ok(PluginKind::Aggregate),
            "parser" => Ok(PluginKind::Parser),
            other => Err(format!(
                "unknown plugin kind {other:?}: expected scalar, aggregate or parser"
            )),
        }
    }
}

/// Exports every user plugin has: `memory`, the ABI version, the allocator and the signature.
pub const COMMON_EXPORTS: [&str; 5] = [
    "memory",
    "pushdown_abi_version",
    "pushdown_alloc",
    "pushdown_free",
    EXPORT_SIGNATURE,
];
/// `() -> i64`: `(ptr << 32) | len` of the signature's UTF-8 JSON ([`PluginSignature`]).
pub const EXPORT_SIGNATURE: &str = "pushdown_signature";
/// Scalar: `(ptr: i32, len: i32) -> i64`, Arrow IPC of the arguments in, result column out.
pub const EXPORT_SCALAR: &str = "pushdown_scalar";
/// Aggregate: `(ptr, len) -> i64`, group ids and arguments in, one state per group out.
pub const EXPORT_UPDATE: &str = "pushdown_aggregate_update";
/// Aggregate: `(ptr, len) -> i64`, group ids and states in, one merged state per group out.
pub const EXPORT_MERGE: &str = "pushdown_aggregate_merge";
/// Aggregate: `(ptr, len) -> i64`, states in, the result column out.
pub const EXPORT_FINALIZE: &str = "pushdown_aggregate_finalize";
/// Parser: `(ptr: i32, len: i32, first_line: i64) -> i64`, chunk bytes in, record batches out.
pub const EXPORT_PARSE: &str = "pushdown_parse";

/// Scalar, optional (ABI 1): `(ptr: i32, len: i32) -> i64`, a [`SkipRequest`] as JSON in,
/// one byte out: `1` when no row of the row group can satisfy the request's test, `0`
/// when some may. A module without it is never asked, and its row groups are never skipped.
pub const EXPORT_CAN_SKIP: &str = "pushdown_can_skip";

/// What a storage node tells a scalar plugin's `pushdown_can_skip` about one Parquet row
/// group, to learn whether the predicate conjunct that calls the plugin can be true for
/// any of its rows (plugin-aware pruning; `pushdown-plugins/ABI.md`).
///
/// JSON, e.g. for `WHERE haversine_km(lat, lon, 48.85, 2.35) < 10`:
///
/// ```json
/// {"rows": 10000,
///  "arguments": [{"column": "lat", "min": 41.2, "max": 51.0, "null_count": 0},
///                {"column": "lon", "min": -4.8, "max": 8.2, "null_count": 0},
///                {"constant": 48.85}, {"constant": 2.35}],
///  "test": {"op": "<", "value": 10.0}}
/// ```
///
/// Values are JSON numbers for integer and finite float types, `true`/`false` for
/// Boolean, and otherwise the string Arrow displays (decimals `"12.50"`, dates
/// `"1998-09-02"`, strings as they are). What the statistics do not say is absent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SkipRequest {
    /// Rows in the row group.
    pub rows: u64,
    /// What is known of each argument of the call, in order.
    pub arguments: Vec<ArgumentStats>,
    /// What the call's result must satisfy for a row to be kept.
    pub test: ResultTest,
}

/// What the statistics say about one argument over the rows of a row group. Every field is
/// optional: an argument that is an expression over columns has none.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ArgumentStats {
    /// The column the argument reads, when it is one (possibly cast to the argument type).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    /// The argument's value for every row, when it is a constant (`null` for SQL NULL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constant: Option<serde_json::Value>,
    /// The smallest non-null value of the column in the row group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<serde_json::Value>,
    /// The largest non-null value of the column in the row group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<serde_json::Value>,
    /// NULLs in the column chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub null_count: Option<u64>,
    /// Distinct values in the column chunk, when the writer recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distinct_count: Option<u64>,
}

impl ArgumentStats {
    /// The constant as a float, when the argument is a numeric constant.
    pub fn constant_f64(&self) -> Option<f64> {
        self.constant.as_ref()?.as_f64()
    }

    /// `(min, max)` as floats, when the statistics give both as numbers.
    pub fn range_f64(&self) -> Option<(f64, f64)> {
        let (min, max) = (self.min.as_ref()?.as_f64()?, self.max.as_ref()?.as_f64()?);
        (min <= max).then_some((min, max))
    }
}

/// The condition on a call's result under which a row is kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op")]
pub enum ResultTest {
    /// The call is itself the conjunct: a Boolean function whose rows are kept when true.
    #[serde(rename = "is_true")]
    IsTrue,
    /// `call(...) < value`.
    #[serde(rename = "<")]
    Lt {
        /// The constant compared with.
        value: serde_json::Value,
    },
    /// `call(...) <= value`.
    #[serde(rename = "<=")]
    LtEq {
        /// The constant compared with.
        value: serde_json::Value,
    },
    /// `call(...) > value`.
    #[serde(rename = ">")]
    Gt {
        /// The constant compared with.
        value: serde_json::Value,
    },
    /// `call(...) >= value`.
    #[serde(rename = ">=")]
    GtEq {
        /// The constant compared with.
        value: serde_json::Value,
    },
    /// `call(...) = value`.
    #[serde(rename = "=")]
    Eq {
        /// The constant compared with.
        value: serde_json::Value,
    },
}

impl ResultTest {
    /// True when no result in `[lo, hi]` passes the test (a numeric comparison); false
    /// for `is_true`, a non-numeric constant, or a NaN bound. `lo`/`hi` must bound every
    /// non-null result the call can give on the row group (NULL never passes a test).
    pub fn excludes_range(&self, lo: f64, hi: f64) -> bool {
        if lo.is_nan() || hi.is_nan() {
            return false;
        }
        let value = match self {
            ResultTest::IsTrue => return false,
            ResultTest::Lt { value }
            | ResultTest::LtEq { value }
            | ResultTest::Gt { value }
            | ResultTest::GtEq { value }
            | ResultTest::Eq { value } => value.as_f64(),
        };
        let Some(v) = value.filter(|v| !v.is_nan()) else {
            return false;
        };
        match self {
            ResultTest::IsTrue => false,
            ResultTest::Lt { .. } => lo >= v,
            ResultTest::LtEq { .. } => lo > v,
            ResultTest::Gt { .. } => hi <= v,
            ResultTest::GtEq { .. } => hi < v,
            ResultTest::Eq { .. } => v < lo || v > hi,
        }
    }
}

/// Schema metadata key of an update or merge input: the number of groups (decimal).
pub const NUM_GROUPS_KEY: &str = "pushdown.num_groups";

/// What a plugin declares about itself (`pushdown_signature`), checked at registration.
///
/// JSON, e.g.
/// `{"kind":"scalar","name":"haversine_km","arguments":["Float64","Float64","Float64","Float64"],"returns":"Float64"}`
/// or `{"kind":"parser","name":"access_log","columns":[{"name":"ip","type":"Utf8","nullable":false}]}`.
/// Types are written as Arrow's `DataType` displays them (`Int64`, `Utf8`,
/// `Decimal128(15, 2)`, `Timestamp(Second, None)`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginSignature {
    /// The plugin's kind.
    pub kind: PluginKind,
    /// Its name: ASCII letters, digits and `_`, not starting with a digit.
    pub name: String,
    /// Scalar and aggregate: the argument types, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub arguments: Vec<String>,
    /// Scalar and aggregate: the result type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub returns: Option<String>,
    /// Parser: the columns of the record batches it produces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<ColumnSignature>,
}

/// One column a parser declares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnSignature {
    /// Column name.
    pub name: String,
    /// Arrow type, as `DataType` displays it.
    #[serde(rename = "type")]
    pub data_type: String,
    /// Whether it may hold NULLs.
    pub nullable: bool,
}

fn parse_type(what: &str, t: &str) -> Result<DataType, String> {
    DataType::from_str(t).map_err(|e| format!("{what} has the malformed type {t:?}: {e}"))
}

impl PluginSignature {
    /// Parses and checks a signature's JSON.
    ///
    /// # Errors
    /// A message saying what is malformed: not JSON of this shape, a bad name, a type Arrow
    /// cannot parse, arguments or a result on a parser, columns on a function, a parser
    /// without columns or with a duplicate column.
    pub fn parse(json: &[u8]) -> Result<Self, String> {
        let s: PluginSignature =
            serde_json::from_slice(json).map_err(|e| format!("malformed signature JSON: {e}"))?;
        s.check()?;
        Ok(s)
    }

    /// Checks the signature is well-formed; see [`PluginSignature::parse`].
    ///
    /// # Errors
    /// As [`PluginSignature::parse`].
    pub fn check(&self) -> Result<(), String> {
        check_name(&self.name)?;
        match self.kind {
            PluginKind::Scalar | PluginKind::Aggregate => {
                if !self.columns.is_empty() {
                    return Err(format!("a {} plugin declares no columns", self.kind));
                }
                self.argument_types()?;
                self.return_type()?;
            }
            PluginKind::Parser => {
                if !self.arguments.is_empty() || self.returns.is_some() {
                    return Err("a parser declares columns, not arguments or a result".into());
                }
                if self.columns.is_empty() {
                    return Err("a parser must declare at least one column".into());
                }
                self.schema()?;
            }
        }
        Ok(())
    }

    /// The argument types.
    ///
    /// # Errors
    /// A message naming a type that does not parse.
    pub fn argument_types(&self) -> Result<Vec<DataType>, String> {
        self.arguments
            .iter()
            .enumerate()
            .map(|(i, t)| parse_type(&format!("argument {}", i + 1), t))
            .collect()
    }

    /// The result type of a scalar function or aggregate.
    ///
    /// # Errors
    /// A message when it is missing or does not parse.
    pub fn return_type(&self) -> Result<DataType, String> {
        let t = self
            .returns
            .as_deref()
            .ok_or_else(|| format!("a {} plugin must declare its result type", self.kind))?;
        parse_type("the result", t)
    }

    /// The schema a parser produces.
    ///
    /// # Errors
    /// A message naming a bad or duplicate column.
    pub fn schema(&self) -> Result<Schema, String> {
        let mut fields: Vec<Field> = Vec::with_capacity(self.columns.len());
        for c in &self.columns {
            if c.name.is_empty() {
                return Err("a column has an empty name".into());
            }
            if fields.iter().any(|f| f.name() == &c.name) {
                return Err(format!("column {:?} is declared twice", c.name));
            }
            let t = parse_type(&format!("column {:?}", c.name), &c.data_type)?;
            fields.push(Field::new(&c.name, t, c.nullable));
        }
        Ok(Schema::new(fields))
    }

    /// A one-line description: `haversine_km(Float64, Float64) -> Float64`, `parser access_log (ip Utf8, ...)`.
    pub fn describe(&self) -> String {
        match self.kind {
            PluginKind::Parser => {
                let cols: Vec<String> = self
                    .columns
                    .iter()
                    .map(|c| format!("{} {}", c.name, c.data_type))
                    .collect();
                format!("({})", cols.join(", "))
            }
            _ => format!(
                "({}) -> {}",
                self.arguments.join(", "),
                self.returns.as_deref().unwrap_or("?")
            ),
        }
    }
}

/// Checks that `name` can name a plugin (and so a SQL function): ASCII letters, digits
/// and `_`, at most 64, not starting with a digit.
///
/// # Errors
/// A message saying what a name must be.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "the name {name:?} is not an identifier (ASCII letters, digits and _, at most 64, not starting with a digit)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_parse_and_malformed_ones_say_why() {
        let s = PluginSignature::parse(
            br#"{"kind":"scalar","name":"f","arguments":["Float64","Decimal128(15, 2)"],"returns":"Boolean"}"#,
        )
        .unwrap();
        assert_eq!(
            s.argument_types().unwrap(),
            [DataType::Float64, DataType::Decimal128(15, 2)]
        );
        assert_eq!(s.describe(), "(Float64, Decimal128(15, 2)) -> Boolean");
        let p = PluginSignature::parse(
            br#"{"kind":"parser","name":"p","columns":[{"name":"a","type":"Int32","nullable":true}]}"#,
        )
        .unwrap();
        assert_eq!(p.schema().unwrap().field(0).data_type(), &DataType::Int32);
        let err = |json: &str| PluginSignature::parse(json.as_bytes()).unwrap_err();
        assert!(
            err(r#"{"kind":"scalar","name":"f","arguments":["Floaty"],"returns":"Int64"}"#)
                .contains("argument 1 has the malformed type \"Floaty\"")
        );
        assert!(err(r#"{"kind":"scalar","name":"f"}"#).contains("must declare its result"));
        assert!(
            err(r#"{"kind":"scalar","name":"1f","returns":"Int64"}"#).contains("not an identifier")
        );
        assert!(err(r#"{"kind":"parser","name":"p"}"#).contains("at least one column"));
        assert!(err(r#"{"kind":"window","name":"p"}"#).contains("malformed signature JSON"));
        assert!(err(
            r#"{"kind":"parser","name":"p","columns":[{"name":"a","type":"Int32","nullable":true},{"name":"a","type":"Int32","nullable":true}]}"#
        )
        .contains("declared twice"));
    }
}
