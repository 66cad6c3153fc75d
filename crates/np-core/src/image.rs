//! Image build and upload records (spec zk-protocol §2.4, §2.5).
//!
//! Paths: `/nodepool/images/<image>/builds/<build-id>` and
//! `…/builds/<build-id>/providers/<provider>/images/<upload-id>`. Names and ids
//! come from the path, not from the JSON.

use std::fmt;
use std::str::FromStr;

use serde_json::{Map, Value};

use crate::json::{float, opt_str, parse_object, to_python_json, Fields, ModelError};

macro_rules! image_states {
    ($name:ident, $record:literal, { $($variant:ident => $text:literal),* $(,)? }) => {
        #[doc = concat!("States of an image ", $record, " record.")]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $(#[doc = $text] $variant),* }

        impl $name {
            /// The wire spelling.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),* }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = ModelError;
            fn from_str(s: &str) -> Result<Self, ModelError> {
                match s {
                    $($text => Ok($name::$variant),)*
                    _ => Err(ModelError::UnknownState { record: $record, state: s.to_owned() }),
                }
            }
        }
    };
}

image_states!(BuildState, "build", {
    Building => "building",
    Ready => "ready",
    Deleting => "deleting",
    Failed => "failed",
});

image_states!(UploadState, "upload", {
    Uploading => "uploading",
    Ready => "ready",
    Deleting => "deleting",
    Failed => "failed",
});

const DEFAULT_PYTHON_PATH: &str = "/usr/bin/python2";

/// An image build (`…/builds/<build-id>`).
#[derive(Debug, Clone, PartialEq)]
pub struct ImageBuild {
    pub state: BuildState,
    pub state_time: f64,
    /// Builder hostname; written only when set.
    pub builder: Option<String>,
    /// Builder uuid (with dashes); written only when set.
    pub builder_id: Option<String>,
    /// Disk formats; written as one sorted comma-joined string, only when non-empty.
    pub formats: Vec<String>,
    pub username: Option<String>,
    pub python_path: Option<String>,
    pub shell_type: Option<String>,
    /// Unknown keys, written back after the known ones.
    pub extra: Map<String, Value>,
}

impl ImageBuild {
    /// A new build in `state`.
    pub fn new(state: BuildState) -> Self {
        ImageBuild {
            state,
            state_time: crate::now(),
            builder: None,
            builder_id: None,
            formats: Vec::new(),
            username: Some("zuul".into()),
            python_path: Some(DEFAULT_PYTHON_PATH.into()),
            shell_type: None,
            extra: Map::new(),
        }
    }

    /// Parses build JSON.
    pub fn from_json(data: &[u8]) -> Result<ImageBuild, ModelError> {
        let mut f = Fields::new("build", parse_object("build", data)?);
        let state = match f.take_str("state")? {
            Some(s) => s.parse()?,
            None => BuildState::Building,
        };
        let state_time = f.take_f64("state_time")?.unwrap_or_else(crate::now);
        let builder = f.take_str("builder")?;
        let builder_id = f.take_str("builder_id")?;
        let formats = f
            .take_str("formats")?
            .map(|s| s.split(',').filter(|p| !p.is_empty()).map(str::to_owned).collect())
            .unwrap_or_default();
        let username = if f.contains("username") { f.take_str("username")? } else { Some("zuul".into()) };
        let python_path = if f.contains("python_path") {
            f.take_str("python_path")?
        } else {
            Some(DEFAULT_PYTHON_PATH.into())
        };
        let shell_type = f.take_str("shell_type")?;
        Ok(ImageBuild {
            state,
            state_time,
            builder,
            builder_id,
            formats,
            username,
            python_path,
            shell_type,
            extra: f.into_extra(),
        })
    }

    /// The record as an ordered JSON object.
    pub fn to_value(&self) -> Value {
        let mut m = Map::new();
        m.insert("state".into(), Value::from(self.state.as_str()));
        m.insert("state_time".into(), float(self.state_time));
        if let Some(b) = &self.builder {
            m.insert("builder".into(), Value::from(b.as_str()));
        }
        if let Some(b) = &self.builder_id {
            m.insert("builder_id".into(), Value::from(b.as_str()));
        }
        if !self.formats.is_empty() {
            let mut formats = self.formats.clone();
            formats.sort();
            m.insert("formats".into(), Value::from(formats.join(",")));
        }
        m.insert("username".into(), opt_str(&self.username));
        m.insert("python_path".into(), opt_str(&self.python_path));
        m.insert("shell_type".into(), opt_str(&self.shell_type));
        for (k, v) in &self.extra {
            if !m.contains_key(k) {
                m.insert(k.clone(), v.clone());
            }
        }
        Value::Object(m)
    }

    /// The bytes to store.
    pub fn to_json(&self) -> Vec<u8> {
        to_python_json(&self.to_value())
    }
}

/// An image upload (`…/providers/<provider>/images/<upload-id>`).
#[derive(Debug, Clone, PartialEq)]
pub struct ImageUpload {
    pub state: UploadState,
    pub state_time: f64,
    /// The cloud's image id.
    pub external_id: Option<String>,
    pub external_name: Option<String>,
    /// The disk format uploaded.
    pub format: Option<String>,
    pub username: Option<String>,
    pub python_path: Option<String>,
    pub shell_type: Option<String>,
    /// Unknown keys.
    pub extra: Map<String, Value>,
}

impl ImageUpload {
    /// A new upload in `state`.
    pub fn new(state: UploadState) -> Self {
        ImageUpload {
            state,
            state_time: crate::now(),
            external_id: None,
            external_name: None,
            format: None,
            username: Some("zuul".into()),
            python_path: Some(DEFAULT_PYTHON_PATH.into()),
            shell_type: None,
            extra: Map::new(),
        }
    }

    /// Parses upload JSON.
    pub fn from_json(data: &[u8]) -> Result<ImageUpload, ModelError> {
        let mut f = Fields::new("upload", parse_object("upload", data)?);
        let state = match f.take_str("state")? {
            Some(s) => s.parse()?,
            None => UploadState::Uploading,
        };
        let state_time = f.take_f64("state_time")?.unwrap_or_else(crate::now);
        let external_id = f.take_str("external_id")?;
        let external_name = f.take_str("external_name")?;
        let format = f.take_str("format")?;
        let username = if f.contains("username") { f.take_str("username")? } else { Some("zuul".into()) };
        let python_path = if f.contains("python_path") {
            f.take_str("python_path")?
        } else {
            Some(DEFAULT_PYTHON_PATH.into())
        };
        let shell_type = f.take_str("shell_type")?;
        Ok(ImageUpload {
            state,
            state_time,
            external_id,
            external_name,
            format,
            username,
            python_path,
            shell_type,
            extra: f.into_extra(),
        })
    }

    /// The record as an ordered JSON object.
    pub fn to_value(&self) -> Value {
        let mut m = Map::new();
        m.insert("state".into(), Value::from(self.state.as_str()));
        m.insert("state_time".into(), float(self.state_time));
        m.insert("external_id".into(), opt_str(&self.external_id));
        m.insert("external_name".into(), opt_str(&self.external_name));
        m.insert("format".into(), opt_str(&self.format));
        m.insert("username".into(), opt_str(&self.username));
        m.insert("python_path".into(), opt_str(&self.python_path));
        m.insert("shell_type".into(), opt_str(&self.shell_type));
        for (k, v) in &self.extra {
            if !m.contains_key(k) {
                m.insert(k.clone(), v.clone());
            }
        }
        Value::Object(m)
    }

    /// The bytes to store.
    pub fn to_json(&self) -> Vec<u8> {
        to_python_json(&self.to_value())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_round_trip() {
        let text = r#"{"state": "ready", "state_time": 1726500000.5, "builder": "nb01.example.com", "builder_id": "2c9d7a1e-3f4b-4c5d-9e6f-7a8b9c0d1e2f", "formats": "qcow2,raw,vhd", "username": "zuul", "python_path": "auto", "shell_type": null}"#;
        let b = ImageBuild::from_json(text.as_bytes()).unwrap();
        assert_eq!(b.formats, vec!["qcow2", "raw", "vhd"]);
        assert_eq!(String::from_utf8(b.to_json()).unwrap(), text);
        let minimal = ImageBuild::from_json(br#"{"state": "building"}"#).unwrap();
        assert_eq!(
            String::from_utf8(minimal.to_json()).unwrap(),
            format!(
                r#"{{"state": "building", "state_time": {}, "username": "zuul", "python_path": "/usr/bin/python2", "shell_type": null}}"#,
                crate::json::python_float_repr(minimal.state_time)
            )
        );
    }

    #[test]
    fn upload_round_trip() {
        let text = r#"{"state": "ready", "state_time": 1726503600.25, "external_id": "3a5e7c1d-4b2f-4e6a-9c8d-7b6a5f4e3d2c", "external_name": "ubuntu-jammy-1726500000", "format": "vhd", "username": "zuul", "python_path": "auto", "shell_type": null}"#;
        let u = ImageUpload::from_json(text.as_bytes()).unwrap();
        assert_eq!(u.state, UploadState::Ready);
        assert_eq!(String::from_utf8(u.to_json()).unwrap(), text);
        assert!(ImageUpload::from_json(br#"{"state": "nope"}"#).is_err());
    }
}
