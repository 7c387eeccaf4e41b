//! Export formats: a table for a person at a terminal, CSV and JSON for billing scripts.

use std::fmt::Write as _;
use std::str::FromStr;

use crate::error::UsageError;
use crate::event::COUNTER_COLUMNS;
use crate::query::{GroupBy, Row};

/// How an export is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Csv,
    Json,
}

impl FromStr for Format {
    type Err = UsageError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "table" => Format::Table,
            "csv" => Format::Csv,
            "json" => Format::Json,
            other => return Err(UsageError::BadFormat(other.to_string())),
        })
    }
}

fn cells(by: GroupBy, row: &Row) -> Vec<String> {
    let mut out: Vec<String> = by
        .columns()
        .iter()
        .map(|c| {
            match *c {
                "day" => &row.day,
                "tenant" => &row.tenant,
                "user" => &row.user,
                "route" => &row.route,
                _ => &row.repository,
            }
            .clone()
            .unwrap_or_default()
        })
        .collect();
    let c = &row.counts;
    out.extend(
        [
            c.requests,
            c.manifest_pulls,
            c.bytes_sent,
            c.blob_bytes_sent,
            c.blob_bytes_from_cache,
            c.pushes,
            c.bytes_received,
            c.throttled,
            c.denied,
        ]
        .map(|n| n.to_string()),
    );
    out
}

/// Renders `rows` (from a query grouped `by`) as `format`, ending with a newline.
pub fn render(rows: &[Row], by: GroupBy, format: Format) -> String {
    let header: Vec<String> = by
        .columns()
        .iter()
        .chain(COUNTER_COLUMNS.iter())
        .map(|s| s.to_string())
        .collect();
    match format {
        Format::Json => {
            let mut s = serde_json::to_string_pretty(rows).unwrap_or_else(|_| "[]".into());
            s.push('\n');
            s
        }
        Format::Csv => {
            let mut s = String::new();
            for line in std::iter::once(header).chain(rows.iter().map(|r| cells(by, r))) {
                let fields: Vec<String> = line.iter().map(|f| csv_field(f)).collect();
                s.push_str(&fields.join(","));
                s.push('\n');
            }
            s
        }
        Format::Table => {
            let lines: Vec<Vec<String>> = std::iter::once(header)
                .chain(rows.iter().map(|r| cells(by, r)))
                .collect();
            let keys = by.columns().len();
            let mut widths = vec![0; keys + COUNTER_COLUMNS.len()];
            for line in &lines {
                for (w, f) in widths.iter_mut().zip(line) {
                    *w = (*w).max(f.chars().count());
                }
            }
            let mut s = String::new();
            for line in &lines {
                let mut out = String::new();
                for (i, (f, w)) in line.iter().zip(&widths).enumerate() {
                    if i > 0 {
                        out.push_str("  ");
                    }
                    // Names left-aligned, numbers right-aligned.
                    let _ = if i < keys {
                        write!(out, "{f:<w$}")
                    } else {
                        write!(out, "{f:>w$}")
                    };
                }
                s.push_str(out.trim_end());
                s.push('\n');
            }
            s
        }
    }
}

/// RFC 4180 quoting: only fields with a comma, quote or line break are quoted.
fn csv_field(f: &str) -> String {
    if f.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", f.replace('"', "\"\""))
    } else {
        f.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Counts;

    fn row(tenant: &str, bytes: u64) -> Row {
        Row {
            day: None,
            tenant: Some(tenant.into()),
            user: None,
            route: None,
            repository: None,
            counts: Counts {
                requests: 2,
                blob_bytes_sent: bytes,
                ..Counts::default()
            },
        }
    }

    // Pins the machine-readable shapes billing scripts depend on: CSV header and quoting, JSON field names.
    #[test]
    fn csv_and_json_shapes() {
        let rows = [row("acme", 1234), row("a,b", 5)];
        let csv = render(&rows, GroupBy::Tenant, Format::Csv);
        let mut lines = csv.lines();
        assert_eq!(
            lines.next(),
            Some("tenant,requests,manifest_pulls,bytes_sent,blob_bytes_sent,blob_bytes_from_cache,pushes,bytes_received,throttled,denied")
        );
        assert_eq!(lines.next(), Some("acme,2,0,0,1234,0,0,0,0,0"));
        assert_eq!(lines.next(), Some("\"a,b\",2,0,0,5,0,0,0,0,0"));
        let json: serde_json::Value =
            serde_json::from_str(&render(&rows, GroupBy::Tenant, Format::Json)).unwrap();
        assert_eq!(json[0]["tenant"], "acme");
        assert_eq!(json[0]["blob_bytes_sent"], 1234);
        assert!(json[0].get("user").is_none());
        let table = render(&rows, GroupBy::Tenant, Format::Table);
        assert!(table.starts_with("tenant  requests"));
        assert!("x".parse::<Format>().is_err());
    }
}
