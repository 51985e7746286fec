//! Reading and writing safetensors checkpoints.
//!
//! The input side is [`Checkpoint`]: a HuggingFace checkpoint directory (a sharded
//! `model.safetensors.index.json` plus its shards, or a single `model.safetensors`), every shard
//! memory-mapped read-only and every header validated before any tensor is touched. Tensors are
//! borrowed as zero-copy byte slices; [`Checkpoint::prefetch`] and [`Checkpoint::release`] let a
//! streaming reader keep only the current layer resident.
//!
//! The output side is [`ShardPlan`] and [`ShardWriter`]. The plan fixes, before any weight is
//! read, which shard and byte offset every output tensor gets (greedy splitting by
//! `max_shard_size`, as HuggingFace `save_pretrained` does). The writer then accepts tensors in
//! any order from any thread with positioned writes, so the output bytes never depend on
//! scheduling.
//!
//! [`parse_size`] reads a shard size such as `5GB` the way HuggingFace does.
//!
//! Nothing outside the input directory is read: [`Lane`] resolves every name the checkpoint
//! uses, and symbolic links that lead out of the directory (except into a HuggingFace cache
//! snapshot's own `blobs/`) are refused for weights and skipped for the other files.

mod diagnose;
mod lane;
mod reader;
mod size;
mod validate;

#[cfg(test)]
mod tests;

pub use lane::{Lane, Resolved, OUTSIDE_HINT};
pub use reader::{Checkpoint, Shard, TensorEntry};
pub use safetensors::Dtype;
pub use size::parse_size;

pub(crate) use validate::{parse_header, parse_index};

/// File name of the index of a sharded checkpoint.
pub const INDEX_FILE_NAME: &str = "model.safetensors.index.json";
/// File name of a single-file checkpoint.
pub const SINGLE_FILE_NAME: &str = "model.safetensors";
