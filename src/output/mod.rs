//! Output: what a conversion writes, and how it is made safe to publish.
//!
//! - [`writer`]: the output shards, each tensor at its planned offset, hashed as it is written;
//! - [`export`]: the metadata files ModelOpt's export writes (`hf_quant_config.json`, the
//!   config's `quantization_config`, `generation_config.json`);
//! - [`metadata`]: writing those files and copying the rest of the input's files;
//! - [`publish`]: the staging directory, the output lock, and the atomic swap into place.

pub mod export;
pub mod metadata;
pub mod publish;
pub mod writer;

pub use writer::ShardWriter;
