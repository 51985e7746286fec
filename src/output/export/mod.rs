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
//! - [`ct`]: the compressed-tensors export's `config.json`, `ignore` list and shard layout
//!   (llm-compressor's `model_free_ptq`; its `oneshot` for the static schemes);
//! - [`pyjson`]: Python-`json`-compatible serialisation that all of the above use;
//!
//! One thing in these files comes from the exporting environment rather than the checkpoint:
//! `save_pretrained` stamps `transformers_version` with the transformers version that ran the
//! export (the `*_gpu` goldens say `5.17.0` where their input says `5.23.0`). [`SaveEnv`] lets a
//! caller reproduce a particular run; by default the input's value is kept.

pub mod ct;
pub mod generation;
pub mod modelopt;
pub mod pyjson;

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
/// it: serde_json with `preserve_order` (key order kept; a duplicate key's last value at its
/// first position, as in a `dict`) and `float_roundtrip` (correctly rounded floats, as Python's
/// `float()`). Errors are bad input naming `path`.
pub(crate) fn parse_json_object(text: &str, path: &Path) -> Result<Map<String, Value>> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
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

#[cfg(test)]
mod parse_tests {
    //! What reading a `config.json` must keep so that writing it back (as Python's `json.dump`
    //! does, [`pyjson::to_python_json`]) gives the same text: checked on serde_json as
    //! configured in Cargo.toml (`preserve_order`, `float_roundtrip`).
    use super::*;

    fn roundtrip(text: &str) -> String {
        let value: Value = serde_json::from_str(text).unwrap();
        pyjson::to_python_json(&value, None, false)
    }

    #[test]
    fn floats_are_correctly_rounded() {
        // Without float_roundtrip serde_json reads each as a neighbouring double.
        for s in [
            "945.4736971466593",
            "7.3843761164766875",
            "-244.10190540625126",
            "0.08838834764831845",
        ] {
            assert_eq!(roundtrip(s), s);
        }
    }

    #[test]
    fn numbers_and_strings_as_python_reads_them() {
        assert_eq!(
            roundtrip("[0, 1.0, -0.0, 1e5, 1E-7, 2.50, 12345678901234567890]"),
            "[0, 1.0, -0.0, 100000.0, 1e-07, 2.5, 12345678901234567890]"
        );
        assert_eq!(roundtrip("-9223372036854775808"), "-9223372036854775808");
        let v: Value = serde_json::from_str(r#""a\u00e9\uD83D\uDE00""#).unwrap();
        assert_eq!(v, Value::String("a\u{e9}\u{1F600}".into()));
        for bad in [
            "NaN",
            "Infinity",
            "1e400",
            "01",
            "\"\\ud800\"",
            "{'a': 1}",
            "[1,]",
        ] {
            assert!(serde_json::from_str::<Value>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn key_order_and_duplicates_as_a_python_dict() {
        assert_eq!(
            roundtrip(" {\"b\": 1, \"a\": [true, false, null, {}], \"b\": 2}\n"),
            r#"{"b": 2, "a": [true, false, null, {}]}"#
        );
    }

    #[test]
    fn errors_name_the_file_and_position() {
        let e = parse_json_object("{\n  \"a\": 1,\n  \"b\" 2\n}", Path::new("config.json"))
            .unwrap_err();
        assert!(e.message().contains("config.json: invalid JSON"), "{e}");
        assert!(e.message().contains("line 3 column 7"), "{e}");
        let e = parse_json_object("[1]", Path::new("config.json")).unwrap_err();
        assert!(e.message().contains("found an array"), "{e}");
    }
}
