//! `verify --source` for compressed-tensors checkpoints: each linear dequantized with
//! compressed-tensors' formulas and compared with the source weight it came from.

use super::linear::CtLinear;
use super::{Group, Scheme};
use crate::commands::verify::scales::floats;
use crate::commands::verify::{Verification, MAX_RELATIVE_ERROR};
use crate::compute::{e2m1_to_f32, e4m3_to_f32, load_f32};
use crate::input::checkpoint::Checkpoint;
use crate::plan::{source_dtype, Linear};
use std::collections::BTreeMap;

/// The source weight of a (non-BMM) linear as f32 `[rows, cols]`, read as convert reads it.
fn source_matrix(src: &Checkpoint, l: &Linear) -> std::result::Result<Vec<f32>, String> {
    let s = &l.source;
    if s.bmm_experts.is_some() {
        return Err("a BMM expert stack (not compared for compressed-tensors)".into());
    }
    let (rows, cols) = (s.rows, s.cols);
    let (bytes, dtype) = crate::commands::verify::source_weight(src, s)?;
    let mut w = vec![0.0f32; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            let i = match s.fp8_scale {
                Some(_) => r * cols + c,
                None => s.stored_index(r, c),
            };
            w[r * cols + c] = load_f32(&bytes, dtype, i);
        }
    }
    Ok(w)
}

/// Dequantizes each linear with compressed-tensors' formulas (NVFP4: `e2m1(code) ·
/// (e4m3(s) / g)`; FP8: `e4m3(code) · scale` of its tensor, row or block) and measures
/// `||W − W_q|| / ||W||` against its source.
pub(super) fn compare(
    ckpt: &Checkpoint,
    src: &Checkpoint,
    sources: &BTreeMap<String, Linear>,
    found: &BTreeMap<&str, CtLinear>,
    group_of: &BTreeMap<&str, Group>,
    v: &mut Verification,
) {
    for (m, f) in found {
        let (Some(w), Some(scale)) = (f.weight, f.scale) else {
            continue; // reported by check_linear
        };
        let &[rows, k] = w.shape.as_slice() else {
            continue;
        };
        let cols = if f.nvfp4 { k * 2 } else { k };
        // A linear the plan does not quantize (lm_head, when a checkpoint quantized it): its
        // source tensor as stored.
        let raw = src
            .get(&format!("{m}.weight"))
            .filter(|t| t.shape.len() == 2 && source_dtype(t.dtype).is_some());
        let (source_shape, source) = match (sources.get(*m), raw) {
            (Some(l), _) => ((l.source.rows, l.source.cols), source_matrix(src, l)),
            (None, Some(t)) => (
                (t.shape[0], t.shape[1]),
                floats(src, t).ok_or_else(|| "unreadable".to_string()),
            ),
            (None, None) => {
                v.problems.push(format!(
                    "{m}: the source checkpoint has no weight for this linear, so it cannot be \
                     compared (is --source the checkpoint this one was made from?)"
                ));
                continue;
            }
        };
        if (rows, cols) != source_shape {
            v.problems.push(format!(
                "{m}: the quantized weight {:?} does not match its source: {source_shape:?} expected",
                w.shape
            ));
            continue;
        }
        let source = match source {
            Ok(s) => s,
            Err(why) => {
                v.problems.push(format!("{m}: cannot be compared: {why}"));
                continue;
            }
        };
        let codes = ckpt.bytes(w);
        let (num, den, bound) = if f.nvfp4 {
            let Some(g) = f
                .global
                .and_then(|t| floats(ckpt, t))
                .and_then(|g| g.first().copied())
            else {
                continue;
            };
            if scale.shape != [rows, cols / 16] || codes.len() != rows * cols / 2 {
                continue;
            }
            let scales = ckpt.bytes(scale);
            let (mut num, mut den) = (0.0f64, 0.0f64);
            for r in 0..rows {
                for c in 0..cols {
                    let i = r * cols + c;
                    let nibble = (codes[i / 2] >> (4 * (i % 2))) & 0xF;
                    let d = e4m3_to_f32(scales[r * (cols / 16) + c / 16]) / g;
                    let wq = f64::from(e2m1_to_f32(nibble) * d);
                    let x = f64::from(source[i]);
                    num += (x - wq) * (x - wq);
                    den += x * x;
                }
            }
            (num, den, MAX_RELATIVE_ERROR.0)
        } else {
            let Some(s) = floats(ckpt, scale) else {
                continue;
            };
            let Some(g) = group_of.get(m) else {
                continue;
            };
            let at = |r: usize, c: usize| match g.scheme {
                Scheme::Fp8Tensor => 0,
                Scheme::Fp8Channel => r,
                Scheme::Fp8Block(br, bc) => (r / br) * cols.div_ceil(bc) + c / bc,
                Scheme::Nvfp4 => unreachable!(),
            };
            if codes.len() != rows * cols || s.len() <= at(rows - 1, cols - 1) {
                continue;
            }
            let (mut num, mut den) = (0.0f64, 0.0f64);
            for r in 0..rows {
                for c in 0..cols {
                    let i = r * cols + c;
                    let wq = f64::from(e4m3_to_f32(codes[i]) * s[at(r, c)]);
                    let x = f64::from(source[i]);
                    num += (x - wq) * (x - wq);
                    den += x * x;
                }
            }
            (num, den, MAX_RELATIVE_ERROR.1)
        };
        let error = if den > 0.0 { (num / den).sqrt() } else { 0.0 };
        if error.is_nan() || error > bound {
            v.problems.push(format!(
                "{m}: relative error {error:.4} against the source is above {bound}"
            ));
        }
        v.errors.push((m.to_string(), error));
    }
}
