//! A fake OpenStack cloud on loopback, for the OpenStack driver's tests and
//! the launcher's and builder's (included by path).
//!
//! Shaped after the real services the driver talks to (Keystone v3, Nova
//! v2.1, Glance v2, Neutron v2.0; the shapes were checked against Debian's
//! real Keystone, Nova and Glance of `tools/openstack-env.sh`, recorded in
//! `observed.md` beside this file): the same paths,
//! status codes, error bodies (`{"forbidden": {"message", "code"}}`,
//! `{"itemNotFound": ..}`, `{"NeutronError": ..}`) and object fields. One
//! axum server serves every service under its own path prefix
//! (`/identity`, `/compute/v2.1`, `/image`, `/network`), and the catalog
//! Keystone hands out points there.
//!
//! It plays the cloud's own parts the driver relies on: a server is `BUILD`
//! for [`Knobs::build_reads`] listings, then `ACTIVE` with a fixed address
//! on 127.0.0.0/8 (or `ERROR` with a fault); Nova's instance, core and RAM
//! limits refuse servers with Nova's 403; a deleted server is still listed
//! for [`Knobs::delete_reads`] listings, then gone (real Nova never listed a
//! `DELETED` server); a floating IP becomes `ACTIVE` and shows in the
//! server's addresses one read after it is created. Every request is recorded; [`FakeOpenStack::fail_next`]
//! injects errors.
#![allow(clippy::unwrap_used, dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

/// The password Keystone accepts.
pub const PASSWORD: &str = "fake-password";

/// Timing and limits of the simulated cloud.
#[derive(Debug, Clone)]
pub struct Knobs {
    /// Server listings that still show a new server as `BUILD`.
    pub build_reads: u32,
    /// Listings that still show a deleted server.
    pub delete_reads: u32,
    /// New servers end in `ERROR` with this fault message.
    pub error_fault: Option<String>,
    /// Listings show an ERROR server without its fault (only `GET
    /// /servers/{id}` has it), as real Nova did right after the change.
    pub fault_only_on_get: bool,
    /// Nova's `maxTotalInstances`.
    pub max_instances: i64,
    /// Nova's `maxTotalCores`.
    pub max_cores: i64,
    /// Nova's `maxTotalRAMSize`.
    pub max_ram: i64,
    /// Servers per page of `GET /servers/detail`.
    pub page_size: usize,
    /// The newest Nova microversion offered.
    pub max_microversion: String,
    /// The catalog has Cinder (`block-storage`, `/volume/v3/<project>`):
    /// its limits, volumes, and boot-from-volume servers with a volume.
    pub cinder: bool,
    /// Cinder's `maxTotalVolumes`.
    pub max_volumes: i64,
    /// Cinder's `maxTotalVolumeGigabytes`.
    pub max_volume_gb: i64,
    /// What `os-getConsoleOutput` answers (real Nova's fake hypervisor's
    /// text); `None`: Nova's 409, as for a server without a console.
    pub console_output: Option<String>,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            build_reads: 1,
            delete_reads: 1,
            error_fault: None,
            fault_only_on_get: false,
            max_instances: 10,
            max_cores: 40,
            max_ram: 51200,
            page_size: 2,
            max_microversion: "2.93".into(),
            cinder: false,
            max_volumes: 10,
            max_volume_gb: 1000,
            console_output: Some("FAKE CONSOLE OUTPUT\nANOTHER\nLAST LINE".into()),
        }
    }
}

/// One recorded request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// `GET`, `POST`...
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The query string.
    pub query: String,
    /// The JSON body (`Null` when none or not JSON).
    pub body: Value,
    /// The `OpenStack-API-Version` header.
    pub microversion: Option<String>,
}

#[derive(Debug, Clone)]
struct StoredServer {
    json: Value,
    reads: u32,
    deleted_reads: Option<u32>,
    flavor: Value,
}

#[derive(Default)]
struct Cloud {
    knobs: Knobs,
    tokens: Vec<String>,
    servers: BTreeMap<String, StoredServer>,
    images: BTreeMap<String, Value>,
    image_data: BTreeMap<String, usize>,
    networks: Vec<Value>,
    ports: BTreeMap<String, Value>,
    fips: BTreeMap<String, (Value, u32)>,
    /// Cinder's volumes by id.
    volumes: BTreeMap<String, Value>,
    requests: Vec<Request>,
    failures: Vec<(String, String, u16, Value)>,
    next_ip: u8,
    base: String,
}

fn flavors() -> Vec<Value> {
    vec![
        json!({"id": "f-small", "name": "np-small", "vcpus": 2, "ram": 2048, "disk": 20, "OS-FLV-EXT-DATA:ephemeral": 0, "swap": "", "os-flavor-access:is_public": true}),
        json!({"id": "f-large", "name": "np-large", "vcpus": 8, "ram": 16384, "disk": 80, "OS-FLV-EXT-DATA:ephemeral": 0, "swap": "", "os-flavor-access:is_public": true}),
        json!({"id": "f-medium", "name": "np-medium", "vcpus": 4, "ram": 8192, "disk": 40, "OS-FLV-EXT-DATA:ephemeral": 0, "swap": "", "os-flavor-access:is_public": true}),
    ]
}

fn reply(code: u16, body: &Value) -> Response {
    if code == 204 {
        return StatusCode::NO_CONTENT.into_response();
    }
    (StatusCode::from_u16(code).unwrap(), [("content-type", "application/json")], body.to_string())
        .into_response()
}

/// Glance answers errors in plain text (seen on real Glance).
fn glance_error(code: u16, message: &str) -> Response {
    let title = StatusCode::from_u16(code).unwrap();
    (title, [("content-type", "text/plain; charset=UTF-8")], format!("{title}\n\n{message}   "))
        .into_response()
}

fn nova_error(code: u16, message: &str) -> Response {
    let key = match code {
        400 => "badRequest",
        403 => "forbidden",
        404 => "itemNotFound",
        409 => "conflictingRequest",
        _ => "computeFault",
    };
    reply(code, &json!({ key: { "code": code, "message": message } }))
}

fn uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn parse_query(q: &str) -> BTreeMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|p| p.split_once('=').or(Some((p, ""))))
        .map(|(k, v)| (k.to_owned(), v.replace("%20", " ").replace("%2F", "/").replace("%3A", ":")))
        .collect()
}

impl Cloud {
    fn microversion_at_least(&self, mv: &Option<String>, want: (u32, u32)) -> bool {
        mv.as_deref()
            .and_then(|v| v.strip_prefix("compute "))
            .and_then(|v| v.split_once('.'))
            .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)))
            .is_some_and(|v| v >= want)
    }

    fn catalog(&self) -> Value {
        let ep = |ty: &str, name: &str, path: &str| {
            json!({"type": ty, "name": name, "id": uuid(), "endpoints": [
                {"id": uuid(), "interface": "public", "region_id": "RegionOne", "region": "RegionOne",
                 "url": format!("{}{}", self.base, path)},
                {"id": uuid(), "interface": "public", "region_id": "RegionTwo", "region": "RegionTwo",
                 "url": format!("{}/region-two{}", self.base, path)}]})
        };
        let mut catalog = json!([
            ep("identity", "keystone", "/identity/v3/"),
            ep("compute", "nova", "/compute/v2.1"),
            ep("image", "glance", "/image"),
            ep("network", "neutron", "/network"),
        ]);
        if self.knobs.cinder {
            // As Keystone renders Cinder's `.../v3/%(project_id)s`.
            catalog.as_array_mut().unwrap().push(ep("block-storage", "cinderv3", "/volume/v3/p-ci"));
        }
        catalog
    }

    fn issue_token(&mut self, body: &Value) -> Response {
        let identity = &body["auth"]["identity"];
        let ok = match identity["methods"][0].as_str() {
            Some("password") => {
                let user = &identity["password"]["user"];
                user["password"].as_str() == Some(PASSWORD) && user["name"].as_str() == Some("zuul")
            }
            Some("application_credential") => {
                identity["application_credential"]["secret"].as_str() == Some(PASSWORD)
            }
            _ => false,
        };
        if !ok {
            return reply(
                401,
                &json!({"error": {"code": 401, "title": "Unauthorized",
                    "message": "The request you have made requires authentication."}}),
            );
        }
        let token = format!("tok-{}", uuid());
        self.tokens.push(token.clone());
        let mut r = reply(
            201,
            &json!({"token": {
                "methods": ["password"],
                "expires_at": "2099-01-01T00:00:00.000000Z",
                "issued_at": "2026-01-01T00:00:00.000000Z",
                "project": {"id": "p-ci", "name": "ci", "domain": {"id": "default", "name": "Default"}},
                "user": {"id": "u-zuul", "name": "zuul", "domain": {"id": "default", "name": "Default"}},
                "catalog": self.catalog()
            }}),
        );
        r.headers_mut().insert("x-subject-token", token.parse().unwrap());
        r
    }

    fn used(&self) -> (i64, i64, i64) {
        let mut out = (0, 0, 0);
        // A deleted server uses quota until it is gone, as in real Nova.
        for s in self.servers.values() {
            out.0 += 1;
            out.1 += s.flavor["vcpus"].as_i64().unwrap_or(0);
            out.2 += s.flavor["ram"].as_i64().unwrap_or(0);
        }
        out
    }

    fn create_server(&mut self, body: &Value) -> Response {
        let s = &body["server"];
        let Some(flavor) =
            flavors().into_iter().find(|f| Some(f["id"].as_str().unwrap()) == s["flavorRef"].as_str())
        else {
            return nova_error(400, &format!("Flavor {} could not be found.", s["flavorRef"]));
        };
        let image = s["imageRef"].as_str().unwrap_or("");
        let bdm_image = s["block_device_mapping_v2"][0]["uuid"].as_str();
        let image_id = bdm_image.unwrap_or(image);
        if !self.images.contains_key(image_id) {
            return nova_error(400, &format!("Image {image_id} could not be found."));
        }
        if let Some(az) = s["availability_zone"].as_str() {
            if !["az1", "az2"].contains(&az) {
                return nova_error(400, "The requested availability zone is not available");
            }
        }
        let (n, cores, ram) = self.used();
        let k = &self.knobs;
        let want_cores = flavor["vcpus"].as_i64().unwrap();
        let want_ram = flavor["ram"].as_i64().unwrap();
        // Nova's -1: unlimited.
        let over = |limit: i64, want: i64| limit >= 0 && want > limit;
        if over(k.max_instances, n + 1) {
            return nova_error(
                403,
                &format!(
                    "Quota exceeded for instances: Requested 1, but already used {n} of {} instances",
                    k.max_instances
                ),
            );
        }
        if over(k.max_cores, cores + want_cores) || over(k.max_ram, ram + want_ram) {
            return nova_error(
                403,
                "Quota exceeded for cores, ram: Requested 2, but already used 40 of 40 cores",
            );
        }
        let id = uuid();
        // Boot from volume: Nova has Cinder make the volume from the image
        // and attaches it (deleted with the server).
        let mut attached = Vec::new();
        if self.knobs.cinder && s["block_device_mapping_v2"][0]["destination_type"] == "volume" {
            let size = s["block_device_mapping_v2"][0]["volume_size"].as_i64().unwrap_or(1);
            let vid = uuid();
            self.volumes.insert(vid.clone(), Self::volume_json(&vid, size, Some(&id)));
            attached.push(json!({"id": vid, "delete_on_termination": true}));
        }
        let server = json!({
            "id": id,
            "name": s["name"],
            "status": "BUILD",
            "metadata": s["metadata"].clone(),
            "addresses": {},
            "accessIPv4": "",
            "accessIPv6": "",
            "hostId": "",
            "OS-EXT-AZ:availability_zone": s["availability_zone"].as_str().unwrap_or("az1"),
            "key_name": s["key_name"].clone(),
            "image": if bdm_image.is_some() { json!("") } else { json!({"id": image}) },
            "user_id": "u-zuul",
            "tenant_id": "p-ci",
            "os-extended-volumes:volumes_attached": attached,
        });
        self.servers.insert(id.clone(), StoredServer { json: server, reads: 0, deleted_reads: None, flavor });
        reply(
            202,
            &json!({"server": {"id": id, "links": [], "OS-DCF:diskConfig": "MANUAL",
            "security_groups": [{"name": "default"}], "adminPass": "fake"}}),
        )
    }

    /// A Cinder volume object (the fields of `GET /volumes/detail` the
    /// API reference lists), attached to `server` when given.
    fn volume_json(id: &str, size: i64, server: Option<&str>) -> Value {
        let attachments = match server {
            Some(sid) => json!([{"id": id, "attachment_id": uuid(), "volume_id": id, "server_id": sid,
                "host_name": null, "device": "/dev/vda", "attached_at": "2026-01-01T00:00:00.000000"}]),
            None => json!([]),
        };
        json!({"id": id, "name": "", "size": size, "status": if server.is_some() { "in-use" } else { "available" },
            "availability_zone": "nova", "bootable": "true", "attachments": attachments,
            "volume_type": "__DEFAULT__", "multiattach": false, "encrypted": false, "metadata": {},
            "os-vol-tenant-attr:tenant_id": "p-ci", "user_id": "u-zuul",
            "created_at": "2026-01-01T00:00:00.000000", "updated_at": null,
            "links": [], "description": null, "snapshot_id": null, "source_volid": null,
            "consistencygroup_id": null, "replication_status": null, "group_id": null,
            "provider_id": null, "service_uuid": null, "shared_targets": true,
            "cluster_name": null, "volume_type_id": "vt-default", "consumes_quota": true})
    }

    /// Cinder (`/volume/v3/<project>/...`): limits and volume listings.
    fn cinder(&mut self, method: &Method, rest: &[&str], query: &str) -> Response {
        let q = parse_query(query);
        match (method.as_str(), rest) {
            ("GET", ["v3", "p-ci", "limits"]) => {
                let used = self.volumes.len();
                let gb: i64 = self.volumes.values().map(|v| v["size"].as_i64().unwrap_or(0)).sum();
                let k = &self.knobs;
                reply(
                    200,
                    &json!({"limits": {"rate": [], "absolute": {
                    "totalSnapshotsUsed": 0, "maxTotalBackups": 10, "maxTotalVolumeGigabytes": k.max_volume_gb,
                    "maxTotalSnapshots": 10, "maxTotalBackupGigabytes": 1000, "totalBackupGigabytesUsed": 0,
                    "maxTotalVolumes": k.max_volumes, "totalVolumesUsed": used, "totalBackupsUsed": 0,
                    "totalGigabytesUsed": gb}}}),
                )
            }
            ("GET", ["v3", "p-ci", "volumes", "detail"]) => {
                let all: Vec<&Value> = self.volumes.values().collect();
                let start = match q.get("marker") {
                    Some(m) => all.iter().position(|v| v["id"] == m.as_str()).map_or(all.len(), |p| p + 1),
                    None => 0,
                };
                let limit = q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(self.knobs.page_size);
                let page: Vec<Value> = all.iter().skip(start).take(limit).map(|v| (*v).clone()).collect();
                let mut body = json!({ "volumes": page });
                if start + page.len() < all.len() {
                    let marker = page.last().unwrap()["id"].as_str().unwrap().to_owned();
                    body["volumes_links"] = json!([{"rel": "next",
                        "href": format!("{}/volume/v3/p-ci/volumes/detail?limit={limit}&marker={marker}", self.base)}]);
                }
                reply(200, &body)
            }
            _ => reply(
                404,
                &json!({"itemNotFound": {"code": 404, "message": "The resource could not be found."}}),
            ),
        }
    }

    /// Advances a server by one read and renders it for microversion `mv`.
    fn read_server(&mut self, id: &str, mv: &Option<String>) -> Option<Value> {
        let embed = self.microversion_at_least(mv, (2, 47));
        let fault = self.knobs.error_fault.clone();
        let build_reads = self.knobs.build_reads;
        let ip = self.next_ip;
        let s = self.servers.get_mut(id)?;
        s.reads += 1;
        let mut assigned_ip = false;
        if s.json["status"] == "BUILD" && s.reads > build_reads {
            if let Some(f) = &fault {
                s.json["status"] = json!("ERROR");
                s.json["fault"] = json!({"code": 500, "message": f, "created": "2026-01-01T00:00:00Z"});
            } else {
                s.json["status"] = json!("ACTIVE");
                s.json["hostId"] = json!("fakehost-1");
                s.json["addresses"] = json!({"private": [
                    {"addr": format!("127.0.1.{}", ip % 250 + 1), "version": 4, "OS-EXT-IPS:type": "fixed",
                     "OS-EXT-IPS-MAC:mac_addr": "fa:16:3e:00:00:01"}]});
                assigned_ip = true;
            }
        }
        let mut out = s.json.clone();
        out["flavor"] = if embed {
            let f = &s.flavor;
            json!({"vcpus": f["vcpus"], "ram": f["ram"], "disk": f["disk"], "ephemeral": 0, "swap": 0,
                   "original_name": f["name"], "extra_specs": {}})
        } else {
            json!({"id": s.flavor["id"], "links": []})
        };
        if assigned_ip {
            self.next_ip = self.next_ip.wrapping_add(1);
            // Its port on the private network.
            let port = uuid();
            self.ports.insert(
                port.clone(),
                json!({"id": port, "device_id": id, "device_owner": "compute:az1", "status": "ACTIVE", "network_id": "net-private"}),
            );
        }
        Some(out)
    }

    fn list_servers(&mut self, query: &str, mv: &Option<String>) -> Response {
        let hide_fault = self.knobs.fault_only_on_get;
        let q = parse_query(query);
        // Deleted servers disappear after their reads.
        let ids: Vec<String> = self.servers.keys().cloned().collect();
        let mut visible = Vec::new();
        for id in ids {
            let s = self.servers.get_mut(&id).unwrap();
            if let Some(r) = s.deleted_reads.as_mut() {
                if *r == 0 {
                    self.servers.remove(&id);
                    continue;
                }
                *r -= 1;
            }
            visible.push(id);
        }
        let start = match q.get("marker") {
            Some(m) => visible.iter().position(|id| id == m).map(|p| p + 1).unwrap_or(visible.len()),
            None => 0,
        };
        let limit = q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(self.knobs.page_size);
        let page: Vec<String> = visible.iter().skip(start).take(limit).cloned().collect();
        let mut servers: Vec<Value> = page.iter().filter_map(|id| self.read_server(id, mv)).collect();
        if hide_fault {
            for s in &mut servers {
                if let Some(o) = s.as_object_mut() {
                    o.remove("fault");
                }
            }
        }
        let mut body = json!({ "servers": servers });
        if start + page.len() < visible.len() {
            let marker = page.last().unwrap();
            body["servers_links"] = json!([{"rel": "next",
                "href": format!("{}/compute/v2.1/servers/detail?limit={limit}&marker={marker}", self.base)}]);
        }
        reply(200, &body)
    }

    fn nova(
        &mut self,
        method: &Method,
        rest: &[&str],
        query: &str,
        body: &Value,
        mv: &Option<String>,
    ) -> Response {
        match (method.as_str(), rest) {
            ("GET", []) => reply(
                200,
                &json!({"version": {"id": "v2.1", "status": "CURRENT",
                "version": self.knobs.max_microversion, "min_version": "2.1", "links": []}}),
            ),
            ("GET", ["flavors", "detail"]) => reply(200, &json!({ "flavors": flavors() })),
            ("GET", ["limits"]) => {
                let (n, cores, ram) = self.used();
                let k = &self.knobs;
                reply(
                    200,
                    &json!({"limits": {"rate": [], "absolute": {
                    "maxTotalInstances": k.max_instances, "maxTotalCores": k.max_cores, "maxTotalRAMSize": k.max_ram,
                    "totalInstancesUsed": n, "totalCoresUsed": cores, "totalRAMUsed": ram,
                    "maxServerMeta": 128, "maxImageMeta": 128, "maxPersonality": 5}}}),
                )
            }
            ("GET", ["os-availability-zone"]) => reply(
                200,
                &json!({"availabilityZoneInfo": [
                {"zoneName": "az1", "zoneState": {"available": true}, "hosts": null},
                {"zoneName": "az2", "zoneState": {"available": true}, "hosts": null},
                {"zoneName": "broken", "zoneState": {"available": false}, "hosts": null}]}),
            ),
            ("POST", ["servers"]) => self.create_server(body),
            ("POST", ["servers", id, "action"]) if body.get("os-getConsoleOutput").is_some() => {
                match (self.servers.get(*id), &self.knobs.console_output) {
                    (None, _) => nova_error(404, &format!("Instance {id} could not be found.")),
                    (Some(_), Some(out)) => reply(200, &json!({ "output": out })),
                    (Some(_), None) => nova_error(409, "Guest does not have a console available."),
                }
            }
            ("GET", ["servers", "detail"]) => self.list_servers(query, mv),
            ("GET", ["servers", id]) => match self.servers.get(*id).filter(|s| s.deleted_reads.is_none()) {
                Some(_) => {
                    let s = self.read_server(id, mv).unwrap();
                    reply(200, &json!({ "server": s }))
                }
                None => nova_error(404, &format!("Instance {id} could not be found.")),
            },
            ("DELETE", ["servers", id]) => {
                match self.servers.get_mut(*id).filter(|s| s.deleted_reads.is_none()) {
                    Some(s) => {
                        s.deleted_reads = Some(self.knobs.delete_reads);
                        let id = id.to_string();
                        self.ports.retain(|_, p| p["device_id"] != id.as_str());
                        // Volumes made for a boot from volume go with it.
                        self.volumes.retain(|_, v| v["attachments"][0]["server_id"] != id.as_str());
                        reply(204, &Value::Null)
                    }
                    None => nova_error(404, &format!("Instance {id} could not be found.")),
                }
            }
            _ => nova_error(404, "The resource could not be found."),
        }
    }

    fn glance(
        &mut self,
        method: &Method,
        rest: &[&str],
        query: &str,
        body: &Value,
        raw_len: usize,
    ) -> Response {
        match (method.as_str(), rest) {
            ("GET", ["v2", "images"]) => {
                let q = parse_query(query);
                let all: Vec<Value> = self
                    .images
                    .values()
                    .filter(|i| q.get("name").is_none_or(|n| i["name"].as_str() == Some(n)))
                    .filter(|i| q.get("status").is_none_or(|s| i["status"].as_str() == Some(s)))
                    .cloned()
                    .collect();
                // Glance pages with `limit` and `marker`; `next` is
                // relative to the service root (seen on real Glance).
                let start = match q.get("marker") {
                    Some(m) => all.iter().position(|i| i["id"] == m.as_str()).map_or(all.len(), |p| p + 1),
                    None => 0,
                };
                let limit = q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(25);
                let images: Vec<Value> = all.iter().skip(start).take(limit).cloned().collect();
                let mut body =
                    json!({ "images": images, "first": "/v2/images", "schema": "/v2/schemas/images" });
                if start + images.len() < all.len() {
                    let marker = images.last().unwrap()["id"].as_str().unwrap().to_owned();
                    body["next"] = json!(format!("/v2/images?limit={limit}&marker={marker}"));
                }
                reply(200, &body)
            }
            ("GET", ["v2", "images", id]) => match self.images.get(*id) {
                Some(i) => reply(200, i),
                None => glance_error(404, &format!("No image found with ID {id}")),
            },
            ("POST", ["v2", "images"]) => {
                let id = body["id"].as_str().map(str::to_owned).unwrap_or_else(uuid);
                let mut image = body.clone();
                image["id"] = json!(id);
                image["status"] = json!("queued");
                image["size"] = Value::Null;
                self.images.insert(id.clone(), image.clone());
                reply(201, &image)
            }
            ("PUT", ["v2", "images", id, "file"]) => match self.images.get_mut(*id) {
                Some(i) => {
                    i["status"] = json!("active");
                    i["size"] = json!(raw_len);
                    self.image_data.insert(id.to_string(), raw_len);
                    reply(204, &Value::Null)
                }
                None => glance_error(404, &format!("No image found with ID {id}")),
            },
            ("DELETE", ["v2", "images", id]) => match self.images.remove(*id) {
                Some(_) => reply(204, &Value::Null),
                None => glance_error(404, &format!("No image found with ID {id}")),
            },
            _ => glance_error(404, "The resource could not be found."),
        }
    }

    fn neutron_error(code: u16, ty: &str, message: &str) -> Response {
        reply(code, &json!({"NeutronError": {"type": ty, "message": message, "detail": ""}}))
    }

    fn neutron(&mut self, method: &Method, rest: &[&str], query: &str, body: &Value) -> Response {
        let q = parse_query(query);
        match (method.as_str(), rest) {
            ("GET", ["v2.0", "networks"]) => {
                let nets: Vec<Value> = self
                    .networks
                    .iter()
                    .filter(|n| q.get("name").is_none_or(|v| n["name"].as_str() == Some(v)))
                    .filter(|n| {
                        q.get("router:external")
                            .is_none_or(|v| n["router:external"].as_bool() == Some(v == "true"))
                    })
                    .cloned()
                    .collect();
                reply(200, &json!({ "networks": nets }))
            }
            ("GET", ["v2.0", "networks", id]) => match self.networks.iter().find(|n| n["id"] == *id) {
                Some(n) => reply(200, &json!({ "network": n })),
                None => {
                    Self::neutron_error(404, "NetworkNotFound", &format!("Network {id} could not be found."))
                }
            },
            ("GET", ["v2.0", "ports"]) => {
                let ports: Vec<Value> = self
                    .ports
                    .values()
                    .filter(|p| q.get("status").is_none_or(|v| p["status"].as_str() == Some(v)))
                    .filter(|p| q.get("device_id").is_none_or(|v| p["device_id"].as_str() == Some(v)))
                    .cloned()
                    .collect();
                reply(200, &json!({ "ports": ports }))
            }
            ("DELETE", ["v2.0", "ports", id]) => match self.ports.remove(*id) {
                Some(_) => reply(204, &Value::Null),
                None => Self::neutron_error(404, "PortNotFound", &format!("Port {id} could not be found.")),
            },
            ("GET", ["v2.0", "floatingips"]) => {
                // One read after creation a bound floating IP is ACTIVE and
                // the server lists it.
                let mut out = Vec::new();
                let ids: Vec<String> = self.fips.keys().cloned().collect();
                for id in ids {
                    let (fip, reads) = self.fips.get_mut(&id).unwrap();
                    *reads += 1;
                    if *reads > 1 && fip["status"] == "DOWN" && !fip["port_id"].is_null() {
                        fip["status"] = json!("ACTIVE");
                        let port = fip["port_id"].as_str().unwrap().to_owned();
                        let addr = fip["floating_ip_address"].clone();
                        let server =
                            self.ports.get(&port).and_then(|p| p["device_id"].as_str()).map(str::to_owned);
                        if let Some(s) = server.and_then(|sid| self.servers.get_mut(&sid)) {
                            s.json["addresses"]["private"]
                                .as_array_mut()
                                .unwrap()
                                .push(json!({"addr": addr, "version": 4, "OS-EXT-IPS:type": "floating"}));
                        }
                    }
                    out.push(self.fips[&id].0.clone());
                }
                reply(200, &json!({ "floatingips": out }))
            }
            ("POST", ["v2.0", "floatingips"]) => {
                let f = &body["floatingip"];
                let id = uuid();
                let n = self.fips.len() + 10;
                let fip = json!({"id": id, "floating_ip_address": format!("127.0.2.{n}"),
                    "floating_network_id": f["floating_network_id"], "port_id": f["port_id"],
                    "status": "DOWN", "fixed_ip_address": null, "router_id": null});
                self.fips.insert(id, (fip.clone(), 0));
                reply(201, &json!({ "floatingip": fip }))
            }
            ("DELETE", ["v2.0", "floatingips", id]) => match self.fips.remove(*id) {
                Some((fip, _)) => {
                    let addr = fip["floating_ip_address"].clone();
                    for s in self.servers.values_mut() {
                        if let Some(a) = s.json["addresses"]["private"].as_array_mut() {
                            a.retain(|e| e["addr"] != addr);
                        }
                    }
                    reply(204, &Value::Null)
                }
                None => Self::neutron_error(
                    404,
                    "FloatingIPNotFound",
                    &format!("Floating IP {id} could not be found"),
                ),
            },
            _ => Self::neutron_error(404, "HTTPNotFound", "The resource could not be found."),
        }
    }
}

async fn handle(
    State(cloud): State<Arc<Mutex<Cloud>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let query = uri.query().unwrap_or("").to_owned();
    let json_body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mv = headers.get("openstack-api-version").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let mut c = cloud.lock().unwrap();
    c.requests.push(Request {
        method: method.to_string(),
        path: path.clone(),
        query: query.clone(),
        body: if path.ends_with("/file") { Value::Null } else { json_body.clone() },
        microversion: mv.clone(),
    });
    // Injected failures: the first whose method and path fragment match.
    if let Some(i) =
        c.failures.iter().position(|(m, p, _, _)| m == method.as_str() && path.contains(p.as_str()))
    {
        let (_, _, code, body) = c.failures.remove(i);
        return reply(code, &body);
    }
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    if parts.first() == Some(&"identity") {
        return match (method.as_str(), &parts[1..]) {
            ("POST", ["v3", "auth", "tokens"]) => c.issue_token(&json_body),
            _ => reply(404, &json!({"error": {"code": 404, "message": "not found"}})),
        };
    }
    let token = headers.get("x-auth-token").and_then(|v| v.to_str().ok()).unwrap_or("");
    if !c.tokens.iter().any(|t| t == token) {
        return reply(
            401,
            &json!({"error": {"code": 401, "title": "Unauthorized",
            "message": "The request you have made requires authentication."}}),
        );
    }
    match parts.as_slice() {
        ["compute", "v2.1", rest @ ..] => c.nova(&method, rest, &query, &json_body, &mv),
        ["image", rest @ ..] => c.glance(&method, rest, &query, &json_body, body.len()),
        ["network", rest @ ..] => c.neutron(&method, rest, &query, &json_body),
        ["volume", rest @ ..] if c.knobs.cinder => c.cinder(&method, rest, &query),
        _ => reply(404, &json!({"message": "no such service"})),
    }
}

/// The running fake cloud.
pub struct FakeOpenStack {
    cloud: Arc<Mutex<Cloud>>,
    addr: SocketAddr,
}

impl FakeOpenStack {
    /// Starts it on 127.0.0.1 (a free port), with the image `cirros`
    /// (active), the networks `private` and `public` (external).
    pub async fn start() -> FakeOpenStack {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut c = Cloud { base: format!("http://{addr}"), ..Cloud::default() };
        c.images.insert(
            "img-cirros".into(),
            json!({"id": "img-cirros", "name": "cirros", "status": "active", "visibility": "public",
                   "disk_format": "qcow2", "container_format": "bare", "size": 1024}),
        );
        c.networks.push(
            json!({"id": "net-private", "name": "private", "router:external": false, "status": "ACTIVE"}),
        );
        c.networks
            .push(json!({"id": "net-public", "name": "public", "router:external": true, "status": "ACTIVE"}));
        let cloud = Arc::new(Mutex::new(c));
        let app = axum::Router::new()
            .fallback(handle)
            .layer(axum::extract::DefaultBodyLimit::disable())
            .with_state(cloud.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeOpenStack { cloud, addr }
    }

    /// Keystone's URL (without `/v3`, as many clouds.yaml files have it).
    pub fn auth_url(&self) -> String {
        format!("http://{}/identity", self.addr)
    }

    /// Writes a clouds.yaml with cloud `name` (user `zuul`, project `ci`,
    /// `private: true`: nodes are reached on their fixed 127.0.1.x address)
    /// into `dir` and returns its path.
    pub fn clouds_yaml(&self, dir: &Path, name: &str) -> PathBuf {
        self.write_clouds(dir, name, true)
    }

    /// Like [`FakeOpenStack::clouds_yaml`] without `private: true`: nodes
    /// need a public (floating) address.
    pub fn clouds_yaml_public(&self, dir: &Path, name: &str) -> PathBuf {
        self.write_clouds(dir, name, false)
    }

    fn write_clouds(&self, dir: &Path, name: &str, private: bool) -> PathBuf {
        let path = dir.join(if private { "clouds.yaml" } else { "clouds-public.yaml" });
        let text = format!(
            "clouds:\n  {name}:\n    auth:\n      auth_url: {url}\n      username: zuul\n      password: {PASSWORD}\n      project_name: ci\n      user_domain_name: Default\n      project_domain_name: Default\n    region_name: RegionOne\n    image_format: raw\n    private: {private}\n",
            url = self.auth_url()
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Changes the cloud's timing and limits.
    pub fn set_knobs(&self, knobs: Knobs) {
        self.cloud.lock().unwrap().knobs = knobs;
    }

    /// The current knobs.
    pub fn knobs(&self) -> Knobs {
        self.cloud.lock().unwrap().knobs.clone()
    }

    /// Answers the next `method` call whose path contains `path_part` with
    /// `code` and `body`.
    pub fn fail_next(&self, method: &str, path_part: &str, code: u16, body: Value) {
        self.cloud.lock().unwrap().failures.push((method.into(), path_part.into(), code, body));
    }

    /// Revokes every token (the next call gets 401).
    pub fn revoke_tokens(&self) {
        self.cloud.lock().unwrap().tokens.clear();
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Request> {
        self.cloud.lock().unwrap().requests.clone()
    }

    /// How many requests matched `method` and a path ending in `suffix`.
    pub fn count(&self, method: &str, suffix: &str) -> usize {
        self.requests().iter().filter(|r| r.method == method && r.path.ends_with(suffix)).count()
    }

    /// The bodies of `POST /servers` so far.
    pub fn created_servers(&self) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == "POST" && r.path.ends_with("/servers"))
            .map(|r| r.body["server"].clone())
            .collect()
    }

    /// Ids of the servers Nova still has (being deleted included).
    pub fn server_ids(&self) -> Vec<String> {
        self.cloud.lock().unwrap().servers.keys().cloned().collect()
    }

    /// A server's metadata.
    pub fn server_metadata(&self, id: &str) -> Option<Value> {
        self.cloud.lock().unwrap().servers.get(id).map(|s| s.json["metadata"].clone())
    }

    /// Puts a server into Nova directly (as another program would), ACTIVE
    /// with `metadata`; returns its id.
    pub fn plant_server(&self, metadata: Value) -> String {
        let mut c = self.cloud.lock().unwrap();
        let id = uuid();
        let flavor = flavors().remove(0);
        let json = json!({"id": id, "name": "planted", "status": "ACTIVE", "metadata": metadata,
            "addresses": {}, "hostId": "fakehost-1", "OS-EXT-AZ:availability_zone": "az1"});
        c.servers.insert(id.clone(), StoredServer { json, reads: 99, deleted_reads: None, flavor });
        id
    }

    /// Adds a Neutron port with `status` and `device_owner`; returns its id.
    pub fn plant_port(&self, status: &str, device_owner: &str) -> String {
        let mut c = self.cloud.lock().unwrap();
        let id = uuid();
        c.ports.insert(
            id.clone(),
            json!({"id": id, "device_id": "", "device_owner": device_owner,
            "status": status, "network_id": "net-private"}),
        );
        id
    }

    /// Sets a port's status.
    pub fn set_port_status(&self, id: &str, status: &str) {
        if let Some(p) = self.cloud.lock().unwrap().ports.get_mut(id) {
            p["status"] = json!(status);
        }
    }

    /// Ids of every port.
    pub fn port_ids(&self) -> Vec<String> {
        self.cloud.lock().unwrap().ports.keys().cloned().collect()
    }

    /// Floating IPs: (address, port id).
    pub fn floating_ips(&self) -> Vec<(String, Option<String>)> {
        let c = self.cloud.lock().unwrap();
        c.fips
            .values()
            .map(|(f, _)| {
                (
                    f["floating_ip_address"].as_str().unwrap().to_owned(),
                    f["port_id"].as_str().map(str::to_owned),
                )
            })
            .collect()
    }

    /// Adds an unattached floating IP; returns its address.
    pub fn plant_floating_ip(&self) -> String {
        let mut c = self.cloud.lock().unwrap();
        let id = uuid();
        let addr = format!("127.0.3.{}", c.fips.len() + 1);
        c.fips.insert(
            id.clone(),
            (
                json!({"id": id, "floating_ip_address": addr, "port_id": null, "status": "DOWN",
                    "floating_network_id": "net-public"}),
                0,
            ),
        );
        addr
    }

    /// Glance's images: id → image object.
    pub fn images(&self) -> BTreeMap<String, Value> {
        self.cloud.lock().unwrap().images.clone()
    }

    /// Puts an active image into Glance directly (as another program
    /// would) with `properties` at the top level, as Glance v2 keeps them;
    /// returns its id.
    pub fn plant_image(&self, name: &str, properties: Value) -> String {
        let mut c = self.cloud.lock().unwrap();
        let id = uuid();
        let mut image = json!({"id": id, "name": name, "status": "active", "visibility": "private",
            "disk_format": "raw", "container_format": "bare", "size": 1024});
        for (k, v) in properties.as_object().cloned().unwrap_or_default() {
            image[k] = v;
        }
        c.images.insert(id.clone(), image);
        id
    }

    /// Removes an image from Glance directly.
    pub fn remove_image(&self, id: &str) {
        self.cloud.lock().unwrap().images.remove(id);
    }

    /// Puts a Cinder volume of `size` GB into the cloud, attached to
    /// `server` when given (the server lists it); returns its id.
    pub fn plant_volume(&self, size: i64, server: Option<&str>) -> String {
        let mut c = self.cloud.lock().unwrap();
        let id = uuid();
        c.volumes.insert(id.clone(), Cloud::volume_json(&id, size, server));
        if let Some(s) = server.and_then(|sid| c.servers.get_mut(sid)) {
            let list = s.json["os-extended-volumes:volumes_attached"].as_array().cloned().unwrap_or_default();
            let mut list = list;
            list.push(json!({"id": id, "delete_on_termination": false}));
            s.json["os-extended-volumes:volumes_attached"] = Value::Array(list);
        }
        id
    }

    /// Cinder's volumes: id → size in GB.
    pub fn volumes(&self) -> BTreeMap<String, i64> {
        let c = self.cloud.lock().unwrap();
        c.volumes.iter().map(|(id, v)| (id.clone(), v["size"].as_i64().unwrap_or(0))).collect()
    }

    /// Bytes uploaded into image `id`.
    pub fn image_size(&self, id: &str) -> Option<usize> {
        self.cloud.lock().unwrap().image_data.get(id).copied()
    }
}
