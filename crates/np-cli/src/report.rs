//! The listings (`status.py` in upstream): which columns each table has, how
//! each value is shown in the text table, and what `--format json` emits.
//!
//! A [`Listing`] holds every column of every row twice: the text the table
//! cell shows, and the JSON value. The JSON follows the launcher web API's
//! `Accept: application/json` output (upstream's only JSON form), so scripts
//! written against `/node-list` and friends read ours unchanged: all keys
//! always (the text table may show a subset), `label` a list, node `age` the
//! `DD:HH:MM:SS` string, other `age` values raw epoch seconds.

use np_core::json::to_python_json;
use np_core::{ImageUpload, Node, NodeRequest};
use serde_json::{Map, Value};

use crate::pyfmt::{age, py_str, python_int_ok};
use crate::table::Table;
use crate::zkread::{ImageEntry, NodeRow};

/// One cell: what the table shows and what JSON carries.
#[derive(Debug, Clone)]
pub struct Cell {
    /// Table text.
    pub text: String,
    /// JSON value.
    pub json: Value,
}

impl Cell {
    /// A cell for a JSON-like value: `None` empty, lists joined with `,`,
    /// anything else as Python's `str()`.
    pub fn value(v: Option<&Value>) -> Cell {
        let json = v.cloned().unwrap_or(Value::Null);
        Cell { text: cell_text(&json), json }
    }

    /// A cell for an optional string.
    pub fn opt_str(s: Option<&str>) -> Cell {
        match s {
            Some(s) => Cell::str(s),
            None => Cell { text: String::new(), json: Value::Null },
        }
    }

    /// A string cell.
    pub fn str(s: &str) -> Cell {
        Cell { text: s.to_owned(), json: Value::String(s.to_owned()) }
    }

    /// A list-of-strings cell (joined with `,`).
    pub fn list(items: &[String]) -> Cell {
        Cell { text: items.join(","), json: Value::from(items.to_vec()) }
    }
}

fn cell_text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::Array(items) => items.iter().map(py_str).collect::<Vec<_>>().join(","),
        other => py_str(other),
    }
}

/// A table of results with named columns.
#[derive(Debug, Clone)]
pub struct Listing {
    /// `(json key, table header)` per column.
    pub columns: Vec<(&'static str, &'static str)>,
    /// The rows, one cell per column.
    pub rows: Vec<Vec<Cell>>,
}

impl Listing {
    fn new(columns: &[(&'static str, &'static str)]) -> Self {
        Listing { columns: columns.to_vec(), rows: Vec::new() }
    }

    /// The text table with the first `shown` columns (all when `None`).
    pub fn table(&self, shown: Option<usize>) -> Table {
        let n = shown.unwrap_or(self.columns.len()).min(self.columns.len());
        let mut t = Table::new(self.columns[..n].iter().map(|(_, h)| *h));
        for row in &self.rows {
            t.add_row(row[..n].iter().map(|c| c.text.clone()).collect());
        }
        t
    }

    /// The JSON document: a list of objects with every column.
    pub fn json_value(&self) -> Value {
        Value::Array(
            self.rows
                .iter()
                .map(|row| {
                    let mut m = Map::new();
                    for ((key, _), cell) in self.columns.iter().zip(row) {
                        m.insert((*key).to_owned(), cell.json.clone());
                    }
                    Value::Object(m)
                })
                .collect(),
        )
    }

    /// The JSON document as `json.dumps` writes it.
    pub fn json(&self) -> String {
        json_text(&self.json_value())
    }
}

/// `json.dumps(value)`.
pub fn json_text(value: &Value) -> String {
    String::from_utf8_lossy(&to_python_json(value)).into_owned()
}

/// Columns of `list`; the first [`NODE_BRIEF_COLUMNS`] are shown without `--detail`.
pub const NODE_COLUMNS: &[(&str, &str)] = &[
    ("id", "ID"),
    ("provider", "Provider"),
    ("label", "Label"),
    ("server_id", "Server ID"),
    ("public_ipv4", "Public IPv4"),
    ("ipv6", "IPv6"),
    ("state", "State"),
    ("age", "Age"),
    ("locked", "Locked"),
    ("pool", "Pool"),
    ("hostname", "Hostname"),
    ("private_ipv4", "Private IPv4"),
    ("AZ", "AZ"),
    ("username", "Username"),
    ("connection_port", "Port"),
    ("launcher", "Launcher"),
    ("allocated_to", "Allocated To"),
    ("hold_job", "Hold Job"),
    ("comment", "Comment"),
    ("user_data", "User Data"),
    ("driver_data", "Driver Data"),
];

/// Columns shown by `list` without `--detail`.
pub const NODE_BRIEF_COLUMNS: usize = 9;

fn node_cells(node: &Node, locked: bool, now: f64) -> Vec<Cell> {
    let port = if python_int_ok(&node.connection_port) {
        Cell::value(Some(&node.connection_port))
    } else {
        Cell::str("redacted")
    };
    let node_age = age(node.state_time, now);
    let non_null = |v: &Option<Value>| v.as_ref().filter(|v| !v.is_null()).cloned();
    vec![
        Cell::str(&node.id),
        Cell::opt_str(node.provider.as_deref()),
        Cell::list(&node.node_type),
        Cell::value(non_null(&node.external_id).as_ref()),
        Cell::opt_str(node.public_ipv4.as_deref()),
        Cell::opt_str(node.public_ipv6.as_deref()),
        Cell::str(node.state.as_str()),
        Cell::str(&node_age),
        Cell::str(if locked { "locked" } else { "unlocked" }),
        Cell::opt_str(node.pool.as_deref()),
        Cell::opt_str(node.hostname.as_deref()),
        Cell::opt_str(node.private_ipv4.as_deref()),
        Cell::opt_str(node.az.as_deref()),
        Cell::opt_str(node.username.as_deref()),
        port,
        Cell::opt_str(node.launcher.as_deref()),
        Cell::opt_str(node.allocated_to.as_deref()),
        Cell::opt_str(node.hold_job.as_deref()),
        Cell::opt_str(node.comment.as_deref()),
        Cell::value(non_null(&node.user_data).as_ref()),
        Cell::value(non_null(&node.driver_data).as_ref()),
    ]
}

/// `list`: one row per node.
pub fn node_list(rows: &[NodeRow], now: f64) -> Listing {
    let mut l = Listing::new(NODE_COLUMNS);
    l.rows = rows.iter().map(|r| node_cells(&r.node, r.locked, now)).collect();
    l
}

/// An `age` column of the non-node listings: the table shows the age of the
/// truncated epoch, JSON the truncated epoch itself.
fn epoch_age_cell(epoch: f64, now: f64) -> Cell {
    let secs = epoch.trunc();
    Cell { text: age(secs, now), json: Value::from(secs as i64) }
}

/// `request-list`: one row per request, sorted by id.
pub fn request_list(requests: &[NodeRequest]) -> Listing {
    let mut l = Listing::new(&[
        ("id", "Request ID"),
        ("relative_priority", "Priority"),
        ("state", "State"),
        ("requestor", "Requestor"),
        ("node_types", "Node Types"),
        ("nodes", "Nodes"),
        ("declined_by", "Declined By"),
        ("event_id", "Event ID"),
    ]);
    for r in requests {
        l.rows.push(vec![
            Cell::str(&r.id),
            Cell::value(Some(&Value::from(r.relative_priority))),
            Cell::str(r.state.as_str()),
            Cell::opt_str(r.requestor.as_deref()),
            Cell::list(&r.node_types),
            Cell::list(&r.nodes),
            Cell::list(&r.declined_by),
            Cell::opt_str(r.event_id.as_deref()),
        ]);
    }
    l
}

/// `dib-image-list`: one row per build record.
pub fn dib_image_list(images: &[ImageEntry], now: f64) -> Listing {
    let mut l = Listing::new(&[
        ("id", "ID"),
        ("image", "Image"),
        ("builder", "Builder"),
        ("formats", "Formats"),
        ("state", "State"),
        ("age", "Age"),
    ]);
    for image in images {
        for b in &image.builds {
            let Some(build) = &b.record else { continue };
            let state = if image.paused { "paused" } else { build.state.as_str() };
            l.rows.push(vec![
                Cell::str(&format!("{}-{}", image.name, b.id)),
                Cell::str(&image.name),
                Cell::opt_str(build.builder.as_deref()),
                Cell::list(&build.formats),
                Cell::str(state),
                epoch_age_cell(build.state_time, now),
            ]);
        }
    }
    l
}

/// `image-status`: one row per image name.
pub fn image_status(images: &[ImageEntry], now: f64) -> Listing {
    let mut l = Listing::new(&[
        ("image", "Image"),
        ("paused", "Paused"),
        ("build_request", "Build Request"),
        ("build_request_age", "Build Request Age"),
    ]);
    for image in images {
        let (req, req_age) = match image.request {
            Some(r) => {
                (Cell::str(if r.pending { "pending" } else { "building" }), epoch_age_cell(r.created, now))
            }
            None => (Cell::opt_str(None), Cell::opt_str(None)),
        };
        l.rows.push(vec![
            Cell::str(&image.name),
            Cell {
                text: if image.paused { "True" } else { "False" }.to_owned(),
                json: Value::Bool(image.paused),
            },
            req,
            req_age,
        ]);
    }
    l
}

fn upload_cells(image: &str, build: &str, provider: &str, id: &str, u: &ImageUpload, now: f64) -> Vec<Cell> {
    vec![
        Cell::str(build),
        Cell::str(id),
        Cell::str(provider),
        Cell::str(image),
        Cell::opt_str(u.external_name.as_deref()),
        Cell::opt_str(u.external_id.as_deref()),
        Cell::str(u.state.as_str()),
        epoch_age_cell(u.state_time, now),
    ]
}

/// `image-list`: one row per upload record.
pub fn image_list(images: &[ImageEntry], now: f64) -> Listing {
    let mut l = Listing::new(&[
        ("id", "Build ID"),
        ("upload_id", "Upload ID"),
        ("provider", "Provider"),
        ("image", "Image"),
        ("external_name", "Provider Image Name"),
        ("external_id", "Provider Image ID"),
        ("state", "State"),
        ("age", "Age"),
    ]);
    for image in images {
        for b in &image.builds {
            for p in &b.providers {
                for u in &p.uploads {
                    if let Some(record) = &u.record {
                        l.rows.push(upload_cells(&image.name, &b.id, &p.name, &u.id, record, now));
                    }
                }
            }
        }
    }
    l
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn node_table_matches_the_upstream_sample() {
        // evidence/table_samples.txt, "nodepool list" and "node-list json".
        let mut node = Node::from_json(
            "0000000001",
            json!({
                "state": "ready", "state_time": 1000.0, "provider": "fake-provider", "pool": "main",
                "type": ["fake-label"], "external_id": "abc-123", "public_ipv4": "1.2.3.4",
                "hostname": "np0000000001", "private_ipv4": "10.0.0.1", "az": "az1",
                "username": "zuul", "connection_port": 22, "launcher": "host-fake-provider-main-xyz"
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        node.state_time = 1000.0;
        let now = 1000.0 + 3600.0 + 125.0;
        let l = node_list(&[NodeRow { node, locked: false }], now);
        assert_eq!(
            l.table(Some(NODE_BRIEF_COLUMNS)).render(),
            "+------------+---------------+------------+-----------+-------------+------+-------+-------------+----------+\n\
             | ID         | Provider      | Label      | Server ID | Public IPv4 | IPv6 | State | Age         | Locked   |\n\
             +------------+---------------+------------+-----------+-------------+------+-------+-------------+----------+\n\
             | 0000000001 | fake-provider | fake-label | abc-123   | 1.2.3.4     |      | ready | 00:01:02:05 | unlocked |\n\
             +------------+---------------+------------+-----------+-------------+------+-------+-------------+----------+"
        );
        assert_eq!(
            l.json(),
            "[{\"id\": \"0000000001\", \"provider\": \"fake-provider\", \"label\": [\"fake-label\"], \
             \"server_id\": \"abc-123\", \"public_ipv4\": \"1.2.3.4\", \"ipv6\": null, \"state\": \"ready\", \
             \"age\": \"00:01:02:05\", \"locked\": \"unlocked\", \"pool\": \"main\", \"hostname\": \"np0000000001\", \
             \"private_ipv4\": \"10.0.0.1\", \"AZ\": \"az1\", \"username\": \"zuul\", \"connection_port\": 22, \
             \"launcher\": \"host-fake-provider-main-xyz\", \"allocated_to\": null, \"hold_job\": null, \
             \"comment\": null, \"user_data\": null, \"driver_data\": null}]"
        );
    }

    #[test]
    fn python_renderings_of_odd_values() {
        let node = Node::from_json(
            "0000000002",
            json!({"state": "hold", "state_time": 0.0, "type": ["a", "b"],
                   "external_id": {"instance": "i-1"}, "connection_port": {"token": "secret"},
                   "user_data": {"k": true}})
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        let l = node_list(&[NodeRow { node, locked: true }], 0.0);
        let texts: Vec<&str> = l.rows[0].iter().map(|c| c.text.as_str()).collect();
        assert_eq!(texts[2], "a,b");
        assert_eq!(texts[3], "{'instance': 'i-1'}");
        assert_eq!(texts[8], "locked");
        assert_eq!(texts[14], "redacted");
        assert_eq!(texts[19], "{'k': True}");
    }
}
