//! A checkpoint opened as a model: its shards, its `config.json` and its layout. Every command
//! that reads a model starts here.

use crate::error::Result;
use crate::input::checkpoint::Checkpoint;
use crate::input::config::{read_config, refuse_quantized_input};
use crate::input::layout::Layout;
use std::path::{Path, PathBuf};

/// A model directory, opened: mapped and validated shards, `config.json`, and the layout
/// (a `--layout` file, the shipped one `config.json` selects, or one inferred).
#[derive(Debug)]
pub struct Model {
    /// The directory.
    pub dir: PathBuf,
    /// The shards.
    pub checkpoint: Checkpoint,
    /// `config.json` as written (the export edits this text's values, not a re-serialization).
    pub config_text: String,
    /// `config.json` parsed.
    pub config: serde_json::Value,
    /// The architecture.
    pub layout: Layout,
}

impl Model {
    /// Opens the model in `dir`, with the layout from `layout_file` if given.
    pub fn open(dir: &Path, layout_file: Option<&Path>) -> Result<Model> {
        Model::with_checkpoint(Checkpoint::open(dir)?, dir, layout_file)
    }

    /// The model of an already opened checkpoint of `dir`.
    pub fn with_checkpoint(
        checkpoint: Checkpoint,
        dir: &Path,
        layout_file: Option<&Path>,
    ) -> Result<Model> {
        let (config_text, config) = read_config(dir)?;
        let layout = Layout::for_checkpoint(layout_file, &config, dir, checkpoint.tensors())?;
        Ok(Model {
            dir: dir.to_path_buf(),
            checkpoint,
            config_text,
            config,
            layout,
        })
    }

    /// Refuses a model whose weights are already quantized (an FP8 block-scaled source such
    /// as DeepSeek-V3's is converted): its weights are not the original ones.
    pub fn refuse_quantized(&self) -> Result<()> {
        refuse_quantized_input(&self.dir, &self.config)
    }
}
