//! A small backtracking matcher for the `re:` patterns of compressed-tensors' `ignore` lists,
//! with Python's `re.match` semantics (anchored at the start, not at the end). Supported:
//! literals, `.`, escapes (`\.`, `\d`, `\w`, `\s`), classes `[a-z_]` / `[^...]`, groups `( )`
//! and `(?: )`, alternation `|`, the quantifiers `*`, `+`, `?`, `{m}`, `{m,n}` (greedy), and
//! the anchors `^` and `$`. Anything else is an error, so an unknown pattern is reported
//! instead of silently matching nothing.

#[derive(Debug, Clone)]
enum Node {
    Char(char),
    Any,
    Class(Vec<(char, char)>, bool),
    Start,
    End,
    Group(Vec<Vec<Node>>),
    Repeat(Box<Node>, usize, usize),
}

/// A parsed pattern.
#[derive(Debug, Clone)]
pub struct Pattern(Vec<Vec<Node>>);

impl Pattern {
    /// Parses `pattern` (without its `re:` prefix).
    pub fn new(pattern: &str) -> Result<Pattern, String> {
        let chars: Vec<char> = pattern.chars().collect();
        let mut i = 0;
        let alts = parse_alts(&chars, &mut i)?;
        if i != chars.len() {
            return Err(format!("unbalanced ')' in regex {pattern:?}"));
        }
        Ok(Pattern(alts))
    }

    /// Python's `re.match(pattern, text) is not None`.
    pub fn matches_prefix(&self, text: &str) -> bool {
        let t: Vec<char> = text.chars().collect();
        let node = Node::Group(self.0.clone());
        match_seq(std::slice::from_ref(&node), &t, 0, &mut |_| true)
    }
}

fn class_escape(c: char) -> Option<(Vec<(char, char)>, bool)> {
    let digits = vec![('0', '9')];
    let word = vec![('a', 'z'), ('A', 'Z'), ('0', '9'), ('_', '_')];
    let space = vec![(' ', ' '), ('\t', '\r')];
    Some(match c {
        'd' => (digits, false),
        'D' => (digits, true),
        'w' => (word, false),
        'W' => (word, true),
        's' => (space, false),
        'S' => (space, true),
        _ => return None,
    })
}

fn parse_alts(c: &[char], i: &mut usize) -> Result<Vec<Vec<Node>>, String> {
    let mut alts = vec![Vec::new()];
    while *i < c.len() {
        let ch = c[*i];
        let atom = match ch {
            ')' => break,
            '|' => {
                *i += 1;
                alts.push(Vec::new());
                continue;
            }
            '(' => {
                *i += 1;
                if c.get(*i) == Some(&'?') {
                    if c.get(*i + 1) != Some(&':') {
                        return Err("only (?: ) groups are supported".into());
                    }
                    *i += 2;
                }
                let inner = parse_alts(c, i)?;
                if c.get(*i) != Some(&')') {
                    return Err("unclosed '('".into());
                }
                *i += 1;
                Node::Group(inner)
            }
            '.' => {
                *i += 1;
                Node::Any
            }
            '^' => {
                *i += 1;
                Node::Start
            }
            '$' => {
                *i += 1;
                Node::End
            }
            '\\' => {
                let e = *c.get(*i + 1).ok_or("trailing backslash")?;
                *i += 2;
                match class_escape(e) {
                    Some((r, neg)) => Node::Class(r, neg),
                    None if e.is_ascii_alphanumeric() => {
                        return Err(format!("unsupported escape \\{e}"))
                    }
                    None => Node::Char(e),
                }
            }
            '[' => {
                *i += 1;
                let neg = c.get(*i) == Some(&'^');
                if neg {
                    *i += 1;
                }
                let mut ranges = Vec::new();
                let mut first = true;
                loop {
                    let a = *c.get(*i).ok_or("unclosed '['")?;
                    if a == ']' && !first {
                        *i += 1;
                        break;
                    }
                    first = false;
                    let a = if a == '\\' {
                        let e = *c.get(*i + 1).ok_or("trailing backslash")?;
                        *i += 2;
                        if let Some((r, false)) = class_escape(e) {
                            ranges.extend(r);
                            continue;
                        }
                        e
                    } else {
                        *i += 1;
                        a
                    };
                    if c.get(*i) == Some(&'-') && c.get(*i + 1).is_some_and(|b| *b != ']') {
                        ranges.push((a, c[*i + 1]));
                        *i += 2;
                    } else {
                        ranges.push((a, a));
                    }
                }
                Node::Class(ranges, neg)
            }
            '*' | '+' | '?' | '{' => return Err(format!("nothing to repeat at {}", *i)),
            _ => {
                *i += 1;
                Node::Char(ch)
            }
        };
        let (lo, hi) = match c.get(*i) {
            Some('*') => (0, usize::MAX),
            Some('+') => (1, usize::MAX),
            Some('?') => (0, 1),
            Some('{') => {
                let end = c[*i..]
                    .iter()
                    .position(|x| *x == '}')
                    .ok_or("unclosed '{'")?
                    + *i;
                let body: String = c[*i + 1..end].iter().collect();
                let num = |s: &str| {
                    s.trim()
                        .parse::<usize>()
                        .map_err(|_| format!("bad {{{body}}}"))
                };
                let (lo, hi) = match body.split_once(',') {
                    Some((a, b)) if b.trim().is_empty() => (num(a)?, usize::MAX),
                    Some((a, b)) => (num(a)?, num(b)?),
                    None => (num(&body)?, num(&body)?),
                };
                *i = end;
                (lo, hi)
            }
            _ => {
                alts.last_mut().unwrap().push(atom);
                continue;
            }
        };
        *i += 1;
        if c.get(*i) == Some(&'?') {
            return Err("lazy quantifiers are not supported".into());
        }
        alts.last_mut()
            .unwrap()
            .push(Node::Repeat(Box::new(atom), lo, hi));
    }
    Ok(alts)
}

/// Matches `nodes` against `t` from `pos`, then calls `k` with the end position.
fn match_seq(nodes: &[Node], t: &[char], pos: usize, k: &mut dyn FnMut(usize) -> bool) -> bool {
    let Some((first, rest)) = nodes.split_first() else {
        return k(pos);
    };
    match first {
        Node::Char(c) => t.get(pos) == Some(c) && match_seq(rest, t, pos + 1, k),
        Node::Any => t.get(pos).is_some_and(|c| *c != '\n') && match_seq(rest, t, pos + 1, k),
        Node::Class(r, neg) => {
            t.get(pos)
                .is_some_and(|c| r.iter().any(|(a, b)| a <= c && c <= b) != *neg)
                && match_seq(rest, t, pos + 1, k)
        }
        Node::Start => pos == 0 && match_seq(rest, t, pos, k),
        Node::End => pos == t.len() && match_seq(rest, t, pos, k),
        Node::Group(alts) => alts
            .iter()
            .any(|alt| match_seq(alt, t, pos, &mut |p| match_seq(rest, t, p, k))),
        Node::Repeat(node, lo, hi) => repeat(node, *lo, *hi, rest, t, pos, k),
    }
}

fn repeat(
    node: &Node,
    lo: usize,
    hi: usize,
    rest: &[Node],
    t: &[char],
    pos: usize,
    k: &mut dyn FnMut(usize) -> bool,
) -> bool {
    // Greedy: one more repetition first (if it consumes input), then the rest.
    if hi > 0
        && match_seq(std::slice::from_ref(node), t, pos, &mut |p| {
            p > pos && repeat(node, lo.saturating_sub(1), hi - 1, rest, t, p, k)
        })
    {
        return true;
    }
    lo == 0 && match_seq(rest, t, pos, k)
}

#[cfg(test)]
mod tests {
    use super::Pattern;

    fn m(p: &str, t: &str) -> bool {
        Pattern::new(p).unwrap().matches_prefix(t)
    }

    #[test]
    fn python_re_match_semantics() {
        assert!(m(".*mlp.gate$", "model.layers.0.mlp.gate"));
        assert!(!m(".*mlp.gate$", "model.layers.0.mlp.gate_proj"));
        assert!(m("model", "model.layers.0")); // anchored at the start only
        assert!(!m("layers", "model.layers.0"));
        assert!(m(
            r".*layers\.(0|1)\.self_attn\.[qkv]_proj$",
            "model.layers.1.self_attn.k_proj"
        ));
        assert!(!m(
            r".*layers\.(0|1)\.self_attn\.[qkv]_proj$",
            "model.layers.2.self_attn.k_proj"
        ));
        assert!(m(
            r".*experts\.\d+\.(?:gate|up)_proj",
            "m.layers.3.mlp.experts.12.up_proj"
        ));
        assert!(m("a{2,3}b", "aab") && !m("a{2,3}b", "ab"));
        assert!(m("[^x]+$", "abc") && !m("[^x]+$", "abxc"));
        assert!(Pattern::new("a(b").is_err() && Pattern::new("*a").is_err());
    }
}
