#![deny(missing_docs)]
//! shardquant: a streaming converter from HuggingFace safetensors checkpoints to quantized
//! checkpoints (NVFP4, FP8) that load like NVIDIA ModelOpt's exports, byte for byte.
//!
//! The modules, in the order the data flows through them:
//! - [`input`]: the checkpoint's shards memory-mapped and validated
//!   ([`input::checkpoint`]), its architecture ([`input::layout`], from `layouts/*.json` or
//!   inferred) and activation statistics from other tools ([`input::stats`]);
//! - [`options`]: what the user asked for;
//! - [`plan`]: every output tensor, unit of work and shard offset, decided before any weight is
//!   read, with the scale-sharing rules ([`plan::policy`]) and `exclude_modules`;
//! - [`compute`]: the formats and the bit-exact kernels, CPU ones beside their CUDA twins
//!   ([`compute::cuda`]), and weight calibration (amax, MSE search);
//! - [`pipeline`]: streams units through reader → workers → sealers under a memory budget;
//! - [`output`]: the shard writer, ModelOpt's metadata files, and the atomic publish;
//! - [`commands`]: `convert` (with its manifest, resume journal and report), `inspect`,
//!   `verify`, `stats`, and the command line.
//!
//! Support: [`error`] (error kinds and exit codes), [`digest`] (hashes and fingerprints),
//! [`progress`], [`interrupt`], [`fault`] (crashes and full disks injected by the tests), and
//! for tests and benchmarks [`synthetic`], [`skeleton`] and [`fuzzing`].
//!
//! ```no_run
//! use shardquant::{compute::QuantFormat, options::Options};
//! let options = Options::new(QuantFormat::W4a16Nvfp4);
//! shardquant::commands::convert::convert("in".as_ref(), "out".as_ref(), &options).unwrap();
//! ```

pub mod commands;
pub mod compute;
pub mod digest;
pub mod error;
pub mod fault;
pub mod fuzzing;
pub mod input;
pub mod interrupt;
mod json_keys;
pub mod options;
pub mod output;
pub mod pipeline;
pub mod plan;
pub mod progress;
pub mod pyjson_text;
pub mod skeleton;
pub mod synthetic;
