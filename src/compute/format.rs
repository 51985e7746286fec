//! The quantization formats, declared once as data.
//!
//! Every fact about a format lives in its row of the private table `FORMATS`; the methods of [`QuantFormat`],
//! [`check_shape`] and [`crate::compute::linear`] read it from there (golden/README.md "Tensor layout of
//! a quantized linear" and "hf_quant_config.json"). Its command-line name and `--help` line are
//! on the enum itself (`clap::ValueEnum`).

/// A quantization format (`--format`, ModelOpt qformat names). The first paragraph of each
/// variant's doc is its `--help` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum QuantFormat {
    /// NVFP4 weights and activations (W4A4); needs input amax from --stats.
    ///
    /// ModelOpt `NVFP4_DEFAULT_CFG`; compressed-tensors `NVFP4`.
    Nvfp4,
    /// NVFP4 weights only (W4A16); needs no statistics.
    ///
    /// ModelOpt `W4A16_NVFP4`, compressed-tensors `NVFP4A16`: activations stay unquantized.
    #[value(name = "w4a16_nvfp4")]
    W4a16Nvfp4,
    /// FP8 E4M3 per-tensor weights and activations (W8A8); needs input amax from --stats.
    ///
    /// ModelOpt `FP8_DEFAULT_CFG`; compressed-tensors `FP8` (static per-tensor scales).
    Fp8,
    /// FP8 E4M3 per-channel weights, dynamic per-token activations; needs no statistics.
    ///
    /// compressed-tensors `FP8_DYNAMIC` (`--export compressed-tensors` only).
    #[value(name = "fp8_dynamic")]
    Fp8Dynamic,
    /// FP8 E4M3 weights in 128x128 blocks, dynamic activations; needs no statistics.
    ///
    /// compressed-tensors `FP8_BLOCK` (`--export compressed-tensors` only).
    #[value(name = "fp8_block")]
    Fp8Block,
}

/// Which checkpoint format the output is written in (`--export`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Export {
    /// NVIDIA ModelOpt (hf_quant_config.json; TensorRT-LLM, vLLM, SGLang).
    ///
    /// What ModelOpt 0.47's `export_hf_checkpoint` writes.
    Modelopt,
    /// compressed-tensors (llm-compressor's format; vLLM, transformers).
    ///
    /// What llm-compressor 0.14 writes (`model_free_ptq`'s CPU path; `oneshot`'s tensors for
    /// the static schemes).
    CompressedTensors,
}

impl Export {
    /// The CLI value: `"modelopt"` or `"compressed-tensors"`.
    pub fn cli_name(self) -> String {
        super::value_name(&self)
    }

    /// Whether this is the default, ModelOpt (takes a reference for serde's
    /// `skip_serializing_if`).
    pub fn is_modelopt(&self) -> bool {
        *self == Export::Modelopt
    }
}

/// How the quantized weight tensor is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WeightStorage {
    /// Two E2M1 nibbles per byte (`U8 [rows, cols/2]`), E4M3 block scales
    /// (`F8_E4M3 [rows, cols/group]`) and an f32 `weight_scale_2`.
    Nvfp4Packed,
    /// One E4M3 byte per element (`F8_E4M3 [rows, cols]`) and an f32 per-tensor `weight_scale`.
    Fp8PerTensor,
    /// One E4M3 byte per element and one scale per output channel (row).
    Fp8PerChannel,
    /// One E4M3 byte per element and one scale per 128x128 block.
    Fp8Block,
}

/// One row of the format table.
#[derive(Debug)]
struct FormatSpec {
    format: QuantFormat,
    quant_algo: &'static str,
    group_size: Option<u32>,
    weight_bits: u32,
    activation_bits: Option<u32>,
    shares_group_scales: bool,
    storage: WeightStorage,
    /// Whether the ModelOpt export can write the format (the compressed-tensors export writes
    /// every one).
    modelopt: bool,
    /// compressed-tensors: the scheme name (the config group's name, llm-compressor's preset).
    ct_scheme: &'static str,
}

/// The format table: one row per [`QuantFormat`], in the order of [`QuantFormat::ALL`].
const FORMATS: [FormatSpec; 5] = [
    FormatSpec {
        format: QuantFormat::Nvfp4,
        quant_algo: "NVFP4",
        group_size: Some(16),
        weight_bits: 4,
        activation_bits: Some(4),
        shares_group_scales: true,
        storage: WeightStorage::Nvfp4Packed,
        modelopt: true,
        ct_scheme: "NVFP4",
    },
    FormatSpec {
        format: QuantFormat::W4a16Nvfp4,
        quant_algo: "W4A16_NVFP4",
        group_size: Some(16),
        weight_bits: 4,
        activation_bits: None,
        shares_group_scales: true,
        storage: WeightStorage::Nvfp4Packed,
        modelopt: true,
        ct_scheme: "NVFP4A16",
    },
    FormatSpec {
        format: QuantFormat::Fp8,
        quant_algo: "FP8",
        group_size: None,
        weight_bits: 8,
        activation_bits: Some(8),
        shares_group_scales: false,
        storage: WeightStorage::Fp8PerTensor,
        modelopt: true,
        ct_scheme: "FP8",
    },
    FormatSpec {
        format: QuantFormat::Fp8Dynamic,
        quant_algo: "FP8_DYNAMIC",
        group_size: None,
        weight_bits: 8,
        activation_bits: None,
        shares_group_scales: false,
        storage: WeightStorage::Fp8PerChannel,
        modelopt: false,
        ct_scheme: "FP8_DYNAMIC",
    },
    FormatSpec {
        format: QuantFormat::Fp8Block,
        quant_algo: "FP8_BLOCK",
        group_size: Some(128),
        weight_bits: 8,
        activation_bits: None,
        shares_group_scales: false,
        storage: WeightStorage::Fp8Block,
        modelopt: false,
        ct_scheme: "FP8_BLOCK",
    },
];

impl QuantFormat {
    /// Every format, in table order.
    pub const ALL: [QuantFormat; 5] = [
        QuantFormat::Nvfp4,
        QuantFormat::W4a16Nvfp4,
        QuantFormat::Fp8,
        QuantFormat::Fp8Dynamic,
        QuantFormat::Fp8Block,
    ];

    fn spec(self) -> &'static FormatSpec {
        let spec = match self {
            QuantFormat::Nvfp4 => &FORMATS[0],
            QuantFormat::W4a16Nvfp4 => &FORMATS[1],
            QuantFormat::Fp8 => &FORMATS[2],
            QuantFormat::Fp8Dynamic => &FORMATS[3],
            QuantFormat::Fp8Block => &FORMATS[4],
        };
        debug_assert_eq!(spec.format, self);
        spec
    }

    /// The CLI value: `"nvfp4"`, `"w4a16_nvfp4"` or `"fp8"` (from the `clap::ValueEnum` derive).
    pub fn cli_name(self) -> String {
        super::value_name(&self)
    }

    /// `quant_algo` in `hf_quant_config.json` / `quantization_config`: `"NVFP4"`,
    /// `"W4A16_NVFP4"` or `"FP8"`.
    pub fn quant_algo(self) -> &'static str {
        self.spec().quant_algo
    }

    /// Elements per weight block sharing one scale: `Some(16)` for NVFP4, `None` (per tensor)
    /// for FP8.
    pub fn group_size(self) -> Option<u32> {
        self.spec().group_size
    }

    /// Whether the format exports an `input_scale`, so needs an input amax from statistics.
    pub fn needs_input_amax(self) -> bool {
        self.spec().activation_bits.is_some()
    }

    /// Whether linears sharing an input (q/k/v, gate/up) share `weight_scale_2` and
    /// `input_scale` (ModelOpt unifies them at export for NVFP4, not for FP8).
    pub fn shares_group_scales(self) -> bool {
        self.spec().shares_group_scales
    }

    /// Bits per weight element: 4 or 8.
    pub fn weight_bits(self) -> u32 {
        self.spec().weight_bits
    }

    /// Bits per activation element, `None` when activations are not quantized.
    pub fn activation_bits(self) -> Option<u32> {
        self.spec().activation_bits
    }

    /// Whether the weight is stored as packed NVFP4 (E2M1 + E4M3 block scales).
    pub fn is_nvfp4(self) -> bool {
        self.spec().storage == WeightStorage::Nvfp4Packed
    }

    /// FP8 weights with one scale per tensor (`fp8`).
    pub fn is_fp8_per_tensor(self) -> bool {
        self.spec().storage == WeightStorage::Fp8PerTensor
    }

    /// FP8 weights with one scale per output channel (`fp8_dynamic`).
    pub fn is_fp8_per_channel(self) -> bool {
        self.spec().storage == WeightStorage::Fp8PerChannel
    }

    /// FP8 weights with one scale per 128x128 block (`fp8_block`).
    pub fn is_fp8_block(self) -> bool {
        self.spec().storage == WeightStorage::Fp8Block
    }

    /// Whether `export` can write this format. `Err` says what to use instead.
    pub fn check_export(self, export: Export) -> std::result::Result<(), String> {
        match export {
            Export::Modelopt if !self.spec().modelopt => Err(format!(
                "--format {} exists only in compressed-tensors; ModelOpt has no such format \
                 (add --export compressed-tensors, or use --format fp8 for ModelOpt's per-tensor FP8)",
                self.cli_name()
            )),
            Export::Modelopt | Export::CompressedTensors => Ok(()),
        }
    }

    /// compressed-tensors: the scheme (config group) name, e.g. `"NVFP4A16"`: compressed-tensors'
    /// preset of the same scheme.
    pub fn ct_scheme(self) -> &'static str {
        self.spec().ct_scheme
    }
}

/// Whether a weight `[rows, cols]` can be quantized in `format`; `Err(reason)` otherwise.
///
/// Every format rejects an empty weight (ModelOpt cannot calibrate one). NVFP4 needs `cols` to
/// be a multiple of the group size 16 (ModelOpt asserts it), which also makes it even for the
/// two-per-byte packing.
pub fn check_shape(
    format: QuantFormat,
    rows: usize,
    cols: usize,
) -> std::result::Result<(), String> {
    if rows == 0 || cols == 0 {
        return Err(format!("weight [{rows}, {cols}] is empty"));
    }
    if format.is_fp8_block() {
        // vLLM's block kernels need whole blocks along the input dimension (compressed-tensors'
        // `initialize_qparams`), and llm-compressor 0.14 cannot save any other (SPEC §6.2).
        if !cols.is_multiple_of(128) {
            return Err(format!(
                "inner dimension {cols} is not a multiple of the fp8_block block size 128"
            ));
        }
        return Ok(());
    }
    if let Some(group) = format.group_size() {
        let group = group as usize;
        if !cols.is_multiple_of(group) {
            return Err(format!(
                "inner dimension {cols} is not a multiple of the {} block size {group}",
                format.cli_name()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::ValueEnum;

    #[test]
    fn test_table_rows_match_formats() {
        for (i, format) in QuantFormat::ALL.into_iter().enumerate() {
            assert_eq!(FORMATS[i].format, format);
            assert_eq!(QuantFormat::from_str(&format.cli_name(), false), Ok(format));
        }
        assert!(QuantFormat::from_str("NVFP4", false).is_err());
        assert!(QuantFormat::from_str("int4", false).is_err());
    }

    #[test]
    fn test_format_facts() {
        use QuantFormat::*;
        let facts: Vec<_> = QuantFormat::ALL
            .into_iter()
            .map(|f| {
                (
                    f.cli_name(),
                    f.quant_algo(),
                    f.group_size(),
                    f.needs_input_amax(),
                    f.shares_group_scales(),
                    f.weight_bits(),
                    f.activation_bits(),
                    f.is_nvfp4(),
                )
            })
            .collect();
        assert_eq!(
            facts,
            vec![
                (
                    "nvfp4".into(),
                    "NVFP4",
                    Some(16),
                    true,
                    true,
                    4,
                    Some(4),
                    true
                ),
                (
                    "w4a16_nvfp4".into(),
                    "W4A16_NVFP4",
                    Some(16),
                    false,
                    true,
                    4,
                    None,
                    true
                ),
                ("fp8".into(), "FP8", None, true, false, 8, Some(8), false),
                (
                    "fp8_dynamic".into(),
                    "FP8_DYNAMIC",
                    None,
                    false,
                    false,
                    8,
                    None,
                    false
                ),
                (
                    "fp8_block".into(),
                    "FP8_BLOCK",
                    Some(128),
                    false,
                    false,
                    8,
                    None,
                    false
                ),
            ]
        );
        // Which export writes which format.
        for f in [Nvfp4, W4a16Nvfp4, Fp8] {
            assert_eq!(f.check_export(Export::Modelopt), Ok(()));
        }
        for f in [Fp8Dynamic, Fp8Block] {
            assert!(f.check_export(Export::Modelopt).is_err());
        }
        for f in QuantFormat::ALL {
            assert_eq!(f.check_export(Export::CompressedTensors), Ok(()));
        }
        let schemes: Vec<&str> = QuantFormat::ALL.iter().map(|f| f.ct_scheme()).collect();
        assert_eq!(
            schemes,
            ["NVFP4", "NVFP4A16", "FP8", "FP8_DYNAMIC", "FP8_BLOCK"]
        );
        assert!(Fp8.is_fp8_per_tensor() && !Fp8Dynamic.is_fp8_per_tensor());
        assert_eq!(check_shape(Fp8Block, 64, 256), Ok(()));
        assert!(check_shape(Fp8Block, 64, 192).is_err());
        assert!(Nvfp4.is_nvfp4() && W4a16Nvfp4.is_nvfp4() && !Fp8.is_nvfp4());
    }

    #[test]
    fn test_check_shape() {
        for format in [QuantFormat::Nvfp4, QuantFormat::W4a16Nvfp4] {
            assert_eq!(check_shape(format, 1, 16), Ok(()));
            assert_eq!(check_shape(format, 7, 4096), Ok(()));
            let err = check_shape(format, 64, 1407).unwrap_err();
            assert!(err.contains("1407") && err.contains("16"), "{err}");
            assert!(check_shape(format, 64, 8).is_err());
            assert!(check_shape(format, 64, 24).is_err());
            assert!(check_shape(format, 0, 16).is_err());
        }
        assert_eq!(check_shape(QuantFormat::Fp8, 3, 7), Ok(()));
        assert!(check_shape(QuantFormat::Fp8, 3, 0).is_err());
    }
}
