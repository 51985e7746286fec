//! The JSON metadata files a ModelOpt 0.47 unified-HF export writes, reproduced byte for byte.
//!
//! ModelOpt's `export_hf_checkpoint` ends with `model.save_pretrained(...)` (transformers writes
//! `config.json` and `generation_config.json` as `json.dumps(d, indent=2, sort_keys=True) + "\n"`)
//! and `_write_hf_export_config`, which writes `hf_quant_config.json` (`json.dump(indent=4)`, no
//! trailing newline) and re-writes `config.json` with `quantization_config` added
//! (`json.dump(indent=4)`, no trailing newline). This module produces those three files:
//!
//! - [`modelopt`]: `hf_quant_config.json`, the `quantization_config` object, and `config.json`;
//! - [`exclude`]: the prefix-wildcard summary that becomes `exclude_modules` / `ignore`;
//! - [`generation`]: `generation_config.json` (`_sanitize_generation_config_for_save`);
//! - [`pyjson`]: Python-`json`-compatible serialisation that all of the above use;
//! - [`pyparse`]: Python-`json`-compatible parsing (correctly rounded floats), ditto.
//!
//! One thing in these files comes from the exporting environment rather than the checkpoint:
//! `save_pretrained` stamps `transformers_version` with the transformers version that ran the
//! export (the `*_gpu` goldens say `5.17.0` where their input says `5.23.0`). [`SaveEnv`] lets a
//! caller reproduce a particular run; by default the input's value is kept.

pub mod exclude;
pub mod generation;
pub mod modelopt;
pub mod pyjson;
pub mod pyparse;

pub use exclude::summarize_exclude_modules;
pub use generation::{
    sanitize_generation_config, sanitize_generation_config_with, SanitizedGeneration,
};
pub use modelopt::{
    export_config_json, export_config_json_with, hf_quant_config_json, quantization_config,
    ConfigExport, QuantMetadata, MODELOPT_VERSION,
};
pub use pyjson::to_python_json;

use crate::error::{Error, Result};
use serde_json::{Map, Value};
use std::path::Path;

/// What the environment of the reproduced ModelOpt run contributes to the output bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SaveEnv {
    /// The transformers version `save_pretrained` writes into `transformers_version` of
    /// `config.json` and `generation_config.json`. `None` keeps the input's value (what an export
    /// run with the same transformers version as the one that saved the input writes).
    pub transformers_version: Option<String>,
}

/// Parses `text` (the contents of `path`) as a JSON object, the way Python's `json.load` reads
/// it ([`pyparse::from_python_json`]), keeping key order. Errors are bad input naming `path`.
pub(crate) fn parse_json_object(text: &str, path: &Path) -> Result<Map<String, Value>> {
    let value = pyparse::from_python_json(text).map_err(|e| {
        Error::bad_input(format!("{}: invalid JSON: {}", path.display(), e))
            .with_hint("the checkpoint's JSON files must be valid JSON objects")
    })?;
    match value {
        Value::Object(map) => Ok(map),
        other => Err(Error::bad_input(format!(
            "{}: expected a JSON object at the top level, found {}",
            path.display(),
            json_kind(&other)
        ))),
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
