//! `exclude_modules`: ModelOpt's prefix-wildcard summary of the unquantized modules.
//!
//! Reproduces `quant_utils.py::_prefix_wildcard_summarize_exclude_modules` of ModelOpt 0.47.0
//! (called from `process_layer_quant_config`, then `sorted(...)`). When the pair candidate
//! `[p, p + ".*"]` is chosen, 0.47 emits only `p + ".*"` ("for deployment"); older releases
//! emitted both, as `docs/modelopt-format.md` §3.1 still says.

use std::collections::BTreeSet;

/// ModelOpt's `_prefix_wildcard_summarize_exclude_modules`, reproduced exactly, followed by the
/// `sorted(...)` that `process_layer_quant_config` applies.
///
/// `quantized` = names of quantized modules; `unquantized` = names of modules that have
/// quantizers but are not quantized, in module order (routers last). The order of `unquantized`
/// matters (a name already covered by an earlier wildcard adds nothing). Returns the sorted
/// summary (code point order, as Python's `sorted`).
///
/// Algorithm: every quantized name `q` forbids `q` itself and every prefix wildcard `q[:i] + "*"`
/// (including `"*"`). For each unquantized name `L`, candidates are tried in order: for each `.`
/// in `L` (left to right) the single wildcard `[L[:i] + "*"]`, then the pair
/// `[L[:i], L[:i] + ".*"]`; finally `[L]`. A candidate with any forbidden member is skipped; one
/// whose members are all already in the result ends the search adding nothing; otherwise its
/// members are added (of a pair, only `p.*`) and the search ends. With only `p.*` added, a
/// later name with the same pair is not "covered" and adds `p.*` again: the same result.
pub fn summarize_exclude_modules(quantized: &[String], unquantized: &[String]) -> Vec<String> {
    let negative = NegativeSet::new(quantized);
    let mut result: BTreeSet<String> = BTreeSet::new();
    for layer in unquantized {
        for candidate in formatted_candidates(layer) {
            if candidate.iter().any(|w| negative.contains(w)) {
                continue;
            }
            if candidate.iter().all(|w| result.contains(w)) {
                break;
            }
            match candidate.as_slice() {
                // The pair [p, p.*]: only p.* is emitted.
                [_, wildcard] => {
                    result.insert(wildcard.clone());
                }
                _ => result.extend(candidate),
            }
            break;
        }
    }
    result.into_iter().collect()
}

/// ModelOpt's negative set `{q} ∪ {q[:i] + "*" for every i}` over the quantized names `q`,
/// answered without building it (which would cost memory quadratic in name length times the
/// number of modules, hundreds of MB for a 256-expert model): a pattern `X*` is in the set
/// exactly when `X` is a prefix of some quantized name, and a plain name when it is one.
struct NegativeSet<'a> {
    sorted: Vec<&'a str>,
}

impl<'a> NegativeSet<'a> {
    fn new(quantized: &'a [String]) -> Self {
        let mut sorted: Vec<&str> = quantized.iter().map(String::as_str).collect();
        sorted.sort_unstable();
        sorted.dedup();
        NegativeSet { sorted }
    }

    fn contains(&self, pattern: &str) -> bool {
        match pattern.strip_suffix('*') {
            Some(prefix) => {
                // The first name >= prefix is the only candidate that can start with it.
                let at = self.sorted.partition_point(|q| *q < prefix);
                self.sorted.get(at).is_some_and(|q| q.starts_with(prefix))
                    // A quantized name may itself end in '*' (never in practice): exact match.
                    || self.sorted.binary_search(&pattern).is_ok()
            }
            None => self.sorted.binary_search(&pattern).is_ok(),
        }
    }
}

fn formatted_candidates(name: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for (i, c) in name.char_indices() {
        if c == '.' {
            let prefix = &name[..i];
            out.push(vec![format!("{prefix}*")]);
            out.push(vec![prefix.to_string(), format!("{prefix}.*")]);
        }
    }
    out.push(vec![name.to_string()]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The set as ModelOpt builds it, element by element.
    fn brute_negative(quantized: &[String]) -> std::collections::HashSet<String> {
        let mut set = std::collections::HashSet::new();
        for q in quantized {
            set.insert(q.clone());
            for i in q.char_indices().map(|(i, _)| i).chain([q.len()]) {
                set.insert(format!("{}*", &q[..i]));
            }
        }
        set
    }

    #[test]
    fn negative_set_answers_like_the_materialised_one() {
        let quantized: Vec<String> = [
            "model.layers.0.self_attn.q_proj",
            "model.layers.1.mlp.experts.3.w1",
            "lm",
            "a.b",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let brute = brute_negative(&quantized);
        let fast = NegativeSet::new(&quantized);
        let mut probes: Vec<String> = brute.iter().cloned().collect();
        for name in [
            "model.layers.0.self_attn.q_proj",
            "model.layers.1.mlp.experts.3.w1",
            "model.embed_tokens",
            "lm_head",
            "a.bc",
            "a",
        ] {
            for i in name.char_indices().map(|(i, _)| i).chain([name.len()]) {
                probes.push(name[..i].to_string());
                probes.push(format!("{}*", &name[..i]));
                probes.push(format!("{}.*", &name[..i]));
            }
        }
        for p in &probes {
            assert_eq!(fast.contains(p), brute.contains(p), "{p}");
        }
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn llama_quantized(layers: usize, attn: bool, mlp: bool) -> Vec<String> {
        let mut out = Vec::new();
        for l in 0..layers {
            if attn {
                for p in ["q_proj", "k_proj", "v_proj", "o_proj"] {
                    out.push(format!("model.layers.{l}.self_attn.{p}"));
                }
            }
            if mlp {
                for p in ["gate_proj", "up_proj", "down_proj"] {
                    out.push(format!("model.layers.{l}.mlp.{p}"));
                }
            }
        }
        out
    }

    #[test]
    fn llama_default_lists_embed_and_lm_head() {
        let got = summarize_exclude_modules(
            &llama_quantized(2, true, true),
            &strings(&["model.embed_tokens", "lm_head"]),
        );
        assert_eq!(got, strings(&["lm_head", "model.embed_tokens"]));
    }

    #[test]
    fn unquantized_attention_of_every_layer_gives_one_wildcard_per_layer() {
        let layers = 12;
        let mut unq = vec!["model.embed_tokens".to_string()];
        unq.extend(llama_quantized(layers, true, false));
        unq.push("lm_head".to_string());
        let got = summarize_exclude_modules(&llama_quantized(layers, false, true), &unq);
        let mut want = strings(&["lm_head", "model.embed_tokens"]);
        want.extend((0..layers).map(|l| format!("model.layers.{l}.self_attn*")));
        want.sort();
        assert_eq!(got, want);
    }

    #[test]
    fn whole_layer_excluded_gets_pair_when_a_longer_index_shares_the_prefix() {
        // Layer 1 fully unquantized, layers 0 and 2..=11 quantized: "model.layers.1*" would also
        // match "model.layers.10...", so the pair [p, p.*] is chosen and only p.* is added.
        let layers = 12;
        let all = llama_quantized(layers, true, true);
        let (unq, q): (Vec<String>, Vec<String>) = all
            .into_iter()
            .partition(|n| n.starts_with("model.layers.1."));
        let got = summarize_exclude_modules(&q, &unq);
        assert_eq!(got, strings(&["model.layers.1.*"]));

        // Layer 3 fully unquantized out of 4 layers: no other index shares the prefix.
        let all = llama_quantized(4, true, true);
        let (unq, q): (Vec<String>, Vec<String>) = all
            .into_iter()
            .partition(|n| n.starts_with("model.layers.3."));
        assert_eq!(
            summarize_exclude_modules(&q, &unq),
            strings(&["model.layers.3*"])
        );
    }

    #[test]
    fn routers_are_listed_individually() {
        let mut q = Vec::new();
        for l in 0..2 {
            for p in ["q_proj", "k_proj", "v_proj", "o_proj"] {
                q.push(format!("model.layers.{l}.self_attn.{p}"));
            }
            for e in 0..8 {
                for p in ["gate_proj", "up_proj", "down_proj"] {
                    q.push(format!("model.layers.{l}.mlp.experts.{e}.{p}"));
                }
            }
        }
        let unq = strings(&[
            "model.embed_tokens",
            "lm_head",
            "model.layers.0.mlp.gate",
            "model.layers.1.mlp.gate",
        ]);
        assert_eq!(
            summarize_exclude_modules(&q, &unq),
            strings(&[
                "lm_head",
                "model.embed_tokens",
                "model.layers.0.mlp.gate",
                "model.layers.1.mlp.gate"
            ])
        );
    }

    #[test]
    fn name_that_is_a_prefix_of_a_quantized_name() {
        // "a.b" is unquantized while "a.b.c" (its child) is quantized: every wildcard is a
        // prefix of the quantized name, so only the exact name remains.
        let got = summarize_exclude_modules(&strings(&["a.b.c"]), &strings(&["a.b"]));
        assert_eq!(got, strings(&["a.b"]));
        // "x.gate" unquantized, "x.gate_proj" quantized: "x.gate*" is forbidden, but the exact
        // name is fine.
        let got = summarize_exclude_modules(&strings(&["x.gate_proj"]), &strings(&["x.gate"]));
        assert_eq!(got, strings(&["x.gate"]));
    }

    #[test]
    fn covered_names_add_nothing_and_nothing_quantized_gives_star() {
        // With nothing quantized, the first candidate of the first name is "a*" (for "a.x"), and
        // it covers every later name starting with "a".
        let got = summarize_exclude_modules(&[], &strings(&["a.x", "a.y", "b"]));
        assert_eq!(got, strings(&["a*", "b"]));
        // An exact name equal to a quantized one is never listed.
        let got = summarize_exclude_modules(&strings(&["m"]), &strings(&["m"]));
        assert!(got.is_empty());
        // Empty input, empty output.
        assert!(summarize_exclude_modules(&strings(&["a"]), &[]).is_empty());
    }

    #[test]
    fn later_names_covered_by_an_earlier_wildcard() {
        // "p*" is allowed and covers "p.r".
        let unq = strings(&["p.q", "p.r"]);
        assert_eq!(
            summarize_exclude_modules(&strings(&["z"]), &unq),
            strings(&["p*"])
        );
        // "pp.x" forbids "p*": the pair ["p", "p.*"] is chosen for "p.q" (only "p.*" added) and
        // again for "p.r". The result does not depend on the order of the unquantized names.
        let q = strings(&["pp.x"]);
        assert_eq!(summarize_exclude_modules(&q, &unq), strings(&["p.*"]));
        let rev = strings(&["p.r", "p.q"]);
        assert_eq!(summarize_exclude_modules(&q, &rev), strings(&["p.*"]));
    }

    #[test]
    fn non_ascii_names_slice_by_code_point() {
        let got = summarize_exclude_modules(&strings(&["é.a"]), &strings(&["é.b"]));
        assert_eq!(got, strings(&["é.b"]));
    }
}
