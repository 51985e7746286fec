//! Every linear's shape checked against `config.json` before anything is written: a layout that
//! does not describe the checkpoint (a wrong `--layout`, fused experts read in the wrong
//! orientation, a mis-split gate/up) must stop the run, never produce per-expert linears of
//! the wrong shapes.
//!
//! What is checked, for linears whose names the vocabulary knows
//! ([`crate::input::layout::vocabulary`]):
//! - a linear that reads the hidden state (q/k/v, gate/up, `w1`/`w3`, MLA's `q_a`/`kv_a`, the
//!   linear-attention input projections, expert gate/up) has `hidden_size` inputs; one that
//!   writes it (`o_proj`, `down_proj`, `w2`, `out_proj`, expert down) has `hidden_size` outputs;
//! - gate and up have the same shape, and down reads what they write (per expert, and per
//!   dense MLP);
//! - routed experts are numbered `0..E` with `E` from `config.json` (`num_experts`,
//!   `num_local_experts`, `n_routed_experts`, `moe_num_experts`), every MoE layer has all of
//!   them, and fused expert parameters hold `E` experts.

use super::classify::Linear;
use super::Problem;
use crate::input::checkpoint::Checkpoint;
use crate::input::layout::infer::{config_usize, EXPERT_COUNT_KEYS};
use crate::input::layout::vocabulary::{dense, expert_io, Io};
use crate::input::layout::{ExpertProj, Layout};
use std::collections::{BTreeMap, BTreeSet};

/// Appends a problem for every shape that contradicts `config.json` (or a warning when
/// `config.json` lacks `hidden_size`).
pub fn check(
    ckpt: &Checkpoint,
    layout: &Layout,
    config: &serde_json::Value,
    linears: &[Linear],
    problems: &mut Vec<Problem>,
    warnings: &mut Vec<String>,
) {
    let mut found = Vec::new();
    let hidden = config_usize(config, &["hidden_size"]);
    let experts = config_usize(config, EXPERT_COUNT_KEYS);
    let place = |l: &Linear| {
        let t = &ckpt.tensors()[l.source.tensor];
        format!(
            "{}: tensor '{}' {:?}",
            ckpt.shards()[t.shard].path.display(),
            t.name,
            t.shape
        )
    };
    match hidden {
        Some(h) => {
            for l in linears {
                let (rows, cols) = (l.source.rows_per_matrix(), l.source.cols);
                match io_of(l) {
                    Some(Io::ReadsHidden) if cols != h => found.push(format!(
                        "{}: {} reads the hidden state, so it should have hidden_size = {h} inputs (config.json); \
                         as the layout reads it, it has {cols}",
                        place(l),
                        l.module
                    )),
                    Some(Io::WritesHidden) if rows != h => found.push(format!(
                        "{}: {} writes the hidden state, so it should have hidden_size = {h} outputs (config.json); \
                         as the layout reads it, it has {rows}",
                        place(l),
                        l.module
                    )),
                    _ => {}
                }
            }
        }
        None if !linears.is_empty() => warnings.push(
            "config.json has no hidden_size: the linears' shapes were not checked against it"
                .to_string(),
        ),
        None => {}
    }
    check_experts(linears, experts, &place, &mut found);
    check_pairs(linears, &place, &mut found);
    if !found.is_empty() {
        let count = found.len();
        problems.extend(found.into_iter().take(20).map(Problem::new));
        let last = problems.last_mut().expect("a shape problem was just added");
        if count > 20 {
            last.details
                .push(format!("... and {} more shape problems", count - 20));
        }
        last.details.push(format!(
            "the layout '{}' does not describe this checkpoint (a --layout for another model, fused experts in \
             another orientation, or an architecture it does not know); nothing was written. Check it with \
             `shardquant inspect DIR --layout-json`",
            layout.name
        ));
    }
}

/// What a linear reads or writes, when its name is known.
fn io_of(l: &Linear) -> Option<Io> {
    if let Some((_, proj)) = l.expert {
        return Some(expert_io(proj));
    }
    let last = l.module.rsplit('.').next().unwrap_or(&l.module);
    if l.source.bmm_experts.is_some() {
        return match last {
            "gate_up_proj" | "up_proj" => Some(Io::ReadsHidden),
            "down_proj" => Some(Io::WritesHidden),
            _ => None,
        };
    }
    dense(last).map(|d| d.io)
}

fn check_experts(
    linears: &[Linear],
    experts: Option<usize>,
    place: &dyn Fn(&Linear) -> String,
    found: &mut Vec<String>,
) {
    let mut per_layer: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
    for l in linears {
        if let Some((e, _)) = l.expert {
            per_layer.entry(l.layer).or_default().insert(e);
        }
        if let (Some(n), Some(want)) = (l.source.bmm_experts, experts) {
            if n != want {
                found.push(format!(
                    "{}: {} holds {n} experts, config.json says {want}",
                    place(l),
                    l.module
                ));
            }
        }
    }
    let Some(want) = experts else {
        return;
    };
    for (layer, set) in per_layer {
        let missing: Vec<usize> = (0..want).filter(|e| !set.contains(e)).collect();
        let extra: Vec<usize> = set.iter().copied().filter(|&e| e >= want).collect();
        if !missing.is_empty() || !extra.is_empty() {
            found.push(format!(
                "layer {layer}: config.json says {want} routed experts, but the checkpoint has {} of them{}{}",
                set.len(),
                if missing.is_empty() {
                    String::new()
                } else {
                    format!("; missing {}", list(&missing))
                },
                if extra.is_empty() {
                    String::new()
                } else {
                    format!("; numbered past the count: {}", list(&extra))
                }
            ));
        }
    }
}

fn list(numbers: &[usize]) -> String {
    let shown: Vec<String> = numbers.iter().take(8).map(|n| n.to_string()).collect();
    format!(
        "{}{}",
        shown.join(", "),
        if numbers.len() > shown.len() {
            ", ..."
        } else {
            ""
        }
    )
}

/// Gate and up of one MLP (an expert, or a dense MLP's `gate_proj`/`up_proj`, `w1`/`w3`) have
/// the same shape, and its down projection reads what they write.
fn check_pairs(linears: &[Linear], place: &dyn Fn(&Linear) -> String, found: &mut Vec<String>) {
    // (layer, expert or parent module) -> (gate, up, down)
    type Mlp<'a> = (Option<&'a Linear>, Option<&'a Linear>, Option<&'a Linear>);
    let mut mlps: BTreeMap<(usize, String), Mlp> = BTreeMap::new();
    for l in linears {
        let (key, proj) = match l.expert {
            Some((e, proj)) => (format!("expert {e}"), proj),
            None if l.source.bmm_experts.is_none() => {
                let Some((parent, last)) = l.module.rsplit_once('.') else {
                    continue;
                };
                let proj = match last {
                    "gate_proj" | "w1" => ExpertProj::Gate,
                    "up_proj" | "w3" => ExpertProj::Up,
                    "down_proj" | "w2" => ExpertProj::Down,
                    _ => continue,
                };
                (parent.to_string(), proj)
            }
            None => continue,
        };
        let entry = mlps.entry((l.layer, key)).or_default();
        match proj {
            ExpertProj::Gate => entry.0 = Some(l),
            ExpertProj::Up => entry.1 = Some(l),
            ExpertProj::Down => entry.2 = Some(l),
        }
    }
    for (gate, up, down) in mlps.into_values() {
        if let (Some(g), Some(u)) = (gate, up) {
            if (g.source.rows, g.source.cols) != (u.source.rows, u.source.cols) {
                found.push(format!(
                    "{} and {}: gate and up of one MLP should have the same shape, have [{}, {}] and [{}, {}]",
                    place(g),
                    place(u),
                    g.source.rows,
                    g.source.cols,
                    u.source.rows,
                    u.source.cols
                ));
            }
        }
        if let (Some(g), Some(d)) = (gate.or(up), down) {
            if d.source.cols != g.source.rows {
                found.push(format!(
                    "{}: {} should read the {} features {} writes, reads {}",
                    place(d),
                    d.module,
                    g.source.rows,
                    g.module,
                    d.source.cols
                ));
            }
        }
    }
}
