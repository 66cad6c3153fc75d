//! Configuration diffing for live reload.

use crate::model::Config;

/// What changed between two configurations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigDiff {}

/// Changes to one provider.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProviderDiff {}

/// Changes to one pool.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolDiff {}

/// Compares two configurations.
pub fn diff(_old: &Config, _new: &Config) -> ConfigDiff {
    ConfigDiff {}
}
