//! The `--csv-*` options of `pushdown query` and `pushdown storage-node serve`: what the
//! user fixes of each CSV table's dialect (the storage node sniffs the rest).

use anyhow::{bail, Result};
use clap::Args;
use pushdown_storage_node::{CsvOptions, CsvOverrides};

/// CSV dialect options. Each value may start with `TABLE=` to apply to one table only
/// (a leading `=` applies a value that itself contains `=` to every table); each is
/// repeatable, one value per table.
#[derive(Args, Debug, Clone, Default)]
pub struct CsvArgs {
    /// Read every CSV column as text, empty fields as empty strings (no type inference).
    #[arg(long)]
    pub csv_all_varchar: bool,
    /// Field delimiter, one byte (`,` `;` `|` `tab` …) [default: sniffed].
    #[arg(long, value_name = "[TABLE=]CHAR")]
    pub csv_delimiter: Vec<String>,
    /// Quote byte, or `none` [default: sniffed among `"` and `'`].
    #[arg(long, value_name = "[TABLE=]CHAR")]
    pub csv_quote: Vec<String>,
    /// Byte that escapes a quote inside quotes, or `none` for doubled quotes (RFC 4180)
    /// [default: sniffed: `\` when the file has `\"`].
    #[arg(long, value_name = "[TABLE=]CHAR")]
    pub csv_escape: Vec<String>,
    /// Lines starting with this byte are skipped, or `none` [default: sniffed: `#` when
    /// needed].
    #[arg(long, value_name = "[TABLE=]CHAR")]
    pub csv_comment: Vec<String>,
    /// Whether the first record is a header of column names [default: sniffed].
    #[arg(long, value_name = "[TABLE=]true|false")]
    pub csv_header: Vec<String>,
    /// Lines to skip before the header [default: sniffed: leading lines with fewer fields].
    #[arg(long, value_name = "[TABLE=]N")]
    pub csv_skip: Vec<String>,
    /// Text read as NULL [default: the empty field].
    #[arg(long, value_name = "[TABLE=]STRING")]
    pub csv_null: Vec<String>,
    /// `strftime` format of DATE columns, e.g. `%d/%m/%Y` [default: ISO 8601, 2024-01-31].
    #[arg(long, value_name = "[TABLE=]FORMAT")]
    pub csv_dateformat: Vec<String>,
    /// `strftime` format of TIMESTAMP columns, e.g. `%d/%m/%Y %H:%M` [default: ISO 8601].
    #[arg(long, value_name = "[TABLE=]FORMAT")]
    pub csv_timestampformat: Vec<String>,
    /// Records with missing fields get NULL for them (counted as repaired by `--explain`)
    /// instead of failing the query.
    #[arg(long)]
    pub csv_lenient: bool,
}

/// Splits `TABLE=VALUE` (a table name of letters, digits, `_`, `-` or `.`) from `VALUE`.
fn split_table(value: &str) -> (Option<&str>, &str) {
    if value == "=" {
        return (None, value);
    }
    if let Some(rest) = value.strip_prefix('=') {
        return (None, rest);
    }
    match value.split_once('=') {
        Some((table, rest))
            if !table.is_empty()
                && table
                    .chars()
                    .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.')) =>
        {
            (Some(table), rest)
        }
        _ => (None, value),
    }
}

/// One byte as the user writes it: the character itself, `tab` or `\t`.
fn byte(option: &str, value: &str) -> Result<u8> {
    match value {
        "tab" | "\\t" | "\t" => Ok(b'\t'),
        v if v.len() == 1 && v.is_ascii() && v != "\n" && v != "\r" => Ok(v.as_bytes()[0]),
        v => bail!("{option}: {v:?} is not one ASCII character (or `tab`)"),
    }
}

/// One byte, or `none` (also the empty string) for none.
fn maybe_byte(option: &str, value: &str) -> Result<Option<u8>> {
    match value {
        "none" | "" => Ok(None),
        v => byte(option, v).map(Some),
    }
}

/// A `strftime` format chrono can parse with.
fn strftime(option: &str, value: &str) -> Result<String> {
    use chrono::format::{Item, StrftimeItems};
    if value.is_empty() || StrftimeItems::new(value).any(|i| matches!(i, Item::Error)) {
        bail!("{option}: {value:?} is not a strftime format (e.g. %d/%m/%Y)");
    }
    Ok(value.to_string())
}

impl CsvArgs {
    /// The options as the storage node takes them.
    ///
    /// # Errors
    /// When a value does not parse, or one table (or every table) is given one option twice.
    pub fn options(&self) -> Result<CsvOptions> {
        let mut options = CsvOptions::default();
        options.all.lenient = self.csv_lenient.then_some(true);
        fn each<T>(
            options: &mut CsvOptions,
            option: &str,
            values: &[String],
            parse: impl Fn(&str) -> Result<T>,
            field: impl Fn(&mut CsvOverrides) -> &mut Option<T>,
        ) -> Result<()> {
            for value in values {
                let (table, value) = split_table(value);
                let parsed = parse(value)?;
                let target = match table {
                    Some(t) => options.tables.entry(t.to_string()).or_default(),
                    None => &mut options.all,
                };
                let slot = field(target);
                if slot.is_some() {
                    match table {
                        Some(t) => bail!("{option} is given twice for table {t}"),
                        None => bail!("{option} is given twice for every table"),
                    }
                }
                *slot = Some(parsed);
            }
            Ok(())
        }
        each(
            &mut options,
            "--csv-delimiter",
            &self.csv_delimiter,
            |v| byte("--csv-delimiter", v),
            |o| &mut o.delimiter,
        )?;
        each(
            &mut options,
            "--csv-quote",
            &self.csv_quote,
            |v| maybe_byte("--csv-quote", v),
            |o| &mut o.quote,
        )?;
        each(
            &mut options,
            "--csv-escape",
            &self.csv_escape,
            |v| maybe_byte("--csv-escape", v),
            |o| &mut o.escape,
        )?;
        each(
            &mut options,
            "--csv-comment",
            &self.csv_comment,
            |v| maybe_byte("--csv-comment", v),
            |o| &mut o.comment,
        )?;
        each(
            &mut options,
            "--csv-header",
            &self.csv_header,
            |v| match v {
                "true" | "yes" => Ok(true),
                "false" | "no" => Ok(false),
                v => bail!("--csv-header: {v:?} is not true or false"),
            },
            |o| &mut o.header,
        )?;
        each(
            &mut options,
            "--csv-skip",
            &self.csv_skip,
            |v| {
                v.parse::<u64>()
                    .map_err(|_| anyhow::anyhow!("--csv-skip: {v:?} is not a number of lines"))
            },
            |o| &mut o.skip,
        )?;
        each(
            &mut options,
            "--csv-null",
            &self.csv_null,
            |v| Ok(v.to_string()),
            |o| &mut o.null,
        )?;
        each(
            &mut options,
            "--csv-dateformat",
            &self.csv_dateformat,
            |v| strftime("--csv-dateformat", v),
            |o| &mut o.date_format,
        )?;
        each(
            &mut options,
            "--csv-timestampformat",
            &self.csv_timestampformat,
            |v| strftime("--csv-timestampformat", v),
            |o| &mut o.timestamp_format,
        )?;
        Ok(options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_apply_to_every_table_or_to_one() {
        let args = CsvArgs {
            csv_delimiter: vec![";".into(), "t=tab".into()],
            csv_null: vec!["=a=b".into(), "u=NA".into()],
            csv_header: vec!["t=false".into()],
            csv_quote: vec!["none".into()],
            ..Default::default()
        };
        let o = args.options().unwrap();
        assert_eq!(o.all.delimiter, Some(b';'));
        assert_eq!(o.all.null.as_deref(), Some("a=b"));
        assert_eq!(o.all.quote, Some(None));
        let t = o.for_table("t");
        assert_eq!((t.delimiter, t.header), (Some(b'\t'), Some(false)));
        assert_eq!(o.for_table("u").null.as_deref(), Some("NA"));
        assert_eq!(split_table("="), (None, "="));
        assert_eq!(split_table("=="), (None, "="));
        assert_eq!(split_table("t=="), (Some("t"), "="));
    }

    #[test]
    fn bad_values_are_named() {
        let args = CsvArgs {
            csv_delimiter: vec!["ab".into()],
            ..Default::default()
        };
        let err = args.options().unwrap_err().to_string();
        assert_eq!(
            err,
            "--csv-delimiter: \"ab\" is not one ASCII character (or `tab`)"
        );
        let args = CsvArgs {
            csv_skip: vec!["t=1".into(), "t=2".into()],
            ..Default::default()
        };
        let err = args.options().unwrap_err().to_string();
        assert_eq!(err, "--csv-skip is given twice for table t");
    }
}
