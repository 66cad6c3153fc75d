//! Errors of the Kubernetes driver and their classification into
//! [`ProviderError`].
//!
//! The API server answers failures with a `Status` object; its HTTP code
//! decides the class (the `reason` text differs between servers, so it is
//! not relied on):
//! * 404: not found (a delete of something already gone succeeds);
//! * 409, 429, 5xx and connection failures: transient;
//! * any other 4xx (a bad pod spec, forbidden, a `ResourceQuota` exceeded):
//!   fatal for this attempt.
//!
//! A `ResourceQuota` refusal is not the launcher's quota class: a node's
//! namespace is new, so such a quota is one a policy puts into every
//! namespace, and the pod will never fit; aborting and relaunching would
//! loop for ever. Upstream treats every API error alike: the launcher
//! retries the attempt `launch-retries` times, then the node fails.

use np_provider::ProviderError;

/// An error setting up the driver.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KubeDriverError {
    /// The kubeconfig (or in-cluster configuration) cannot be used.
    #[error("provider '{provider}': cannot load the Kubernetes configuration{context}: {message}")]
    Config {
        /// Provider name.
        provider: String,
        /// ` (context X)` when a context is configured.
        context: String,
        /// What went wrong.
        message: String,
    },
}

/// Classifies a kube-rs error; `what` says which call failed.
pub fn classify(what: &str, e: &kube::Error) -> ProviderError {
    match e {
        kube::Error::Api(status) => classify_status(what, status.code, &status.message),
        other => ProviderError::Transient(format!("{what}: {other}")),
    }
}

/// Classifies an API `Status` by its HTTP code and message.
pub fn classify_status(what: &str, code: u16, message: &str) -> ProviderError {
    let text = format!("{what}: {message} (HTTP {code})");
    match code {
        404 => ProviderError::NotFound(text),
        409 | 429 | 500..=599 => ProviderError::Transient(text),
        _ => ProviderError::Fatal(text),
    }
}

/// Whether `e` is an API 404.
pub fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// Whether `e` is an API 409 (the object exists already).
pub fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_decide_the_class() {
        assert!(matches!(classify_status("get", 404, "gone"), ProviderError::NotFound(_)));
        let quota = "pods \"x\" is forbidden: exceeded quota: compute, requested: cpu=2";
        assert!(matches!(classify_status("create pod", 403, quota), ProviderError::Fatal(_)));
        assert!(matches!(classify_status("create pod", 403, "forbidden"), ProviderError::Fatal(_)));
        assert!(matches!(classify_status("create", 409, "exists"), ProviderError::Transient(_)));
        assert!(matches!(classify_status("create", 429, "slow down"), ProviderError::Transient(_)));
        assert!(matches!(classify_status("create", 503, "unavailable"), ProviderError::Transient(_)));
        assert!(matches!(classify_status("create", 422, "invalid"), ProviderError::Fatal(_)));
    }
}
