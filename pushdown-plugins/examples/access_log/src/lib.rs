//! Parser plugin `access_log`: the Apache HTTP Server "combined" log format
//! (`%h %l %u %t "%r" %>s %b "%{Referer}i" "%{User-agent}i"`, see
//! <https://httpd.apache.org/docs/2.4/logs.html#combined>); lines in the "common" format
//! (without referer and user agent) are read too, with those two columns NULL.
//!
//! Columns: `ip`, `ident`, `user` (NULL for `-`), `time` (UTC, seconds), `method`, `path`,
//! `protocol` (NULL when the request line is not `METHOD PATH PROTOCOL`), `status`,
//! `bytes` (NULL for `-`), `referer`, `user_agent` (NULL for `-` or absent).
//! A malformed line fails the query with its line number; blank lines are skipped.

use std::sync::Arc;

use pushdown_plugin::array::builder::{
    Int32Builder, Int64Builder, StringBuilder, TimestampSecondBuilder,
};
use pushdown_plugin::array::{ArrayRef, RecordBatch};
use pushdown_plugin::schema::{DataType, Field, Schema, TimeUnit};
use pushdown_plugin::{Error, Parser, Result};

/// The parser.
pub struct AccessLog;

/// One parsed line.
#[derive(Debug, PartialEq)]
pub struct Entry<'a> {
    /// Client address (`%h`).
    pub ip: &'a str,
    /// RFC 1413 identity (`%l`), `None` for `-`.
    pub ident: Option<&'a str>,
    /// Authenticated user (`%u`), `None` for `-`.
    pub user: Option<&'a str>,
    /// Request time in seconds since 1970-01-01T00:00:00Z.
    pub time: i64,
    /// The request line (`%r`), unparsed.
    pub request: &'a str,
    /// Final status (`%>s`).
    pub status: i32,
    /// Response size (`%b`), `None` for `-`.
    pub bytes: Option<i64>,
    /// Referer, `None` for `-` or absent.
    pub referer: Option<&'a str>,
    /// User agent, `None` for `-` or absent.
    pub user_agent: Option<&'a str>,
}

struct Cursor<'a> {
    line: &'a str,
    at: usize,
}

impl<'a> Cursor<'a> {
    fn rest(&self) -> &'a str {
        &self.line[self.at..]
    }

    fn skip_spaces(&mut self) {
        while self.rest().starts_with(' ') {
            self.at += 1;
        }
    }

    /// A field up to the next space.
    fn word(&mut self, what: &str) -> std::result::Result<&'a str, String> {
        self.skip_spaces();
        let rest = self.rest();
        let end = rest.find(' ').unwrap_or(rest.len());
        if end == 0 {
            return Err(format!("missing {what}"));
        }
        self.at += end;
        Ok(&rest[..end])
    }

    /// A field between `open` and `close`; inside quotes `\"` does not close.
    fn delimited(
        &mut self,
        open: char,
        close: char,
        what: &str,
    ) -> std::result::Result<&'a str, String> {
        self.skip_spaces();
        let rest = self.rest();
        if !rest.starts_with(open) {
            return Err(format!(
                "expected {open} before the {what} at column {}",
                self.at + 1
            ));
        }
        let bytes = rest.as_bytes();
        let mut i = 1;
        while i < bytes.len() {
            match bytes[i] {
                b'\\' => i += 2,
                b if b == close as u8 => {
                    self.at += i + 1;
                    return Ok(&rest[1..i]);
                }
                _ => i += 1,
            }
        }
        Err(format!(
            "the {what} opened at column {} never closes",
            self.at + 1
        ))
    }
}

fn dash(s: &str) -> Option<&str> {
    (s != "-").then_some(s)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses `%t` without brackets: `10/Oct/2000:13:55:36 -0700` into UTC seconds.
pub fn parse_time(t: &str) -> std::result::Result<i64, String> {
    let bad = || format!("malformed time [{t}], expected [dd/Mon/yyyy:hh:mm:ss +zzzz]");
    let (stamp, zone) = t.split_once(' ').ok_or_else(bad)?;
    let mut parts = stamp.split(['/', ':']);
    let mut next = || parts.next().ok_or_else(bad);
    let day: u32 = next()?.parse().map_err(|_| bad())?;
    let month = match next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return Err(bad()),
    };
    let year: i64 = next()?.parse().map_err(|_| bad())?;
    let hour: i64 = next()?.parse().map_err(|_| bad())?;
    let minute: i64 = next()?.parse().map_err(|_| bad())?;
    let second: i64 = next()?.parse().map_err(|_| bad())?;
    if !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return Err(bad());
    }
    let sign = match zone.as_bytes().first() {
        Some(b'+') => 1,
        Some(b'-') => -1,
        _ => return Err(bad()),
    };
    let digits = &zone[1..];
    if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let offset = sign
        * (digits[..2].parse::<i64>().map_err(|_| bad())? * 3600
            + digits[2..].parse::<i64>().map_err(|_| bad())? * 60);
    let local = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    Ok(local - offset)
}

/// Parses one line.
///
/// # Errors
/// A message saying what is wrong (without the line number).
pub fn parse_line(line: &str) -> std::result::Result<Entry<'_>, String> {
    let mut c = Cursor { line, at: 0 };
    let ip = c.word("client address")?;
    let ident = dash(c.word("identity")?);
    let user = dash(c.word("user")?);
    let time = parse_time(c.delimited('[', ']', "time")?)?;
    let request = c.delimited('"', '"', "request")?;
    let status_text = c.word("status")?;
    let status: i32 = status_text
        .parse()
        .ok()
        .filter(|s| (100..=999).contains(s))
        .ok_or_else(|| format!("malformed status {status_text:?}"))?;
    let bytes_text = c.word("size")?;
    let bytes = match bytes_text {
        "-" => None,
        b => Some(
            b.parse::<i64>()
                .map_err(|_| format!("malformed size {b:?}"))?,
        ),
    };
    c.skip_spaces();
    let (referer, user_agent) = if c.rest().is_empty() {
        (None, None)
    } else {
        let referer = dash(c.delimited('"', '"', "referer")?);
        let agent = dash(c.delimited('"', '"', "user agent")?);
        c.skip_spaces();
        if !c.rest().is_empty() {
            return Err(format!(
                "unexpected text after the user agent at column {}",
                c.at + 1
            ));
        }
        (referer, agent)
    };
    Ok(Entry {
        ip,
        ident,
        user,
        time,
        request,
        status,
        bytes,
        referer,
        user_agent,
    })
}

impl Parser for AccessLog {
    const NAME: &'static str = "access_log";

    fn schema() -> Schema {
        let s = |name: &str, nullable| Field::new(name, DataType::Utf8, nullable);
        Schema::new(vec![
            s("ip", false),
            s("ident", true),
            s("user", true),
            Field::new("time", DataType::Timestamp(TimeUnit::Second, None), false),
            s("method", true),
            s("path", true),
            s("protocol", true),
            Field::new("status", DataType::Int32, false),
            Field::new("bytes", DataType::Int64, true),
            s("referer", true),
            s("user_agent", true),
        ])
    }

    fn parse(chunk: &[u8], first_line: u64) -> Result<Vec<RecordBatch>> {
        let mut strings: Vec<StringBuilder> = (0..9).map(|_| StringBuilder::new()).collect();
        let mut time = TimestampSecondBuilder::new();
        let mut status = Int32Builder::new();
        let mut bytes = Int64Builder::new();
        for (i, raw) in chunk.split(|&b| b == b'\n').enumerate() {
            let number = first_line + i as u64;
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            if raw.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let line = std::str::from_utf8(raw)
                .map_err(|e| Error::new(format!("line {number}: not UTF-8: {e}")))?;
            let e = parse_line(line).map_err(|m| Error::new(format!("line {number}: {m}")))?;
            let mut request = e.request.split(' ');
            let (method, path, protocol) = match (
                request.next(),
                request.next(),
                request.next(),
                request.next(),
            ) {
                (Some(m), Some(p), Some(v), None) => (Some(m), Some(p), Some(v)),
                _ => (None, None, None),
            };
            for (b, v) in strings.iter_mut().zip([
                Some(e.ip),
                e.ident,
                e.user,
                method,
                path,
                protocol,
                e.referer,
                e.user_agent,
            ]) {
                b.append_option(v);
            }
            time.append_value(e.time);
            status.append_value(e.status);
            bytes.append_option(e.bytes);
        }
        let mut s = strings.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef);
        let mut next = || s.next().expect("eight string columns");
        let columns: Vec<ArrayRef> = vec![
            next(),
            next(),
            next(),
            Arc::new(time.finish()),
            next(),
            next(),
            next(),
            Arc::new(status.finish()),
            Arc::new(bytes.finish()),
            next(),
            next(),
        ];
        Ok(vec![RecordBatch::try_new(
            Arc::new(Self::schema()),
            columns,
        )?])
    }
}

pushdown_plugin::export!(parser AccessLog);

#[cfg(test)]
mod tests {
    use pushdown_plugin::array::{cast::AsArray, types::*, Array};
    use pushdown_plugin::testing;

    use super::*;

    const LINE: &str = r#"127.0.0.1 - frank [10/Oct/2000:13:55:36 -0700] "GET /apache_pb.gif HTTP/1.0" 200 2326 "http://www.example.com/start.html" "Mozilla/4.08 [en] (Win98; I ;Nav)""#;

    #[test]
    fn parses_the_apache_documentation_example() {
        let e = parse_line(LINE).unwrap();
        assert_eq!(e.ip, "127.0.0.1");
        assert_eq!(e.ident, None);
        assert_eq!(e.user, Some("frank"));
        // 2000-10-10T20:55:36Z
        assert_eq!(e.time, 971_211_336);
        assert_eq!(e.status, 200);
        assert_eq!(e.bytes, Some(2326));
        assert_eq!(e.user_agent, Some("Mozilla/4.08 [en] (Win98; I ;Nav)"));
    }

    #[test]
    fn batches_have_the_declared_schema_and_bad_lines_their_number() {
        let text = format!(
            "{LINE}\n\n10.0.0.2 - - [01/Jan/2024:00:00:00 +0000] \"-\" 408 - \"-\" \"-\"\n"
        );
        let batches = testing::parse::<AccessLog>(text.as_bytes(), 1).unwrap();
        let b = &batches[0];
        assert_eq!(b.num_rows(), 2);
        assert_eq!(b.column(4).as_string::<i32>().value(0), "GET");
        assert!(b.column(4).is_null(1));
        assert!(b.column(8).is_null(1));
        assert_eq!(b.column(7).as_primitive::<Int32Type>().value(1), 408);
        let bad = format!(
            "{LINE}\n{LINE}\n10.0.0.3 - - [01/Jan/2024:00:00:00 +0000] \"GET / HTTP/1.1\" abc 5\n"
        );
        let err = testing::parse::<AccessLog>(bad.as_bytes(), 41).unwrap_err();
        assert_eq!(err.message(), "line 43: malformed status \"abc\"");
    }
}
