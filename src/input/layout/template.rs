//! Tensor-name templates with `{layer}` / `{expert}` placeholders, and shell-style globs.
//!
//! A template such as `model.layers.{layer}.mlp.experts.{expert}` matches a module name and
//! captures the decimal layer and expert numbers; it also renders names back.

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    Layer,
    Expert,
}

/// A name template with optional `{layer}` and `{expert}` placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pieces: Vec<Piece>,
}

/// Numbers captured by [`Template::matches`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Captures {
    /// The `{layer}` number, if the template has one.
    pub layer: Option<usize>,
    /// The `{expert}` number, if the template has one.
    pub expert: Option<usize>,
}

impl Template {
    /// Parses a template; `Err` names the unknown placeholder.
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                pieces.push(Piece::Literal(rest[..open].to_string()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("unclosed '{{' in template '{text}'"))?;
            match &rest[open + 1..open + close] {
                "layer" => pieces.push(Piece::Layer),
                "expert" => pieces.push(Piece::Expert),
                other => {
                    return Err(format!(
                        "unknown placeholder '{{{other}}}' in template '{text}' (known: {{layer}}, {{expert}})"
                    ))
                }
            }
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Literal(rest.to_string()));
        }
        Ok(Template { pieces })
    }

    /// Joins two templates with a `.` between them.
    pub fn join(&self, other: &Template) -> Template {
        let mut pieces = self.pieces.clone();
        pieces.push(Piece::Literal(".".to_string()));
        pieces.extend(other.pieces.iter().cloned());
        Template { pieces }.merged()
    }

    fn merged(self) -> Template {
        let mut pieces: Vec<Piece> = Vec::new();
        for piece in self.pieces {
            match (pieces.last_mut(), piece) {
                (Some(Piece::Literal(a)), Piece::Literal(b)) => a.push_str(&b),
                (_, p) => pieces.push(p),
            }
        }
        Template { pieces }
    }

    /// Matches the whole of `name`; placeholders match one or more ASCII digits.
    pub fn matches(&self, name: &str) -> Option<Captures> {
        let mut caps = Captures::default();
        let mut rest = name;
        for piece in &self.pieces {
            match piece {
                Piece::Literal(lit) => rest = rest.strip_prefix(lit.as_str())?,
                Piece::Layer | Piece::Expert => {
                    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
                    if digits == 0 {
                        return None;
                    }
                    let value: usize = rest[..digits].parse().ok()?;
                    if *piece == Piece::Layer {
                        caps.layer = Some(value);
                    } else {
                        caps.expert = Some(value);
                    }
                    rest = &rest[digits..];
                }
            }
        }
        rest.is_empty().then_some(caps)
    }

    /// Renders the template with the given numbers (a missing number renders as `{layer}`).
    pub fn render(&self, layer: Option<usize>, expert: Option<usize>) -> String {
        let mut out = String::new();
        for piece in &self.pieces {
            match (piece, layer, expert) {
                (Piece::Literal(lit), _, _) => out.push_str(lit),
                (Piece::Layer, Some(l), _) => out.push_str(&l.to_string()),
                (Piece::Expert, _, Some(e)) => out.push_str(&e.to_string()),
                (Piece::Layer, None, _) => out.push_str("{layer}"),
                (Piece::Expert, _, None) => out.push_str("{expert}"),
            }
        }
        out
    }
}

/// Shell-style glob over module names: `*` matches any run of characters (dots included),
/// `?` matches one character; everything else is literal. Same as Python's `fnmatch` without
/// bracket classes, which is how ModelOpt matches quantizer names.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    // The common shapes `*x*`, `x*`, `*x`, `x` (no `?`, stars only at the ends) are substring
    // tests: planning a 10^5-tensor checkpoint matches every name against every pattern.
    let inner = pattern.trim_start_matches('*').trim_end_matches('*');
    if inner.is_empty() {
        // Only stars matches anything; the empty pattern only the empty name.
        return !pattern.is_empty() || name.is_empty();
    }
    if !inner.contains(['*', '?']) {
        return match (pattern.starts_with('*'), pattern.ends_with('*')) {
            (true, true) => name.contains(inner),
            (false, true) => name.starts_with(inner),
            (true, false) => name.ends_with(inner),
            (false, false) => name == inner,
        };
    }
    if pattern.is_ascii() && name.is_ascii() {
        glob_slices(pattern.as_bytes(), name.as_bytes())
    } else {
        let p: Vec<char> = pattern.chars().collect();
        let n: Vec<char> = name.chars().collect();
        glob_slices(&p, &n)
    }
}

/// [`glob_match`] over code points (or bytes, for ASCII): one backtracking point, linear in
/// practice, no allocation.
fn glob_slices<T: PartialEq + Copy + From<u8>>(p: &[T], n: &[T]) -> bool {
    let (star_c, any_c) = (T::from(b'*'), T::from(b'?'));
    let (mut pi, mut ni) = (0, 0);
    let (mut star, mut star_n) = (None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == any_c || (p[pi] != star_c && p[pi] == n[ni])) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == star_c {
            star = Some(pi);
            star_n = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            star_n += 1;
            ni = star_n;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == star_c {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_matches_and_renders() {
        let t = Template::parse("model.layers.{layer}.mlp.experts.{expert}.w1").unwrap();
        let caps = t.matches("model.layers.12.mlp.experts.7.w1").unwrap();
        assert_eq!(
            caps,
            Captures {
                layer: Some(12),
                expert: Some(7)
            }
        );
        assert!(t.matches("model.layers.12.mlp.experts.7.w10").is_none());
        assert!(t.matches("model.layers.x.mlp.experts.7.w1").is_none());
        assert!(t.matches("model.layers.1.mlp.experts.7").is_none());
        assert_eq!(
            t.render(Some(3), Some(4)),
            "model.layers.3.mlp.experts.4.w1"
        );
    }

    #[test]
    fn template_join_and_errors() {
        let a = Template::parse("model.layers.{layer}").unwrap();
        let b = Template::parse("self_attn.q_proj").unwrap();
        let j = a.join(&b);
        assert_eq!(
            j.matches("model.layers.0.self_attn.q_proj").unwrap().layer,
            Some(0)
        );
        assert!(Template::parse("model.{layers}")
            .unwrap_err()
            .contains("{layers}"));
        assert!(Template::parse("model.{layer").is_err());
    }

    #[test]
    fn globs() {
        assert!(glob_match("*mlp.gate*", "model.layers.0.mlp.gate"));
        assert!(glob_match("lm_head", "lm_head"));
        assert!(!glob_match("lm_head", "lm_head2"));
        assert!(glob_match(
            "model.layers.?.self_attn*",
            "model.layers.3.self_attn.q_proj"
        ));
        assert!(!glob_match(
            "model.layers.?.self_attn*",
            "model.layers.13.self_attn.q_proj"
        ));
        assert!(glob_match("*", ""));
        assert!(glob_match("**", "abc"));
        assert!(!glob_match("", "a"));
        assert!(glob_match("", ""));
        // The substring fast paths agree with the general matcher.
        let names = [
            "",
            "a",
            "ab.c",
            "x.mlp.gate.w",
            "mlp.gate",
            "é.b",
            "gate.mlp.",
            "aa",
        ];
        let patterns = [
            "*mlp.gate.*",
            "*gate*",
            "mlp*",
            "*.c",
            "a",
            "*a*",
            "**a**",
            "a*",
            "*",
            "*é*",
        ];
        for p in patterns {
            for n in names {
                let p_chars: Vec<char> = p.chars().collect();
                let n_chars: Vec<char> = n.chars().collect();
                assert_eq!(glob_match(p, n), glob_slices(&p_chars, &n_chars), "{p} {n}");
            }
        }
        assert!(glob_match("*a*b", "xxaxxb"));
        assert!(!glob_match("*a*b", "xxaxxbc"));
    }
}
