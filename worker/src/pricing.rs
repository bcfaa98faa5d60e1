//! `geonex prices refresh`: the price table refreshed from AWS. On-demand list
//! prices come from the AWS Price List Query API (`GetProducts`), spot prices
//! from EC2's spot price history (`DescribeSpotPriceHistory`); both are written
//! as a price file, the layout `GEONEX_COST__PRICES_FILE` lays over the shipped
//! table. Everything is asked before anything is written: a refusal or an
//! unreachable API fails the refresh and leaves the file as it was.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use aws_sdk_ec2::types::InstanceType as Ec2InstanceType;
use aws_sdk_pricing::types::{Filter, FilterType};
use geonex_shared::config::{Ec2Settings, Settings};
use geonex_shared::cost::{PriceEntry, PriceFile, PriceTable, PurchaseOption};
use geonex_shared::domain::InstanceType;
use serde_json::Value;

use crate::cloud::ec2::Ec2Cloud;

/// The region the Price List Query API is served from (it answers for every region).
pub const PRICING_REGION: &str = "us-east-1";
const PRICING_ENDPOINT: &str = "https://api.pricing.us-east-1.amazonaws.com";
/// EC2's product description of Linux instances in a VPC.
const LINUX: &str = "Linux/UNIX";
/// Instance types per `DescribeSpotPriceHistory` request.
const SPOT_BATCH: usize = 20;
/// Longest wait for one Pricing API request (a call gets three times this).
const PRICING_TIMEOUT: Duration = Duration::from_secs(20);

/// What to refresh, and where the file goes.
#[derive(Debug, Clone)]
pub struct Refresh {
    /// Empty: the configured price region (`settings.price_region()`).
    pub regions: Vec<String>,
    /// Empty: the configured allowed types plus those the table in force has for each region.
    pub instance_types: Vec<String>,
    pub output: PathBuf,
    pub on_demand: bool,
    pub spot: bool,
    /// Overrides the Pricing API's endpoint (default: its us-east-1 one).
    pub pricing_endpoint: Option<String>,
}

/// What the cloud answered for one type in one region.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Found {
    pub on_demand: Option<f64>,
    /// The spot price and how many zones it was taken from.
    pub spot: Option<(f64, usize)>,
}

/// What a refresh wrote.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub on_demand_prices: usize,
    pub spot_prices: usize,
    /// `(region, type, which half had no price)`; types the cloud had no price
    /// for at all are not written.
    pub missing: Vec<(String, String, &'static str)>,
    /// Types with a spot price only, which neither the cloud nor the shipped
    /// table gives an on-demand price: not written, since a price file entry
    /// for a type the shipped table does not know needs one.
    pub left_out: Vec<(String, String)>,
    /// Entries of the price file in force the refresh did not touch, written as they were.
    pub kept: usize,
}

/// Asks AWS for the prices of `refresh`'s regions and types and writes them, over
/// the entries of the price file in force (`cost.prices_file`, carried over),
/// to `refresh.output`, atomically. Progress and the summary go to `out`.
pub async fn refresh(settings: &Settings, refresh: &Refresh, out: &mut dyn Write) -> anyhow::Result<Summary> {
    if !refresh.on_demand && !refresh.spot {
        bail!("nothing to refresh: --skip-on-demand and --skip-spot together leave no price to ask for");
    }
    let regions = if refresh.regions.is_empty() { vec![settings.price_region()] } else { refresh.regions.clone() };
    for region in &regions {
        check_region(region)?;
    }
    let asked: Vec<String> = refresh
        .instance_types
        .iter()
        .map(|t| InstanceType::parse(t.trim()).map(InstanceType::into_inner).map_err(|e| anyhow!("--instance-types {t}: {e}")))
        .collect::<Result<_, _>>()?;
    let prices_file = settings.cost.prices_file.as_deref();
    let in_force = PriceTable::load(prices_file).map_err(anyhow::Error::msg).context("the price table in force")?;
    let shipped = PriceTable::load(None).map_err(anyhow::Error::msg)?;
    let base = match prices_file {
        Some(path) => PriceFile::read(path).map_err(anyhow::Error::msg)?,
        None => PriceFile::default(),
    };
    let pricing = match refresh.on_demand {
        true => Some(pricing_client(refresh.pricing_endpoint.as_deref()).await),
        false => None,
    };
    let pricing_endpoint = refresh.pricing_endpoint.as_deref().unwrap_or(PRICING_ENDPOINT);

    let mut found: BTreeMap<String, BTreeMap<String, Found>> = BTreeMap::new();
    for region in &regions {
        let types = if asked.is_empty() {
            let (types, unmatched) = default_instance_types(&settings.ec2.allowed_instance_types, &in_force, region);
            for pattern in unmatched {
                writeln!(out, "{region}: the allowed pattern {pattern} matches no type in the price table; name its types with --instance-types")?;
            }
            types
        } else {
            asked.clone()
        };
        let halves = match (refresh.on_demand, refresh.spot) {
            (true, true) => "on-demand and spot",
            (true, false) => "on-demand only",
            _ => "spot only",
        };
        writeln!(out, "{region}: {} instance type(s), {halves}", types.len())?;
        let spot = match refresh.spot {
            true => spot_of(&settings.ec2, region, &types).await?,
            false => BTreeMap::new(),
        };
        let by_type = found.entry(region.clone()).or_default();
        for t in &types {
            let on_demand = match &pricing {
                Some(client) => on_demand_of(client, region, t).await.map_err(|e| {
                    anyhow!(
                        "the AWS Pricing API (GetProducts at {pricing_endpoint}) failed for {t} in {region}: {e}. \
                         Nothing was written; the price table in force is unchanged. The API needs credentials \
                         allowed pricing:GetProducts and network access to {pricing_endpoint}; --skip-on-demand refreshes \
                         only spot prices"
                    )
                })?,
                None => None,
            };
            let f = Found { on_demand, spot: spot.get(t).copied() };
            writeln!(out, "{region} {t}: {}", describe(&f, refresh))?;
            by_type.insert(t.clone(), f);
        }
    }

    let (file, summary) = merge(base, &found, &shipped, refresh);
    if summary.on_demand_prices + summary.spot_prices == 0 {
        bail!("no price found for any type asked; nothing was written, the price table in force is unchanged");
    }
    let header = format!(
        "EC2 prices, USD per instance-hour, Linux, written by `geonex prices refresh` at {}.\n\
         on_demand: the AWS Price List API's list price (shared tenancy, no preinstalled software);\n\
         spot: the median of the availability zones' latest spot prices (EC2 spot price history).\n\
         Laid over the shipped table with GEONEX_COST__PRICES_FILE; what is left out keeps its shipped price.",
        chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ")
    );
    write_atomically(&refresh.output, &file.render(&header))?;
    writeln!(
        out,
        "wrote {} on-demand and {} spot price(s) for {} region(s) to {}",
        summary.on_demand_prices,
        summary.spot_prices,
        regions.len(),
        refresh.output.display()
    )?;
    if summary.kept > 0 {
        let kept = summary.kept;
        writeln!(out, "kept {kept} other entr{} of the price file in force", if kept == 1 { "y" } else { "ies" })?;
    }
    if !summary.missing.is_empty() {
        let list: Vec<String> = summary.missing.iter().map(|(r, t, half)| format!("{r} {t} ({half})")).collect();
        writeln!(out, "no price from AWS for: {}", list.join(", "))?;
    }
    if !summary.left_out.is_empty() {
        let list: Vec<String> = summary.left_out.iter().map(|(r, t)| format!("{r} {t}")).collect();
        writeln!(out, "left out, with a spot price but no on-demand one in AWS or the shipped table: {}", list.join(", "))?;
    }
    Ok(summary)
}

fn describe(f: &Found, refresh: &Refresh) -> String {
    let mut parts = Vec::new();
    if refresh.on_demand {
        parts.push(match f.on_demand {
            Some(p) => format!("on-demand {p} USD/h"),
            None => "no on-demand price".into(),
        });
    }
    if refresh.spot {
        parts.push(match f.spot {
            Some((p, zones)) => format!("spot {p} USD/h (median of {zones} zone(s))"),
            None => "no spot price".into(),
        });
    }
    parts.join(", ")
}

/// The file to write: `base` (the price file in force) with what was found
/// laid over it, field by field, and what was missing.
pub fn merge(
    mut base: PriceFile,
    found: &BTreeMap<String, BTreeMap<String, Found>>,
    shipped: &PriceTable,
    refresh: &Refresh,
) -> (PriceFile, Summary) {
    let mut summary = Summary::default();
    let priced = |e: &PriceEntry| e.on_demand.is_some() || e.spot.is_some();
    let mut untouched: BTreeSet<(String, String)> = base
        .regions
        .iter()
        .flat_map(|(r, types)| types.iter().filter(|(_, e)| priced(e)).map(move |(t, _)| (r.clone(), t.clone())))
        .collect();
    for (region, types) in found {
        for (t, f) in types {
            if refresh.on_demand && f.on_demand.is_none() {
                summary.missing.push((region.clone(), t.clone(), "on-demand"));
            }
            if refresh.spot && f.spot.is_none() {
                summary.missing.push((region.clone(), t.clone(), "spot"));
            }
            if f.on_demand.is_none() && f.spot.is_none() {
                continue;
            }
            let old = base.regions.get(region).and_then(|r| r.get(t)).copied().unwrap_or_default();
            let entry = PriceEntry { on_demand: f.on_demand.or(old.on_demand), spot: f.spot.map(|(p, _)| p).or(old.spot) };
            if entry.on_demand.is_none() && shipped.hourly(region, t, PurchaseOption::OnDemand).is_none() {
                summary.left_out.push((region.clone(), t.clone()));
                continue;
            }
            summary.on_demand_prices += usize::from(f.on_demand.is_some());
            summary.spot_prices += usize::from(f.spot.is_some());
            base.regions.entry(region.clone()).or_default().insert(t.clone(), entry);
            untouched.remove(&(region.clone(), t.clone()));
        }
    }
    summary.kept = untouched.len();
    (base, summary)
}

/// The types refreshed by default in `region`: the exact names among `allowed`
/// and every type `table` has for the region, sorted; and the `family.*`
/// patterns among `allowed` that match none of them (a pattern names no types
/// by itself, so a family the table lacks must be named type by type).
pub fn default_instance_types(allowed: &[String], table: &PriceTable, region: &str) -> (Vec<String>, Vec<String>) {
    let mut types: BTreeSet<String> = table.regions.get(region).map(|r| r.keys().cloned().collect()).unwrap_or_default();
    let mut patterns = Vec::new();
    for a in allowed {
        match a.strip_suffix(".*") {
            Some(family) => patterns.push((a.clone(), family.to_owned())),
            None => {
                if let Ok(t) = InstanceType::parse(a) {
                    types.insert(t.into_inner());
                }
            }
        }
    }
    let unmatched = patterns
        .into_iter()
        .filter(|(_, family)| !types.iter().any(|t| t.split('.').next() == Some(family.as_str())))
        .map(|(p, _)| p)
        .collect();
    (types.into_iter().collect(), unmatched)
}

fn check_region(region: &str) -> anyhow::Result<()> {
    let parts: Vec<&str> = region.split('-').collect();
    let ok = parts.len() >= 3
        && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()))
        && parts.last().is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()));
    if ok { Ok(()) } else { bail!("--region {region}: not an AWS region such as us-east-1") }
}

/// Writes `text` to `path` through a temporary file beside it, checked to load
/// as a price table before it replaces `path`.
fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    let name = path.file_name().ok_or_else(|| anyhow!("--output {} names no file", path.display()))?;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{}.{}.tmp", name.to_string_lossy(), std::process::id()));
    let result = (|| -> anyhow::Result<()> {
        let mut f = std::fs::File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?;
        f.write_all(text.as_bytes()).with_context(|| format!("write {}", tmp.display()))?;
        f.sync_all().with_context(|| format!("write {}", tmp.display()))?;
        PriceTable::load(Some(&tmp)).map_err(|e| anyhow!("the written prices do not load: {e}"))?;
        std::fs::rename(&tmp, path).with_context(|| format!("rename {} to {}", tmp.display(), path.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

async fn pricing_client(endpoint: Option<&str>) -> aws_sdk_pricing::Client {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(PRICING_REGION));
    if let Some(url) = endpoint {
        loader = loader.endpoint_url(url);
    }
    let config = loader.load().await;
    let timeouts = aws_sdk_pricing::config::timeout::TimeoutConfig::builder()
        .operation_attempt_timeout(PRICING_TIMEOUT)
        .operation_timeout(PRICING_TIMEOUT * 3)
        .build();
    aws_sdk_pricing::Client::from_conf(aws_sdk_pricing::config::Builder::from(&config).timeout_config(timeouts).build())
}

/// The on-demand price of `instance_type` in `region`, from `GetProducts`.
async fn on_demand_of(client: &aws_sdk_pricing::Client, region: &str, instance_type: &str) -> Result<Option<f64>, String> {
    let filters = [
        ("regionCode", region),
        ("instanceType", instance_type),
        ("operatingSystem", "Linux"),
        ("tenancy", "Shared"),
        ("preInstalledSw", "NA"),
        ("capacitystatus", "Used"),
        ("licenseModel", "No License required"),
    ]
    .into_iter()
    .map(|(field, value)| Filter::builder().r#type(FilterType::TermMatch).field(field).value(value).build())
    .collect::<Result<Vec<_>, _>>()
    .map_err(|e| e.to_string())?;
    let entries: Vec<String> = client
        .get_products()
        .service_code("AmazonEC2")
        .format_version("aws_v1")
        .set_filters(Some(filters))
        .max_results(100)
        .into_paginator()
        .items()
        .send()
        .try_collect()
        .await
        .map_err(|e| causes(&e))?;
    lowest_on_demand(&entries, instance_type)
}

/// The spot prices of `types` in `region`, from `DescribeSpotPriceHistory`,
/// through the deployment's own EC2 client (its endpoint, credentials and timeouts).
async fn spot_of(ec2: &Ec2Settings, region: &str, types: &[String]) -> anyhow::Result<BTreeMap<String, (f64, usize)>> {
    let settings = Ec2Settings { region: Some(region.to_owned()), ..ec2.clone() };
    let endpoint = settings.endpoint_url.clone().unwrap_or_else(|| format!("EC2 in {region}"));
    let cloud = Ec2Cloud::new(settings).await;
    let now = aws_sdk_ec2::primitives::DateTime::from(std::time::SystemTime::now());
    let mut quotes = Vec::new();
    for batch in types.chunks(SPOT_BATCH) {
        let answer = cloud
            .client()
            .describe_spot_price_history()
            .set_instance_types(Some(batch.iter().map(|t| Ec2InstanceType::from(t.as_str())).collect()))
            .product_descriptions(LINUX)
            // From now: each zone's latest price change before it, no history.
            .start_time(now)
            .end_time(now)
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(|e| {
                anyhow!(
                    "EC2 DescribeSpotPriceHistory ({endpoint}) failed for {region}: {}. Nothing was written; the \
                     price table in force is unchanged. It needs credentials allowed ec2:DescribeSpotPriceHistory; \
                     --skip-spot refreshes only on-demand prices",
                    causes(&e)
                )
            })?;
        quotes.extend(answer.iter().filter_map(|p| {
            let description = p.product_description()?.as_str();
            // `Linux/UNIX`, also as `Linux/UNIX (Amazon VPC)`; not SUSE or Red Hat.
            if !description.starts_with(LINUX) {
                return None;
            }
            let at = p.timestamp()?;
            Some(SpotQuote {
                instance_type: p.instance_type()?.as_str().to_owned(),
                zone: p.availability_zone()?.to_owned(),
                price: p.spot_price()?.parse().ok()?,
                at: (at.secs(), at.subsec_nanos()),
            })
        }));
    }
    let asked: BTreeSet<&str> = types.iter().map(String::as_str).collect();
    Ok(spot_prices(&quotes).into_iter().filter(|(t, _)| asked.contains(t.as_str())).collect())
}

/// An SDK error and its causes, each said once (`dispatch failure: io error: …`).
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.last().is_some_and(|last| last.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

/// One zone's spot price for one type at one time.
#[derive(Debug, Clone, PartialEq)]
pub struct SpotQuote {
    pub instance_type: String,
    pub zone: String,
    pub price: f64,
    /// Seconds and nanoseconds since the epoch.
    pub at: (i64, u32),
}

/// Each type's spot price: the median of its zones' latest positive prices,
/// with the number of zones.
///
/// The median, not the maximum: a runner's instance runs in whichever zone its
/// subnet (or EC2) picks, not in the dearest one, and a single zone short of
/// capacity can be priced near on-demand for a while, which the maximum would
/// carry into every runner's cost. The median is what a typical launch pays
/// and moves only when most zones move. With an even number of zones it is the
/// upper of the two middle prices, a price some zone really asks, leaning to
/// estimating a little high rather than low.
pub fn spot_prices(quotes: &[SpotQuote]) -> BTreeMap<String, (f64, usize)> {
    let mut latest: HashMap<(&str, &str), &SpotQuote> = HashMap::new();
    for q in quotes.iter().filter(|q| q.price.is_finite() && q.price > 0.0) {
        let slot = latest.entry((q.instance_type.as_str(), q.zone.as_str())).or_insert(q);
        if q.at > slot.at {
            *slot = q;
        }
    }
    let mut by_type: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for ((t, _), q) in latest {
        by_type.entry(t.to_owned()).or_default().push(q.price);
    }
    by_type
        .into_iter()
        .map(|(t, mut prices)| {
            prices.sort_by(f64::total_cmp);
            (t, (prices[prices.len() / 2], prices.len()))
        })
        .collect()
}

/// The attributes an entry must have (when it has them at all) to be the price
/// of a plain Linux runner: what `GetProducts` is asked to match.
const LINUX_SHARED_USED: [(&str, &str); 5] = [
    ("operatingSystem", "Linux"),
    ("tenancy", "Shared"),
    ("capacitystatus", "Used"),
    ("preInstalledSw", "NA"),
    ("licenseModel", "No License required"),
];

/// One Price List entry (an element of `GetProducts`' `PriceList`, a JSON
/// document with `product` and `terms`): its instance type and hourly
/// on-demand USD price. `None` when the entry is not for Linux on shared
/// tenancy and used capacity, or has no positive hourly price. Only
/// `terms.OnDemand` is read (reserved terms are not what a runner is billed);
/// dimensions whose unit is not `Hrs` or whose USD price is not positive (the
/// 0.0 rate a product carries for hours inside a capacity reservation) are
/// skipped, and of the rest the lowest is taken.
pub fn on_demand_hourly(entry: &str) -> Result<Option<(String, f64)>, String> {
    let doc: Value = serde_json::from_str(entry).map_err(|e| format!("a Price List entry that is not JSON: {e}"))?;
    let attributes = &doc["product"]["attributes"];
    let Some(instance_type) = attributes["instanceType"].as_str() else {
        return Ok(None);
    };
    let plain = LINUX_SHARED_USED.iter().all(|(name, want)| attributes[name].as_str().is_none_or(|v| v == *want));
    if !plain {
        return Ok(None);
    }
    let Some(offers) = doc["terms"]["OnDemand"].as_object() else {
        return Ok(None);
    };
    let lowest = offers
        .values()
        .filter_map(|offer| offer["priceDimensions"].as_object())
        .flat_map(|dimensions| dimensions.values())
        .filter(|d| d["unit"].as_str() == Some("Hrs"))
        .filter_map(|d| d["pricePerUnit"]["USD"].as_str()?.parse::<f64>().ok())
        .filter(|p| p.is_finite() && *p > 0.0)
        .min_by(f64::total_cmp);
    Ok(lowest.map(|p| (instance_type.to_owned(), p)))
}

/// The on-demand price of `instance_type` among a `GetProducts` answer's
/// entries: the lowest positive Linux/Shared/Used hourly price. The filters
/// ask for one product a type, yet several can match (the same type under
/// another usage type or operation code, or the old and the new product side
/// by side while a price changes); variants add charges to the plain rate and
/// never take from it, so the lowest is the rate a runner's launch is billed.
/// Entries for another type are ignored; `None` when no entry has a price.
pub fn lowest_on_demand(entries: &[String], instance_type: &str) -> Result<Option<f64>, String> {
    let mut lowest: Option<f64> = None;
    for entry in entries {
        if let Some((t, p)) = on_demand_hourly(entry)?
            && t == instance_type
        {
            lowest = Some(lowest.map_or(p, |l| l.min(p)));
        }
    }
    Ok(lowest)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `GetProducts` PriceList entry for m5d.large in us-east-1, in the
    /// documented format: product attributes, an on-demand term with an hourly
    /// rate and a 0.0 capacity-reservation rate, and a reserved term.
    const ENTRY: &str = include_str!("../fixtures/price-list-m5d-large-us-east-1.json");

    fn variant(from: &str, to: &str) -> String {
        assert!(ENTRY.contains(from), "the fixture has {from}");
        ENTRY.replace(from, to)
    }

    #[test]
    fn a_price_list_entry_gives_its_hourly_on_demand_price_and_nothing_else() {
        assert_eq!(on_demand_hourly(ENTRY).unwrap(), Some(("m5d.large".to_owned(), 0.113)));
        // Only the reservation's 0.0 rate left: no price, not 0.
        let reserved_only = variant("\"USD\": \"0.1130000000\"", "\"USD\": \"0.0000000000\"");
        assert_eq!(on_demand_hourly(&reserved_only).unwrap(), None);
        // A rate billed by another unit is not hourly.
        let mut by_quantity: Value = serde_json::from_str(ENTRY).unwrap();
        by_quantity["terms"]["OnDemand"]["2B3Q9YGSXJ9WEXK2.JRTCKXETXF"]["priceDimensions"]["2B3Q9YGSXJ9WEXK2.JRTCKXETXF.6YS6EN2CT7"]["unit"] =
            "Quantity".into();
        assert_eq!(on_demand_hourly(&by_quantity.to_string()).unwrap(), None);
        // Another tenancy or operating system is not a plain runner's price.
        assert_eq!(on_demand_hourly(&variant("\"tenancy\": \"Shared\"", "\"tenancy\": \"Dedicated\"")).unwrap(), None);
        assert_eq!(on_demand_hourly(&variant("\"operatingSystem\": \"Linux\"", "\"operatingSystem\": \"Windows\"")).unwrap(), None);
        assert!(on_demand_hourly("{\"product\": ").is_err());
        assert_eq!(on_demand_hourly("{\"product\": {\"attributes\": {}}}").unwrap(), None, "not an instance");
    }

    #[test]
    fn of_several_entries_for_one_type_the_lowest_positive_price_is_taken() {
        let dearer = variant("\"USD\": \"0.1130000000\"", "\"USD\": \"0.1340000000\"");
        let cheaper_but_dedicated = variant("\"tenancy\": \"Shared\"", "\"tenancy\": \"Host\"")
            .replace("\"USD\": \"0.1130000000\"", "\"USD\": \"0.0500000000\"");
        let other_type = variant("\"instanceType\": \"m5d.large\"", "\"instanceType\": \"m5d.xlarge\"")
            .replace("\"USD\": \"0.1130000000\"", "\"USD\": \"0.0100000000\"");
        let entries = vec![dearer.clone(), ENTRY.to_owned(), cheaper_but_dedicated, other_type];
        assert_eq!(lowest_on_demand(&entries, "m5d.large").unwrap(), Some(0.113));
        assert_eq!(lowest_on_demand(&[dearer], "m5d.large").unwrap(), Some(0.134));
        assert_eq!(lowest_on_demand(&[], "m5d.large").unwrap(), None);
    }

    fn quote(t: &str, zone: &str, price: f64, at: i64) -> SpotQuote {
        SpotQuote { instance_type: t.into(), zone: zone.into(), price, at: (at, 0) }
    }

    #[test]
    fn spot_is_the_median_of_the_zones_latest_prices() {
        let quotes = vec![
            quote("m5d.large", "us-east-1a", 0.09, 100),
            quote("m5d.large", "us-east-1a", 0.04, 200),
            quote("m5d.large", "us-east-1b", 0.05, 150),
            quote("m5d.large", "us-east-1c", 0.11, 150),
            quote("m5d.large", "us-east-1d", 0.0, 300),
            quote("t3.micro", "us-east-1a", 0.004, 100),
            quote("t3.micro", "us-east-1b", 0.003, 100),
        ];
        let prices = spot_prices(&quotes);
        // 1a's latest is 0.04, not 0.09; 1d's 0 is no price: 0.04, 0.05, 0.11.
        assert_eq!(prices["m5d.large"], (0.05, 3));
        // Two zones: the upper of the two.
        assert_eq!(prices["t3.micro"], (0.004, 2));
        assert_eq!(prices.len(), 2);
    }

    #[test]
    fn default_types_are_the_tables_and_the_exact_allowed_names() {
        let table = PriceTable::load(None).unwrap();
        let allowed: Vec<String> = ["m5d.*", "m7i.*", "m7i.large", "c7g.xlarge"].into_iter().map(String::from).collect();
        let (types, unmatched) = default_instance_types(&allowed, &table, "us-east-1");
        assert!(types.contains(&"m5d.large".to_owned()) && types.contains(&"r5.4xlarge".to_owned()));
        assert!(types.contains(&"m7i.large".to_owned()) && types.contains(&"c7g.xlarge".to_owned()));
        assert_eq!(types.len(), table.regions["us-east-1"].len() + 2);
        assert_eq!(unmatched, Vec::<String>::new(), "m7i.large answers m7i.*");
        let (types, unmatched) = default_instance_types(&["x2iedn.*".to_owned()], &table, "ap-south-1");
        assert_eq!((types, unmatched), (Vec::new(), vec!["x2iedn.*".to_owned()]));
    }

    fn asked(on_demand: bool, spot: bool) -> Refresh {
        Refresh {
            regions: Vec::new(),
            instance_types: Vec::new(),
            output: PathBuf::from("prices.toml"),
            on_demand,
            spot,
            pricing_endpoint: None,
        }
    }

    #[test]
    fn found_prices_are_laid_over_the_file_in_force_and_unpriceable_types_left_out() {
        let shipped = PriceTable::load(None).unwrap();
        let mut base = PriceFile { s3_usd_per_gb_month: Some(0.02), ..PriceFile::default() };
        base.regions.entry("eu-west-1".into()).or_default().insert("m5d.large".into(), PriceEntry { on_demand: Some(0.5), spot: None });
        base.regions.entry("us-east-1".into()).or_default().insert("m5d.large".into(), PriceEntry { on_demand: Some(0.2), spot: Some(0.1) });
        let mut found: BTreeMap<String, BTreeMap<String, Found>> = BTreeMap::new();
        let us = found.entry("us-east-1".into()).or_default();
        us.insert("m5d.large".into(), Found { on_demand: None, spot: Some((0.03, 6)) });
        us.insert("t3.micro".into(), Found { on_demand: None, spot: Some((0.002, 6)) });
        us.insert("m7i.large".into(), Found { on_demand: None, spot: Some((0.04, 6)) });
        us.insert("x9.huge".into(), Found::default());
        let (file, summary) = merge(base, &found, &shipped, &asked(false, true));
        let us = &file.regions["us-east-1"];
        assert_eq!(us["m5d.large"], PriceEntry { on_demand: Some(0.2), spot: Some(0.03) }, "the file's on-demand kept");
        assert_eq!(us["t3.micro"], PriceEntry { on_demand: None, spot: Some(0.002) }, "the shipped on-demand stays");
        assert!(!us.contains_key("m7i.large") && !us.contains_key("x9.huge"));
        assert_eq!(file.regions["eu-west-1"]["m5d.large"].on_demand, Some(0.5));
        assert_eq!(file.s3_usd_per_gb_month, Some(0.02));
        assert_eq!((summary.on_demand_prices, summary.spot_prices), (0, 2));
        assert_eq!(summary.missing, vec![("us-east-1".to_owned(), "x9.huge".to_owned(), "spot")]);
        assert_eq!(summary.left_out, vec![("us-east-1".to_owned(), "m7i.large".to_owned())]);
        assert_eq!(summary.kept, 1, "eu-west-1's m5d.large");

        let (file, summary) = merge(PriceFile::default(), &found, &shipped, &asked(true, true));
        assert_eq!(summary.missing.len(), 5, "four types without on-demand, one without spot: {:?}", summary.missing);
        assert_eq!(file.regions["us-east-1"].len(), 2);
    }

    #[test]
    fn regions_are_checked() {
        assert!(check_region("us-east-1").is_ok() && check_region("ap-southeast-3").is_ok());
        assert!(check_region("us-gov-west-1").is_ok());
        assert!(check_region("useast1").is_err() && check_region("us-east-").is_err() && check_region("../x-y-1").is_err());
    }
}
