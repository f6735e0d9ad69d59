//! The HTTP layer: routing, body cap, SigV4, dispatch to the operations, one error mapping.
//!
//! Evaluation order (checklist §3.4): a well-formed HTTP/2 head (400) → path and method
//! (404 / 405, before authentication; the body is drained so the answer arrives) → body,
//! capped before buffering (501) and charged to the process-wide pre-authentication budget
//! (429) → SigV4 (401) → key store state (400) → quota (429) → content type and JSON (400) →
//! key allowlist (404) → sizes (501) → HSM. `GET /ping` answers 200 unauthenticated for load
//! balancers (LB-1).
//!
//! Where: the layer in `audit.rs` wraps the API, resolves the route and writes the one audit line and
//! the request metrics from the final response; `handlers.rs` runs the stages in the order
//! above; `body.rs` reads bodies; `operations.rs` calls the HSM; `error.rs` turns errors into
//! responses.

pub mod audit;
mod body;
mod error;
mod handlers;
mod operations;
mod quota;
mod routing;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::Router;
use axum::handler::Handler;
use axum::routing::get;
use tower_http::catch_panic::CatchPanicLayer;

pub use body::{ConnectionShare, PreAuthBudget};
pub use error::{ApiError, json_response};
pub use routing::{Operation, RouteTable};

use crate::auth::CredentialStore;
use crate::authz::Policies;
use crate::config::{KeyControls, KeyStoreSettings, Limits, Settings};
use crate::health::HealthService;
use crate::hsm::KeyBackend;
use crate::metrics::Metrics;
use crate::xks::ExternalKeyId;

/// Request extension: the subject DN of the connection's mTLS client certificate, for
/// authorization policies (`context.mtlsClientSubject`).
#[derive(Debug, Clone)]
pub struct ClientSubject(pub Arc<str>);

/// Response extension: the request that produced this response keeps its connection from
/// idling out. Set only once a request is authenticated, so unauthenticated traffic cannot
/// keep a connection slot (see `crate::server`).
#[derive(Debug, Clone, Copy)]
pub struct KeepsConnectionAlive;

/// Everything a request needs; shared by all connections.
pub struct AppState {
    api: ArcSwap<ApiConfig>,
    backend: Arc<dyn KeyBackend>,
    health: HealthService,
    metrics: Arc<Metrics>,
    /// Request body bytes held for requests not yet authenticated (process-wide).
    pre_auth: PreAuthBudget,
}

/// The part of the configuration requests read, swappable as a whole on reload.
pub struct ApiConfig {
    stores: Vec<KeyStore>,
    routes: RouteTable,
    limits: Limits,
    request_timeout: Duration,
    /// How long a client may take to send the request body.
    body_timeout: Duration,
    health_key: ExternalKeyId,
    /// The `[[keys]]` kill switch.
    keys: KeyControls,
}

/// A logical key store at runtime (URI-3).
pub struct KeyStore {
    settings: KeyStoreSettings,
    credentials: CredentialStore,
    allowed_keys: Option<HashSet<ExternalKeyId>>,
    /// The store's request quota, if it has one; a reload keeps its state (a store with the
    /// same name keeps its bucket), so reloading never refills it.
    quota: Option<Arc<quota::TokenBucket>>,
    /// The Cedar policies in force for this store: its own, else the process-wide ones.
    authorization: Option<Policies>,
}

impl KeyStore {
    fn new(
        settings: KeyStoreSettings,
        default_authorization: Option<&Policies>,
        previous: Option<&ApiConfig>,
    ) -> Self {
        let credentials =
            CredentialStore::new(&settings.credentials, settings.allowed_regions.as_deref());
        let allowed_keys = settings
            .allowed_keys
            .as_ref()
            .map(|k| k.iter().cloned().collect());
        let old_bucket = previous
            .and_then(|old| old.stores.iter().find(|s| s.settings.name == settings.name))
            .and_then(|old| old.quota.as_ref());
        let quota = settings.rate_limit.map(|limit| match old_bucket {
            Some(bucket) => bucket.reconfigured(limit),
            None => Arc::new(quota::TokenBucket::new(limit)),
        });
        let authorization = settings
            .authorization
            .clone()
            .or_else(|| default_authorization.cloned());
        Self {
            settings,
            credentials,
            allowed_keys,
            quota,
            authorization,
        }
    }

    /// Whether this store serves `key`: on its allowlist, if any, and never the health key.
    fn serves(&self, key: &ExternalKeyId, health_key: &ExternalKeyId) -> bool {
        key != health_key
            && self
                .allowed_keys
                .as_ref()
                .is_none_or(|set| set.contains(key))
    }
}

impl ApiConfig {
    /// Builds the request-facing configuration from validated settings.
    pub fn new(settings: &Settings) -> Self {
        Self::build(settings, None)
    }

    /// Like [`ApiConfig::new`], carrying over run-time state (quota buckets) from `previous`.
    fn build(settings: &Settings, previous: Option<&Self>) -> Self {
        let routes = RouteTable::new(settings.key_stores.iter().map(|s| s.prefix.as_str()));
        Self {
            stores: settings
                .key_stores
                .iter()
                .cloned()
                .map(|store| KeyStore::new(store, settings.authorization.as_ref(), previous))
                .collect(),
            routes,
            limits: settings.limits,
            request_timeout: settings.server.request_timeout,
            body_timeout: settings.server.body_timeout,
            health_key: settings.hsm.primary().health_key_label.clone(),
            keys: settings.keys.clone(),
        }
    }
}

impl ApiConfig {
    fn publish_credential_counts(&self, metrics: &Metrics) {
        metrics.set_credentials(
            self.stores
                .iter()
                .map(|s| (s.settings.name.as_str(), s.settings.credentials.len())),
        );
    }
}

impl AppState {
    /// Creates the state from settings, a key backend and the process's metrics.
    pub fn new(settings: &Settings, backend: Arc<dyn KeyBackend>, metrics: Arc<Metrics>) -> Self {
        let api = ApiConfig::new(settings);
        api.publish_credential_counts(&metrics);
        Self {
            api: ArcSwap::from_pointee(api),
            health: HealthService::new(
                Arc::clone(&backend),
                &settings.health,
                Arc::clone(&metrics),
            ),
            backend,
            metrics,
            pre_auth: PreAuthBudget::new(
                settings.limits.pre_auth_buffer_bytes,
                settings.limits.max_body_bytes,
            ),
        }
    }

    /// Request body bytes currently held for requests not yet authenticated.
    pub fn pre_auth_bytes_in_use(&self) -> usize {
        self.pre_auth.in_use()
    }

    /// Atomically replaces the request-facing configuration with one built from `settings`
    /// (credential rotation, ROT-2); quota buckets keep their state. Requests in progress
    /// finish with the configuration they started with.
    pub fn reconfigure(&self, settings: &Settings) {
        let config = ApiConfig::build(settings, Some(&self.api.load()));
        config.publish_credential_counts(&self.metrics);
        self.api.store(Arc::new(config));
        // `keys rotate` may have made versions, an operator destroyed some: look again.
        self.backend.forget_keys();
    }

    /// The process's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Readiness: the HSM passes the (cached) deep health check before `deadline`.
    pub async fn ready(&self, deadline: std::time::Instant) -> Result<(), crate::xks::XksError> {
        self.health.status(deadline).await.map(|_| ())
    }
}

/// The application: `/ping` plus the XKS API behind one fallback that does its own routing.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(
            "/ping",
            get(handlers::ping).fallback(handlers::ping_method_not_allowed),
        )
        .fallback(Handler::layer(
            handlers::xks,
            axum::middleware::from_fn_with_state(Arc::clone(&state), audit::layer),
        ))
        .layer(CatchPanicLayer::custom(error::panic_response))
        .with_state(state)
}
