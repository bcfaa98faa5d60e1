//! What runners cost, and the monthly budgets that limit it: `/describe-costs`,
//! `/set-budget`, `/describe-budgets`. Costs come from each runner's observed
//! running intervals and the price table; budgets are checked by the workers'
//! cost keeper, which records what it found.

use std::collections::{BTreeMap, HashMap};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use geonex_shared::cost::{Cost, cost_of, month_of, running_intervals, s3_monthly_usd};
use geonex_shared::error::FieldError;
use geonex_shared::store::cost::{BudgetRecord, BudgetScope};
use geonex_shared::store::usage::UsageQuery;
use serde::{Deserialize, Serialize};
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
use utoipa::{IntoParams, ToSchema};

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::params::{Params, Time, schema};
use crate::state::AppState;

/// Every runner's cost over its whole life, for the runners named.
pub async fn lifetime_costs(
    app: &AppState,
    runner_ids: &[String],
    now: DateTime<Utc>,
) -> Result<HashMap<String, Cost>, ApiError> {
    if runner_ids.is_empty() {
        return Ok(HashMap::new());
    }
    let changes = app.db.state_changes(Some(runner_ids), now).await?;
    let mut out: HashMap<String, Cost> = HashMap::new();
    for i in running_intervals(&changes, DateTime::<Utc>::MIN_UTC, now) {
        out.entry(i.runner_id.clone()).or_default().add(cost_of(&i, &app.prices, &app.price_region));
    }
    Ok(out)
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DescribeCostsParams {
    /// Default: `runner`.
    group_by: Option<GroupBy>,
    /// Default: the start of this month (UTC).
    since: Option<Time>,
    /// Default: now.
    until: Option<Time>,
}

/// What `/describe-costs` sums over.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    #[default]
    Runner,
    Image,
    User,
    Day,
}

impl GroupBy {
    pub fn as_str(self) -> &'static str {
        match self {
            GroupBy::Runner => "runner",
            GroupBy::Image => "image",
            GroupBy::User => "user",
            GroupBy::Day => "day",
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct CostGroup {
    /// The runner id, image name, user, or day (`2026-12-01`).
    pub key: String,
    pub running_seconds: f64,
    pub instance_usd: f64,
    /// Running time of instance types the price table has no price for.
    pub unpriced_seconds: f64,
}

#[derive(Serialize, ToSchema)]
pub struct StorageCost {
    pub s3_output: String,
    pub bytes: i64,
    /// What storing them costs a month.
    pub usd_per_month: f64,
}

#[derive(Serialize, ToSchema)]
pub struct CostReport {
    pub group_by: String,
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    pub groups: Vec<CostGroup>,
    pub total: CostGroup,
    /// S3 outputs as last scanned, at the per-GB-month price.
    pub storage: Vec<StorageCost>,
    pub storage_usd_per_month: f64,
    pub region: String,
}

fn rounded(c: Cost, key: String) -> CostGroup {
    let r = |x: f64| (x * 10_000.0).round() / 10_000.0;
    CostGroup {
        key,
        running_seconds: r(c.running_seconds),
        instance_usd: r(c.instance_usd),
        unpriced_seconds: r(c.unpriced_seconds),
    }
}

#[utoipa::path(get, path = "/describe-costs", tag = "costs", params(DescribeCostsParams), security(("bearer" = [])),
    responses(
        (status = 200, description = "What runners cost in the range, grouped", body = CostReport),
        (status = 400, description = "Bad grouping or time", body = ErrorBody),
    ))]
pub async fn describe_costs(State(app): State<AppState>, params: Params) -> Result<Json<CostReport>, ApiError> {
    let now = Utc::now();
    let p: DescribeCostsParams = params.decode()?;
    let group_by = p.group_by.unwrap_or_default();
    let since = p.since.map_or_else(|| month_of(now).0, |t| t.0);
    let until = p.until.map_or(now, |t| t.0).min(now);
    if until <= since {
        return Err(FieldError::invalid("until", "must be after since").into());
    }
    let runners: HashMap<String, (String, String)> = app
        .db
        .all_runners()
        .await?
        .into_iter()
        .map(|r| (r.runner_id, (r.image_name, r.owner.unwrap_or_else(|| "(unknown)".into()))))
        .collect();
    let changes = app.db.state_changes(None, until).await?;
    let mut groups: BTreeMap<String, Cost> = BTreeMap::new();
    let mut total = Cost::default();
    for i in running_intervals(&changes, since, until) {
        let (image, owner) = runners.get(&i.runner_id).cloned().unwrap_or_default();
        // A day's share of an interval that spans midnight is its own.
        let pieces = if group_by == GroupBy::Day { split_days(&i) } else { vec![i.clone()] };
        for piece in pieces {
            let cost = cost_of(&piece, &app.prices, &app.price_region);
            let key = match group_by {
                GroupBy::Image => image.clone(),
                GroupBy::User => owner.clone(),
                GroupBy::Day => piece.start.format("%Y-%m-%d").to_string(),
                GroupBy::Runner => piece.runner_id.clone(),
            };
            groups.entry(key).or_default().add(cost);
            total.add(cost);
        }
    }
    let usage = app
        .db
        .list_usage(&UsageQuery { extra_outputs: app.usage_extra_outputs.clone(), stale_after: std::time::Duration::MAX / 4, ..Default::default() })
        .await?;
    let storage: Vec<StorageCost> = usage
        .into_iter()
        .map(|o| StorageCost { usd_per_month: s3_monthly_usd(o.bytes, &app.prices), s3_output: o.s3_output, bytes: o.bytes })
        .collect();
    Ok(Json(CostReport {
        group_by: group_by.as_str().to_owned(),
        since,
        until,
        groups: groups.into_iter().map(|(k, c)| rounded(c, k)).collect(),
        total: rounded(total, "total".into()),
        storage_usd_per_month: storage.iter().map(|s| s.usd_per_month).sum(),
        storage,
        region: app.price_region.clone(),
    }))
}

/// An interval cut at each UTC midnight it spans.
fn split_days(i: &geonex_shared::cost::Interval) -> Vec<geonex_shared::cost::Interval> {
    let mut out = Vec::new();
    let mut start = i.start;
    while start < i.end {
        let next_midnight = (start.date_naive() + chrono::Days::new(1)).and_hms_opt(0, 0, 0).map(|t| t.and_utc());
        let end = next_midnight.map_or(i.end, |m| m.min(i.end));
        out.push(geonex_shared::cost::Interval { start, end, ..i.clone() });
        start = end;
    }
    out
}

#[derive(Deserialize, IntoParams, ToSchema)]
#[into_params(parameter_in = Query)]
pub struct SetBudgetParams {
    scope: BudgetScope,
    /// The user (as commands name their requester: a user name, or `service:NAME`) or the image name.
    subject: Subject,
    /// USD a calendar month (UTC).
    monthly_usd: MonthlyUsd,
}

/// What a budget is for: a user or an image name, at most 255 bytes.
pub struct Subject(String);

impl Subject {
    pub const MAX_BYTES: usize = 255;
}

impl<'de> Deserialize<'de> for Subject {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if text.len() > Subject::MAX_BYTES {
            return Err(serde::de::Error::custom(format!("is longer than {} characters", Subject::MAX_BYTES)));
        }
        Ok(Subject(text))
    }
}

schema!([] Subject, "BudgetSubject", ObjectBuilder::new()
    .schema_type(Type::String)
    .description(Some("A user or an image name, at most 255 bytes."))
    .min_length(Some(1))
    .examples(["alice"]));

/// A monthly budget in USD, from 0 to a billion.
pub struct MonthlyUsd(f64);

impl MonthlyUsd {
    pub const MAX: f64 = 1e9;
}

impl<'de> Deserialize<'de> for MonthlyUsd {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match String::deserialize(d)?.parse::<f64>() {
            Ok(n) if n.is_finite() && (0.0..=MonthlyUsd::MAX).contains(&n) => Ok(MonthlyUsd(n)),
            _ => Err(serde::de::Error::custom("must be a number of dollars from 0 to 1000000000")),
        }
    }
}

schema!([] MonthlyUsd, "MonthlyUsd", ObjectBuilder::new()
    .schema_type(Type::Number)
    .format(Some(SchemaFormat::KnownFormat(KnownFormat::Double)))
    .description(Some("USD a calendar month (UTC)."))
    .minimum(Some(0.0))
    .maximum(Some(MonthlyUsd::MAX)));

#[utoipa::path(post, path = "/set-budget", tag = "costs", security(("bearer" = [])),
    request_body(content = SetBudgetParams, content_type = "application/json"),
    responses(
        (status = 200, description = "The budget as set", body = BudgetRecord),
        (status = 400, description = "Bad scope, subject or amount", body = ErrorBody),
    ))]
pub async fn set_budget(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    params: Params,
) -> Result<Response, ApiError> {
    let SetBudgetParams { scope, subject: Subject(subject), monthly_usd: MonthlyUsd(amount) } = params.decode()?;
    let b = app.db.set_budget(scope, &subject, amount, &caller.label).await?;
    Ok((StatusCode::OK, Json(b)).into_response())
}

#[derive(Serialize, ToSchema)]
pub struct BudgetView {
    #[serde(flatten)]
    pub budget: BudgetRecord,
    /// This month (UTC), as the last check found it.
    pub month: String,
    pub percent: f64,
    /// `ok`, `warning` (80% spent) or `exceeded` (starts are refused, runners stopped).
    pub state: String,
    /// The levels (80, 100) crossed this month.
    pub crossed: Vec<i32>,
}

#[derive(Serialize, ToSchema)]
pub struct BudgetList {
    pub budgets: Vec<BudgetView>,
}

#[utoipa::path(get, path = "/describe-budgets", tag = "costs", security(("bearer" = [])),
    responses((status = 200, description = "Every budget with this month's spend", body = BudgetList)))]
pub async fn describe_budgets(State(app): State<AppState>) -> Result<Json<BudgetList>, ApiError> {
    let (_, month) = month_of(Utc::now());
    let notices = app.db.notices(&month).await?;
    let budgets = app
        .db
        .list_budgets()
        .await?
        .into_iter()
        .map(|b| {
            let spent = if b.spent_month.as_deref() == Some(month.as_str()) { b.spent_usd } else { 0.0 };
            let percent = if b.monthly_usd > 0.0 { spent / b.monthly_usd * 100.0 } else if spent > 0.0 { 100.0 } else { 0.0 };
            let state = if percent >= 100.0 {
                "exceeded"
            } else if percent >= 80.0 {
                "warning"
            } else {
                "ok"
            };
            let crossed = notices.iter().filter(|(id, _)| *id == b.budget_id).map(|(_, l)| *l).collect();
            BudgetView { month: month.clone(), percent: (percent * 100.0).round() / 100.0, state: state.into(), crossed, budget: b }
        })
        .collect();
    Ok(Json(BudgetList { budgets }))
}
