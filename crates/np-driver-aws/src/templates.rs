//! Launch templates for `fleet` labels (spec drivers §2, upstream's
//! `_createLaunchTemplates`): one per distinct label configuration, named
//! `nodepool-launch-template-<sha256>` where the hash is taken over the
//! template's arguments as Python's `json.dumps(args, sort_keys=True)` writes
//! them. The name is therefore the same as Python Nodepool's for the same
//! label, so both launchers can share the templates of one provider during a
//! migration, and neither deletes the other's live templates.

use np_config::{AwsLabel, AwsPool};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

/// The name prefix of every template Nodepool manages.
pub const PREFIX: &str = "nodepool-launch-template";

/// The tags on a template (upstream: `nodepool_managed` and the provider).
pub fn template_tags(provider: &str) -> Vec<(String, String)> {
    vec![
        // Upstream passes `True` through `str()`.
        ("nodepool_managed".to_owned(), "True".to_owned()),
        ("nodepool_provider_name".to_owned(), provider.to_owned()),
    ]
}

/// A `fleet` label's launch template settings, read from the label as
/// upstream reads them: a zero or empty volume size, type, IOPS, throughput
/// or user data is left out (upstream tests truthiness). Both the name hash
/// ([`TemplateSpec::args`]) and the `CreateLaunchTemplate` call are built
/// from this one value, so they cannot disagree.
#[derive(Debug, Clone, PartialEq)]
pub struct TemplateSpec {
    pub key_name: String,
    pub security_group_id: Option<String>,
    pub volume_size: Option<u64>,
    pub volume_type: Option<String>,
    pub iops: Option<u64>,
    pub throughput: Option<u64>,
    /// IMDSv2 `HttpTokens`: `required` or `optional`.
    pub http_tokens: Option<String>,
    /// The user data, base64-encoded.
    pub user_data: Option<String>,
}

impl TemplateSpec {
    /// The settings of `label` in `pool`.
    pub fn of(pool: &AwsPool, label: &AwsLabel) -> TemplateSpec {
        TemplateSpec {
            key_name: label.key_name.clone(),
            security_group_id: pool.security_group_id.clone(),
            volume_size: label.volume_size.filter(|v| *v != 0),
            volume_type: label.volume_type.clone().filter(|t| !t.is_empty()),
            iops: label.iops.filter(|v| *v != 0),
            throughput: label.throughput.filter(|v| *v != 0),
            http_tokens: label.imdsv2.clone().filter(|t| t == "required" || t == "optional"),
            user_data: label
                .userdata
                .as_deref()
                .filter(|u| !u.is_empty())
                .map(|u| aws_smithy_types::base64::encode(u.as_bytes())),
        }
    }

    /// The template's arguments in upstream's shape (`LaunchTemplateData`
    /// and `TagSpecifications`, boto3 parameter names), keys sorted.
    pub fn args(&self, provider: &str) -> Value {
        let mut ebs = Map::new();
        ebs.insert("DeleteOnTermination".into(), Value::Bool(true));
        if let Some(size) = self.volume_size {
            ebs.insert("VolumeSize".into(), json!(size));
        }
        if let Some(t) = &self.volume_type {
            ebs.insert("VolumeType".into(), json!(t));
        }
        if let Some(iops) = self.iops {
            ebs.insert("Iops".into(), json!(iops));
        }
        if let Some(tp) = self.throughput {
            ebs.insert("Throughput".into(), json!(tp));
        }
        let mut data = Map::new();
        data.insert("KeyName".into(), json!(self.key_name));
        data.insert("SecurityGroupIds".into(), json!([self.security_group_id]));
        data.insert(
            "BlockDeviceMappings".into(),
            json!([{"DeviceName": "/dev/sda1", "Ebs": Value::Object(ebs)}]),
        );
        if let Some(tokens) = &self.http_tokens {
            data.insert("MetadataOptions".into(), json!({"HttpTokens": tokens, "HttpEndpoint": "enabled"}));
        }
        if let Some(user_data) = &self.user_data {
            data.insert("UserData".into(), json!(user_data));
        }
        let tags: Vec<Value> =
            template_tags(provider).into_iter().map(|(k, v)| json!({"Key": k, "Value": v})).collect();
        sorted(json!({
            "LaunchTemplateData": Value::Object(data),
            "TagSpecifications": [{"ResourceType": "launch-template", "Tags": tags}],
        }))
    }

    /// The template's name (see [`template_name`]).
    pub fn name(&self, provider: &str) -> String {
        template_name(&self.args(provider))
    }
}

/// The template's arguments of `label` in `pool` (see [`TemplateSpec::args`]).
pub fn template_args(provider: &str, pool: &AwsPool, label: &AwsLabel) -> Value {
    TemplateSpec::of(pool, label).args(provider)
}

/// The template name for `args` (upstream's `_getLaunchTemplateName`).
pub fn template_name(args: &Value) -> String {
    let digest = Sha256::digest(np_core::json::to_python_json(args));
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{PREFIX}-{hex}")
}

/// `value` with every object's keys in sorted order (`sort_keys=True`).
fn sorted(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn config() -> np_config::Config {
        np_config::load_str(
            r##"
labels:
  - name: fleet-label
providers:
  - name: ec2-us-west-2
    driver: aws
    region-name: us-west-2
    cloud-images:
      - name: ubuntu
        image-id: ami-1234
        username: zuul
    pools:
      - name: main
        security-group-id: sg-0123
        subnet-id: subnet-0123
        labels:
          - name: fleet-label
            cloud-image: ubuntu
            key-name: zuul
            volume-size: 80
            volume-type: gp3
            iops: 1000
            imdsv2: required
            userdata: "#!/bin/sh\n"
            fleet:
              instance-types: [t3.medium, t3.large]
              allocation-strategy: lowest-price
"##,
            "test.yaml",
        )
        .unwrap()
    }

    #[test]
    fn arguments_and_name_match_upstream() {
        let config = config();
        let np_config::ProviderDriver::Aws(aws) = &config.providers[0].driver else { panic!() };
        let pool = &aws.pools[0];
        let args = template_args("ec2-us-west-2", pool, &pool.labels[0]);
        // What Python's json.dumps(args, sort_keys=True) gives for the same label.
        let expected = r#"{"LaunchTemplateData": {"BlockDeviceMappings": [{"DeviceName": "/dev/sda1", "Ebs": {"DeleteOnTermination": true, "Iops": 1000, "VolumeSize": 80, "VolumeType": "gp3"}}], "KeyName": "zuul", "MetadataOptions": {"HttpEndpoint": "enabled", "HttpTokens": "required"}, "SecurityGroupIds": ["sg-0123"], "UserData": "IyEvYmluL3NoCg=="}, "TagSpecifications": [{"ResourceType": "launch-template", "Tags": [{"Key": "nodepool_managed", "Value": "True"}, {"Key": "nodepool_provider_name", "Value": "ec2-us-west-2"}]}]}"#;
        assert_eq!(String::from_utf8(np_core::json::to_python_json(&args)).unwrap(), expected);
        // hashlib.sha256(that.encode()).hexdigest()
        assert_eq!(
            template_name(&args),
            "nodepool-launch-template-fe46d107707f2bf9ee493c5a6d4a183f9e2962401c669c6b20162dd3a59ad1e6"
        );
    }
}
