//! What every handler shares.

use crate::auth::JwtKeys;
use crate::config::Config;
use crate::db::Db;
use crate::store::DieselStore;
use actix::Addr;
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::Arc;
use tiffin_actors::bus::Bus;
use tiffin_actors::{Dispatcher, Kitchens, Registry};

pub struct AppState {
    pub config: Config,
    pub db: Db,
    pub store: Arc<DieselStore>,
    pub keys: JwtKeys,
    pub registry: Addr<Registry>,
    /// The kitchens the registry has started, found without asking it.
    pub kitchens: Kitchens,
    /// In-process, or in-process plus Redis to the other nodes.
    pub bus: Arc<dyn Bus>,
    /// This node's link to the others (`redis_url` set).
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    pub dispatcher: Addr<Dispatcher>,
    pub metrics: PrometheusHandle,
    /// What reader secrets derive from.
    pub reader_key: Vec<u8>,
    pub seen_signatures: crate::rfid::SeenSignatures,
    pub limits: crate::limits::Limits,
    /// Paired screens' sockets on this node, closed when a screen is revoked (here, or on
    /// another node that tells this one).
    pub screen_sockets: Arc<crate::screen_sockets::ScreenSockets>,
    /// Flips to true when the hub starts draining: sockets close with 1001.
    pub shutdown: tokio::sync::watch::Sender<bool>,
}
