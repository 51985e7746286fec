//! Fused groups must be quantized whole: vLLM fuses q/k/v into `qkv_proj`, gate/up into
//! `gate_up_proj` (an expert's gate and up into `w13`, MLA's `q_a_proj` + `kv_a_proj_with_mqa`
//! into `fused_qkv_a_proj`) and all routed experts of a layer into one `FusedMoE` tensor, and
//! refuses a checkpoint where "some but not all shards" of one are quantized. Excluding part
//! of a group is therefore refused before anything is written, naming the group.

use super::Linear;
use crate::input::layout::ExpertProj;
use std::collections::BTreeMap;

/// One problem per group of which some members are quantized and some are not.
pub fn partial_groups(linears: &[Linear]) -> Vec<String> {
    // (layer, kind, index) -> members; kind 0 = shared-input group, 1 = an expert's gate+up,
    // 2 = the routed experts of a layer.
    let mut groups: BTreeMap<(usize, u8, usize), Vec<&Linear>> = BTreeMap::new();
    for l in linears {
        if let Some(g) = l.shared_group {
            groups.entry((l.layer, 0, g)).or_default().push(l);
        }
        if let Some((e, ExpertProj::Gate | ExpertProj::Up)) = l.expert {
            groups.entry((l.layer, 1, e)).or_default().push(l);
        }
        if l.role == crate::input::layout::Role::Expert {
            groups.entry((l.layer, 2, 0)).or_default().push(l);
        }
    }
    let mut problems = Vec::new();
    for ((_, kind, _), members) in groups {
        let (excluded, quantized): (Vec<&Linear>, Vec<&Linear>) =
            members.iter().partition(|l| l.excluded.is_some());
        if excluded.is_empty() || quantized.is_empty() {
            continue;
        }
        let what = match kind {
            0 => "linears that read one input (vLLM fuses them into one layer)",
            1 => "an expert's gate and up (vLLM fuses them into w13)",
            _ => "the routed experts of one layer (vLLM holds them in one FusedMoE tensor)",
        };
        let names = |ls: &[&Linear]| {
            let mut v: Vec<&str> = ls.iter().map(|l| l.module.as_str()).collect();
            if v.len() > 4 {
                let more = v.len() - 3;
                v.truncate(3);
                return format!("{} and {more} more", v.join(", "));
            }
            v.join(", ")
        };
        problems.push(format!(
            "part of a fused group would stay unquantized: {} ({}) but not {}; these are {what}, \
             and a serving engine refuses a group that is only partly quantized. Exclude all of \
             them or none (e.g. one --exclude per member, or a pattern that matches the whole group)",
            names(&excluded),
            excluded[0].excluded.as_deref().unwrap_or(""),
            names(&quantized),
        ));
    }
    problems
}
