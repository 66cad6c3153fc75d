//! An authenticated OpenStack session over plain REST.
//!
//! Keystone v3 issues a token (`POST /v3/auth/tokens`, the token in the
//! `X-Subject-Token` header) with the service catalog; endpoints are picked
//! by service type, the cloud's `interface` and region. The token is renewed
//! a minute before it expires, and once more when a service answers 401.
//! Every call waits its turn on the provider's rate limiter (`rate` is
//! seconds between calls, as upstream).
//!
//! Errors are classified into [`ProviderError`] by HTTP status and message:
//! 404 not found; 403 or 413 that mention quota (Nova's "Quota exceeded for
//! instances", Neutron's "number of ports exceeded") are quota; 409, 429,
//! 5xx and connection failures transient; other 4xx fatal.

use std::sync::Arc;
use std::time::{Duration, Instant};

use np_provider::{ProviderError, RateLimiter};
pub use reqwest::Method;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::sync::Mutex;
use tracing::debug;

use crate::clouds::{AuthType, CloudConfig};

/// How often a throttled or gateway-failed call is tried again.
pub const CALL_RETRIES: u32 = 3;
/// The first back-off of such a retry (doubling).
const RETRY_BASE: Duration = Duration::from_millis(500);
/// The longest wait for a retry, whatever `Retry-After` says.
pub const RETRY_MAX: Duration = Duration::from_secs(30);

/// The service types the driver uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// Nova.
    Compute,
    /// Glance.
    Image,
    /// Neutron.
    Network,
    /// Cinder (block storage): only its limits and volumes are read.
    Volume,
}

impl Service {
    fn catalog_types(self) -> &'static [&'static str] {
        match self {
            Service::Compute => &["compute"],
            Service::Image => &["image"],
            Service::Network => &["network"],
            // openstacksdk's block-storage aliases, newest first.
            Service::Volume => &["block-storage", "volumev3", "block-store", "volume"],
        }
    }

    fn override_keys(self) -> &'static [&'static str] {
        match self {
            Service::Compute => &["compute"],
            Service::Image => &["image"],
            Service::Network => &["network"],
            Service::Volume => &["block_storage", "volume"],
        }
    }

    /// The API version path the driver speaks, appended to a catalog URL
    /// that does not already end in a version.
    fn version_suffix(self) -> Option<&'static str> {
        match self {
            Service::Compute => None,
            Service::Image => Some("v2"),
            Service::Network => Some("v2.0"),
            Service::Volume => Some("v3"),
        }
    }
}

/// A token and the endpoints it came with.
#[derive(Debug, Clone)]
struct Token {
    value: String,
    expires: Instant,
    catalog: Value,
    project_id: Option<String>,
}

/// The session: one per provider.
pub struct Session {
    cloud: CloudConfig,
    http: reqwest::Client,
    limiter: Arc<RateLimiter>,
    token: Mutex<Option<Token>>,
    /// Nova microversion sent with compute calls (`None`: the base version).
    compute_microversion: std::sync::Mutex<Option<String>>,
}

/// An API error with its status and the service's message.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status (0 for a connection failure or a missing endpoint).
    pub status: u16,
    /// The message from the body (or the transport error).
    pub message: String,
    /// The body was the service's own error (Nova's `itemNotFound`,
    /// Neutron's `NeutronError`, Glance's plain-text status), not some
    /// other server's page.
    pub from_service: bool,
}

impl ApiError {
    fn new(status: u16, message: String) -> ApiError {
        ApiError { status, message, from_service: false }
    }

    fn from_body(status: u16, body: &str) -> ApiError {
        let (message, from_service) = parse_error(body);
        ApiError { status, message, from_service }
    }

    /// The classified error; `what` says which call failed.
    pub fn classify(&self, what: &str) -> ProviderError {
        classify(what, self.status, &self.message)
    }

    /// The service itself said the object does not exist (a 404 from the
    /// service, not from a wrong URL or a missing endpoint): only then may
    /// a delete count as done.
    pub fn is_gone(&self) -> bool {
        self.status == 404 && self.from_service
    }
}

/// Classifies a status and message into the launcher's error classes.
/// Quota as upstream: any error whose text says "quota exceeded" or
/// "number of ports exceeded" (Nova's 403, Neutron's 409 OverQuota).
pub fn classify(what: &str, status: u16, message: &str) -> ProviderError {
    let text =
        if status == 0 { format!("{what}: {message}") } else { format!("{what}: {message} (HTTP {status})") };
    let lower = message.to_ascii_lowercase();
    if lower.contains("quota exceeded") || lower.contains("number of ports exceeded") {
        return ProviderError::Quota(text);
    }
    match status {
        404 => ProviderError::NotFound(text),
        0 | 409 | 429 | 500..=599 => ProviderError::Transient(text),
        _ => ProviderError::Fatal(text),
    }
}

/// The human part of an OpenStack error body: Nova's `{"forbidden":
/// {"message": ..}}`, Keystone's `{"error": {"message": ..}}`, Neutron's
/// `{"NeutronError": {"message": ..}}`, or the raw text.
pub fn error_message(body: &str) -> String {
    parse_error(body).0
}

/// The message, and whether the body is an OpenStack service's error.
fn parse_error(body: &str) -> (String, bool) {
    if let Ok(v) = serde_json::from_str::<Value>(body) {
        if let Some(m) = v.get("message").and_then(Value::as_str) {
            return (m.to_owned(), true);
        }
        if let Some(obj) = v.as_object() {
            for inner in obj.values() {
                if let Some(m) = inner.get("message").and_then(Value::as_str) {
                    return (m.to_owned(), true);
                }
            }
        }
    }
    let t = body.trim();
    // Glance answers in plain text (`404 Not Found\n\nNo image found with
    // ID ..`) or HTML (`.. Failed to find image .. to delete ..`), both
    // seen on real Glance.
    let glance = t.contains("No image found with ID") || t.contains("Failed to find image");
    (t.chars().take(300).collect(), glance)
}

impl Session {
    /// A session for `cloud`; nothing is sent until the first call.
    pub fn new(cloud: CloudConfig, limiter: Arc<RateLimiter>) -> Result<Session, String> {
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("nodepool-rs/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(120));
        if !cloud.verify {
            builder = builder.danger_accept_invalid_certs(true);
        }
        if let Some(path) = &cloud.cacert {
            let pem = std::fs::read(path).map_err(|e| format!("cacert {}: {e}", path.display()))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("cacert {}: {e}", path.display()))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build().map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Session {
            cloud,
            http,
            limiter,
            token: Mutex::new(None),
            compute_microversion: std::sync::Mutex::new(None),
        })
    }

    /// The cloud's configuration.
    pub fn cloud(&self) -> &CloudConfig {
        &self.cloud
    }

    /// Sets the Nova microversion sent with compute calls.
    pub fn set_compute_microversion(&self, v: Option<String>) {
        if let Ok(mut g) = self.compute_microversion.lock() {
            *g = v;
        }
    }

    /// The Nova microversion in use.
    pub fn compute_microversion(&self) -> Option<String> {
        self.compute_microversion.lock().ok().and_then(|g| g.clone())
    }

    fn identity_url(&self) -> String {
        let base = self.cloud.auth.auth_url.trim_end_matches('/');
        if base.ends_with("/v3") {
            base.to_owned()
        } else {
            format!("{base}/v3")
        }
    }

    fn auth_body(&self) -> Value {
        let a = &self.cloud.auth;
        // The user's or project's own domain first (id, then name), then
        // the generic `domain_id` / `domain_name`.
        let domain = |name: &Option<String>, id: &Option<String>| -> Option<Value> {
            if let Some(id) = id {
                Some(json!({ "id": id }))
            } else if let Some(n) = name {
                Some(json!({ "name": n }))
            } else if let Some(id) = &a.domain_id {
                Some(json!({ "id": id }))
            } else {
                a.domain_name.as_ref().map(|n| json!({ "name": n }))
            }
        };
        match self.cloud.auth_type {
            AuthType::Password => {
                let mut user = serde_json::Map::new();
                if let Some(id) = &a.user_id {
                    user.insert("id".into(), json!(id));
                } else if let Some(name) = &a.username {
                    user.insert("name".into(), json!(name));
                    user.insert(
                        "domain".into(),
                        domain(&a.user_domain_name, &a.user_domain_id).unwrap_or(json!({"id": "default"})),
                    );
                }
                user.insert("password".into(), json!(a.password.clone().unwrap_or_default()));
                let mut body = json!({
                    "auth": { "identity": { "methods": ["password"], "password": { "user": user } } }
                });
                let project = if let Some(id) = &a.project_id {
                    Some(json!({ "id": id }))
                } else {
                    a.project_name.as_ref().map(|n| {
                        json!({
                            "name": n,
                            "domain": domain(&a.project_domain_name, &a.project_domain_id)
                                .unwrap_or(json!({"id": "default"}))
                        })
                    })
                };
                if let Some(p) = project {
                    body["auth"]["scope"] = json!({ "project": p });
                }
                body
            }
            AuthType::ApplicationCredential => {
                let mut cred = serde_json::Map::new();
                if let Some(id) = &a.application_credential_id {
                    cred.insert("id".into(), json!(id));
                } else {
                    cred.insert("name".into(), json!(a.application_credential_name));
                    let mut user = serde_json::Map::new();
                    if let Some(id) = &a.user_id {
                        user.insert("id".into(), json!(id));
                    } else {
                        user.insert("name".into(), json!(a.username));
                        user.insert(
                            "domain".into(),
                            domain(&a.user_domain_name, &a.user_domain_id)
                                .unwrap_or(json!({"id": "default"})),
                        );
                    }
                    cred.insert("user".into(), Value::Object(user));
                }
                cred.insert(
                    "secret".into(),
                    json!(a.application_credential_secret.clone().unwrap_or_default()),
                );
                json!({ "auth": { "identity": {
                    "methods": ["application_credential"], "application_credential": cred } } })
            }
        }
    }

    /// Issues a new token.
    async fn authenticate(&self) -> Result<Token, ApiError> {
        let url = format!("{}/auth/tokens", self.identity_url());
        self.limiter.acquire().await;
        let resp = self
            .http
            .post(&url)
            .json(&self.auth_body())
            .send()
            .await
            .map_err(|e| ApiError::new(0, format!("POST {url}: {e}")))?;
        let status = resp.status();
        let value = resp.headers().get("x-subject-token").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let body = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(ApiError::new(
                status.as_u16(),
                format!("Keystone refused authentication: {}", error_message(&body)),
            ));
        }
        let Some(value) = value else {
            return Err(ApiError::new(502, "Keystone answered without X-Subject-Token".into()));
        };
        let parsed: Value = serde_json::from_str(&body)
            .map_err(|e| ApiError::new(502, format!("Keystone token body: {e}")))?;
        // Renew a minute early; if the expiry cannot be read, after 30 minutes.
        let lifetime = parsed["token"]["expires_at"]
            .as_str()
            .and_then(seconds_until)
            .map(|s| Duration::from_secs(s.saturating_sub(60)))
            .unwrap_or(Duration::from_secs(1800));
        debug!(cloud = %self.cloud.name, ?lifetime, "keystone token issued");
        Ok(Token {
            value,
            expires: Instant::now() + lifetime,
            catalog: parsed["token"]["catalog"].clone(),
            project_id: parsed["token"]["project"]["id"].as_str().map(str::to_owned),
        })
    }

    async fn token(&self) -> Result<Token, ApiError> {
        let mut guard = self.token.lock().await;
        if let Some(t) = guard.as_ref() {
            if Instant::now() < t.expires {
                return Ok(t.clone());
            }
        }
        let t = self.authenticate().await?;
        *guard = Some(t.clone());
        Ok(t)
    }

    /// The id of the project the token is scoped to.
    pub async fn project_id(&self) -> Result<String, ApiError> {
        self.token()
            .await?
            .project_id
            .ok_or_else(|| ApiError::new(400, "the token is not scoped to a project".into()))
    }

    /// The endpoint of `service`, with the driver's API version appended
    /// where the catalog gives the bare service URL. `None` when the cloud
    /// has no such service.
    pub async fn endpoint(&self, service: Service) -> Result<Option<String>, ApiError> {
        if let Some((_, url)) =
            self.cloud.endpoint_overrides.iter().find(|(s, _)| service.override_keys().contains(&s.as_str()))
        {
            return Ok(Some(with_version(url, service)));
        }
        let token = self.token().await?;
        Ok(pick_endpoint(&token.catalog, service, &self.cloud.interface, self.cloud.region_name.as_deref())
            .map(|u| with_version(&u, service)))
    }

    async fn endpoint_required(&self, service: Service) -> Result<String, ApiError> {
        // Not a 404: nothing may count as deleted because a service is
        // missing from the catalog.
        self.endpoint(service).await?.ok_or_else(|| ApiError {
            status: 0,
            from_service: false,
            message: format!(
                "the cloud's catalog has no {:?} endpoint for this region and interface",
                service
            ),
        })
    }

    /// One JSON call: `path` is relative to the service's endpoint (or a
    /// full URL, as pagination links are). Returns the status and the parsed
    /// body (`Null` for an empty one); error statuses become [`ApiError`].
    /// A 401 renews the token once; a 429 (after its `Retry-After`, at most [`RETRY_MAX`])
    /// and a 502/503/504 to a GET or DELETE are tried again up to
    /// [`CALL_RETRIES`] times with back-off; other errors are returned for
    /// the caller to classify.
    pub async fn call(
        &self,
        service: Service,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value), ApiError> {
        let base = self.endpoint_required(service).await?;
        let url = if path.starts_with("http://") || path.starts_with("https://") {
            path.to_owned()
        } else {
            format!("{}/{}", base.trim_end_matches('/'), path.trim_start_matches('/'))
        };
        let mut renewed = false;
        let mut retries = 0u32;
        loop {
            let token = self.token().await?;
            self.limiter.acquire().await;
            let mut req = self.http.request(method.clone(), &url).header("X-Auth-Token", &token.value);
            if service == Service::Compute {
                if let Some(v) = self.compute_microversion() {
                    req = req.header("OpenStack-API-Version", format!("compute {v}"));
                    req = req.header("X-OpenStack-Nova-API-Version", v);
                }
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) => return Err(ApiError::new(0, format!("{method} {url}: {e}"))),
            };
            let status = resp.status();
            let retry_after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|s| s.is_finite() && *s >= 0.0);
            let text = resp.text().await.unwrap_or_default();
            // Throttled (the cloud did nothing: any method may go again,
            // after the time it asks for), or a gateway error on a call that
            // is safe to repeat: a few more tries before the error counts.
            let idempotent = matches!(method, Method::GET | Method::HEAD | Method::DELETE);
            let gateway = matches!(status.as_u16(), 502..=504);
            if retries < CALL_RETRIES && (status == StatusCode::TOO_MANY_REQUESTS || (gateway && idempotent))
            {
                if status == StatusCode::TOO_MANY_REQUESTS {
                    self.limiter.throttled();
                }
                let wait = retry_after
                    .map_or(RETRY_BASE * 2u32.pow(retries), Duration::from_secs_f64)
                    .min(RETRY_MAX);
                tracing::debug!(%method, %url, status = status.as_u16(), ?wait, "cloud call refused for now; retrying");
                retries += 1;
                tokio::time::sleep(wait).await;
                continue;
            }
            if status == StatusCode::UNAUTHORIZED && !renewed {
                // The token was revoked or expired early: once more with a
                // new one. Only this token is dropped: another task may
                // already have replaced it.
                renewed = true;
                let mut guard = self.token.lock().await;
                if guard.as_ref().is_some_and(|t| t.value == token.value) {
                    *guard = None;
                }
                continue;
            }
            if status == StatusCode::TOO_MANY_REQUESTS {
                self.limiter.throttled();
            } else if status.is_success() {
                self.limiter.succeeded();
            }
            if !status.is_success() {
                return Err(ApiError::from_body(status.as_u16(), &text));
            }
            let value = if text.trim().is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&text)
                    .map_err(|e| ApiError::new(502, format!("{method} {url}: the answer is not JSON: {e}")))?
            };
            return Ok((status, value));
        }
    }

    /// A request with the token for a body that is not JSON (image data).
    pub async fn raw(
        &self,
        service: Service,
        method: Method,
        path: &str,
        content_type: &str,
        body: reqwest::Body,
    ) -> Result<StatusCode, ApiError> {
        let base = self.endpoint_required(service).await?;
        let url = format!("{}/{}", base.trim_end_matches('/'), path.trim_start_matches('/'));
        let token = self.token().await?;
        self.limiter.acquire().await;
        let resp = self
            .http
            .request(method.clone(), &url)
            .header("X-Auth-Token", &token.value)
            .header("Content-Type", content_type)
            .timeout(Duration::from_secs(24 * 3600))
            .body(body)
            .send()
            .await
            .map_err(|e| ApiError::new(0, format!("{method} {url}: {e}")))?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            return Err(ApiError::from_body(status.as_u16(), &text));
        }
        Ok(status)
    }
}

/// Appends the API version a service needs when the URL has none.
fn with_version(url: &str, service: Service) -> String {
    let url = url.trim_end_matches('/');
    let is_version =
        |seg: &str| seg.starts_with('v') && seg[1..].chars().next().is_some_and(|c| c.is_ascii_digit());
    match service.version_suffix() {
        // Cinder's catalog URL usually ends in the project id after the
        // version (`/v3/<project id>`): any version segment will do.
        Some(v) if service == Service::Volume => {
            let path = url.split_once("://").map_or(url, |(_, rest)| rest);
            if path.split('/').skip(1).any(is_version) {
                url.to_owned()
            } else {
                format!("{url}/{v}")
            }
        }
        Some(v) => {
            let last = url.rsplit('/').next().unwrap_or("");
            if is_version(last) {
                url.to_owned()
            } else {
                format!("{url}/{v}")
            }
        }
        None => url.to_owned(),
    }
}

/// The catalog URL of `service` for `interface` and `region`.
fn pick_endpoint(catalog: &Value, service: Service, interface: &str, region: Option<&str>) -> Option<String> {
    let entries = catalog.as_array()?;
    for ty in service.catalog_types() {
        for entry in entries.iter().filter(|e| e["type"].as_str() == Some(ty)) {
            let Some(endpoints) = entry["endpoints"].as_array() else { continue };
            let found = endpoints.iter().find(|ep| {
                let iface = ep["interface"].as_str().unwrap_or("public");
                let iface_ok = iface == interface || iface == format!("{interface}URL");
                let reg = ep["region_id"].as_str().or_else(|| ep["region"].as_str());
                iface_ok && region.is_none_or(|r| reg == Some(r))
            });
            if let Some(url) = found.and_then(|ep| ep["url"].as_str()) {
                return Some(url.to_owned());
            }
        }
    }
    None
}

/// Seconds from now until an ISO 8601 UTC time (`2026-11-28T09:00:00.000000Z`).
fn seconds_until(ts: &str) -> Option<u64> {
    let then = parse_utc(ts)?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    Some(then.saturating_sub(now))
}

/// Seconds since the epoch of `YYYY-MM-DDTHH:MM:SS[.frac][Z|+00:00]`.
pub fn parse_utc(ts: &str) -> Option<u64> {
    let (date, time) = ts.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let time = time.trim_end_matches('Z');
    let time = time.split(['+', '.']).next()?;
    let mut t = time.split(':').map(|p| p.parse::<i64>());
    let (hh, mm, ss) = (t.next()?.ok()?, t.next()?.ok()?, t.next().unwrap_or(Ok(0)).ok()?);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    u64::try_from(days * 86400 + hh * 3600 + mm * 60 + ss).ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn errors_are_classified_like_upstream() {
        let q = classify(
            "create",
            403,
            "Quota exceeded for instances: Requested 1, but already used 2 of 2 instances",
        );
        assert!(matches!(q, ProviderError::Quota(_)), "{q:?}");
        assert!(matches!(
            classify("create", 413, "Maximum number of ports exceeded"),
            ProviderError::Quota(_)
        ));
        assert!(matches!(classify("create", 403, "Policy doesn't allow"), ProviderError::Fatal(_)));
        // Neutron's OverQuota is a 409; upstream goes by the text.
        let fip = classify("create floating ip", 409, "Quota exceeded for resources: ['floatingip'].");
        assert!(matches!(fip, ProviderError::Quota(_)), "{fip:?}");
        assert!(matches!(classify("create", 400, "Invalid flavorRef"), ProviderError::Fatal(_)));
        assert!(matches!(classify("get", 404, "not found"), ProviderError::NotFound(_)));
        for s in [0, 409, 429, 500, 503] {
            assert!(matches!(classify("x", s, "m"), ProviderError::Transient(_)), "{s}");
        }
    }

    #[test]
    fn messages_come_out_of_every_services_error_shape() {
        assert_eq!(
            error_message(r#"{"forbidden": {"message": "Quota exceeded", "code": 403}}"#),
            "Quota exceeded"
        );
        assert_eq!(error_message(r#"{"error": {"message": "bad", "code": 401}}"#), "bad");
        assert_eq!(
            error_message(r#"{"NeutronError": {"type": "X", "message": "ports", "detail": ""}}"#),
            "ports"
        );
        assert_eq!(error_message("<html>502</html>"), "<html>502</html>");
    }

    #[test]
    fn endpoints_by_type_interface_and_region() {
        let catalog = json!([
            {"type": "compute", "endpoints": [
                {"interface": "internal", "region_id": "R1", "url": "http://int/v2.1"},
                {"interface": "public", "region_id": "R2", "url": "http://r2/v2.1"},
                {"interface": "public", "region_id": "R1", "url": "http://r1/v2.1"}]},
            {"type": "image", "endpoints": [{"interface": "public", "region_id": "R1", "url": "http://img:9292/"}]},
            {"type": "network", "endpoints": [{"interface": "public", "region_id": "R1", "url": "http://net/v2.0"}]}
        ]);
        assert_eq!(
            pick_endpoint(&catalog, Service::Compute, "public", Some("R1")).unwrap(),
            "http://r1/v2.1"
        );
        assert_eq!(pick_endpoint(&catalog, Service::Compute, "internal", None).unwrap(), "http://int/v2.1");
        assert_eq!(pick_endpoint(&catalog, Service::Compute, "public", Some("R3")), None);
        let img = pick_endpoint(&catalog, Service::Image, "public", Some("R1")).unwrap();
        assert_eq!(with_version(&img, Service::Image), "http://img:9292/v2");
        let net = pick_endpoint(&catalog, Service::Network, "public", Some("R1")).unwrap();
        assert_eq!(with_version(&net, Service::Network), "http://net/v2.0");
    }

    fn session(yaml: &str) -> Session {
        let doc: Value = serde_json::from_str(yaml).unwrap();
        let cloud = crate::clouds::from_documents("c", std::path::Path::new("c.yaml"), doc, None).unwrap();
        Session::new(cloud, Arc::new(RateLimiter::new(0.0))).unwrap()
    }

    #[test]
    fn keystone_auth_bodies() {
        // The user's own domain beats the generic one; the project by id.
        let s = session(
            r#"{"clouds": {"c": {"auth": {"auth_url": "http://k:5000", "username": "u", "password": "p",
                "user_domain_name": "Users", "domain_id": "generic", "project_id": "p1"}}}}"#,
        );
        assert_eq!(s.identity_url(), "http://k:5000/v3");
        assert_eq!(
            s.auth_body(),
            json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {
                "name": "u", "domain": {"name": "Users"}, "password": "p"}}},
                "scope": {"project": {"id": "p1"}}}})
        );
        // The generic domain serves the project without its own.
        let s = session(
            r#"{"clouds": {"c": {"auth": {"auth_url": "http://k/v3/", "username": "u", "password": "p",
                "project_name": "ci", "domain_id": "generic"}}}}"#,
        );
        assert_eq!(s.identity_url(), "http://k/v3");
        assert_eq!(
            s.auth_body()["auth"]["scope"],
            json!({"project": {"name": "ci", "domain": {"id": "generic"}}})
        );
        // Application credentials carry their own scope.
        let s = session(
            r#"{"clouds": {"c": {"auth_type": "v3applicationcredential", "auth": {"auth_url": "http://k",
                "application_credential_id": "ac", "application_credential_secret": "shh"}}}}"#,
        );
        assert_eq!(
            s.auth_body(),
            json!({"auth": {"identity": {"methods": ["application_credential"],
                "application_credential": {"id": "ac", "secret": "shh"}}}})
        );
    }

    #[test]
    fn only_the_services_own_404_means_gone() {
        let nova = ApiError::from_body(
            404,
            r#"{"itemNotFound": {"code": 404, "message": "Instance x could not be found."}}"#,
        );
        assert!(nova.is_gone());
        let glance = ApiError::from_body(404, "404 Not Found\n\nNo image found with ID x   ");
        assert!(glance.is_gone());
        let html = "<html><head><title>404 Not Found</title></head><body><h1>404 Not Found</h1>\n  Failed to find image x to delete<br /><br />\n</body></html>";
        assert!(ApiError::from_body(404, html).is_gone());
        // A web server's page at a wrong path, or no endpoint at all, is not.
        assert!(!ApiError::from_body(404, "<html><body>Not Found</body></html>").is_gone());
        assert!(!ApiError::new(0, "the cloud's catalog has no Image endpoint".into()).is_gone());
    }

    #[test]
    fn keystone_times_parse() {
        assert_eq!(parse_utc("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_utc("2026-11-28T09:00:00.000000Z"), Some(1_795_856_400));
        assert_eq!(parse_utc("2000-03-01T12:30:15+00:00"), Some(951_913_815));
        assert_eq!(parse_utc("garbage"), None);
    }
}
