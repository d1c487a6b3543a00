//! Response mapping: named variables pulled out of a JSON response with RFC 9535 JSONPath
//! (`$.data.items[0].status`, also written `data.items[0].status`), each converted to its
//! declared type.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};
use serde_json_path::JsonPath;

/// The type a mapped variable must have. Strings holding numbers or booleans are converted;
/// anything else of the wrong type is an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Any,
    String,
    Number,
    Integer,
    Boolean,
    Object,
    Array,
}

/// One variable to extract.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mapping {
    /// The variable's name: `[a-z0-9_]{1,64}`.
    pub name: String,
    /// JSONPath into the response body.
    pub path: String,
    pub kind: Kind,
    /// A missing required value is an error; a missing optional one takes `default`, or is
    /// left out.
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub default: Option<Json>,
}

/// Why a mapping could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    #[error("mapping `{name}`: `{path}` is not a JSONPath: {reason}")]
    InvalidPath {
        name: String,
        path: String,
        reason: String,
    },
    #[error("mapping `{name}`: the name must be 1 to 64 characters of a-z, 0-9 and `_`")]
    InvalidName { name: String },
    #[error("mapping `{name}`: nothing at `{path}` in the response")]
    Missing { name: String, path: String },
    #[error("mapping `{name}`: expected {expected} at `{path}`, found {found}")]
    WrongType {
        name: String,
        path: String,
        expected: &'static str,
        found: String,
    },
}

impl Mapping {
    /// The path as RFC 9535 JSONPath: a leading `$.` is added to the short form.
    pub fn json_path(&self) -> Result<JsonPath, MappingError> {
        let path = self.path.trim();
        let full = if path.starts_with('$') {
            path.to_owned()
        } else if path.starts_with('[') {
            format!("${path}")
        } else {
            format!("$.{path}")
        };
        JsonPath::parse(&full).map_err(|e| MappingError::InvalidPath {
            name: self.name.clone(),
            path: self.path.clone(),
            reason: e.to_string(),
        })
    }

    /// Checks the name and the path, for validating a definition before it runs.
    pub fn validate(&self) -> Result<(), MappingError> {
        let name_ok = (1..=64).contains(&self.name.len())
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !name_ok {
            return Err(MappingError::InvalidName {
                name: self.name.clone(),
            });
        }
        self.json_path().map(|_| ())
    }
}

/// Applies every mapping to `body`, returning the variables by name.
pub fn map_response(body: &Json, mappings: &[Mapping]) -> Result<Map<String, Json>, MappingError> {
    let mut out = Map::new();
    for mapping in mappings {
        mapping.validate()?;
        let nodes = mapping.json_path()?.query(body).all();
        let found = match (nodes.len(), mapping.kind) {
            (0, _) => None,
            (1, _) => Some(nodes[0].clone()),
            // Several matches (a wildcard, a filter) make a list.
            (_, Kind::Array | Kind::Any) => Some(Json::Array(nodes.into_iter().cloned().collect())),
            (n, _) => {
                return Err(MappingError::WrongType {
                    name: mapping.name.clone(),
                    path: mapping.path.clone(),
                    expected: expected(mapping.kind),
                    found: format!("{n} values"),
                });
            }
        };
        let value = match found.filter(|v| !v.is_null() || mapping.kind == Kind::Any) {
            Some(value) => convert(mapping, value)?,
            None => match (&mapping.default, mapping.required) {
                (Some(default), _) => default.clone(),
                (None, true) => {
                    return Err(MappingError::Missing {
                        name: mapping.name.clone(),
                        path: mapping.path.clone(),
                    });
                }
                (None, false) => continue,
            },
        };
        out.insert(mapping.name.clone(), value);
    }
    Ok(out)
}

fn convert(mapping: &Mapping, value: Json) -> Result<Json, MappingError> {
    let wrong = |value: &Json| MappingError::WrongType {
        name: mapping.name.clone(),
        path: mapping.path.clone(),
        expected: expected(mapping.kind),
        found: describe(value),
    };
    Ok(match (mapping.kind, value) {
        (Kind::Any, v) => v,
        (Kind::String, Json::String(s)) => Json::String(s),
        (Kind::String, v @ (Json::Number(_) | Json::Bool(_))) => Json::String(v.to_string()),
        (Kind::Number, v @ Json::Number(_)) => v,
        (Kind::Number, Json::String(s)) => s
            .trim()
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Json::Number)
            .ok_or_else(|| wrong(&Json::String(s)))?,
        (Kind::Integer, Json::Number(n)) => match n.as_i64() {
            Some(i) => Json::from(i),
            None => match n.as_f64() {
                Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Json::from(f as i64),
                _ => return Err(wrong(&Json::Number(n))),
            },
        },
        (Kind::Integer, Json::String(s)) => s
            .trim()
            .parse::<i64>()
            .map(Json::from)
            .map_err(|_| wrong(&Json::String(s)))?,
        (Kind::Boolean, v @ Json::Bool(_)) => v,
        (Kind::Boolean, Json::String(s)) => match s.trim() {
            "true" => Json::Bool(true),
            "false" => Json::Bool(false),
            _ => return Err(wrong(&Json::String(s))),
        },
        (Kind::Object, v @ Json::Object(_)) => v,
        (Kind::Array, v @ Json::Array(_)) => v,
        (_, v) => return Err(wrong(&v)),
    })
}

fn expected(kind: Kind) -> &'static str {
    match kind {
        Kind::Any => "a value",
        Kind::String => "a string",
        Kind::Number => "a number",
        Kind::Integer => "an integer",
        Kind::Boolean => "a boolean",
        Kind::Object => "an object",
        Kind::Array => "an array",
    }
}

fn describe(value: &Json) -> String {
    match value {
        Json::Null => "null".into(),
        Json::Bool(b) => format!("boolean {b}"),
        Json::Number(n) => format!("number {n}"),
        Json::String(s) => format!("string {:?}", s.chars().take(40).collect::<String>()),
        Json::Array(a) => format!("an array of {}", a.len()),
        Json::Object(_) => "an object".into(),
    }
}
