//! Python-compatible JSON text: what `json.dumps` / `json.dump` write.
//!
//! ModelOpt writes its metadata with Python's `json` module and transformers writes
//! `config.json` / `generation_config.json` with `json.dumps(d, indent=2, sort_keys=True) + "\n"`.
//! Reproducing those files byte for byte needs Python's exact separators, its float `repr`,
//! and its `ensure_ascii=True` string escaping, which this module implements on top of a
//! [`serde_json::Value`] (built with `preserve_order`, so a map keeps its insertion order the way
//! a Python `dict` does).
//!
//! Limits, inherent to `serde_json::Value` without `arbitrary_precision`: a Value cannot hold
//! NaN/Infinity or integers outside `i64`/`u64` (serde_json reads the latter as floats), so an
//! input carrying those is not reproduced exactly. [`python_float_repr`] itself does handle
//! non-finite values the way `json.dumps` writes them.

use serde_json::{Map, Value};

/// Serialize like Python's `json.dumps(value, indent=indent, sort_keys=sort_keys)` with the
/// default `ensure_ascii=True`.
///
/// Separators are `", "` / `": "` without indent and `","` / `": "` with indent (Python ≥ 3.4);
/// floats are written as Python's `repr` ([`python_float_repr`]), integers as integers, every
/// non-ASCII (and DEL / control) character as `\uXXXX` (lower-case hex, surrogate pairs above the
/// BMP), empty containers as `[]` / `{}` whatever the indent. Key order is the Value's own order
/// unless `sort_keys`, which sorts every object by key (code point order, like Python's `sorted`).
/// `Some(0)` indents with newlines only, as Python does. No trailing newline is written.
pub fn to_python_json(value: &Value, indent: Option<usize>, sort_keys: bool) -> String {
    let mut out = String::new();
    let mut writer = Writer {
        out: &mut out,
        indent,
        sort_keys,
    };
    writer.value(value, 0);
    out
}

/// Python's `repr(float)` as `json.dumps` writes it: the shortest digit string that round-trips,
/// in fixed notation when the decimal exponent `e` (of `d.ddd × 10^e`) is in `-4..16`, otherwise
/// in exponent notation with a sign and at least two exponent digits (`1e-05`, `1e+16`,
/// `1.5e+300`); fixed notation always has a fractional part (`10000.0`, `0.0`, `-0.0`).
/// Non-finite values are written as `NaN`, `Infinity` and `-Infinity`, as `json.dumps` does.
pub fn python_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "NaN".to_string();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.to_string();
    }
    let sign = if x.is_sign_negative() { "-" } else { "" };
    let (digits, exp) = shortest_digits(x.abs());
    let n = digits.len() as i32;
    if !(-4..16).contains(&exp) {
        let (first, rest) = digits.split_at(1);
        let frac = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let exp_sign = if exp < 0 { '-' } else { '+' };
        return format!("{sign}{first}{frac}e{exp_sign}{:02}", exp.unsigned_abs());
    }
    // Fixed notation: the decimal point goes after `exp + 1` digits.
    let point = exp + 1;
    let body = if point <= 0 {
        format!("0.{}{}", "0".repeat(point.unsigned_abs() as usize), digits)
    } else if point >= n {
        format!("{}{}.0", digits, "0".repeat((point - n) as usize))
    } else {
        let (int_part, frac_part) = digits.split_at(point as usize);
        format!("{int_part}.{frac_part}")
    };
    format!("{sign}{body}")
}

/// The digits and decimal exponent of Python's `repr` of a finite `x ≥ 0`: the fewest
/// significant digits that read back as `x` and, among those, the ones nearest to `x` (ties to
/// an even last digit), as David Gay's `dtoa` mode 0 gives them.
///
/// Rust's `{:e}` gives the fewest digits but, when two candidates of that length are equally
/// near, may pick the other one (`689562960270756.25` → `…756.3`, Python `…756.2`); so the
/// length is taken from `{:e}` and the digits from the correctly rounded (ties-to-even)
/// `{:.N$e}` of that length, if that reads back as `x`.
fn shortest_digits(x: f64) -> (String, i32) {
    fn split(sci: &str) -> (String, i32) {
        let (mantissa, exp) = match sci.split_once('e') {
            Some((m, e)) => (m, e.parse::<i32>().unwrap_or(0)),
            None => (sci, 0),
        };
        let digits: String = mantissa.chars().filter(|c| c.is_ascii_digit()).collect();
        (
            if digits.is_empty() {
                "0".to_string()
            } else {
                digits
            },
            exp,
        )
    }
    let shortest = format!("{:e}", x);
    let (digits, exp) = split(&shortest);
    let nearest = format!("{:.*e}", digits.len() - 1, x);
    if nearest != shortest && nearest.parse::<f64>().ok() == Some(x) {
        return split(&nearest);
    }
    (digits, exp)
}

/// Python's `json` string encoding with `ensure_ascii=True`, quotes included.
pub fn python_json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    push_string(&mut out, s);
    out
}

/// Returns `value` with every object's keys sorted (recursively, code point order), the order
/// `json.dumps(..., sort_keys=True)` writes them in.
pub fn sort_keys_recursive(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            let mut sorted = Map::new();
            for (k, v) in entries {
                sorted.insert(k.clone(), sort_keys_recursive(v));
            }
            Value::Object(sorted)
        }
        Value::Array(items) => Value::Array(items.iter().map(sort_keys_recursive).collect()),
        other => other.clone(),
    }
}

/// Python truthiness of a JSON value (`if x:`): null, false, 0, "", [] and {} are false.
pub fn python_truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

struct Writer<'a> {
    out: &'a mut String,
    indent: Option<usize>,
    sort_keys: bool,
}

impl Writer<'_> {
    fn value(&mut self, value: &Value, level: usize) {
        match value {
            Value::Null => self.out.push_str("null"),
            Value::Bool(true) => self.out.push_str("true"),
            Value::Bool(false) => self.out.push_str("false"),
            Value::Number(n) => {
                if let Some(u) = n.as_u64() {
                    self.out.push_str(&u.to_string());
                } else if let Some(i) = n.as_i64() {
                    self.out.push_str(&i.to_string());
                } else {
                    let f = n.as_f64().unwrap_or(f64::NAN);
                    self.out.push_str(&python_float_repr(f));
                }
            }
            Value::String(s) => push_string(self.out, s),
            Value::Array(items) => {
                if items.is_empty() {
                    self.out.push_str("[]");
                    return;
                }
                self.out.push('[');
                for (i, item) in items.iter().enumerate() {
                    self.separator(i, level + 1);
                    self.value(item, level + 1);
                }
                self.close(level);
                self.out.push(']');
            }
            Value::Object(map) => {
                if map.is_empty() {
                    self.out.push_str("{}");
                    return;
                }
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                if self.sort_keys {
                    entries.sort_by(|a, b| a.0.cmp(b.0));
                }
                self.out.push('{');
                for (i, (k, v)) in entries.into_iter().enumerate() {
                    self.separator(i, level + 1);
                    push_string(self.out, k);
                    self.out.push_str(": ");
                    self.value(v, level + 1);
                }
                self.close(level);
                self.out.push('}');
            }
        }
    }

    /// What goes before the `i`-th element of a container whose elements sit at `level`.
    fn separator(&mut self, i: usize, level: usize) {
        match self.indent {
            Some(width) => {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push('\n');
                self.out.push_str(&" ".repeat(width * level));
            }
            None => {
                if i > 0 {
                    self.out.push_str(", ");
                }
            }
        }
    }

    /// What goes before the closing bracket of a container opened at `level`.
    fn close(&mut self, level: usize) {
        if let Some(width) = self.indent {
            self.out.push('\n');
            self.out.push_str(&" ".repeat(width * level));
        }
    }
}

fn push_string(out: &mut String, s: &str) {
    crate::pyjson_text::push_py_json_str(out, s);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn float_repr_matches_python() {
        let cases: &[(f64, &str)] = &[
            (0.1, "0.1"),
            (1e-06, "1e-06"),
            (1e-05, "1e-05"),
            (0.0001, "0.0001"),
            (0.00012345, "0.00012345"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (9999999999999998.0, "9999999999999998.0"),
            (1.5e300, "1.5e+300"),
            (123456789012345680.0, "1.2345678901234568e+17"),
            (1.2345678901234568e+17, "1.2345678901234568e+17"),
            (-0.0, "-0.0"),
            (0.0, "0.0"),
            (5e-324, "5e-324"),
            (10000.0, "10000.0"),
            (1000000.0, "1000000.0"),
            (0.02, "0.02"),
            (0.001, "0.001"),
            (0.95, "0.95"),
            (1e22, "1e+22"),
            (1e-7, "1e-07"),
            (-2.5e-10, "-2.5e-10"),
            (123.456, "123.456"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (f64::NAN, "NaN"),
            (f64::INFINITY, "Infinity"),
            (f64::NEG_INFINITY, "-Infinity"),
        ];
        for &(x, want) in cases {
            assert_eq!(python_float_repr(x), want, "repr of {x:e}");
        }
        // Exactly half-way between two shortest candidates: Python takes the even last digit
        // (Rust's `{:e}` alone would write ...756.3 and ...221.63).
        let ties = [
            ("689562960270756.25", "689562960270756.2"),
            ("-242632705396221.625", "-242632705396221.62"),
            ("2035563664370543.25", "2035563664370543.2"),
        ];
        for (exact, want) in ties {
            let x: f64 = exact.parse().unwrap();
            assert_eq!(python_float_repr(x), want, "repr of {exact}");
        }
    }

    #[test]
    fn numbers_in_values() {
        let v: Value = serde_json::from_str(
            "[1, -3, 1.0, 10000.0, 1e-06, 1e16, -0.0, 18446744073709551615, -9223372036854775808]",
        )
        .unwrap();
        assert_eq!(
            to_python_json(&v, None, false),
            "[1, -3, 1.0, 10000.0, 1e-06, 1e+16, -0.0, 18446744073709551615, -9223372036854775808]"
        );
    }

    #[test]
    fn strings_are_escaped_like_ensure_ascii() {
        let v = json!("a\"b\\c\n\r\t\u{8}\u{c}\u{1}\u{7f}/é€😀");
        assert_eq!(
            to_python_json(&v, None, false),
            r#""a\"b\\c\n\r\t\b\f\u0001\u007f/\u00e9\u20ac\ud83d\ude00""#
        );
        // keys are escaped the same way
        let v = json!({"ü": 1});
        assert_eq!(to_python_json(&v, Some(2), false), "{\n  \"\\u00fc\": 1\n}");
    }

    #[test]
    fn indent_none_two_four_and_empty_containers() {
        let v = json!({"b": [1, {"x": []}], "a": {}, "c": null, "d": [true, false]});
        assert_eq!(
            to_python_json(&v, None, false),
            r#"{"b": [1, {"x": []}], "a": {}, "c": null, "d": [true, false]}"#
        );
        assert_eq!(
            to_python_json(&v, None, true),
            r#"{"a": {}, "b": [1, {"x": []}], "c": null, "d": [true, false]}"#
        );
        assert_eq!(
            to_python_json(&v, Some(2), false),
            "{\n  \"b\": [\n    1,\n    {\n      \"x\": []\n    }\n  ],\n  \"a\": {},\n  \
             \"c\": null,\n  \"d\": [\n    true,\n    false\n  ]\n}"
        );
        assert_eq!(
            to_python_json(&json!({"k": [[], {}]}), Some(4), false),
            "{\n    \"k\": [\n        [],\n        {}\n    ]\n}"
        );
        assert_eq!(
            to_python_json(&json!({"a": [1]}), Some(0), false),
            "{\n\"a\": [\n1\n]\n}"
        );
        assert_eq!(to_python_json(&json!([]), Some(4), false), "[]");
        assert_eq!(to_python_json(&json!({}), None, false), "{}");
    }

    #[test]
    fn sort_keys_sorts_nested_objects_by_code_point() {
        let v = json!({"b": {"z": 1, "a": 2}, "B": 0, "a": [{"y": 1, "x": 2}]});
        assert_eq!(
            to_python_json(&v, None, true),
            r#"{"B": 0, "a": [{"x": 2, "y": 1}], "b": {"a": 2, "z": 1}}"#
        );
        let sorted = sort_keys_recursive(&v);
        assert_eq!(
            to_python_json(&sorted, None, false),
            to_python_json(&v, None, true)
        );
    }

    #[test]
    fn truthiness() {
        for v in [
            json!(null),
            json!(false),
            json!(0),
            json!(0.0),
            json!(""),
            json!([]),
            json!({}),
        ] {
            assert!(!python_truthy(&v), "{v}");
        }
        for v in [
            json!(true),
            json!(1),
            json!(-0.5),
            json!("x"),
            json!([0]),
            json!({"a": 0}),
        ] {
            assert!(python_truthy(&v), "{v}");
        }
    }
}
