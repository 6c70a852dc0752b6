//! Leader election with a `coordination.k8s.io/v1` Lease, as client-go does it: the holder
//! renews `renewTime` every `renew_every`; a candidate takes the Lease over only when it has
//! not been renewed for `lease_duration`. Every write carries the `resourceVersion` it read,
//! so two candidates racing for an expired Lease cannot both win (one gets 409).
//!
//! A leader that cannot renew within `renew_deadline` (shorter than `lease_duration`) steps
//! down by itself, before anyone else may take over: two replicas never both act.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use tokio::sync::watch;

use super::{Error, is_status};

/// Timing of the election.
#[derive(Clone, Debug)]
pub struct Timing {
    /// How long a Lease is valid after its last renewal.
    pub lease_duration: Duration,
    /// A leader that could not renew for this long stops acting.
    pub renew_deadline: Duration,
    /// How often the leader renews and a candidate retries.
    pub renew_every: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        // client-go's defaults.
        Self {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            renew_every: Duration::from_secs(2),
        }
    }
}

/// One candidate.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: Timing,
}

/// What one attempt found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// We hold the Lease (acquired or renewed).
    Leading,
    /// Someone else holds a live Lease.
    Following,
}

impl Elector {
    /// A candidate for the Lease `name` in `namespace`, as `identity` (unique per replica:
    /// the Pod name, or host name + process id).
    pub fn new(
        client: kube::Client,
        namespace: &str,
        name: &str,
        identity: &str,
        timing: Timing,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            identity: identity.to_owned(),
            timing,
        }
    }

    /// This candidate's identity.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// One attempt to acquire or renew.
    pub async fn try_acquire_or_renew(&self) -> Result<Outcome, Error> {
        let now = Timestamp::now();
        let step = format!("Lease {}", self.name);
        let Some(mut lease) = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(Error::kube(&step))?
        else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(self.spec(now, None, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Outcome::Leading),
                // Another candidate created it first.
                Err(e) if is_status(&e, 409) => Ok(Outcome::Following),
                Err(e) => Err(Error::kube(step)(e)),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let ours = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        let expired = {
            let renewed = spec
                .renew_time
                .as_ref()
                .or(spec.acquire_time.as_ref())
                .map(|t| t.0);
            let duration = spec
                .lease_duration_seconds
                .map(|s| SignedDuration::from_secs(i64::from(s)))
                .unwrap_or_else(|| {
                    SignedDuration::try_from(self.timing.lease_duration).unwrap_or_default()
                });
            renewed.is_none_or(|r| r + duration < now) || spec.holder_identity.is_none()
        };
        if !ours && !expired {
            return Ok(Outcome::Following);
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!ours);
        let acquired = if ours {
            spec.acquire_time.clone()
        } else {
            None
        };
        lease.spec = Some(self.spec(now, acquired, transitions));
        // `replace` sends the resourceVersion we read: a concurrent taker makes this a 409.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(Outcome::Leading),
            Err(e) if is_status(&e, 409) => Ok(Outcome::Following),
            Err(e) => Err(Error::kube(step)(e)),
        }
    }

    /// Gives the Lease up (on shutdown), so another replica takes over at once.
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        spec.acquire_time = None;
        if let Err(e) = self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            tracing::warn!(error = %e, "could not release the Lease");
        }
    }

    fn spec(&self, now: Timestamp, acquired: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(
                self.timing
                    .lease_duration
                    .as_secs()
                    .try_into()
                    .unwrap_or(15),
            ),
            acquire_time: Some(acquired.unwrap_or(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    /// Campaigns forever: publishes `true` on `leading` while this candidate leads, `false`
    /// as soon as it does not (including when renewals fail past the renew deadline). Ends,
    /// releasing the Lease, when `stop` resolves.
    pub async fn run(
        self,
        leading: watch::Sender<bool>,
        stop: impl std::future::Future<Output = ()>,
    ) {
        let mut stop = std::pin::pin!(stop);
        let mut last_renewal: Option<tokio::time::Instant> = None;
        loop {
            let attempt =
                tokio::time::timeout(self.timing.renew_deadline, self.try_acquire_or_renew()).await;
            let now = tokio::time::Instant::now();
            match attempt {
                Ok(Ok(Outcome::Leading)) => {
                    if !*leading.borrow() {
                        tracing::info!(identity = %self.identity, lease = %self.name, "became leader");
                    }
                    last_renewal = Some(now);
                    leading.send_replace(true);
                }
                Ok(Ok(Outcome::Following)) => {
                    if *leading.borrow() {
                        tracing::warn!(identity = %self.identity, "lost the Lease to another replica");
                    }
                    last_renewal = None;
                    leading.send_replace(false);
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "Lease renewal failed"),
                Err(_) => tracing::warn!("Lease renewal timed out"),
            }
            // Step down before the Lease could be taken over by someone else.
            if *leading.borrow()
                && last_renewal.is_none_or(|t| now.duration_since(t) >= self.timing.renew_deadline)
            {
                tracing::warn!("could not renew the Lease in time; stepping down");
                leading.send_replace(false);
            }
            tokio::select! {
                () = tokio::time::sleep(self.timing.renew_every) => {}
                () = &mut stop => break,
            }
        }
        leading.send_replace(false);
        self.release().await;
    }
}
