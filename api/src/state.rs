//! What every handler shares: the database, the dispatcher, settings and the
//! login throttle.

use std::sync::Arc;
use std::time::Duration;

use geonex_shared::config::{ApiSettings, AuthSettings, S3UsageSettings};
use geonex_shared::cost::PriceTable;
use geonex_shared::dispatch::Dispatcher;
use geonex_shared::domain::InstanceTypePolicy;
use geonex_shared::store::Database;

use crate::auth::LoginThrottle;

/// Everything a handler needs; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The database, behind every store port.
    pub db: Arc<dyn Database>,
    /// Who hears about new image requests; empty means every administrator.
    pub admin_recipients: Vec<String>,
    pub dispatcher: Dispatcher,
    pub instance_types: InstanceTypePolicy,
    pub settings: ApiSettings,
    pub auth: AuthSettings,
    pub throttle: Arc<LoginThrottle>,
    pub max_attempts: i32,
    /// A worker silent for this long is presumed dead (shown with a running
    /// command's holder).
    pub holder_timeout: Duration,
    /// A runner transitional for longer than this shows `stuck`.
    pub stuck_after: Duration,
    /// What instances cost, and the region their prices are looked up in.
    pub prices: Arc<PriceTable>,
    pub price_region: String,
    /// What the cloud adapter is, shown by `/readyz`.
    pub cloud_label: String,
    pub usage_settings: S3UsageSettings,
    /// The configured extra outputs in canonical form.
    pub usage_extra_outputs: Vec<String>,
    /// The change feed's fan-out behind `/events` (absent: not listening).
    pub events: Option<crate::events::EventHub>,
    /// What the polling path keeps in memory.
    pub caches: Arc<crate::cache::Caches>,
}

