//! Where a linear's weight bytes are: a whole 2-D tensor, an FP8 block-scaled tensor with its
//! `weight_scale_inv`, one expert of a fused `[E, out, in]` parameter, or a whole BMM-style
//! `[E, in, out]` parameter.

use crate::compute::{transpose_experts, SourceDtype};
use crate::input::checkpoint::{Checkpoint, Dtype};
use crate::options::Options;

/// Where a linear's weight bytes are: a whole tensor, or a slice of a fused expert tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightSource {
    /// Index into [`Checkpoint::tensors`].
    pub tensor: usize,
    /// Byte offset of the weight inside the tensor's data.
    pub offset: usize,
    /// Output features of the matrix the kernels see (for a BMM expert stack: experts × out).
    pub rows: usize,
    /// Input features.
    pub cols: usize,
    /// Element type the kernels see (for an FP8-block source: the dequantized type).
    pub dtype: SourceDtype,
    /// Whether the matrix is a slice of a fused multi-expert tensor written per expert.
    pub fused: bool,
    /// For an FP8 block-scaled source: the index of its `weight_scale_inv` tensor.
    pub fp8_scale: Option<usize>,
    /// `Some(E)` for a BMM-style expert stack stored `[E, cols, rows / E]` (input before
    /// output, gpt-oss and Llama-4): the kernels see its transposed copy `[rows, cols]`, and
    /// the outputs are transposed back and written fused.
    pub bmm_experts: Option<usize>,
    /// For one expert projection of a fused `[E, in, out]` parameter written per expert
    /// (Qwen3-VL-MoE on the hub): the stored bytes at `offset` are the expert's `[cols, stride]`
    /// matrix and this linear is its columns `start .. start + rows`, transposed.
    pub columns: Option<ColumnSlice>,
}

/// Columns of a stored `[in, stride]` matrix (see [`WeightSource::columns`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColumnSlice {
    /// Columns of the stored matrix (the parameter's last dimension).
    pub stride: usize,
    /// First column of the slice.
    pub start: usize,
}

impl WeightSource {
    /// A whole 2-D tensor `[rows, cols]`.
    pub fn matrix(tensor: usize, rows: usize, cols: usize, dtype: SourceDtype) -> WeightSource {
        WeightSource {
            tensor,
            offset: 0,
            rows,
            cols,
            dtype,
            fused: false,
            fp8_scale: None,
            bmm_experts: None,
            columns: None,
        }
    }

    /// Byte length of the stored weight read for this linear (one byte per element for FP8;
    /// for a column slice, the expert's whole `[in, stride]` matrix).
    pub fn byte_len(&self) -> usize {
        match (self.fp8_scale, self.columns) {
            (Some(_), _) => self.rows * self.cols,
            (None, Some(c)) => self.cols * c.stride * self.dtype.size(),
            (None, None) => self.rows * self.cols * self.dtype.size(),
        }
    }

    /// The `[rows, cols]` matrix the kernels see, from the stored bytes ([`Self::byte_len`]
    /// of them, or their dequantized copy): borrowed as stored, or transposed for a BMM
    /// stack or a column slice.
    pub fn kernel_matrix<'a>(&self, stored: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
        let elem = self.dtype.size();
        match (self.bmm_experts, self.columns) {
            (Some(experts), _) => {
                transpose_experts(stored, experts, self.cols, self.rows_per_matrix(), elem).into()
            }
            (None, Some(c)) => {
                let mut out = vec![0u8; self.rows * self.cols * elem];
                for (i, row) in out.chunks_exact_mut(elem * self.cols).enumerate() {
                    for (k, dst) in row.chunks_exact_mut(elem).enumerate() {
                        let from = (k * c.stride + c.start + i) * elem;
                        dst.copy_from_slice(&stored[from..from + elem]);
                    }
                }
                out.into()
            }
            (None, None) => stored.into(),
        }
    }

    /// Index in the stored bytes of element `(r, c)` of the kernels' matrix.
    pub fn stored_index(&self, r: usize, c: usize) -> usize {
        match (self.bmm_experts, self.columns) {
            (Some(_), _) => {
                let out = self.rows_per_matrix();
                (r / out) * self.cols * out + c * out + r % out
            }
            (None, Some(s)) => c * s.stride + s.start + r,
            (None, None) => r * self.cols + c,
        }
    }

    /// Output features of one expert of a BMM stack (`rows` otherwise).
    pub fn rows_per_matrix(&self) -> usize {
        self.rows / self.bmm_experts.unwrap_or(1)
    }

    /// The shape of an output tensor computed on the kernels' `[rows, cols]` matrix, as it is
    /// written: unchanged, or for a BMM stack `[E * out, k]` → `[E, k, out]`.
    pub fn output_shape(&self, shape: Vec<usize>) -> Vec<usize> {
        match (self.bmm_experts, shape.as_slice()) {
            (Some(e), &[r, k]) => vec![e, k, r / e],
            _ => shape,
        }
    }
}

/// The kernels' element type for a stored dtype (BF16, F16, F32; None for anything else).
pub fn source_dtype(dtype: Dtype) -> Option<SourceDtype> {
    match dtype {
        Dtype::BF16 => Some(SourceDtype::Bf16),
        Dtype::F16 => Some(SourceDtype::F16),
        Dtype::F32 => Some(SourceDtype::F32),
        _ => None,
    }
}

/// The `weight_scale_inv` of an FP8 weight, checked: F32 `[ceil(rows/128), ceil(cols/128)]`.
/// `Ok(None)` for an FP8 tensor without one that is not 2-D (passed through as it is).
pub fn fp8_scale_of(ckpt: &Checkpoint, idx: usize) -> std::result::Result<Option<usize>, String> {
    let t = &ckpt.tensors()[idx];
    let file = ckpt.shards()[t.shard].path.display();
    let scale_name = format!("{}_scale_inv", t.name);
    let Some(index) = ckpt.index_of(&scale_name) else {
        if t.shape.len() != 2 {
            return Ok(None);
        }
        return Err(format!(
            "{file}: tensor '{}' is FP8 but has no '{scale_name}': only FP8 sources with 128x128 block scales \
             (DeepSeek-V3 style) are supported",
            t.name
        ));
    };
    let scale = &ckpt.tensors()[index];
    let &[rows, cols] = t.shape.as_slice() else {
        return Err(format!(
            "{file}: FP8 tensor '{}' should be 2-D, has shape {:?}",
            t.name, t.shape
        ));
    };
    let (sr, sc) = crate::compute::scale_inv_shape(rows, cols);
    if scale.dtype != Dtype::F32 || scale.shape != [sr, sc] {
        return Err(format!(
            "{file}: '{scale_name}' should be F32 [{sr}, {sc}] for a [{rows}, {cols}] weight (128x128 blocks), is {:?} {:?}",
            scale.dtype, scale.shape
        ));
    }
    Ok(Some(index))
}

/// The source of a dense or per-expert linear whose weight is the 2-D tensor `idx`.
pub fn matrix_source(
    ckpt: &Checkpoint,
    idx: usize,
    options: &Options,
) -> std::result::Result<WeightSource, String> {
    let t = &ckpt.tensors()[idx];
    let file = ckpt.shards()[t.shard].path.display();
    let module = t.name.trim_end_matches(".weight");
    if t.dtype == Dtype::F8_E4M3 {
        let scale = fp8_scale_of(ckpt, idx)?
            .ok_or_else(|| format!("{file}: FP8 tensor '{}' is not a 2-D weight", t.name))?;
        let mut source = WeightSource::matrix(
            idx,
            t.shape[0],
            t.shape[1],
            options.output.fp8_dequant.dtype(),
        );
        source.fp8_scale = Some(scale);
        return Ok(source);
    }
    let Some(dtype) = source_dtype(t.dtype) else {
        return Err(format!(
            "{file}: tensor '{}' has dtype {:?}; quantizable weights must be BF16, F16 or F32, or FP8 with \
             128x128 block scales (leave it unquantized with --exclude '{module}')",
            t.name, t.dtype
        ));
    };
    let &[rows, cols] = t.shape.as_slice() else {
        return Err(format!(
            "{file}: tensor '{}' should be a 2-D linear weight, has shape {:?} (leave it unquantized with --exclude '{module}')",
            t.name, t.shape
        ));
    };
    Ok(WeightSource::matrix(idx, rows, cols, dtype))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bmm_output_shapes() {
        let mut s = WeightSource::matrix(0, 8 * 6, 32, SourceDtype::Bf16);
        assert_eq!(s.output_shape(vec![48, 16]), vec![48, 16]);
        s.bmm_experts = Some(8);
        assert_eq!(s.rows_per_matrix(), 6);
        assert_eq!(s.output_shape(vec![48, 16]), vec![8, 16, 6]);
        assert_eq!(s.output_shape(vec![]), Vec::<usize>::new());
    }
}
