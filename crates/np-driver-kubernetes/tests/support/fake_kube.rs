//! A fake Kubernetes API server on loopback, for the Kubernetes driver's
//! tests and the launcher's (included by path).
//!
//! No Kubernetes server component can run on this machine (see the driver
//! notes in the spec), so this is an in-memory API server shaped like the
//! real one for the calls the driver makes: the same paths, verbs, status
//! codes, `Status` error objects and object fields. It plays the parts of
//! the cluster's controllers that the driver relies on:
//!
//! * the **token controller** fills a `kubernetes.io/service-account-token`
//!   secret (`data.token`, `data["ca.crt"]`, base64) once its service
//!   account exists, after [`Knobs::token_reads`] reads;
//! * the **scheduler and kubelet** move a pod from `Pending` to `Running` on
//!   `fake-node-1` after [`Knobs::pod_reads`] reads (or to `Failed`);
//! * **namespace finalisation**: a deleted namespace is `Terminating` (new
//!   objects in it are refused with 403, as the real server does) for
//!   [`Knobs::terminating_reads`] reads, then goes with everything in it.
//!
//! Every request is recorded with its body, so tests assert on exactly what
//! the driver sent; [`FakeKube::fail_next`] injects API errors.
#![allow(clippy::unwrap_used, dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

/// Timing of the simulated controllers.
#[derive(Debug, Clone)]
pub struct Knobs {
    /// Reads of a token secret before the token controller has filled it.
    pub token_reads: u32,
    /// Reads of a pod before it runs.
    pub pod_reads: u32,
    /// Reads of a deleted namespace before it is gone.
    pub terminating_reads: u32,
    /// Pods end `Failed` instead of running.
    pub pods_fail: bool,
    /// Pods stay `Pending`.
    pub pods_stuck: bool,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs { token_reads: 1, pod_reads: 2, terminating_reads: 1, pods_fail: false, pods_stuck: false }
    }
}

/// One recorded request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// `GET`, `POST`, `DELETE`...
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The JSON body (`Null` when there is none).
    pub body: Value,
}

#[derive(Debug, Clone)]
struct Stored {
    object: Value,
    reads: u32,
}

#[derive(Default)]
struct Cluster {
    knobs: Knobs,
    /// Namespaces by name.
    namespaces: BTreeMap<String, Stored>,
    /// Namespaced objects by (namespace, plural, name).
    objects: BTreeMap<(String, String, String), Stored>,
    requests: Vec<Request>,
    /// Errors to answer the next calls with: (method, plural, code, reason, message).
    failures: Vec<(String, String, u16, String, String)>,
    serial: u64,
}

/// The CA the fake token controller hands out (PEM text).
pub const FAKE_CA: &str = "-----BEGIN CERTIFICATE-----\nZmFrZS1rdWJlLWNh\n-----END CERTIFICATE-----\n";

/// The fake API server.
#[derive(Clone)]
pub struct FakeKube {
    cluster: Arc<Mutex<Cluster>>,
    addr: SocketAddr,
}

fn status(code: u16, reason: &str, message: &str) -> Response {
    let body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    });
    (StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), json_body(&body))
        .into_response()
}

fn json_body(v: &Value) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], v.to_string())
}

fn ok(code: StatusCode, v: &Value) -> Response {
    (code, json_body(v)).into_response()
}

/// Base64 as in a Secret's `data`.
pub fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// The kind and API version of a resource plural.
fn kind_of(plural: &str) -> Option<(&'static str, &'static str)> {
    Some(match plural {
        "namespaces" => ("Namespace", "v1"),
        "serviceaccounts" => ("ServiceAccount", "v1"),
        "secrets" => ("Secret", "v1"),
        "pods" => ("Pod", "v1"),
        "roles" => ("Role", "rbac.authorization.k8s.io/v1"),
        "rolebindings" => ("RoleBinding", "rbac.authorization.k8s.io/v1"),
        _ => return None,
    })
}

impl Cluster {
    fn stamp(&mut self, object: &mut Value, namespace: Option<&str>) {
        self.serial += 1;
        let meta = &mut object["metadata"];
        meta["uid"] = json!(format!("00000000-0000-0000-0000-{:012}", self.serial));
        meta["resourceVersion"] = json!(self.serial.to_string());
        meta["creationTimestamp"] = json!("2026-11-28T00:00:00Z");
        if let Some(ns) = namespace {
            meta["namespace"] = json!(ns);
        }
    }

    fn take_failure(&mut self, method: &str, plural: &str) -> Option<Response> {
        let i = self.failures.iter().position(|f| f.0 == method && f.1 == plural)?;
        let (_, _, code, reason, message) = self.failures.remove(i);
        Some(status(code, &reason, &message))
    }

    fn create_namespace(&mut self, mut body: Value) -> Response {
        if let Some(r) = self.take_failure("POST", "namespaces") {
            return r;
        }
        let Some(name) = body.pointer("/metadata/name").and_then(Value::as_str).map(str::to_owned) else {
            return status(422, "Invalid", "Namespace \"\" is invalid: metadata.name: Required value");
        };
        if self.namespaces.contains_key(&name) {
            return status(409, "AlreadyExists", &format!("namespaces \"{name}\" already exists"));
        }
        self.stamp(&mut body, None);
        body["status"] = json!({"phase": "Active"});
        self.namespaces.insert(name, Stored { object: body.clone(), reads: 0 });
        ok(StatusCode::CREATED, &body)
    }

    fn create_in(&mut self, ns: &str, plural: &str, mut body: Value) -> Response {
        let Some((kind, _)) = kind_of(plural) else {
            return status(404, "NotFound", "the server could not find the requested resource");
        };
        if let Some(r) = self.take_failure("POST", plural) {
            return r;
        }
        match self.namespaces.get(ns) {
            None => return status(404, "NotFound", &format!("namespaces \"{ns}\" not found")),
            Some(n) if n.object.pointer("/status/phase") == Some(&json!("Terminating")) => {
                return status(
                    403,
                    "Forbidden",
                    &format!(
                        "{plural} \"x\" is forbidden: unable to create new content in namespace {ns} because it is being terminated"
                    ),
                )
            }
            Some(_) => {}
        }
        let Some(name) = body.pointer("/metadata/name").and_then(Value::as_str).map(str::to_owned) else {
            return status(422, "Invalid", &format!("{kind} \"\" is invalid: metadata.name: Required value"));
        };
        if plural == "pods" {
            let containers = body.pointer("/spec/containers").and_then(Value::as_array);
            let valid = containers.is_some_and(|c| {
                !c.is_empty() && c.iter().all(|c| c.get("image").and_then(Value::as_str).is_some())
            });
            if !valid {
                return status(
                    422,
                    "Invalid",
                    &format!("Pod \"{name}\" is invalid: spec.containers[0].image: Required value"),
                );
            }
            body["status"] = json!({"phase": "Pending"});
        }
        let key = (ns.to_owned(), plural.to_owned(), name.clone());
        if self.objects.contains_key(&key) {
            return status(409, "AlreadyExists", &format!("{plural} \"{name}\" already exists"));
        }
        self.stamp(&mut body, Some(ns));
        self.objects.insert(key, Stored { object: body.clone(), reads: 0 });
        ok(StatusCode::CREATED, &body)
    }

    fn read_in(&mut self, ns: &str, plural: &str, name: &str) -> Response {
        if let Some(r) = self.take_failure("GET", plural) {
            return r;
        }
        let knobs = self.knobs.clone();
        let sa_exists = self.objects.contains_key(&(
            ns.to_owned(),
            "serviceaccounts".to_owned(),
            "zuul-worker".to_owned(),
        ));
        let key = (ns.to_owned(), plural.to_owned(), name.to_owned());
        let Some(stored) = self.objects.get_mut(&key) else {
            return status(404, "NotFound", &format!("{plural} \"{name}\" not found"));
        };
        stored.reads += 1;
        let reads = stored.reads;
        let o = &mut stored.object;
        if plural == "secrets"
            && o.get("type") == Some(&json!("kubernetes.io/service-account-token"))
            && reads > knobs.token_reads
            && sa_exists
        {
            o["data"] =
                json!({"token": b64(&format!("token-{ns}")), "ca.crt": b64(FAKE_CA), "namespace": b64(ns)});
        }
        if plural == "pods" && !knobs.pods_stuck && reads > knobs.pod_reads {
            if knobs.pods_fail {
                o["status"] = json!({"phase": "Failed"});
            } else {
                o["status"] = json!({"phase": "Running", "podIP": "10.1.0.5"});
                o["spec"]["nodeName"] = json!("fake-node-1");
            }
        }
        ok(StatusCode::OK, o)
    }

    fn read_namespace(&mut self, name: &str) -> Response {
        if let Some(r) = self.take_failure("GET", "namespaces") {
            return r;
        }
        let limit = self.knobs.terminating_reads;
        let Some(stored) = self.namespaces.get_mut(name) else {
            return status(404, "NotFound", &format!("namespaces \"{name}\" not found"));
        };
        if stored.object.pointer("/status/phase") == Some(&json!("Terminating")) {
            stored.reads += 1;
            if stored.reads > limit {
                self.finalize(name);
                return status(404, "NotFound", &format!("namespaces \"{name}\" not found"));
            }
        }
        let object = stored.object.clone();
        ok(StatusCode::OK, &object)
    }

    fn finalize(&mut self, name: &str) {
        self.namespaces.remove(name);
        self.objects.retain(|(ns, _, _), _| ns != name);
    }

    fn delete_namespace(&mut self, name: &str) -> Response {
        if let Some(r) = self.take_failure("DELETE", "namespaces") {
            return r;
        }
        let Some(stored) = self.namespaces.get_mut(name) else {
            return status(404, "NotFound", &format!("namespaces \"{name}\" not found"));
        };
        if stored.object.pointer("/status/phase") == Some(&json!("Terminating")) {
            // What a real API server answers to a second delete.
            return status(
                409,
                "Conflict",
                &format!(
                    "Operation cannot be fulfilled on namespaces \"{name}\": The system is ensuring all content is removed from this namespace.  Upon completion, this namespace will automatically be purged by the system."
                ),
            );
        }
        stored.object["status"] = json!({"phase": "Terminating"});
        stored.object["metadata"]["deletionTimestamp"] = json!("2026-11-28T00:00:01Z");
        stored.reads = 0;
        let object = stored.object.clone();
        if self.knobs.terminating_reads == 0 {
            self.finalize(name);
        }
        ok(StatusCode::OK, &object)
    }

    fn list_namespaces(&self) -> Response {
        let items: Vec<Value> = self.namespaces.values().map(|s| s.object.clone()).collect();
        ok(
            StatusCode::OK,
            &json!({"kind": "NamespaceList", "apiVersion": "v1", "metadata": {"resourceVersion": self.serial.to_string()}, "items": items}),
        )
    }
}

async fn handle(
    State(cluster): State<Arc<Mutex<Cluster>>>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let json_body: Value = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => return status(400, "BadRequest", &format!("invalid JSON: {e}")),
        }
    };
    let mut c = cluster.lock().unwrap();
    c.requests.push(Request { method: method.to_string(), path: path.clone(), body: json_body.clone() });
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    // /api/v1/... or /apis/<group>/<version>/...
    let rest: &[&str] = match parts.as_slice() {
        ["api", "v1", rest @ ..] => rest,
        ["apis", "rbac.authorization.k8s.io", "v1", rest @ ..] => rest,
        ["version"] => {
            return ok(StatusCode::OK, &json!({"major": "1", "minor": "32", "gitVersion": "v1.32.0"}))
        }
        _ => return status(404, "NotFound", "the server could not find the requested resource"),
    };
    match (method.as_str(), rest) {
        ("GET", ["namespaces"]) => c.list_namespaces(),
        ("POST", ["namespaces"]) => c.create_namespace(json_body),
        ("GET", ["namespaces", ns]) => c.read_namespace(ns),
        ("DELETE", ["namespaces", ns]) => c.delete_namespace(ns),
        ("POST", ["namespaces", ns, plural]) => c.create_in(ns, plural, json_body),
        ("GET", ["namespaces", ns, plural, name]) => c.read_in(ns, plural, name),
        _ => status(405, "MethodNotAllowed", &format!("{method} {path} is not supported by the fake")),
    }
}

impl FakeKube {
    /// Starts the server on 127.0.0.1 (a free port).
    pub async fn start() -> FakeKube {
        let cluster = Arc::new(Mutex::new(Cluster::default()));
        let app = axum::Router::new().fallback(handle).with_state(cluster.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeKube { cluster, addr }
    }

    /// The server URL, `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes a kubeconfig with context `context` (the current one) for this
    /// server, authenticating with a bearer token, and returns its path.
    pub fn kubeconfig(&self, dir: &Path, context: &str) -> PathBuf {
        self.kubeconfig_with(dir, context, false)
    }

    /// Like [`FakeKube::kubeconfig`]; `insecure` sets the cluster's
    /// `insecure-skip-tls-verify`.
    pub fn kubeconfig_with(&self, dir: &Path, context: &str, insecure: bool) -> PathBuf {
        let path = dir.join(if insecure { "kubeconfig-insecure" } else { "kubeconfig" });
        let skip = if insecure { "      insecure-skip-tls-verify: true\n" } else { "" };
        let text = format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: {context}\nclusters:\n  - name: fake\n    cluster:\n      server: {url}\n{skip}\
             contexts:\n  - name: {context}\n    context:\n      cluster: fake\n      user: admin\n\
             users:\n  - name: admin\n    user:\n      token: admin-token\n",
            url = self.url()
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Changes the controllers' timing.
    pub fn set_knobs(&self, knobs: Knobs) {
        self.cluster.lock().unwrap().knobs = knobs;
    }

    /// Answers the next create of `plural` (`pods`, `namespaces`...) with
    /// this error.
    pub fn fail_next(&self, plural: &str, code: u16, reason: &str, message: &str) {
        self.fail_next_call("POST", plural, code, reason, message);
    }

    /// Answers the next `method` (`GET`, `POST`, `DELETE`) call on `plural`
    /// with this error.
    pub fn fail_next_call(&self, method: &str, plural: &str, code: u16, reason: &str, message: &str) {
        let failure = (method.into(), plural.into(), code, reason.into(), message.into());
        self.cluster.lock().unwrap().failures.push(failure);
    }

    /// Starts deleting namespace `name` as a DELETE would (it stays
    /// `Terminating` for the knob's reads).
    pub fn terminate(&self, name: &str) {
        let _ = self.cluster.lock().unwrap().delete_namespace(name);
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Request> {
        self.cluster.lock().unwrap().requests.clone()
    }

    /// The bodies of the creates of `plural` so far.
    pub fn created(&self, plural: &str) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == "POST" && r.path.ends_with(&format!("/{plural}")))
            .map(|r| r.body)
            .collect()
    }

    /// The namespaces that exist, with their phase.
    pub fn namespaces(&self) -> Vec<(String, String)> {
        let c = self.cluster.lock().unwrap();
        c.namespaces
            .iter()
            .map(|(n, s)| {
                let phase =
                    s.object.pointer("/status/phase").and_then(Value::as_str).unwrap_or("").to_owned();
                (n.clone(), phase)
            })
            .collect()
    }

    /// The objects in namespace `ns`, as `(plural, name)`.
    pub fn objects_in(&self, ns: &str) -> Vec<(String, String)> {
        let c = self.cluster.lock().unwrap();
        c.objects.keys().filter(|(n, _, _)| n == ns).map(|(_, p, name)| (p.clone(), name.clone())).collect()
    }

    /// Creates a namespace directly (a leak, or somebody else's).
    pub fn plant_namespace(&self, name: &str, labels: Value) {
        let mut c = self.cluster.lock().unwrap();
        let body =
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}});
        let _ = c.create_namespace(body);
    }
}
