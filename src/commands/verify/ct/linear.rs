//! The tensors of each compressed-tensors linear, found by name, and the checks of one linear
//! against its config group's scheme.

use super::Group;
use crate::commands::verify::scales::check_positive;
use crate::input::checkpoint::{Checkpoint, Dtype, TensorEntry};
use crate::plan::source_dtype;
use std::collections::BTreeMap;

/// A quantized linear's tensors, by compressed-tensors name.
pub(super) struct CtLinear<'a> {
    /// `weight_packed` (NVFP4) or the F8_E4M3 `weight`.
    pub(super) weight: Option<&'a TensorEntry>,
    /// `weight_scale`.
    pub(super) scale: Option<&'a TensorEntry>,
    /// `weight_global_scale` (NVFP4).
    pub(super) global: Option<&'a TensorEntry>,
    /// `input_global_scale` (NVFP4) or `input_scale` (FP8).
    pub(super) input: Option<&'a TensorEntry>,
    /// Whether the linear is NVFP4 (else FP8).
    pub(super) nvfp4: bool,
}

/// Every module with a compressed-tensors weight tensor: `weight_packed`, `weight_scale`,
/// `weight_global_scale`, or an F8_E4M3 `weight`.
pub(super) fn ct_linears(ckpt: &Checkpoint) -> BTreeMap<&str, CtLinear<'_>> {
    let mut found = BTreeMap::new();
    for t in ckpt.tensors() {
        let m = [".weight_packed", ".weight_scale", ".weight_global_scale"]
            .iter()
            .find_map(|s| t.name.strip_suffix(s))
            .or_else(|| {
                t.name
                    .strip_suffix(".weight")
                    .filter(|_| t.dtype == Dtype::F8_E4M3)
            });
        let Some(m) = m else { continue };
        if found.contains_key(m) {
            continue;
        }
        let get = |s: &str| ckpt.get(&format!("{m}.{s}"));
        let packed = get("weight_packed");
        let nvfp4 = packed.is_some() || get("weight_global_scale").is_some();
        found.insert(
            m,
            CtLinear {
                weight: if nvfp4 { packed } else { get("weight") },
                scale: get("weight_scale"),
                global: get("weight_global_scale"),
                input: get(if nvfp4 {
                    "input_global_scale"
                } else {
                    "input_scale"
                }),
                nvfp4,
            },
        );
    }
    found
}

/// Checks one quantized linear's tensors against its group's scheme: the tensor set, dtypes and
/// shapes, scales finite and positive (NVFP4 block scales: no NaN, negative or zero code), FP8
/// weights free of NaN codes, and the activation scale where the group's inputs are static.
pub(super) fn check_linear(
    ckpt: &Checkpoint,
    m: &str,
    f: &CtLinear,
    g: Group,
    p: &mut Vec<String>,
) {
    let name = |s: &str| format!("{m}.{s}");
    let Some(w) = f.weight else {
        p.push(format!(
            "{m}: {} is missing",
            name(if f.nvfp4 { "weight_packed" } else { "weight" })
        ));
        return;
    };
    let Some(scale) = f.scale else {
        p.push(format!("{m}: {} is missing", name("weight_scale")));
        return;
    };
    let &[out, k] = w.shape.as_slice() else {
        p.push(format!("{m}: weight should be 2-D, is {:?}", w.shape));
        return;
    };
    if f.nvfp4 {
        let cols = k * 2;
        if w.dtype != Dtype::U8 || scale.dtype != Dtype::F8_E4M3 || scale.shape != [out, cols / 16]
        {
            p.push(format!(
                "{m}: NVFP4 tensors should be weight_packed U8 [out, in/2] and weight_scale \
                 F8_E4M3 [out, in/16] = [{out}, {}]; found {:?} {:?} and {:?} {:?}",
                cols / 16,
                w.dtype,
                w.shape,
                scale.dtype,
                scale.shape
            ));
        }
        if scale.dtype == Dtype::F8_E4M3 {
            let bad = ckpt
                .bytes(scale)
                .iter()
                .filter(|b| **b & 0x7F == 0x7F || **b & 0x80 != 0 || **b == 0)
                .count();
            if bad > 0 {
                p.push(format!(
                    "{m}: {bad} block scale(s) are NaN, negative or zero"
                ));
            }
        }
        match f.global {
            Some(t) if t.dtype == Dtype::F32 && t.shape == [1] => {
                check_positive(ckpt, m, "weight_global_scale", t, p)
            }
            Some(t) => p.push(format!(
                "{m}: weight_global_scale should be F32 [1], is {:?} {:?}",
                t.dtype, t.shape
            )),
            None => p.push(format!("{m}: {} is missing", name("weight_global_scale"))),
        }
    } else {
        if w.dtype != Dtype::F8_E4M3 {
            p.push(format!(
                "{m}: FP8 weight should be F8_E4M3, is {:?}",
                w.dtype
            ));
        }
        let expected = g.fp8_scale_shape(out, k);
        if scale.shape != expected || source_dtype(scale.dtype).is_none() {
            p.push(format!(
                "{m}: FP8 weight_scale should be a float {expected:?} for {:?}, is {:?} {:?}",
                g.scheme, scale.dtype, scale.shape
            ));
        }
        check_positive(ckpt, m, "weight_scale", scale, p);
        let nan = ckpt.bytes(w).iter().filter(|b| **b & 0x7F == 0x7F).count();
        if nan > 0 && w.dtype == Dtype::F8_E4M3 {
            p.push(format!("{m}: {nan} FP8 weight byte(s) are NaN codes"));
        }
    }
    let input_name = if f.nvfp4 {
        "input_global_scale"
    } else {
        "input_scale"
    };
    match (f.input, g.static_input) {
        (Some(t), _) if t.shape == [1] || t.shape.is_empty() => {
            check_positive(ckpt, m, input_name, t, p)
        }
        (Some(t), _) => p.push(format!(
            "{m}: {input_name} should be [1], is {:?} {:?}",
            t.dtype, t.shape
        )),
        (None, true) => p.push(format!(
            "{m}: {} is missing (the config's input_activations are static)",
            name(input_name)
        )),
        (None, false) => {}
    }
}
