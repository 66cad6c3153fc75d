//! Errors of the AWS driver and their classification into [`ProviderError`].
//!
//! EC2 reports failures as error *codes* (`VolumeLimitExceeded`,
//! `InsufficientInstanceCapacity`, ...). [`classify_code`] maps a code to the
//! class the launcher acts on: quota (node aborted, pool paused), capacity
//! (a failed attempt, retried), transient (throttling: back off and retry),
//! not found (already gone) or fatal.

use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use np_provider::ProviderError;

/// An error building or using the AWS driver.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AwsError {
    /// The configuration cannot be used (for example a label without an
    /// instance type).
    #[error("provider '{provider}': {message}")]
    Config {
        /// Provider name.
        provider: String,
        /// What is wrong.
        message: String,
    },
    /// A classified cloud error.
    #[error(transparent)]
    Provider(#[from] ProviderError),
}

/// Error codes meaning "over a cloud quota": the node is aborted and the pool
/// pauses until quota frees.
const QUOTA_CODES: &[&str] = &[
    "VolumeLimitExceeded",
    "HostLimitExceeded",
    "InstanceLimitExceeded",
    "VcpuLimitExceeded",
    "MaxSpotInstanceCountExceeded",
];

/// Error codes meaning "that is gone" besides the `*.NotFound` family.
const GONE_CODES: &[&str] = &[
    // A deregistered AMI.
    "InvalidAMIID.Unavailable",
    // What EC2 answers for an import task it no longer remembers.
    "InvalidConversionTaskId.Malformed",
    // S3.
    "NoSuchKey",
    "NoSuchUpload",
];

/// Error codes meaning "no capacity of this kind right now".
const CAPACITY_CODES: &[&str] =
    &["InsufficientInstanceCapacity", "InsufficientHostCapacity", "InsufficientCapacity"];

/// Error codes meaning "slow down" or "try again".
const TRANSIENT_CODES: &[&str] = &[
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "TooManyRequestsException",
    "RequestThrottledException",
    "ServiceUnavailable",
    "Unavailable",
    "InternalError",
    "InternalFailure",
    "InternalServerException",
];

/// Whether `code` is a throttling code (the rate limiter backs off).
pub fn is_throttling(code: &str) -> bool {
    matches!(
        code,
        "RequestLimitExceeded"
            | "Throttling"
            | "ThrottlingException"
            | "TooManyRequestsException"
            | "RequestThrottledException"
    )
}

/// Classifies an EC2 (or Service Quotas) error code and message.
pub fn classify_code(code: &str, message: &str) -> ProviderError {
    let text = format!("{code}: {message}");
    if QUOTA_CODES.contains(&code) {
        ProviderError::Quota(text)
    } else if CAPACITY_CODES.contains(&code) {
        ProviderError::Capacity(text)
    } else if TRANSIENT_CODES.contains(&code) {
        ProviderError::Transient(text)
    } else if code.ends_with(".NotFound") || GONE_CODES.contains(&code) {
        ProviderError::NotFound(text)
    } else {
        ProviderError::Fatal(text)
    }
}

/// Classifies an SDK error: service errors by code, everything that did not
/// get a service answer (timeouts, connection errors, unparsable responses)
/// as transient.
pub fn classify<E, R>(operation: &str, err: &SdkError<E, R>) -> ProviderError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match err {
        SdkError::ServiceError(_) => match err.code() {
            Some(code) => {
                let e = classify_code(code, err.message().unwrap_or(""));
                prefix(operation, e)
            }
            None => ProviderError::Transient(format!("{operation}: {}", error_chain(err))),
        },
        SdkError::ConstructionFailure(_) => {
            ProviderError::Fatal(format!("{operation}: {}", error_chain(err)))
        }
        _ => ProviderError::Transient(format!("{operation}: {}", error_chain(err))),
    }
}

/// The error code of an SDK error, if the service sent one.
pub fn code_of<E, R>(err: &SdkError<E, R>) -> Option<&str>
where
    E: ProvideErrorMetadata,
{
    err.code()
}

fn prefix(operation: &str, e: ProviderError) -> ProviderError {
    match e {
        ProviderError::Quota(m) => ProviderError::Quota(format!("{operation}: {m}")),
        ProviderError::Capacity(m) => ProviderError::Capacity(format!("{operation}: {m}")),
        ProviderError::Transient(m) => ProviderError::Transient(format!("{operation}: {m}")),
        ProviderError::NotFound(m) => ProviderError::NotFound(format!("{operation}: {m}")),
        ProviderError::Fatal(m) => ProviderError::Fatal(format!("{operation}: {m}")),
        other => other,
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_classes() {
        assert!(matches!(classify_code("VolumeLimitExceeded", "x"), ProviderError::Quota(_)));
        assert!(matches!(classify_code("HostLimitExceeded", "x"), ProviderError::Quota(_)));
        assert!(matches!(classify_code("InsufficientInstanceCapacity", "x"), ProviderError::Capacity(_)));
        assert!(matches!(classify_code("RequestLimitExceeded", "x"), ProviderError::Transient(_)));
        assert!(matches!(classify_code("InvalidInstanceID.NotFound", "x"), ProviderError::NotFound(_)));
        assert!(matches!(classify_code("InvalidVolume.NotFound", "x"), ProviderError::NotFound(_)));
        assert!(matches!(classify_code("InvalidAMIID.Unavailable", "x"), ProviderError::NotFound(_)));
        assert!(matches!(
            classify_code("InvalidConversionTaskId.Malformed", "x"),
            ProviderError::NotFound(_)
        ));
        assert!(matches!(classify_code("NoSuchKey", "x"), ProviderError::NotFound(_)));
        assert!(matches!(classify_code("ResourceCountLimitExceeded", "x"), ProviderError::Fatal(_)));
        assert!(matches!(classify_code("InvalidInstanceType", "x"), ProviderError::Fatal(_)));
        assert!(is_throttling("RequestLimitExceeded"));
        assert!(!is_throttling("InvalidInstanceType"));
    }
}
