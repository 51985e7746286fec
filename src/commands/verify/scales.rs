//! Reading scale tensors and checking them, for ModelOpt's and compressed-tensors' checks alike.

use crate::compute::load_f32;
use crate::input::checkpoint::{Checkpoint, Dtype, TensorEntry};
use crate::plan::source_dtype;

/// The value of an F32 scalar (`[]` or `[1]`), `None` for anything else.
pub(super) fn scalar_f32(ckpt: &Checkpoint, t: &TensorEntry) -> Option<f32> {
    let b = ckpt.bytes(t);
    (t.dtype == Dtype::F32 && b.len() == 4).then(|| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// All elements of a float tensor as f32 (`None` for another dtype).
pub(super) fn floats(ckpt: &Checkpoint, t: &TensorEntry) -> Option<Vec<f32>> {
    let d = source_dtype(t.dtype)?;
    let b = ckpt.bytes(t);
    Some((0..b.len() / d.size()).map(|i| load_f32(b, d, i)).collect())
}

/// Every element of the float tensor `t` (a scale `what` of module `m`: ModelOpt's f32
/// scalars, compressed-tensors' f32 / bf16 scales of any shape) finite and positive; else a
/// problem (a tensor that is not float is one too).
pub(super) fn check_positive(
    ckpt: &Checkpoint,
    m: &str,
    what: &str,
    t: &TensorEntry,
    p: &mut Vec<String>,
) {
    match floats(ckpt, t) {
        Some(v) => {
            let bad = |s: &&f32| !(s.is_finite() && **s > 0.0);
            match (v.iter().find(bad), v.len()) {
                (None, _) => {}
                (Some(s), 1) => p.push(format!("{m}: {what} is {s} (must be finite and positive)")),
                (Some(first), _) => p.push(format!(
                    "{m}: {} {what} value(s) are not finite and positive (e.g. {first})",
                    v.iter().filter(bad).count()
                )),
            }
        }
        None => p.push(format!("{m}: {what} has dtype {:?}, not a float", t.dtype)),
    }
}
