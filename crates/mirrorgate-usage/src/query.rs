//! What an export asks for ([`Query`]) and what it gets back ([`Row`]).

use std::str::FromStr;

use time::Date;

use crate::error::UsageError;
use crate::event::{Counts, Key};

/// The `YYYY-MM-DD` form days are written in, in the store and in exports.
pub(crate) const DAY_FORMAT: &[time::format_description::BorrowedFormatItem<'static>] =
    time::macros::format_description!("[year]-[month]-[day]");

/// Parses a `YYYY-MM-DD` day.
pub fn parse_day(text: &str) -> Result<Date, UsageError> {
    Date::parse(text, DAY_FORMAT).map_err(|source| UsageError::BadDate {
        text: text.to_string(),
        source,
    })
}

/// A day as the store and exports write it.
pub fn format_day(day: Date) -> String {
    // Formatting a `Date` with a fixed description cannot fail for years 0–9999; fall back to Display.
    day.format(DAY_FORMAT).unwrap_or_else(|_| day.to_string())
}

/// The dimension an export sums over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Day,
    Tenant,
    /// Per tenant and user (user names are only unique within a tenant).
    User,
    Route,
    /// Per tenant and repository (the repository cap is per tenant).
    Repository,
}

impl GroupBy {
    /// The store columns of this grouping (fixed names: never text from the caller).
    pub(crate) fn columns(self) -> &'static [&'static str] {
        match self {
            GroupBy::Day => &["day"],
            GroupBy::Tenant => &["tenant"],
            GroupBy::User => &["tenant", "user"],
            GroupBy::Route => &["route"],
            GroupBy::Repository => &["tenant", "repository"],
        }
    }
}

impl FromStr for GroupBy {
    type Err = UsageError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "day" => GroupBy::Day,
            "tenant" => GroupBy::Tenant,
            "user" => GroupBy::User,
            "route" => GroupBy::Route,
            "repository" => GroupBy::Repository,
            other => return Err(UsageError::BadGrouping(other.to_string())),
        })
    }
}

/// An export: the days `from..=to` (either end open), optionally one tenant, summed by `by`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub from: Option<Date>,
    pub to: Option<Date>,
    pub tenant: Option<String>,
    pub by: GroupBy,
}

impl Query {
    /// A query from the export's text arguments, refusing bad dates, an unknown grouping and an empty range.
    pub fn parse(
        from: Option<&str>,
        to: Option<&str>,
        tenant: Option<&str>,
        by: Option<&str>,
    ) -> Result<Query, UsageError> {
        let from = from.map(parse_day).transpose()?;
        let to = to.map(parse_day).transpose()?;
        if let (Some(f), Some(t)) = (from, to) {
            if f > t {
                return Err(UsageError::EmptyRange {
                    from: format_day(f),
                    to: format_day(t),
                });
            }
        }
        Ok(Query {
            from,
            to,
            tenant: tenant.map(str::to_string),
            by: by.map_or(Ok(GroupBy::Day), str::parse)?,
        })
    }
}

/// One line of an export: the grouping's fields (the others `None`) and the summed counts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Row {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub day: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    #[serde(flatten)]
    pub counts: Counts,
}

impl Query {
    /// Whether a row of `day` and `tenant` is in this export.
    pub(crate) fn selects(&self, day: Date, tenant: &str) -> bool {
        self.from.is_none_or(|f| day >= f)
            && self.to.is_none_or(|t| day <= t)
            && self.tenant.as_deref().is_none_or(|t| t == tenant)
    }

    /// Sums `rows` the way the store's `GROUP BY … ORDER BY …` does, for stores that are no SQL database
    /// (the shared Redis ledger). Rows outside the query's days or tenant are skipped.
    pub(crate) fn group<'a>(
        &self,
        rows: impl IntoIterator<Item = (&'a Key, &'a Counts)>,
    ) -> Vec<Row> {
        let columns = self.by.columns();
        let mut sums: std::collections::BTreeMap<Vec<String>, Counts> = Default::default();
        for (key, counts) in rows {
            if !self.selects(key.day, &key.tenant) {
                continue;
            }
            let group = columns
                .iter()
                .map(|c| match *c {
                    "day" => format_day(key.day),
                    "tenant" => key.tenant.clone(),
                    "user" => key.user.clone(),
                    "route" => key.route.clone(),
                    _ => key.repository.clone(),
                })
                .collect();
            sums.entry(group).or_default().add(counts);
        }
        sums.into_iter()
            .map(|(group, counts)| {
                let mut row = Row {
                    day: None,
                    tenant: None,
                    user: None,
                    route: None,
                    repository: None,
                    counts,
                };
                for (column, value) in columns.iter().zip(group) {
                    match *column {
                        "day" => row.day = Some(value),
                        "tenant" => row.tenant = Some(value),
                        "user" => row.user = Some(value),
                        "route" => row.route = Some(value),
                        _ => row.repository = Some(value),
                    }
                }
                row
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Pins the export's refusals: an unknown grouping, a malformed date and from after to are errors, not an
    // empty answer.
    #[test]
    fn bad_queries_are_refused() {
        assert!(matches!(
            Query::parse(None, None, None, Some("week")),
            Err(UsageError::BadGrouping(_))
        ));
        assert!(matches!(
            Query::parse(Some("2026-13-01"), None, None, None),
            Err(UsageError::BadDate { .. })
        ));
        assert!(matches!(
            Query::parse(Some("2026-12-31"), Some("2026-12-01"), None, None),
            Err(UsageError::EmptyRange { .. })
        ));
        let q = Query::parse(Some("2026-12-01"), Some("2026-12-01"), Some("acme"), None);
        assert_eq!(q.map(|q| q.by).ok(), Some(GroupBy::Day));
    }
}
