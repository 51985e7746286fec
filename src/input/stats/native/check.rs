//! The schema's invariants (§7.3), checked on what is read and on what is written.

use super::{Fail, Stat, REMAKE};
use crate::input::stats::{ModuleStats, WeightAmax};

/// The input statistics present in `m`, widened to f64.
pub(super) fn inputs(m: &ModuleStats) -> Vec<(Stat, Vec<f64>)> {
    let wide = |v: &Vec<f32>| v.iter().map(|&x| f64::from(x)).collect();
    let all = [
        (Stat::InputAmax, m.input_amax.map(|a| vec![f64::from(a)])),
        (Stat::InputAmaxCh, m.input_amax_ch.as_ref().map(wide)),
        (Stat::InputSumSq, m.input_sum_sq.clone()),
        (Stat::InputSum, m.input_sum.clone()),
        (Stat::InputMeanSq, m.input_mean_sq.as_ref().map(wide)),
    ];
    all.into_iter().filter_map(|(s, v)| Some((s, v?))).collect()
}

/// Checks one module's statistics against §7.3: finite, non-negative values (`input_sum` may
/// be negative), no input statistics with `token_count` 0, `input_amax == max(input_amax_ch)`,
/// one channel count. Returns that channel count, if any per-channel statistic is present.
pub(super) fn check(label: &str, suffix: &str, m: &ModuleStats) -> Result<Option<usize>, Fail> {
    let key = |stat: Stat| format!("'{label}.{}'{suffix}", stat.name());
    let weight = match m.weight_amax {
        Some(WeightAmax::Tensor(w)) => Some(w),
        _ => None,
    };
    let others = [
        (Stat::WeightAmax, weight),
        (Stat::KCache, m.k_cache_amax),
        (Stat::VCache, m.v_cache_amax),
    ];
    let others = others
        .into_iter()
        .filter_map(|(s, v)| Some((s, vec![f64::from(v?)])));
    let mut width: Option<(Stat, usize)> = None;
    for (stat, v) in inputs(m).into_iter().chain(others) {
        let signed = stat == Stat::InputSum;
        let bad = v
            .iter()
            .enumerate()
            .find(|(_, x)| !x.is_finite() || (!signed && **x < 0.0));
        if let Some((i, x)) = bad {
            let at = stat.per_channel().then(|| format!(" at channel {i}"));
            let (at, what) = (
                at.unwrap_or_default(),
                ["finite and non-negative", "finite"],
            );
            let what = what[usize::from(signed)];
            return Err((
                format!("{} holds {x}{at}; statistics must be {what}", key(stat)),
                "importers write a missing value or token_count 0 for an uncalibrated module, never NaN, infinite or negative values; re-create the file with `shardquant stats import`",
            ));
        }
        match width {
            Some((first, n)) if stat.per_channel() && n != v.len() => {
                let msg = format!(
                    "{} has {} channels but {} has {n}",
                    key(stat),
                    v.len(),
                    key(first)
                );
                return Err((msg, REMAKE));
            }
            None if stat.per_channel() => width = Some((stat, v.len())),
            _ => {}
        }
    }
    if let Some((stat, _)) = inputs(m).first().filter(|_| m.token_count == Some(0)) {
        return Err((
            format!(
                "{} is present but {} is 0 (the module saw no calibration tokens)",
                key(*stat),
                key(Stat::TokenCount)
            ),
            "a module that saw no tokens has no input statistics; drop them or fix the token count",
        ));
    }
    if let (Some(a), Some(ch)) = (m.input_amax, &m.input_amax_ch) {
        let max = ch.iter().fold(0.0f32, |x, &y| x.max(y));
        if a != max {
            return Err((
                format!(
                    "{} = {a} but the max of {} is {max}; they must be equal",
                    key(Stat::InputAmax),
                    key(Stat::InputAmaxCh)
                ),
                "write input_amax as the max of input_amax_ch, or leave one of them out",
            ));
        }
    }
    Ok(width.map(|(_, n)| n))
}
