//! Importers for statistics made by other tools, on top of the format readers:
//! PyTorch `.pt` files (ModelOpt amax dumps, DeepSeek's `amax_dict_rank{r}-mp{N}.pt`, SmoothQuant
//! `act_scales`) and llama.cpp importance matrices (`.dat`, GGUF).

use super::imatrix::{llama_cpp_to_hf, read_imatrix_with_experts, ImatrixFormat};
use super::torchfile::{deepseek_to_hf, read_pt_tensors};
use super::{modelopt, ActivationStats, ModelNames, ModuleStats};
use crate::error::{Error, Result};
use crate::input::layout::Layout;
use std::path::Path;

/// Reads a `torch.save` file. Keys ending in `_amax` are ModelOpt quantizer buffers (DeepSeek's
/// native names such as `layers.3.ffn.experts.17.w1.input_quantizer._amax` are mapped to HF
/// names first); a dict of 1-D tensors keyed by module names is SmoothQuant's `act_scales`
/// (per-channel max |x|, whose max is the exact per-tensor input amax).
pub fn import_pt(
    path: &Path,
    layout: &Layout,
    model: &ModelNames,
    weights: bool,
    stats: &mut ActivationStats,
) -> Result<()> {
    let (tensors, skipped) = read_pt_tensors(path)?;
    for key in skipped {
        stats
            .ignored
            .push(format!("{key}: not a tensor ({})", path.display()));
    }
    let (amax, other): (Vec<_>, Vec<_>) =
        tensors.into_iter().partition(|t| t.key.ends_with("_amax"));
    let scalars: Vec<(String, Vec<f32>)> = amax
        .into_iter()
        .map(|t| {
            let key = if t.key.starts_with("layers.") {
                deepseek_to_hf(&t.key)
            } else {
                t.key
            };
            (key, t.values)
        })
        .collect();
    modelopt::import_scalars(path, &scalars, layout, model, weights, stats)?;
    for t in other {
        let module = t.key.trim_end_matches(".act_scales").to_string();
        let Some(&(_, cols)) = model.linears.get(&module) else {
            stats.unmatched.push(t.key.clone());
            continue;
        };
        if t.shape != [cols] {
            return Err(Error::bad_input(format!(
                "{}: '{}' has shape {:?}, but {module} has {cols} input channels",
                path.display(),
                t.key,
                t.shape
            ))
            .with_hint("the statistics were made for another model"));
        }
        if let Some(&v) = t.values.iter().find(|&&v| super::is_corrupt(v)) {
            return Err(super::corrupt_value(
                path,
                &t.key,
                format!("a per-channel max holding {v}"),
            ));
        }
        let max = t.values.iter().copied().fold(0.0f32, f32::max);
        if max > 0.0 {
            stats.merge_input(&module, max);
        } else {
            stats.invalid.push(format!("{} = 0", t.key));
        }
        let channels = ModuleStats {
            input_amax_ch: Some(t.values),
            ..Default::default()
        };
        stats
            .merge_channels(&module, &channels)
            .map_err(|m| Error::bad_input(format!("{}: {m}", path.display())))?;
    }
    Ok(())
}

/// Reads a llama.cpp importance matrix (legacy `.dat` or GGUF): per-channel sums of squares and
/// per-expert token counts (no amax), mapped from llama.cpp names to the model's modules.
pub fn import_imatrix(
    path: &Path,
    layout: &Layout,
    model: &ModelNames,
    stats: &mut ActivationStats,
) -> Result<()> {
    let n_experts = model.experts.values().map(|e| e.len()).max();
    let (entries, meta) = read_imatrix_with_experts(path, n_experts)?;
    let model_type = layout
        .model_types
        .first()
        .map_or(layout.name.as_str(), String::as_str);
    for note in &meta.notes {
        stats.ignored.push(format!("{}: {note}", path.display()));
    }
    for entry in entries {
        let Some(targets) = llama_cpp_to_hf(&entry.name, model_type, entry.experts) else {
            stats.unmatched.push(entry.name.clone());
            continue;
        };
        for (module, expert) in targets {
            if !model.linears.contains_key(&module) {
                stats.unmatched.push(format!("{} ({module})", entry.name));
                continue;
            }
            let e = expert.unwrap_or(0);
            let count = entry.counts.get(e).copied().unwrap_or(0);
            let mut channels = ModuleStats::default();
            if meta.counts_are_tokens || meta.format == ImatrixFormat::Gguf {
                channels.token_count = Some(count);
                if count > 0 {
                    channels.input_sum_sq = Some(
                        entry
                            .expert_sum_sq(e)
                            .iter()
                            .map(|&v| f64::from(v))
                            .collect(),
                    );
                }
            } else {
                // Legacy .dat: E[x²] is exact, the count is a pseudo-count; only "no tokens" is known.
                channels.token_count = (count == 0).then_some(0);
                channels.input_mean_sq = entry.mean_sq(e);
            }
            stats
                .merge_channels(&module, &channels)
                .map_err(|m| Error::bad_input(format!("{}: {m}", path.display())))?;
        }
    }
    Ok(())
}
