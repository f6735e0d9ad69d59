//! GetHealthStatus (spec §"GetHealthStatus", H-1…18).
//!
//! The answer comes from a deep check — a real encrypt and decrypt on the dedicated
//! health-check key, done by the backend (H-2, H-3) — cached for at most `cache_ttl` (≤ 60 s,
//! H-14, H-15). Concurrent requests share one check instead of each hitting the HSM.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use crate::config::HealthSettings;
use crate::hsm::{HsmError, HsmHealth, KeyBackend, MemberStatus};
use crate::xks::wire::{EkmFleetMember, HealthResponse};
use crate::xks::{ErrorName, XksError};

/// Most `ekmFleetDetails` entries the spec allows (H-12).
const MAX_FLEET_ENTRIES: usize = 10;

/// `xksProxyVendor`.
pub const PROXY_VENDOR: &str = "xks-proxy";

/// Answers GetHealthStatus from a cached deep check.
pub struct HealthService {
    backend: Arc<dyn KeyBackend>,
    fleet_size: u32,
    ttl: Duration,
    cache: Mutex<Option<(Instant, HsmHealth)>>,
}

impl HealthService {
    /// Creates the service.
    pub fn new(backend: Arc<dyn KeyBackend>, settings: &HealthSettings) -> Self {
        Self {
            backend,
            fleet_size: settings.proxy_fleet_size,
            ttl: settings.cache_ttl,
            cache: Mutex::new(None),
        }
    }

    /// The GetHealthStatus response, or the error to answer when no HSM can serve (H-16).
    pub async fn status(&self, deadline: Instant) -> Result<HealthResponse, XksError> {
        let health = self.current(deadline).await?;
        if !health
            .members
            .iter()
            .any(|m| m.status != MemberStatus::Unavailable)
        {
            return Err(XksError::internal(
                "no external key manager can serve requests",
            ));
        }
        Ok(HealthResponse {
            xks_proxy_fleet_size: self.fleet_size,
            xks_proxy_vendor: PROXY_VENDOR.to_owned(),
            xks_proxy_model: format!("xks-proxy {}", env!("CARGO_PKG_VERSION")),
            ekm_vendor: health.vendor,
            ekm_fleet_details: health
                .members
                .into_iter()
                .take(MAX_FLEET_ENTRIES)
                .map(|m| EkmFleetMember {
                    id: m.id,
                    model: m.model,
                    health_status: m.status.as_str().to_owned(),
                })
                .collect(),
        })
    }

    /// A cached result younger than the TTL, or a fresh deep check.
    async fn current(&self, deadline: Instant) -> Result<HsmHealth, XksError> {
        let timeout = || {
            XksError::new(
                ErrorName::DependencyTimeoutException,
                "the health check did not finish in time",
            )
        };
        let mut cache = tokio::time::timeout_at(deadline.into(), self.cache.lock())
            .await
            .map_err(|_| timeout())?;
        if let Some((at, health)) = cache.as_ref()
            && at.elapsed() < self.ttl
        {
            return Ok(health.clone());
        }
        // Errors are not cached: the next request retries the HSM.
        let health = self
            .backend
            .health(deadline)
            .await
            .map_err(|err| match err {
                HsmError::Timeout => timeout(),
                other => {
                    tracing::error!(error = %other, "deep health check failed");
                    XksError::internal("the external key manager health check failed")
                }
            })?;
        *cache = Some((Instant::now(), health.clone()));
        Ok(health)
    }
}
