//! The checkpoint's `config.json`: read safely, and refused when it says the weights are already
//! quantized.

use crate::error::{Error, Result};
use crate::input::checkpoint::Lane;
use std::path::Path;

/// The largest `config.json` or `generation_config.json` read (real ones are a few KB).
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// Reads and parses `config.json` of a checkpoint directory. It must be a regular file inside
/// the directory (a link out of it is refused, see [`Lane`]).
pub fn read_config(dir: &Path) -> Result<(String, serde_json::Value)> {
    let path = dir.join("config.json");
    let needed = |e: Error| e.with_hint("a HuggingFace checkpoint directory needs its config.json");
    let lane = Lane::new(dir).map_err(|e| needed(Error::input_io("reading", dir, e)))?;
    let bytes = lane
        .read_small("config.json", MAX_CONFIG_BYTES)?
        .ok_or_else(|| {
            needed(Error::input_io(
                "reading",
                &path,
                std::io::Error::from_raw_os_error(libc::ENOENT),
            ))
        })?;
    let text = String::from_utf8(bytes).map_err(|_| {
        Error::bad_input(format!("{}: is not UTF-8 text", path.display()))
            .with_hint("restore config.json from the model's original repository")
    })?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        Error::bad_input(format!("{}: invalid JSON: {e}", path.display()))
            .with_hint("restore config.json from the model's original repository")
    })?;
    if !value.is_object() {
        return Err(Error::bad_input(format!(
            "{}: not a JSON object",
            path.display()
        )));
    }
    Ok((text, value))
}

/// An FP8 block-scaled source (DeepSeek-V3 style) is converted; any other quantized input is
/// refused: its weights are not the original ones.
pub fn refuse_quantized_input(input: &Path, config: &serde_json::Value) -> Result<()> {
    let fp8_block_source = config.get("quantization_config").is_some_and(|q| {
        q.get("quant_method").and_then(|m| m.as_str()) == Some("fp8")
            && q.get("weight_block_size").is_some()
    });
    if (config.get("quantization_config").is_some() && !fp8_block_source)
        || input.join("hf_quant_config.json").exists()
    {
        let method = config
            .pointer("/quantization_config/quant_method")
            .and_then(|m| m.as_str());
        let what = match method {
            Some("compressed-tensors") => {
                "compressed-tensors: config.json's quantization_config".to_string()
            }
            _ if input.join("hf_quant_config.json").exists() => {
                "ModelOpt: hf_quant_config.json".to_string()
            }
            Some(m) => format!("config.json has quantization_config, quant_method {m:?}"),
            None => "config.json has quantization_config".to_string(),
        };
        let verifiable = matches!(method, Some("compressed-tensors" | "modelopt"))
            || input.join("hf_quant_config.json").exists();
        return Err(Error::bad_input(format!(
            "{}: this checkpoint is already quantized ({what})",
            input.display()
        ))
        .with_hint(if verifiable {
            format!(
                "convert from the original BF16/FP16/FP32 checkpoint; `shardquant verify {}` \
                 checks this one",
                input.display()
            )
        } else {
            "convert from the original BF16/FP16/FP32 checkpoint".to_string()
        }));
    }
    Ok(())
}
