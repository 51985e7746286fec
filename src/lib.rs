#![deny(missing_docs)]
//! shardquant: a streaming converter from HuggingFace safetensors checkpoints to quantized
//! checkpoints (NVFP4, FP8) that load like NVIDIA ModelOpt's exports, byte for byte.
//!
//! The flow, module by module:
//! - [`checkpoint`] memory-maps and validates the input shards, and writes planned output shards;
//! - [`layout`] describes an architecture (which tensors are linears, which share an input,
//!   where the experts are), loaded from `layouts/*.json`;
//! - [`stats`] reads activation statistics (ModelOpt amax files) into one schema;
//! - [`plan`] decides every output tensor and unit of work before any weight is read, and
//!   [`calib`] holds the scale-sharing rules;
//! - [`quant`] holds the formats and the bit-exact kernels;
//! - [`pipeline`] streams units through reader → workers → writer under a memory budget;
//! - [`export`] writes ModelOpt's metadata files; [`convert`] ties it together, publishes the
//!   output atomically with its `shardquant.json` manifest, decides whether an output is up to
//!   date, and resumes stopped runs from their journal; [`digest`] hashes and fingerprints
//!   files; [`fault`] injects crashes and full disks for the tests.
//!
//! ```no_run
//! use shardquant::{options::Options, quant::QuantFormat};
//! let options = Options::new(QuantFormat::W4a16Nvfp4);
//! shardquant::convert::convert("in".as_ref(), "out".as_ref(), &options).unwrap();
//! ```

pub mod calib;
pub mod checkpoint;
pub mod cli;
pub mod convert;
pub mod digest;
pub mod error;
pub mod export;
pub mod fault;
pub mod fuzzing;
pub mod gpu;
pub mod inspect;
pub mod interrupt;
mod json_keys;
pub mod layout;
pub mod options;
pub mod pipeline;
pub mod plan;
pub mod progress;
pub mod pyjson_text;
pub mod quant;
pub mod skeleton;
pub mod stats;
pub mod stats_cmd;
pub mod synthetic;
pub mod verify;
