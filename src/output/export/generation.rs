//! `generation_config.json` as a ModelOpt export writes it.
//!
//! Before `save_pretrained`, ModelOpt's `_sanitize_generation_config_for_save` sets
//! `do_sample = True` when `top_k` or `top_p` is set (newer transformers refuse to save
//! `do_sample=False` together with sampling parameters). transformers then writes the file as
//! `json.dumps(config_dict, indent=2, sort_keys=True) + "\n"`. For an input written by
//! transformers and needing no change, that is the input byte for byte (the llama and mixtral
//! goldens); the qwen3moe golden is the case where `do_sample` flips.

use super::pyjson::to_python_json;
use super::{parse_json_object, SaveEnv};
use crate::error::Result;
use serde_json::Value;
use std::path::Path;

/// Result of sanitizing generation_config.json.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SanitizedGeneration {
    /// The output file contents (indent 2, keys sorted, trailing newline).
    pub text: String,
    /// A human log line saying what changed and why; `None` if the values are unchanged
    /// (the text may still differ from the input if the input was not in transformers' format).
    pub changed: Option<String>,
}

/// ModelOpt's `_sanitize_generation_config_for_save`: if `top_k` or `top_p` is set (non-null)
/// and `do_sample` is not `true`, set `do_sample` to `true`. The text is written as transformers'
/// `GenerationConfig.save_pretrained` writes it: `indent=2`, keys sorted, trailing newline. Keeps
/// the input's `transformers_version`; see [`sanitize_generation_config_with`].
///
/// Errors: bad input naming `path` if `text` is not valid JSON or not an object.
pub fn sanitize_generation_config(text: &str, path: &Path) -> Result<SanitizedGeneration> {
    sanitize_generation_config_with(text, path, &SaveEnv::default())
}

/// [`sanitize_generation_config`], with the exporting environment's `transformers_version` (if
/// given in `env`) written the way `save_pretrained` does.
pub fn sanitize_generation_config_with(
    text: &str,
    path: &Path,
    env: &SaveEnv,
) -> Result<SanitizedGeneration> {
    let mut config = parse_json_object(text, path)?;
    let mut changes = Vec::new();

    let sampling: Vec<&str> = ["top_k", "top_p"]
        .into_iter()
        .filter(|k| config.get(*k).is_some_and(|v| !v.is_null()))
        .collect();
    if !sampling.is_empty() && config.get("do_sample") != Some(&Value::Bool(true)) {
        let before = match config.get("do_sample") {
            Some(v) => format!("was {v}"),
            None => "was unset".to_string(),
        };
        config.insert("do_sample".into(), Value::Bool(true));
        changes.push(format!(
            "set do_sample=true ({before}) because {} is set, as ModelOpt does before saving \
             (transformers refuses do_sample=false together with sampling parameters)",
            sampling.join(" and ")
        ));
    }
    if let Some(version) = &env.transformers_version {
        let new = Value::String(version.clone());
        if config.get("transformers_version") != Some(&new) {
            changes.push(format!("set transformers_version to {version}"));
            config.insert("transformers_version".into(), new);
        }
    }

    let mut out = to_python_json(&Value::Object(config), Some(2), true);
    out.push('\n');
    let changed = if changes.is_empty() {
        None
    } else {
        Some(format!("{}: {}", path.display(), changes.join("; ")))
    };
    Ok(SanitizedGeneration { text: out, changed })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use std::path::PathBuf;

    fn golden(case: &str, file: &str) -> (PathBuf, String) {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/golden")
            .join(case)
            .join(file);
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        (path, text)
    }

    #[test]
    fn golden_generation_config_is_byte_identical() {
        let cases = [
            ("llama_nvfp4", None, false),
            ("llama_fp8", None, false),
            ("mixtral_nvfp4", None, false),
            ("qwen3moe_nvfp4", None, true),
            ("llama_nvfp4_gpu", Some("5.17.0"), false),
            ("llama_fp8_gpu", Some("5.17.0"), false),
        ];
        for (case, version, flips) in cases {
            let (path, input) = golden(case, "input/generation_config.json");
            let (_, want) = golden(case, "modelopt/generation_config.json");
            let env = SaveEnv {
                transformers_version: version.map(str::to_string),
            };
            let got = sanitize_generation_config_with(&input, &path, &env).unwrap();
            assert_eq!(got.text, want, "{case}");
            assert_eq!(got.changed.is_some(), flips || version.is_some(), "{case}");
            let plain = sanitize_generation_config(&input, &path).unwrap();
            assert_eq!(plain.changed.is_some(), flips, "{case}");
            if let Some(line) = &plain.changed {
                assert!(line.contains("do_sample=true"), "{line}");
                assert!(line.contains("generation_config.json"), "{line}");
            } else {
                assert_eq!(plain.text, input, "{case}: unchanged input must round-trip");
            }
        }
    }

    #[test]
    fn do_sample_rules() {
        let p = Path::new("g.json");
        let run = |t: &str| sanitize_generation_config(t, p).unwrap();
        // top_p alone, do_sample absent: added in sorted position.
        let got = run(r#"{"top_p": 0.9, "bos_token_id": 1}"#);
        assert_eq!(
            got.text,
            "{\n  \"bos_token_id\": 1,\n  \"do_sample\": true,\n  \"top_p\": 0.9\n}\n"
        );
        assert!(got.changed.is_some());
        // Already true: unchanged.
        assert!(run(r#"{"top_k": 5, "do_sample": true}"#).changed.is_none());
        // Null sampling parameters do not count.
        let got = run(r#"{"top_k": null, "top_p": null, "do_sample": false}"#);
        assert!(got.changed.is_none());
        assert!(got.text.contains("\"do_sample\": false"));
        // No sampling parameters: do_sample untouched.
        assert!(run(r#"{"do_sample": false}"#).changed.is_none());
    }

    #[test]
    fn bad_input_names_the_path() {
        let p = Path::new("/ckpt/generation_config.json");
        for text in ["{", "1", "\"x\"", "{\"a\": }"] {
            let err = sanitize_generation_config(text, p).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::BadInput);
            assert!(
                err.message().contains("/ckpt/generation_config.json"),
                "{}",
                err.message()
            );
        }
    }
}
