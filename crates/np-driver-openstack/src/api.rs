//! The OpenStack objects the driver reads, parsed from Nova's, Glance's and
//! Neutron's JSON, and the address rules that turn a server's `addresses`
//! into a node's IPs (as openstacksdk's `meta` module decides them).

use std::collections::BTreeMap;
use std::net::IpAddr;

use np_core::Quota;
use serde_json::Value;

/// A Nova flavor.
#[derive(Debug, Clone, PartialEq)]
pub struct Flavor {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// vCPUs.
    pub vcpus: u64,
    /// RAM, MiB.
    pub ram: u64,
}

impl Flavor {
    /// Parses one entry of `GET /flavors/detail` (or a server's embedded
    /// flavor at microversion 2.47+, which has no id but the original name).
    pub fn from_json(v: &Value) -> Option<Flavor> {
        Some(Flavor {
            id: v["id"].as_str().unwrap_or_default().to_owned(),
            name: v["name"].as_str().or_else(|| v["original_name"].as_str()).unwrap_or_default().to_owned(),
            vcpus: v["vcpus"].as_u64()?,
            ram: v["ram"].as_u64()?,
        })
    }

    /// What one server of this flavor uses (upstream's
    /// `construct_from_flavor`): its cores and RAM and one instance.
    pub fn quota(&self) -> Quota {
        Quota::new(Some(self.vcpus as f64), Some(1.0), Some(self.ram as f64), 0.0)
    }
}

/// A Nova server, as `GET /servers/detail` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    /// Its id (the node's `external_id`).
    pub id: String,
    /// `BUILD`, `ACTIVE`, `ERROR`, `DELETED`...
    pub status: String,
    /// Server metadata (Nodepool's `nodepool_*` keys among them).
    pub metadata: BTreeMap<String, String>,
    /// `addresses`: network name → list of `{addr, version, OS-EXT-IPS:type}`.
    pub addresses: Value,
    /// `accessIPv4`, when set.
    pub access_ipv4: Option<String>,
    /// `accessIPv6`, when set.
    pub access_ipv6: Option<String>,
    /// `hostId`.
    pub host_id: Option<String>,
    /// `OS-EXT-AZ:availability_zone`.
    pub az: Option<String>,
    /// `flavor`: `{id}` before microversion 2.47, the whole flavor after.
    pub flavor: Value,
    /// `fault.message` of a server in ERROR.
    pub fault: Option<String>,
    /// The ids of its attached Cinder volumes
    /// (`os-extended-volumes:volumes_attached`).
    pub volumes: Vec<String>,
}

fn non_empty(v: &Value) -> Option<String> {
    v.as_str().filter(|s| !s.is_empty()).map(str::to_owned)
}

impl Server {
    /// Parses one server object.
    pub fn from_json(v: &Value) -> Option<Server> {
        let metadata = v["metadata"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        Some(Server {
            id: v["id"].as_str()?.to_owned(),
            status: v["status"].as_str().unwrap_or("UNKNOWN").to_owned(),
            metadata,
            addresses: v["addresses"].clone(),
            access_ipv4: non_empty(&v["accessIPv4"]),
            access_ipv6: non_empty(&v["accessIPv6"]),
            host_id: non_empty(&v["hostId"]),
            az: non_empty(&v["OS-EXT-AZ:availability_zone"]),
            flavor: v["flavor"].clone(),
            fault: non_empty(&v["fault"]["message"]),
            volumes: v["os-extended-volumes:volumes_attached"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a["id"].as_str().map(str::to_owned))
                .collect(),
        })
    }

    /// Whether Nova has finished deleting it.
    pub fn is_deleted(&self) -> bool {
        self.status.eq_ignore_ascii_case("deleted")
    }

    /// Every address with its version and type (`fixed` or `floating`).
    fn all_addresses(&self) -> Vec<(IpAddr, bool)> {
        let mut out = Vec::new();
        if let Some(nets) = self.addresses.as_object() {
            for entries in nets.values() {
                for a in entries.as_array().into_iter().flatten() {
                    let Some(ip) = a["addr"].as_str().and_then(|s| s.parse::<IpAddr>().ok()) else {
                        continue;
                    };
                    let floating = a["OS-EXT-IPS:type"].as_str() == Some("floating");
                    out.push((ip, floating));
                }
            }
        }
        out
    }

    /// Floating IPv4 addresses attached to it.
    pub fn floating_ips(&self) -> Vec<String> {
        self.all_addresses().into_iter().filter(|(_, f)| *f).map(|(ip, _)| ip.to_string()).collect()
    }

    /// The node's addresses: `(public_ipv4, private_ipv4, public_ipv6,
    /// interface_ip)`. A floating or globally routable IPv4 is public, an
    /// RFC 1918, loopback or link-local one private; `accessIPv4/6` win, as
    /// in openstacksdk. The interface IP is openstacksdk's: the private
    /// IPv4 on a cloud marked `private: true` in clouds.yaml, else the
    /// public IPv4, else the public IPv6 (none when the server has only
    /// private addresses on a cloud not marked private).
    pub fn ips(
        &self,
        private_cloud: bool,
    ) -> (Option<String>, Option<String>, Option<String>, Option<String>) {
        let addrs = self.all_addresses();
        let private4 = |ip: &std::net::Ipv4Addr| ip.is_private() || ip.is_loopback() || ip.is_link_local();
        let mut public_v4 = self.access_ipv4.clone();
        let mut private_v4 = None;
        let mut public_v6 = self.access_ipv6.clone();
        // Floating addresses first: they are what the cloud routes to.
        for (ip, floating) in addrs.iter().filter(|(_, f)| *f).chain(addrs.iter().filter(|(_, f)| !*f)) {
            match ip {
                IpAddr::V4(v4) if *floating || !private4(v4) => {
                    public_v4.get_or_insert_with(|| v4.to_string());
                }
                IpAddr::V4(v4) => {
                    private_v4.get_or_insert_with(|| v4.to_string());
                }
                IpAddr::V6(v6) => {
                    let link_local = (v6.segments()[0] & 0xffc0) == 0xfe80;
                    if !link_local {
                        public_v6.get_or_insert_with(|| v6.to_string());
                    }
                }
            }
        }
        let interface = match (&private_v4, private_cloud) {
            (Some(p), true) => Some(p.clone()),
            _ => public_v4.clone().or_else(|| public_v6.clone()),
        };
        (public_v4, private_v4, public_v6, interface)
    }
}

/// A Neutron floating IP.
#[derive(Debug, Clone, PartialEq)]
pub struct FloatingIp {
    /// Its id.
    pub id: String,
    /// The address.
    pub address: String,
    /// `ACTIVE`, `DOWN`...
    pub status: String,
    /// The port it is bound to.
    pub port_id: Option<String>,
}

impl FloatingIp {
    /// Parses a `floatingip` object.
    pub fn from_json(v: &Value) -> Option<FloatingIp> {
        Some(FloatingIp {
            id: v["id"].as_str()?.to_owned(),
            address: v["floating_ip_address"].as_str().unwrap_or_default().to_owned(),
            status: v["status"].as_str().unwrap_or_default().to_owned(),
            port_id: non_empty(&v["port_id"]),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn addresses_split_into_public_private_and_interface() {
        let s = Server::from_json(&json!({
            "id": "a", "status": "ACTIVE", "metadata": {"k": "v"},
            "addresses": {"private": [
                {"addr": "10.0.0.5", "version": 4, "OS-EXT-IPS:type": "fixed"},
                {"addr": "fe80::1", "version": 6, "OS-EXT-IPS:type": "fixed"},
                {"addr": "2001:db8::5", "version": 6, "OS-EXT-IPS:type": "fixed"},
                {"addr": "203.0.113.9", "version": 4, "OS-EXT-IPS:type": "floating"}]},
            "flavor": {"id": "f"}
        }))
        .unwrap();
        let (pub4, priv4, pub6, iface) = s.ips(false);
        assert_eq!(pub4.as_deref(), Some("203.0.113.9"));
        assert_eq!(priv4.as_deref(), Some("10.0.0.5"));
        assert_eq!(pub6.as_deref(), Some("2001:db8::5"));
        assert_eq!(iface.as_deref(), Some("203.0.113.9"));
        assert_eq!(s.floating_ips(), vec!["203.0.113.9".to_owned()]);

        // On a cloud marked private the private address is the interface,
        // even beside a floating one, as openstacksdk decides.
        assert_eq!(s.ips(true).3.as_deref(), Some("10.0.0.5"));
        // Only a private address: the interface only on a private cloud.
        let s = Server::from_json(
            &json!({"id": "b", "addresses": {"net": [{"addr": "127.0.0.7", "version": 4}]}}),
        )
        .unwrap();
        assert_eq!(s.ips(true), (None, Some("127.0.0.7".into()), None, Some("127.0.0.7".into())));
        assert_eq!(s.ips(false), (None, Some("127.0.0.7".into()), None, None));
    }

    #[test]
    fn embedded_and_listed_flavors_parse() {
        let f = Flavor::from_json(&json!({"id": "1", "name": "small", "vcpus": 2, "ram": 2048})).unwrap();
        assert_eq!(f.quota().get("cores"), 2.0);
        assert_eq!(f.quota().get("instances"), 1.0);
        assert_eq!(f.quota().get("ram"), 2048.0);
        let e = Flavor::from_json(&json!({"original_name": "small", "vcpus": 4, "ram": 8192})).unwrap();
        assert_eq!(e.name, "small");
        assert!(Flavor::from_json(&json!({"id": "only"})).is_none());
    }
}
