//! GetHealthStatus (spec §"GetHealthStatus", H-1…18).
//!
//! The answer comes from a deep check — a real encrypt and decrypt on the dedicated
//! health-check key, done by the backend (H-2, H-3) — cached for at most `cache_ttl` (≤ 60 s,
//! H-14, H-15). Concurrent requests share one check instead of each hitting the HSM.
//!
//! Every fresh check sets `xks_hsm_health_state{member}` per member (2 ACTIVE, 1 DEGRADED,
//! 0 UNAVAILABLE); a check that fails outright marks the backend's own member 0. A check
//! that never ran (queue full, deadline passed) leaves the gauges as they were.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use crate::config::HealthSettings;
use crate::hsm::{HsmError, HsmHealth, KeyBackend, MemberStatus, Served};
use crate::metrics::Metrics;
use crate::xks::XksError;
use crate::xks::wire::{EkmFleetMember, HealthResponse};

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
    /// The member that served the last deep check (`None` for a fleet: all of them did).
    last_member: parking_lot::Mutex<Option<String>>,
    metrics: Arc<Metrics>,
}

impl HealthService {
    /// Creates the service; the outcome of every deep check is recorded in `metrics`.
    pub fn new(
        backend: Arc<dyn KeyBackend>,
        settings: &HealthSettings,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            backend,
            fleet_size: settings.proxy_fleet_size,
            ttl: settings.cache_ttl,
            cache: Mutex::new(None),
            last_member: parking_lot::Mutex::new(None),
            metrics,
        }
    }

    /// The HSM member that served the last deep check, for the audit log; `None` for a fleet
    /// (every member answered) or before the first check.
    pub fn serving_member(&self) -> Option<String> {
        self.last_member.lock().clone()
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
        // Waiting past the deadline for another request's deep check is the HSM not answering
        // in time, like the check itself timing out: both take the one HsmError → XksError
        // mapping (`hsm::error`), DependencyTimeoutException.
        let mut cache = tokio::time::timeout_at(deadline.into(), self.cache.lock())
            .await
            .map_err(|_| XksError::from(HsmError::Timeout))?;
        if let Some((at, health)) = cache.as_ref()
            && at.elapsed() < self.ttl
        {
            return Ok(health.clone());
        }
        // Errors are not cached: the next request retries the HSM.
        let Served { result, member } = self.backend.health(deadline).await;
        (*self.last_member.lock()).clone_from(&member);
        let health = result.map_err(|err| match err {
            // The check never ran (every session busy, or the deadline passed first):
            // nothing is known about the HSM, and KMS polls again.
            err @ (HsmError::Timeout | HsmError::Busy) => XksError::from(err),
            // Any other failure is the HSM failing its check: InternalException whatever
            // the error (H-16), never e.g. the health key's KeyNotFoundException.
            other => {
                tracing::error!(error = %other, "deep health check failed");
                if let Some(member) = &member {
                    self.metrics.set_hsm_health(member, 0);
                }
                XksError::internal("the external key manager health check failed")
            }
        })?;
        for member in &health.members {
            let state = match member.status {
                MemberStatus::Active => 2,
                MemberStatus::Degraded => 1,
                MemberStatus::Unavailable => 0,
            };
            self.metrics.set_hsm_health(&member.id, state);
        }
        // A result with no usable member is not cached either: the next poll re-checks, so a
        // recovered HSM is reported at once instead of after the TTL.
        if health
            .members
            .iter()
            .any(|m| m.status != MemberStatus::Unavailable)
        {
            *cache = Some((Instant::now(), health.clone()));
        }
        Ok(health)
    }
}

#[cfg(test)]
mod tests {
    //! The aggregation rules, over a scripted backend (the deep check itself is tested against
    //! SoftHSM2 in `tests/hsm_backend.rs` and `tests/api.rs`).
    use std::sync::atomic::{AtomicUsize, Ordering};

    use zeroize::Zeroizing;

    use super::*;
    use crate::hsm::{
        DecryptRequest, EncryptRequest, GcmCiphertext, KeyMetadata, MemberHealth, ServedFuture,
    };
    use crate::xks::{ErrorName, ExternalKeyId, KeyVersion, VersionedKey};

    struct Scripted {
        answer: Result<HsmHealth, HsmError>,
        calls: AtomicUsize,
    }

    /// A scripted answer that no particular member served.
    fn answer<'a, T: Send + 'a>(result: Result<T, HsmError>) -> ServedFuture<'a, T> {
        Box::pin(async move {
            Served {
                result,
                member: None,
            }
        })
    }

    impl KeyBackend for Scripted {
        fn key_versions(
            &self,
            _: ExternalKeyId,
            _: Instant,
        ) -> ServedFuture<'_, Arc<[KeyVersion]>> {
            answer(Err(HsmError::KeyNotFound))
        }
        fn forget_keys(&self) {}
        fn key_metadata(&self, _: VersionedKey, _: Instant) -> ServedFuture<'_, KeyMetadata> {
            answer(Err(HsmError::KeyNotFound))
        }
        fn encrypt(
            &self,
            _: VersionedKey,
            _: EncryptRequest,
            _: Instant,
        ) -> ServedFuture<'_, GcmCiphertext> {
            answer(Err(HsmError::KeyNotFound))
        }
        fn decrypt(
            &self,
            _: VersionedKey,
            _: DecryptRequest,
            _: Instant,
        ) -> ServedFuture<'_, Zeroizing<Vec<u8>>> {
            answer(Err(HsmError::KeyNotFound))
        }
        fn health(&self, _: Instant) -> ServedFuture<'_, HsmHealth> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            answer(self.answer.clone())
        }
    }

    fn member(id: usize, status: MemberStatus) -> MemberHealth {
        MemberHealth {
            id: format!("hsm-{id}"),
            model: "Model 1".into(),
            status,
        }
    }

    fn service(
        answer: Result<HsmHealth, HsmError>,
        ttl: Duration,
    ) -> (HealthService, Arc<Scripted>) {
        let backend = Arc::new(Scripted {
            answer,
            calls: AtomicUsize::new(0),
        });
        let settings = HealthSettings {
            proxy_fleet_size: 3,
            cache_ttl: ttl,
        };
        let metrics = Arc::new(Metrics::new());
        (
            HealthService::new(
                Arc::clone(&backend) as Arc<dyn KeyBackend>,
                &settings,
                metrics,
            ),
            backend,
        )
    }

    fn deadline() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[tokio::test]
    async fn h_6_h_11_h_12_degraded_members_still_answer_and_at_most_ten_are_listed() {
        let mut members: Vec<_> = (0..12)
            .map(|i| member(i, MemberStatus::Unavailable))
            .collect();
        members[3].status = MemberStatus::Degraded;
        let (svc, _) = service(
            Ok(HsmHealth {
                vendor: "Acme".into(),
                members,
            }),
            Duration::from_secs(30),
        );
        let resp = svc.status(deadline()).await.unwrap();
        assert_eq!(resp.xks_proxy_fleet_size, 3);
        assert_eq!(resp.ekm_vendor, "Acme");
        assert_eq!(resp.ekm_fleet_details.len(), 10);
        assert_eq!(resp.ekm_fleet_details[3].health_status, "DEGRADED");
        assert_eq!(resp.ekm_fleet_details[0].health_status, "UNAVAILABLE");
        // Every member gets a gauge, also those beyond the ten the wire can list.
        let text = svc.metrics.render();
        for line in [
            r#"xks_hsm_health_state{member="hsm-3"} 1"#,
            r#"xks_hsm_health_state{member="hsm-0"} 0"#,
            r#"xks_hsm_health_state{member="hsm-11"} 0"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }

    #[tokio::test]
    async fn h_16_no_member_can_serve_is_an_internal_error() {
        let health = HsmHealth {
            vendor: "Acme".into(),
            members: vec![member(1, MemberStatus::Unavailable)],
        };
        let (svc, _) = service(Ok(health), Duration::from_secs(30));
        assert_eq!(
            svc.status(deadline()).await.unwrap_err().name(),
            ErrorName::InternalException
        );
        let (svc, _) = service(Err(HsmError::Timeout), Duration::from_secs(30));
        assert_eq!(
            svc.status(deadline()).await.unwrap_err().name(),
            ErrorName::DependencyTimeoutException
        );
        let (svc, _) = service(
            Err(HsmError::Unavailable("gone".into())),
            Duration::from_secs(30),
        );
        let err = svc.status(deadline()).await.unwrap_err();
        assert_eq!(err.name(), ErrorName::InternalException);
        assert!(
            !err.message().contains("gone"),
            "internal detail leaked: {err}"
        );
    }

    #[tokio::test]
    async fn h_14_h_15_results_are_cached_for_the_ttl_only_and_errors_not_at_all() {
        let health = HsmHealth {
            vendor: "Acme".into(),
            members: vec![member(1, MemberStatus::Active)],
        };
        let (svc, backend) = service(Ok(health), Duration::from_millis(200));
        for _ in 0..5 {
            svc.status(deadline()).await.unwrap();
        }
        let text = svc.metrics.render();
        assert!(
            text.contains(r#"xks_hsm_health_state{member="hsm-1"} 2"#),
            "{text}"
        );
        assert_eq!(backend.calls.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_millis(250)).await;
        svc.status(deadline()).await.unwrap();
        assert_eq!(backend.calls.load(Ordering::SeqCst), 2);

        let down = HsmHealth {
            vendor: "Acme".into(),
            members: vec![member(1, MemberStatus::Unavailable)],
        };
        for answer in [Err(HsmError::Timeout), Ok(down)] {
            let (svc, backend) = service(answer, Duration::from_secs(30));
            for _ in 0..3 {
                assert!(svc.status(deadline()).await.is_err());
            }
            assert_eq!(backend.calls.load(Ordering::SeqCst), 3);
        }
    }
}
