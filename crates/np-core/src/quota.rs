//! Quota arithmetic (spec launcher §5.1).
//!
//! A [`Quota`] is a map from resource name (`cores`, `instances`, `ram`, and any
//! extra key such as `volumes`, `volume-gb` or an AWS quota code) to an amount,
//! plus a per-instance *default* used for keys the map lacks. Limits use
//! `default = ∞` (unknown resources are unlimited); usage uses `default = 0`.
//!
//! Deliberate difference from Python: `∞ - ∞` is `∞` here, not NaN. It only
//! arises when an unlimited usage is subtracted from an unlimited limit, and
//! "still unlimited" is the meaningful answer (upstream's NaN happens to pass
//! its non-negative test, so the observable verdict is the same).

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// Resource amounts with a default for absent keys.
#[derive(Debug, Clone, PartialEq)]
pub struct Quota {
    values: BTreeMap<String, f64>,
    default: f64,
}

impl Default for Quota {
    fn default() -> Self {
        Quota::zero()
    }
}

impl Quota {
    /// An empty usage (default 0).
    pub fn zero() -> Self {
        Quota { values: BTreeMap::new(), default: 0.0 }
    }

    /// An empty limit (default ∞: everything unlimited).
    pub fn unlimited() -> Self {
        Quota { values: BTreeMap::new(), default: f64::INFINITY }
    }

    /// `QuotaInformation(cores, instances, ram, default, **extra)`: `None`
    /// fields take `default`.
    pub fn new(cores: Option<f64>, instances: Option<f64>, ram: Option<f64>, default: f64) -> Self {
        let mut q = Quota { values: BTreeMap::new(), default };
        q.values.insert("cores".into(), cores.unwrap_or(default));
        q.values.insert("instances".into(), instances.unwrap_or(default));
        q.values.insert("ram".into(), ram.unwrap_or(default));
        q
    }

    /// Reads a node's `resources` object (default 0). Non-numeric values are ignored.
    pub fn from_resources(resources: &Value) -> Self {
        let mut q = Quota::zero();
        if let Value::Object(map) = resources {
            for (k, v) in map {
                if let Some(f) = v.as_f64() {
                    q.values.insert(k.clone(), f);
                }
            }
        }
        q
    }

    /// The `resources` object stored on nodes and read by Zuul. Integral
    /// values are written as integers, as Python writes them.
    pub fn to_resources(&self) -> Value {
        let mut m = Map::new();
        for (k, v) in &self.values {
            let value = if v.is_finite() && v.fract() == 0.0 && v.abs() < 9.0e15 {
                Value::from(*v as i64)
            } else {
                crate::json::float(*v)
            };
            m.insert(k.clone(), value);
        }
        Value::Object(m)
    }

    /// Sets one resource.
    pub fn set(&mut self, key: &str, value: f64) -> &mut Self {
        self.values.insert(key.to_owned(), value);
        self
    }

    /// One resource, or the default.
    pub fn get(&self, key: &str) -> f64 {
        self.values.get(key).copied().unwrap_or(self.default)
    }

    /// The default for absent keys.
    pub fn default_value(&self) -> f64 {
        self.default
    }

    /// The explicit keys.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }

    fn combine(&mut self, other: &Quota, sign: f64) {
        for key in other.values.keys() {
            self.values.entry(key.clone()).or_insert(self.default);
        }
        for (key, value) in self.values.iter_mut() {
            let delta = other.values.get(key).copied().unwrap_or(other.default) * sign;
            let result = *value + delta;
            *value = if result.is_nan() { f64::INFINITY } else { result };
        }
    }

    /// `self += other`.
    pub fn add(&mut self, other: &Quota) -> &mut Self {
        self.combine(other, 1.0);
        self
    }

    /// `self -= other`.
    pub fn subtract(&mut self, other: &Quota) -> &mut Self {
        self.combine(other, -1.0);
        self
    }

    /// True when every resource, explicit or not, is unlimited (+∞).
    pub fn is_unlimited(&self) -> bool {
        self.default == f64::INFINITY && self.values.values().all(|v| *v == f64::INFINITY)
    }

    /// True when no explicit value is negative.
    pub fn non_negative(&self) -> bool {
        self.values.values().all(|v| *v >= 0.0)
    }

    /// The resources that are negative, for messages.
    pub fn exceeded(&self) -> Vec<&str> {
        self.values.iter().filter(|(_, v)| **v < 0.0).map(|(k, _)| k.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_minus_usage() {
        let mut limit = Quota::new(Some(8.0), Some(2.0), None, f64::INFINITY);
        let mut used = Quota::zero();
        used.add(Quota::new(Some(4.0), Some(1.0), Some(4096.0), 0.0).set("volumes", 1.0));
        let mut left = limit.clone();
        left.subtract(&used);
        assert!(left.non_negative());
        assert_eq!(left.get("cores"), 4.0);
        assert_eq!(left.get("ram"), f64::INFINITY);
        assert_eq!(left.get("volumes"), f64::INFINITY);
        used.add(&Quota::new(Some(5.0), Some(1.0), Some(0.0), 0.0));
        limit.subtract(&used);
        assert!(!limit.non_negative());
        assert_eq!(limit.exceeded(), vec!["cores"]);
    }

    #[test]
    fn infinity_minus_infinity_stays_unlimited() {
        let mut a = Quota::unlimited();
        a.set("cores", f64::INFINITY);
        let mut b = Quota::zero();
        b.set("cores", f64::INFINITY);
        a.subtract(&b);
        assert_eq!(a.get("cores"), f64::INFINITY);
        assert!(a.non_negative());
        assert!(a.is_unlimited());
        assert!(Quota::new(None, None, None, f64::INFINITY).is_unlimited());
        assert!(!Quota::new(None, Some(2.0), None, f64::INFINITY).is_unlimited());
        assert!(!Quota::zero().is_unlimited());
    }

    #[test]
    fn resources_round_trip() {
        let r: Value =
            serde_json::from_str(r#"{"cores": 8, "instances": 1, "ram": 8192, "L-1216C47A": 8}"#).unwrap();
        let q = Quota::from_resources(&r);
        assert_eq!(q.get("ram"), 8192.0);
        assert_eq!(q.get("disk"), 0.0);
        let back = q.to_resources();
        assert_eq!(back["cores"], Value::from(8));
        assert_eq!(back["L-1216C47A"], Value::from(8));
    }
}
