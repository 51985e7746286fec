//! Input: what a conversion reads.
//!
//! - [`checkpoint`]: the safetensors shards, memory-mapped and validated;
//! - [`layout`]: the architecture (which tensors are linears, which share an input, where the
//!   experts are), from `layouts/*.json`, a `--layout` file, or inferred from `config.json`;
//! - [`stats`]: activation statistics from other tools, read into one schema;
//! - [`model`]: the three opened together (shards, `config.json` via [`config`], layout),
//!   where every command starts.

pub mod checkpoint;
pub mod config;
pub mod layout;
pub mod model;
pub mod stats;
