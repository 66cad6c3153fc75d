//! `driver: aws`: Amazon EC2 behind the [`np_provider::Provider`] trait.
//!
//! Behaviour follows Python Nodepool 11's AWS adapter:
//! * creates are `RunInstances` calls (one instance each) with the label's
//!   network, volume, spot, IMDSv2, IAM-profile and userdata options, tagged
//!   (instance **and** volumes) with the label `tags`, formatted
//!   `dynamic-tags`, the `nodepool_*` metadata and `Name = np<node id>`;
//!   dedicated-host labels first allocate a host (`AllocateHosts`);
//! * every state machine polls one shared, paginated, cached
//!   `DescribeInstances` listing (no per-node describe);
//! * deletes are queued and sent as batched `TerminateInstances` calls;
//! * quota: a label costs its instance type's cores, RAM (MiB), one instance
//!   and its family's quota code in vCPUs (`DescribeInstanceTypes`), plus
//!   its volume's storage/IOPS codes; the limits are read from Service Quotas
//!   (`ec2` and `ebs`, cached 300 s);
//! * errors are classified ([`error::classify_code`]); throttling slows the
//!   rate limiter down;
//! * image upload for the builder: `ebs-direct` ([`ebs`]) or VM Import of an
//!   image staged in S3 ([`s3`]; `snapshot` and `image` methods), see
//!   [`AwsProvider::upload_image`];
//! * leak cleanup sees instances, volumes, dedicated hosts, AMIs, snapshots
//!   and staged S3 objects that carry this provider's
//!   `nodepool_provider_name` tag ([`np_provider::Provider::list_instances`]).
//!
//! The launcher builds an [`AwsProvider`] with [`AwsProvider::new`] and its
//! pool workers from [`pool_infos`] / [`label_info`].

pub mod ebs;
pub mod error;
pub mod listing;
pub mod pools;
pub mod provider;
pub mod quota;
pub mod s3;
/// The shared rate limiter (kept at this path for the driver's modules).
pub use np_provider::rate;
pub mod tags;
pub mod templates;

pub use error::AwsError;
pub use pools::{label_info, pool_infos, pools, AwsLabelInfo, AwsPoolInfo, CLOUD};
pub use provider::{tag_map, AwsClients, AwsProvider, AwsSettings, AwsStats, ExternalId, TERMINATE_BATCH};
