//! EC2 and EBS quota codes, and what one instance or volume costs.
//!
//! AWS enforces instance limits per *family* in vCPUs, under Service Quotas
//! codes (`L-1216C47A` = running on-demand standard instances). Upstream keeps
//! hand-written tables from the instance-type prefix (letters before the
//! first digit) to the on-demand and spot codes, from a dedicated-host family
//! to its code, and from a volume type to its storage (TiB) and IOPS codes.
//! The facts in these tables are AWS's published quota codes.

use np_core::Quota;

/// Market of an instance: selects the on-demand or the spot quota code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Market {
    /// On-demand.
    OnDemand,
    /// Spot.
    Spot,
}

/// Instance-type prefix → (on-demand code, spot code); an empty code means
/// "no such quota".
const INSTANCE_QUOTA_CODES: &[(&str, &str, &str)] = &[
    ("a", "L-1216C47A", "L-34B43A08"),
    ("c", "L-1216C47A", "L-34B43A08"),
    ("d", "L-1216C47A", "L-34B43A08"),
    ("h", "L-1216C47A", "L-34B43A08"),
    ("i", "L-1216C47A", "L-34B43A08"),
    ("m", "L-1216C47A", "L-34B43A08"),
    ("r", "L-1216C47A", "L-34B43A08"),
    ("t", "L-1216C47A", "L-34B43A08"),
    ("z", "L-1216C47A", "L-34B43A08"),
    ("dl", "L-6E869C2A", "L-85EED4F7"),
    ("f", "L-74FC7D96", "L-88CF9481"),
    ("g", "L-DB2E81BA", "L-3819A6DF"),
    ("vt", "L-DB2E81BA", "L-3819A6DF"),
    ("u-", "L-43DA4232", ""),
    ("inf", "L-1945791B", "L-B5D1601B"),
    ("p", "L-417A185B", "L-7212CCBC"),
    ("x", "L-7295265B", "L-E3A00192"),
    ("trn", "L-2C3B7624", "L-6B0D517C"),
    ("hpc", "L-F7808C92", ""),
];

/// Dedicated-host family → quota code.
const HOST_QUOTA_CODES: &[(&str, &str)] = &[
    ("a1", "L-949445B0"),
    ("c3", "L-8D142A2E"),
    ("c4", "L-E4BF28E0"),
    ("c5", "L-81657574"),
    ("c5a", "L-03F01FD8"),
    ("c5d", "L-C93F66A2"),
    ("c5n", "L-20F13EBD"),
    ("c6a", "L-D75D2E84"),
    ("c6g", "L-A749B537"),
    ("c6gd", "L-545AED39"),
    ("c6gn", "L-5E3A299D"),
    ("c6i", "L-5FA3355A"),
    ("c6id", "L-1BBC5241"),
    ("c6in", "L-6C2C40CC"),
    ("c7a", "L-698B67E5"),
    ("c7g", "L-13B8FCE8"),
    ("c7gd", "L-EF58B059"),
    ("c7gn", "L-97677CE3"),
    ("c7i", "L-587AA6E3"),
    ("d2", "L-8B27377A"),
    ("dl1", "L-AD667A3D"),
    ("f1", "L-5C4CD236"),
    ("g3", "L-DE82EABA"),
    ("g3s", "L-9675FDCD"),
    ("g4ad", "L-FD8E9B9A"),
    ("g4dn", "L-CAE24619"),
    ("g5", "L-A6E7FE5E"),
    ("g5g", "L-4714FFEA"),
    ("g6", "L-B88B9D6B"),
    ("gr6", "L-E68C3AFF"),
    ("h1", "L-84391ECC"),
    ("i2", "L-6222C1B6"),
    ("i3", "L-8E60B0B1"),
    ("i3en", "L-77EE2B11"),
    ("i4g", "L-F62CBADB"),
    ("i4i", "L-0300530D"),
    ("im4gn", "L-93155D6F"),
    ("inf", "L-5480EFD2"),
    ("inf2", "L-E5BCF7B5"),
    ("is4gen", "L-CB4F5825"),
    ("m3", "L-3C82F907"),
    ("m4", "L-EF30B25E"),
    ("m5", "L-8B7BF662"),
    ("m5a", "L-B10F70D6"),
    ("m5ad", "L-74F41837"),
    ("m5d", "L-8CCBD91B"),
    ("m5dn", "L-DA07429F"),
    ("m5n", "L-24D7D4AD"),
    ("m5zn", "L-BD9BD803"),
    ("m6a", "L-80F2B67F"),
    ("m6g", "L-D50A37FA"),
    ("m6gd", "L-84FB37AA"),
    ("m6i", "L-D269BEFD"),
    ("m6id", "L-FDB0A352"),
    ("m6idn", "L-9721EDD9"),
    ("m6in", "L-D037CF10"),
    ("m7a", "L-4740F819"),
    ("m7g", "L-9126620E"),
    ("m7gd", "L-F8516154"),
    ("m7i", "L-30E31217"),
    ("mac1", "L-A8448DC5"),
    ("mac2", "L-5D8DADF5"),
    ("mac2-m2", "L-B90B5B66"),
    ("mac2-m2pro", "L-14F120D1"),
    ("p2", "L-2753CF59"),
    ("p3", "L-A0A19F79"),
    ("p3dn", "L-B601B3B6"),
    ("p4d", "L-86A789C3"),
    ("p5", "L-5136197D"),
    ("r3", "L-B7208018"),
    ("r4", "L-313524BA"),
    ("r5", "L-EA4FD6CF"),
    ("r5a", "L-8FE30D52"),
    ("r5ad", "L-EC7178B6"),
    ("r5b", "L-A2D59C67"),
    ("r5d", "L-8814B54F"),
    ("r5dn", "L-4AB14223"),
    ("r5n", "L-52EF324A"),
    ("r6a", "L-BC1589C5"),
    ("r6g", "L-B6D6065D"),
    ("r6gd", "L-EF284EFB"),
    ("r6i", "L-F13A970A"),
    ("r6id", "L-B89271A9"),
    ("r6idn", "L-C4EABC2C"),
    ("r6in", "L-EA99608B"),
    ("r7a", "L-4D15192B"),
    ("r7g", "L-67B8B4C7"),
    ("r7gd", "L-01137DCE"),
    ("r7i", "L-55E05032"),
    ("r7iz", "L-BC9FCC71"),
    ("t3", "L-1586174D"),
    ("trn1", "L-5E4FB836"),
    ("trn1n", "L-39926A58"),
    ("u-12tb1", "L-D6994875"),
    ("u-18tb1", "L-5F7FD336"),
    ("u-24tb1", "L-FACBE655"),
    ("u-3tb1", "L-7F5506AB"),
    ("u-6tb1", "L-89870E8E"),
    ("u-9tb1", "L-98E1FFAC"),
    ("u7in-16tb", "L-75B9BECB"),
    ("u7in-24tb", "L-CA51381E"),
    ("u7in-32tb", "L-9D28191F"),
    ("vt1", "L-A68CFBF7"),
    ("x1", "L-DE3D9563"),
    ("x1e", "L-DEF8E115"),
    ("x2gd", "L-5CC9EA82"),
    ("x2idn", "L-A84ABF80"),
    ("x2iedn", "L-D0AA08B1"),
    ("x2iezn", "L-888B4496"),
    ("z1d", "L-F035E935"),
];

/// EBS volume type → (storage code in TiB, IOPS code).
const VOLUME_QUOTA_CODES: &[(&str, Option<&str>, Option<&str>)] = &[
    ("io1", Some("L-FD252861"), Some("L-B3A130E6")),
    ("io2", Some("L-09BD8365"), Some("L-8D977E7E")),
    ("sc1", Some("L-17AF77E8"), None),
    ("gp2", Some("L-D18FCD1D"), None),
    ("gp3", Some("L-7A658B76"), None),
    ("standard", Some("L-9CF3C2EB"), None),
    ("st1", Some("L-82ACEF56"), None),
];

/// The family key of an instance type: the letters (and dashes) before the
/// first digit, when a digit follows (`t3.medium` → `t`, `u-6tb1.metal` → `u-`).
fn instance_key(instance_type: &str) -> Option<&str> {
    let end = instance_type.find(|c: char| !(c.is_ascii_lowercase() || c == '-'))?;
    if end == 0 || !instance_type[end..].starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    Some(&instance_type[..end])
}

/// The Service Quotas code counting vCPUs of `instance_type` on `market`, if known.
pub fn instance_quota_code(instance_type: &str, market: Market) -> Option<&'static str> {
    let key = instance_key(instance_type)?;
    let (_, od, spot) = INSTANCE_QUOTA_CODES.iter().find(|(k, _, _)| *k == key)?;
    let code = match market {
        Market::OnDemand => *od,
        Market::Spot => *spot,
    };
    (!code.is_empty()).then_some(code)
}

/// The dedicated-host quota code of `instance_type` (family before the dot).
pub fn host_quota_code(instance_type: &str) -> Option<&'static str> {
    let (family, _) = instance_type.split_once('.')?;
    HOST_QUOTA_CODES.iter().find(|(k, _)| *k == family).map(|(_, c)| *c)
}

/// The (storage, iops) quota codes of a volume type.
pub fn volume_quota_codes(volume_type: &str) -> (Option<&'static str>, Option<&'static str>) {
    VOLUME_QUOTA_CODES
        .iter()
        .find(|(t, _, _)| *t == volume_type)
        .map(|(_, s, i)| (*s, *i))
        .unwrap_or((None, None))
}

/// What DescribeInstanceTypes says about one type.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InstanceTypeInfo {
    /// `VCpuInfo.DefaultVCpus`.
    pub vcpus: f64,
    /// `VCpuInfo.DefaultCores`.
    pub cores: f64,
    /// `MemoryInfo.SizeInMiB`.
    pub ram_mib: f64,
}

/// One instance of a type: `cores`, `ram`, `instances = 1` and, when the
/// family is known, its quota code = vCPUs (service quotas count vCPUs).
pub fn instance_quota(instance_type: &str, info: &InstanceTypeInfo, market: Market) -> Quota {
    let mut q = Quota::new(Some(info.cores), Some(1.0), Some(info.ram_mib), 0.0);
    if let Some(code) = instance_quota_code(instance_type, market) {
        q.set(code, info.vcpus);
    }
    q
}

/// A dedicated host: `instances = 1` and the host code = 1.
pub fn host_quota(instance_type: &str) -> Quota {
    let mut q = Quota::zero();
    q.set("instances", 1.0);
    if let Some(code) = host_quota_code(instance_type) {
        q.set(code, 1.0);
    }
    q
}

/// A volume of `volume_type` with `size_gib` and `iops`.
pub fn volume_quota(volume_type: &str, size_gib: Option<f64>, iops: Option<f64>) -> Quota {
    let mut q = Quota::zero();
    let (storage, iops_code) = volume_quota_codes(volume_type);
    if let (Some(code), Some(size)) = (storage, size_gib) {
        q.set(code, size);
    }
    if let (Some(code), Some(iops)) = (iops_code, iops) {
        q.set(code, iops);
    }
    q
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn instance_codes() {
        assert_eq!(instance_quota_code("t3.medium", Market::OnDemand), Some("L-1216C47A"));
        assert_eq!(instance_quota_code("t3.medium", Market::Spot), Some("L-34B43A08"));
        assert_eq!(instance_quota_code("p3.8xlarge", Market::OnDemand), Some("L-417A185B"));
        assert_eq!(instance_quota_code("u-6tb1.metal", Market::OnDemand), Some("L-43DA4232"));
        assert_eq!(instance_quota_code("u-6tb1.metal", Market::Spot), None);
        assert_eq!(instance_quota_code("inf1.xlarge", Market::Spot), Some("L-B5D1601B"));
        assert_eq!(instance_quota_code("dl1.24xlarge", Market::OnDemand), Some("L-6E869C2A"));
        assert_eq!(instance_quota_code("qq1.large", Market::OnDemand), None);
        assert_eq!(instance_quota_code("bogus", Market::OnDemand), None);
        assert_eq!(host_quota_code("m5.large"), Some("L-8B7BF662"));
        assert_eq!(host_quota_code("m5"), None);
        assert_eq!(volume_quota_codes("io1"), (Some("L-FD252861"), Some("L-B3A130E6")));
        assert_eq!(volume_quota_codes("nope"), (None, None));
    }

    #[test]
    fn costs() {
        let info = InstanceTypeInfo { vcpus: 2.0, cores: 1.0, ram_mib: 4096.0 };
        let q = instance_quota("t3.medium", &info, Market::OnDemand);
        assert_eq!(q.get("cores"), 1.0);
        assert_eq!(q.get("ram"), 4096.0);
        assert_eq!(q.get("instances"), 1.0);
        assert_eq!(q.get("L-1216C47A"), 2.0);
        let h = host_quota("m5.large");
        assert_eq!(h.get("L-8B7BF662"), 1.0);
        let v = volume_quota("io2", Some(100.0), Some(3000.0));
        assert_eq!(v.get("L-09BD8365"), 100.0);
        assert_eq!(v.get("L-8D977E7E"), 3000.0);
    }
}
