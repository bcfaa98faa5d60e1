//! What runners cost: a price table (shipped with the project, overridable) and
//! the running intervals a runner's state history gives. Pure logic: the store
//! provides the history, the API and the budget keeper the sums.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use chrono::{DateTime, Datelike, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::ObservedState;

/// How an instance is bought.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum PurchaseOption {
    #[default]
    #[serde(rename = "on-demand")]
    OnDemand,
    #[serde(rename = "spot")]
    Spot,
    /// Spot, and on-demand when spot capacity is short.
    #[serde(rename = "spot-or-on-demand")]
    SpotOrOnDemand,
}

impl PurchaseOption {
    pub fn as_str(self) -> &'static str {
        match self {
            PurchaseOption::OnDemand => "on-demand",
            PurchaseOption::Spot => "spot",
            PurchaseOption::SpotOrOnDemand => "spot-or-on-demand",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [PurchaseOption::OnDemand, PurchaseOption::Spot, PurchaseOption::SpotOrOnDemand]
            .into_iter()
            .find(|p| p.as_str() == s)
    }

    /// Whether the instance is billed at spot prices (a launched instance is
    /// either; `spot-or-on-demand` names the runner's wish, not the instance).
    pub fn is_spot(self) -> bool {
        matches!(self, PurchaseOption::Spot | PurchaseOption::SpotOrOnDemand)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Price {
    /// USD per instance-hour.
    pub on_demand: f64,
    pub spot: Option<f64>,
}

/// Prices by region and instance type.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PriceTable {
    pub s3_usd_per_gb_month: f64,
    pub regions: HashMap<String, HashMap<String, Price>>,
}

const SHIPPED: &str = include_str!("../prices.toml");

impl PriceTable {
    /// The shipped table, with `file`'s entries (same layout) over it.
    pub fn load(file: Option<&Path>) -> Result<Self, String> {
        use figment::Figment;
        use figment::providers::{Format, Toml};
        let mut f = Figment::from(Toml::string(SHIPPED));
        if let Some(path) = file {
            if !path.exists() {
                return Err(format!("price file {} does not exist", path.display()));
            }
            f = f.merge(Toml::file(path));
        }
        f.extract().map_err(|e| format!("price table: {e}"))
    }

    /// USD per hour of `instance_type` bought as `purchase` in `region`.
    pub fn hourly(&self, region: &str, instance_type: &str, purchase: PurchaseOption) -> Option<f64> {
        let p = self.regions.get(region)?.get(instance_type)?;
        if purchase.is_spot() { p.spot.or(Some(p.on_demand)) } else { Some(p.on_demand) }
    }
}

/// A price file as [`PriceTable::load`] lays it over the shipped table: every
/// field may be left out, and what is left out keeps the shipped value (a type
/// the shipped table does not know needs its `on_demand`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct PriceFile {
    #[serde(default)]
    pub s3_usd_per_gb_month: Option<f64>,
    #[serde(default)]
    pub regions: BTreeMap<String, BTreeMap<String, PriceEntry>>,
}

/// One type's prices in a [`PriceFile`], USD per instance-hour.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
pub struct PriceEntry {
    #[serde(default)]
    pub on_demand: Option<f64>,
    #[serde(default)]
    pub spot: Option<f64>,
}

impl PriceFile {
    /// The price file at `path`, as written (without the shipped table).
    pub fn read(path: &Path) -> Result<Self, String> {
        use figment::Figment;
        use figment::providers::{Format, Toml};
        if !path.exists() {
            return Err(format!("price file {} does not exist", path.display()));
        }
        Figment::from(Toml::file(path)).extract().map_err(|e| format!("price file {}: {e}", path.display()))
    }

    /// The file in the shipped table's layout (one inline table a type), under
    /// `header` (each of its lines written as a comment). Entries without a
    /// price are left out.
    pub fn render(&self, header: &str) -> String {
        let mut out = String::new();
        for line in header.lines() {
            out.push_str(if line.is_empty() { "#" } else { "# " });
            out.push_str(line);
            out.push('\n');
        }
        if let Some(s3) = self.s3_usd_per_gb_month {
            out.push_str(&format!("\ns3_usd_per_gb_month = {}\n", toml_float(s3)));
        }
        for (region, types) in &self.regions {
            let lines: Vec<String> = types
                .iter()
                .filter_map(|(instance_type, entry)| {
                    let fields: Vec<String> = [("on_demand", entry.on_demand), ("spot", entry.spot)]
                        .into_iter()
                        .filter_map(|(name, v)| v.map(|v| format!("{name} = {}", toml_float(v))))
                        .collect();
                    (!fields.is_empty()).then(|| format!("{} = {{ {} }}\n", toml_key(instance_type), fields.join(", ")))
                })
                .collect();
            if !lines.is_empty() {
                out.push_str(&format!("\n[regions.{}]\n", toml_key(region)));
                lines.iter().for_each(|l| out.push_str(l));
            }
        }
        out
    }
}

/// A TOML float: `0.113`, and `2.0` rather than `2`.
fn toml_float(v: f64) -> String {
    let s = v.to_string();
    if s.contains(['.', 'e', 'E']) || !v.is_finite() { s } else { format!("{s}.0") }
}

/// A TOML quoted key.
fn toml_key(k: &str) -> String {
    let mut out = String::from("\"");
    for c in k.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// One change of a runner's observed state, as the store logged it.
#[derive(Debug, Clone, PartialEq)]
pub struct StateChange {
    pub runner_id: String,
    pub state: ObservedState,
    pub instance_type: String,
    pub purchase_option: PurchaseOption,
    pub at: DateTime<Utc>,
}

/// A stretch of time a runner's instance ran, billed as one type and option.
#[derive(Debug, Clone, PartialEq)]
pub struct Interval {
    pub runner_id: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub instance_type: String,
    pub purchase_option: PurchaseOption,
}

impl Interval {
    pub fn seconds(&self) -> f64 {
        (self.end - self.start).num_milliseconds().max(0) as f64 / 1000.0
    }
}

/// The running intervals in `changes` (one runner's or many runners', each
/// runner's in time order), clipped to [`from`, `to`). A runner still running
/// runs until `to`.
pub fn running_intervals(changes: &[StateChange], from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<Interval> {
    let mut by_runner: HashMap<&str, Vec<&StateChange>> = HashMap::new();
    for c in changes {
        by_runner.entry(c.runner_id.as_str()).or_default().push(c);
    }
    let mut out = Vec::new();
    for (_, mut list) in by_runner {
        list.sort_by_key(|c| c.at);
        for (i, c) in list.iter().enumerate() {
            if c.state != ObservedState::Running {
                continue;
            }
            let end = list.get(i + 1).map_or(to, |next| next.at);
            let (start, end) = (c.at.max(from), end.min(to));
            if end > start {
                out.push(Interval {
                    runner_id: c.runner_id.clone(),
                    start,
                    end,
                    instance_type: c.instance_type.clone(),
                    purchase_option: c.purchase_option,
                });
            }
        }
    }
    out.sort_by(|a, b| (a.runner_id.as_str(), a.start).cmp(&(b.runner_id.as_str(), b.start)));
    out
}

/// What intervals cost: the sum, the running seconds, and the seconds of
/// types the table has no price for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Cost {
    pub running_seconds: f64,
    pub instance_usd: f64,
    pub unpriced_seconds: f64,
}

impl Cost {
    pub fn add(&mut self, other: Cost) {
        self.running_seconds += other.running_seconds;
        self.instance_usd += other.instance_usd;
        self.unpriced_seconds += other.unpriced_seconds;
    }
}

pub fn cost_of(interval: &Interval, prices: &PriceTable, region: &str) -> Cost {
    let seconds = interval.seconds();
    match prices.hourly(region, &interval.instance_type, interval.purchase_option) {
        Some(per_hour) => Cost { running_seconds: seconds, instance_usd: seconds * per_hour / 3600.0, unpriced_seconds: 0.0 },
        None => Cost { running_seconds: seconds, instance_usd: 0.0, unpriced_seconds: seconds },
    }
}

/// The start of the month `at` is in, and the month's name (`2026-12`).
pub fn month_of(at: DateTime<Utc>) -> (DateTime<Utc>, String) {
    let start = Utc.with_ymd_and_hms(at.year(), at.month(), 1, 0, 0, 0).single().unwrap_or(at);
    (start, format!("{:04}-{:02}", at.year(), at.month()))
}

/// USD a month for `bytes` stored in S3.
pub fn s3_monthly_usd(bytes: i64, prices: &PriceTable) -> f64 {
    bytes.max(0) as f64 / 1e9 * prices.s3_usd_per_gb_month
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn change(runner: &str, state: ObservedState, at: &str) -> StateChange {
        StateChange {
            runner_id: runner.into(),
            state,
            instance_type: "m5d.large".into(),
            purchase_option: PurchaseOption::OnDemand,
            at: t(at),
        }
    }

    #[test]
    fn the_shipped_table_prices_the_documented_example_and_spot_below_on_demand() {
        let p = PriceTable::load(None).unwrap();
        let od = p.hourly("us-east-1", "m5d.4xlarge", PurchaseOption::OnDemand).unwrap();
        let spot = p.hourly("us-east-1", "m5d.4xlarge", PurchaseOption::Spot).unwrap();
        assert!(od > 0.5 && spot < od, "{od} {spot}");
        assert_eq!(p.hourly("us-east-1", "x9.huge", PurchaseOption::OnDemand), None);
        assert!(p.s3_usd_per_gb_month > 0.0);
    }

    #[test]
    fn intervals_run_from_running_to_the_next_change_and_are_clipped() {
        use ObservedState::*;
        let changes = vec![
            change("a", Pending, "2026-12-01T10:00:00Z"),
            change("a", Running, "2026-12-01T10:01:00Z"),
            change("a", Stopping, "2026-12-01T12:01:00Z"),
            change("a", Stopped, "2026-12-01T12:02:00Z"),
            change("a", Running, "2026-12-01T13:00:00Z"),
            change("b", Running, "2026-11-30T23:00:00Z"),
        ];
        let all = running_intervals(&changes, t("2026-12-01T00:00:00Z"), t("2026-12-01T14:00:00Z"));
        let secs: Vec<(String, f64)> = all.iter().map(|i| (i.runner_id.clone(), i.seconds())).collect();
        assert_eq!(
            secs,
            vec![("a".into(), 7200.0), ("a".into(), 3600.0), ("b".into(), 14.0 * 3600.0)],
            "b runs from the window's start; a still runs at its end"
        );
        let p = PriceTable::load(None).unwrap();
        let cost = cost_of(&all[0], &p, "us-east-1");
        assert!((cost.instance_usd - 0.226).abs() < 1e-9, "two hours of m5d.large: {cost:?}");
    }

    #[test]
    fn a_rendered_price_file_loads_over_the_shipped_table_field_by_field() {
        let mut file = PriceFile::default();
        let us = file.regions.entry("us-east-1".into()).or_default();
        // Only spot: on-demand stays the shipped price.
        us.insert("m5d.large".into(), PriceEntry { on_demand: None, spot: Some(0.00001) });
        // A type the shipped table does not know, whole.
        us.insert("m7i.large".into(), PriceEntry { on_demand: Some(2.0), spot: Some(0.05) });
        // Nothing to say: left out.
        us.insert("t3.micro".into(), PriceEntry::default());
        let text = file.render("Written by a test.\n\nSecond paragraph.");
        assert!(text.starts_with("# Written by a test.\n#\n# Second paragraph.\n"), "{text}");
        assert!(text.contains("\"m5d.large\" = { spot = 0.00001 }\n"), "{text}");
        assert!(text.contains("\"m7i.large\" = { on_demand = 2.0, spot = 0.05 }\n"), "{text}");
        assert!(!text.contains("t3.micro") && !text.contains("s3_usd_per_gb_month"), "{text}");

        let dir = std::env::temp_dir().join(format!("geonex-prices-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("prices.toml");
        std::fs::write(&path, &text).unwrap();
        let table = PriceTable::load(Some(&path)).unwrap();
        let shipped = PriceTable::load(None).unwrap();
        assert_eq!(table.hourly("us-east-1", "m5d.large", PurchaseOption::Spot), Some(0.00001));
        assert_eq!(
            table.hourly("us-east-1", "m5d.large", PurchaseOption::OnDemand),
            shipped.hourly("us-east-1", "m5d.large", PurchaseOption::OnDemand)
        );
        assert_eq!(table.hourly("us-east-1", "m7i.large", PurchaseOption::OnDemand), Some(2.0));
        assert_eq!(table.hourly("us-east-1", "t3.micro", PurchaseOption::Spot), shipped.hourly("us-east-1", "t3.micro", PurchaseOption::Spot));
        assert_eq!(table.s3_usd_per_gb_month, shipped.s3_usd_per_gb_month);
        assert_eq!(PriceFile::read(&path).unwrap(), PriceFile {
            s3_usd_per_gb_month: None,
            regions: [(
                "us-east-1".to_owned(),
                [
                    ("m5d.large".to_owned(), PriceEntry { on_demand: None, spot: Some(0.00001) }),
                    ("m7i.large".to_owned(), PriceEntry { on_demand: Some(2.0), spot: Some(0.05) }),
                ]
                .into_iter()
                .collect(),
            )]
            .into_iter()
            .collect(),
        });
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn keys_are_quoted_and_floats_stay_floats() {
        assert_eq!(toml_key(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!((toml_float(1.0), toml_float(0.0036), toml_float(1e-7)), ("1.0".into(), "0.0036".into(), "0.0000001".into()));
    }

    #[test]
    fn months_start_on_the_first_at_midnight_utc() {
        let (start, name) = month_of(t("2026-12-02T15:04:05Z"));
        assert_eq!((start, name.as_str()), (t("2026-12-01T00:00:00Z"), "2026-12"));
    }
}
