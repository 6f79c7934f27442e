//! Named feature sets: lists of (name, expression) shipped as JSON (`featuresets/*.json`) or read from a
//! user's file of the same shape:
//!
//! ```json
//! { "name": "mine", "description": "...",
//!   "features": [ { "name": "MA5", "expr": "Mean($close,5)", "doc": "...", "optional": false } ] }
//! ```
//!
//! `optional` features are dropped from a query when no instrument of it has their fields (a turnover column
//! that some stores lack), instead of failing the query.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::expr;

/// One named expression.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Feature {
    pub name: String,
    pub expr: String,
    #[serde(default)]
    pub doc: String,
    #[serde(default)]
    pub optional: bool,
}

/// A named list of features.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureSet {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub features: Vec<Feature>,
}

const BUILTIN: [(&str, &str); 3] = [
    ("alpha158", include_str!("../../featuresets/alpha158.json")),
    ("alpha360", include_str!("../../featuresets/alpha360.json")),
    (
        "technical",
        include_str!("../../featuresets/technical.json"),
    ),
];

impl FeatureSet {
    /// The names of the sets shipped with qstore.
    pub fn builtin_names() -> impl Iterator<Item = &'static str> {
        BUILTIN.iter().map(|(n, _)| *n)
    }

    /// A shipped set by name, or a JSON file when `name_or_path` is not one.
    pub fn resolve(name_or_path: &str) -> Result<FeatureSet> {
        match BUILTIN.iter().find(|(n, _)| *n == name_or_path) {
            Some((n, text)) => FeatureSet::parse(text, &format!("built-in feature set {n}")),
            None => {
                let path = Path::new(name_or_path);
                if !path.is_file() {
                    return Err(Error::Config {
                        source_name: name_or_path.to_string(),
                        reason: format!(
                            "no such feature set: the built-in sets are {}, or give the path of a JSON file",
                            FeatureSet::builtin_names().collect::<Vec<_>>().join(", ")
                        ),
                    });
                }
                let text =
                    std::fs::read_to_string(path).map_err(|e| Error::io("reading", path, e))?;
                FeatureSet::parse(&text, &path.display().to_string())
            }
        }
    }

    /// Parses and validates a set: JSON shape, unique names, every expression parses.
    pub fn parse(text: &str, source: &str) -> Result<FeatureSet> {
        let bad = |reason: String| Error::Config {
            source_name: source.to_string(),
            reason,
        };
        let set: FeatureSet = serde_json::from_str(text)
            .map_err(|e| bad(format!("line {} column {}: {e}", e.line(), e.column())))?;
        let mut seen = std::collections::HashSet::new();
        for f in &set.features {
            if !seen.insert(f.name.as_str()) {
                return Err(bad(format!("feature name {} appears twice", f.name)));
            }
            expr::parse(&f.expr).map_err(|e| bad(format!("feature {}: {e}", f.name)))?;
        }
        Ok(set)
    }
}
