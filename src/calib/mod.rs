//! Calibration: which amax each quantizer gets.
//!
//! Weight amax is computed from the weights (`crate::quant::amax`, the max calibration) or taken
//! from statistics; input amax always comes from statistics. [`policy`] holds the rules that
//! tie scales together: shared-input groups, MoE experts of a layer, experts that saw no tokens.

pub mod backend;
pub mod mse;
pub mod policy;
