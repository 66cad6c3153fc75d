//! Secondary indexes of the node cache, kept up to date with every change
//! the cache applies, under the same lock. They answer the launcher's
//! per-event questions in time proportional to what they return, not to the
//! number of nodes: what a pool or provider uses, which ready nodes a pool
//! could hand out for a label, how many ready nodes a label has, which
//! nodes a request holds, what a tenant uses, and which of a pool's nodes
//! were created after a given one.
//!
//! A node's cost is its `resources` record when it has one ("sized"); a
//! node without (an old or foreign record) is counted per pool and label
//! ("by_label"), and the caller prices those with its driver's
//! `quota_for_label`, exactly as a scan would.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use np_core::{Node, NodeState, Quota};

use crate::cache::{record_sequence, Entry};

/// What a set of nodes uses.
#[derive(Debug, Default, Clone)]
pub struct Usage {
    /// Number of nodes.
    pub count: u64,
    /// Σ of the `resources` of the nodes that have them.
    pub sized: Quota,
    /// Nodes without `resources`, by (pool, first label).
    pub by_label: BTreeMap<(String, String), u64>,
}

impl Usage {
    /// The total, pricing by_label nodes with `price(pool, label)`.
    pub fn total(&self, price: impl Fn(&str, &str) -> Quota) -> Quota {
        let mut total = self.sized.clone();
        for ((pool, label), n) in &self.by_label {
            let each = price(pool, label);
            for _ in 0..*n {
                total.add(&each);
            }
        }
        total
    }

    fn apply(&mut self, cost: &Cost, sign: i64) {
        if sign > 0 {
            self.count += 1;
        } else {
            self.count = self.count.saturating_sub(1);
        }
        match cost {
            Cost::Sized(q) => {
                if sign > 0 {
                    self.sized.add(q);
                } else {
                    self.sized.subtract(q);
                }
            }
            Cost::ByLabel(pool, label) => {
                let key = (pool.clone(), label.clone());
                let n = self.by_label.entry(key.clone()).or_default();
                if sign > 0 {
                    *n += 1;
                } else {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        self.by_label.remove(&key);
                    }
                }
            }
        }
    }
}

/// What one node costs.
#[derive(Debug, Clone, PartialEq)]
pub enum Cost {
    /// Its `resources`.
    Sized(Quota),
    /// No `resources`: priced by (pool, label).
    ByLabel(String, String),
}

impl Cost {
    fn of(node: &Node) -> Cost {
        match &node.resources {
            Some(r) => Cost::Sized(Quota::from_resources(r)),
            None => Cost::ByLabel(
                node.pool.clone().unwrap_or_default(),
                node.node_type.first().cloned().unwrap_or_default(),
            ),
        }
    }
}

/// A pool's usage plus its nodes' costs by creation sequence.
#[derive(Debug, Default, Clone)]
pub struct PoolUsage {
    /// The whole pool.
    pub usage: Usage,
    /// Every node of the pool with a sequence id, by sequence.
    by_seq: BTreeMap<u64, Cost>,
}

impl PoolUsage {
    /// The costs of the pool's nodes created at or after sequence `seq`.
    pub fn created_since(&self, seq: u64) -> impl Iterator<Item = &Cost> {
        self.by_seq.range(seq..).map(|(_, c)| c)
    }
}

/// The node cache's indexes.
#[derive(Debug, Default)]
pub struct NodeIndex {
    pools: HashMap<(String, String), PoolUsage>,
    providers: HashMap<String, Usage>,
    /// Ready, unallocated, unlocked nodes by (provider, pool, label).
    free: HashMap<(String, String, String), BTreeSet<String>>,
    /// Ready, unallocated nodes (locked or not) by label.
    ready: HashMap<String, u64>,
    /// Nodes by the request they are allocated to.
    allocated: HashMap<String, BTreeSet<String>>,
    /// Nodes by provider.
    by_provider: HashMap<String, BTreeSet<String>>,
    /// Σ of the `resources` of each tenant's nodes (nodes with resources).
    tenants: HashMap<String, Quota>,
}

impl NodeIndex {
    /// Adds (`sign` 1) or removes (`sign` -1) one cached node.
    pub(crate) fn apply(&mut self, id: &str, entry: &Entry<Node>, sign: i64) {
        let node = &entry.value;
        let cost = Cost::of(node);
        if let Some(provider) = &node.provider {
            set_member(&mut self.by_provider, provider.clone(), id, sign);
            self.providers.entry(provider.clone()).or_default().apply(&cost, sign);
            let key = (provider.clone(), node.pool.clone().unwrap_or_default());
            let pool = self.pools.entry(key.clone()).or_default();
            pool.usage.apply(&cost, sign);
            if let Some(seq) = record_sequence(id) {
                if sign > 0 {
                    pool.by_seq.insert(seq, cost.clone());
                } else {
                    pool.by_seq.remove(&seq);
                }
            }
            if pool.usage.count == 0 {
                self.pools.remove(&key);
            }
            if self.providers.get(provider).is_some_and(|u| u.count == 0) {
                self.providers.remove(provider);
            }
            if node.state == NodeState::Ready && node.allocated_to.is_none() && !entry.is_locked() {
                for label in &node.node_type {
                    let key = (provider.clone(), node.pool.clone().unwrap_or_default(), label.clone());
                    set_member(&mut self.free, key, id, sign);
                }
            }
        }
        if node.state == NodeState::Ready && node.allocated_to.is_none() {
            for label in &node.node_type {
                let n = self.ready.entry(label.clone()).or_default();
                if sign > 0 {
                    *n += 1;
                } else {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        self.ready.remove(label);
                    }
                }
            }
        }
        if let Some(request) = &node.allocated_to {
            set_member(&mut self.allocated, request.clone(), id, sign);
        }
        if let (Some(tenant), Cost::Sized(q)) = (&node.tenant_name, &cost) {
            let t = self.tenants.entry(tenant.clone()).or_default();
            if sign > 0 {
                t.add(q);
            } else {
                t.subtract(q);
            }
        }
    }

    /// What the pool's nodes use (`None`: it has none).
    pub fn pool(&self, provider: &str, pool: &str) -> Option<&PoolUsage> {
        self.pools.get(&(provider.to_owned(), pool.to_owned()))
    }

    /// What the provider's nodes use (`None`: it has none).
    pub fn provider(&self, provider: &str) -> Option<&Usage> {
        self.providers.get(provider)
    }

    /// The ready, unallocated, unlocked nodes of a pool offering `label`.
    pub fn free(&self, provider: &str, pool: &str, label: &str) -> Option<&BTreeSet<String>> {
        self.free.get(&(provider.to_owned(), pool.to_owned(), label.to_owned()))
    }

    /// Every ready, unallocated, unlocked node of a pool (any label).
    pub fn free_in_pool<'a>(
        &'a self,
        provider: &'a str,
        pool: &'a str,
    ) -> impl Iterator<Item = &'a String> + 'a {
        self.free
            .iter()
            .filter(move |((p, q, _), _)| p == provider && q == pool)
            .flat_map(|(_, ids)| ids.iter())
    }

    /// How many ready, unallocated nodes offer `label` (locked or not).
    pub fn ready_unallocated(&self, label: &str) -> u64 {
        self.ready.get(label).copied().unwrap_or(0)
    }

    /// The nodes allocated to `request`.
    pub fn allocated_to(&self, request: &str) -> Option<&BTreeSet<String>> {
        self.allocated.get(request)
    }

    /// The ids of the provider's nodes.
    pub fn provider_nodes(&self, provider: &str) -> Option<&BTreeSet<String>> {
        self.by_provider.get(provider)
    }

    /// What the tenant's nodes with `resources` use.
    pub fn tenant(&self, tenant: &str) -> Option<&Quota> {
        self.tenants.get(tenant)
    }
}

fn set_member<K: std::hash::Hash + Eq>(sets: &mut HashMap<K, BTreeSet<String>>, key: K, id: &str, sign: i64) {
    if sign > 0 {
        sets.entry(key).or_default().insert(id.to_owned());
    } else if let Some(set) = sets.get_mut(&key) {
        set.remove(id);
        if set.is_empty() {
            sets.remove(&key);
        }
    }
}
