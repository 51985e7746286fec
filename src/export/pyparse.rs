//! Reading JSON the way Python's `json.loads` reads it, into a [`serde_json::Value`].
//!
//! Why not `serde_json::from_str`: without serde_json's `float_roundtrip` feature its float
//! parser is not correctly rounded (`945.4736971466593` reads as the float next to the right
//! one), and a re-serialised `config.json` would then differ in the last digit. Here every float
//! is read with Rust's correctly rounded `str::parse::<f64>`, as Python's `float()` does.
//!
//! Python semantics kept: the number grammar (`-?(0|[1-9]\d*)(\.\d+)?([eE][-+]?\d+)?`, an
//! integer unless it has a fraction or exponent), strict strings (no raw control characters),
//! `\uXXXX` escapes with surrogate pairs combined, duplicate keys (the last value wins at the
//! first key's position, like a `dict`), nothing but whitespace after the value.
//! Not representable in a `Value`, hence errors: `NaN` / `Infinity` / `-Infinity` (which Python
//! accepts) and floats that overflow to infinity, lone surrogate escapes, nesting deeper than
//! [`MAX_DEPTH`]. Integers outside `i64`/`u64` (exact in Python) are read as floats.

use serde_json::{Map, Number, Value};

/// Deepest nesting of arrays/objects accepted (Python's default recursion limit is about 1000).
pub const MAX_DEPTH: usize = 512;

/// Parses `text` as Python's `json.loads` would. The error says what is wrong and where
/// (line and column, 1-based, as Python reports them).
pub fn from_python_json(text: &str) -> Result<Value, String> {
    let mut p = Parser {
        s: text.as_bytes(),
        text,
        pos: 0,
    };
    p.ws();
    let value = p.value(0)?;
    p.ws();
    if p.pos < p.s.len() {
        return Err(p.err("extra data after the JSON value"));
    }
    Ok(value)
}

struct Parser<'a> {
    s: &'a [u8],
    text: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn err(&self, what: &str) -> String {
        let before = &self.s[..self.pos.min(self.s.len())];
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        let line_start = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let col = String::from_utf8_lossy(&before[line_start..])
            .chars()
            .count()
            + 1;
        format!("{what} at line {line} column {col}")
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, lit: &str) -> bool {
        if self.s[self.pos..].starts_with(lit.as_bytes()) {
            self.pos += lit.len();
            true
        } else {
            false
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, String> {
        match self.peek() {
            None => Err(self.err("expecting a value, found the end of the text")),
            Some(b'{') => self.object(depth + 1),
            Some(b'[') => self.array(depth + 1),
            Some(b'"') => Ok(Value::String(self.string()?)),
            Some(b'-' | b'0'..=b'9') => {
                if self.s[self.pos..].starts_with(b"-Infinity") {
                    return Err(self.err("-Infinity is not supported"));
                }
                self.number()
            }
            Some(b'N') if self.s[self.pos..].starts_with(b"NaN") => {
                Err(self.err("NaN is not supported"))
            }
            Some(b'I') if self.s[self.pos..].starts_with(b"Infinity") => {
                Err(self.err("Infinity is not supported"))
            }
            Some(_) => {
                if self.eat("true") {
                    Ok(Value::Bool(true))
                } else if self.eat("false") {
                    Ok(Value::Bool(false))
                } else if self.eat("null") {
                    Ok(Value::Null)
                } else {
                    Err(self.err("expecting a value"))
                }
            }
        }
    }

    fn object(&mut self, depth: usize) -> Result<Value, String> {
        if depth > MAX_DEPTH {
            return Err(self.err("nesting too deep"));
        }
        self.pos += 1; // '{'
        let mut map = Map::new();
        self.ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(Value::Object(map));
        }
        loop {
            self.ws();
            if self.peek() != Some(b'"') {
                return Err(self.err("expecting a property name enclosed in double quotes"));
            }
            let key = self.string()?;
            self.ws();
            if self.peek() != Some(b':') {
                return Err(self.err("expecting ':' delimiter"));
            }
            self.pos += 1;
            self.ws();
            let value = self.value(depth)?;
            map.insert(key, value);
            self.ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(Value::Object(map));
                }
                _ => return Err(self.err("expecting ',' delimiter")),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Value, String> {
        if depth > MAX_DEPTH {
            return Err(self.err("nesting too deep"));
        }
        self.pos += 1; // '['
        let mut items = Vec::new();
        self.ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(Value::Array(items));
        }
        loop {
            self.ws();
            items.push(self.value(depth)?);
            self.ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Value::Array(items));
                }
                _ => return Err(self.err("expecting ',' delimiter")),
            }
        }
    }

    fn number(&mut self) -> Result<Value, String> {
        let start = self.pos;
        let digits = |p: &mut Self| {
            let from = p.pos;
            while matches!(p.peek(), Some(b'0'..=b'9')) {
                p.pos += 1;
            }
            p.pos - from
        };
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                digits(self);
            }
            _ => return Err(self.err("expecting a value")),
        }
        let mut is_float = false;
        // Python's regex takes "." / "e" only when digits follow; otherwise the number ends
        // there and the leftover character is an error one level up.
        if self.peek() == Some(b'.') && matches!(self.s.get(self.pos + 1), Some(b'0'..=b'9')) {
            self.pos += 1;
            digits(self);
            is_float = true;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            let save = self.pos;
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if digits(self) == 0 {
                self.pos = save;
            } else {
                is_float = true;
            }
        }
        let lexeme = &self.text[start..self.pos];
        if !is_float {
            if let Ok(u) = lexeme.parse::<u64>() {
                return Ok(Value::Number(u.into()));
            }
            if let Ok(i) = lexeme.parse::<i64>() {
                return Ok(Value::Number(i.into()));
            }
        }
        let f: f64 = lexeme.parse().map_err(|_| self.err("invalid number"))?;
        Number::from_f64(f)
            .map(Value::Number)
            .ok_or_else(|| self.err("number out of the range of a double"))
    }

    fn string(&mut self) -> Result<String, String> {
        self.pos += 1; // opening quote
        let mut out = String::new();
        loop {
            let run_start = self.pos;
            while let Some(b) = self.peek() {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.pos += 1;
            }
            out.push_str(&self.text[run_start..self.pos]);
            match self.peek() {
                None => return Err(self.err("unterminated string")),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let esc = self.peek().ok_or_else(|| self.err("unterminated string"))?;
                    self.pos += 1;
                    match esc {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => out.push(self.unicode_escape()?),
                        _ => {
                            self.pos -= 2;
                            return Err(self.err("invalid \\escape"));
                        }
                    }
                }
                Some(_) => return Err(self.err("invalid control character in string")),
            }
        }
    }

    /// After `\u`: four hex digits, and a following `\uDC00`–`\uDFFF` if the first is a high
    /// surrogate.
    fn unicode_escape(&mut self) -> Result<char, String> {
        let first = self.hex4()?;
        let code = if (0xD800..0xDC00).contains(&first) && self.s[self.pos..].starts_with(b"\\u") {
            let save = self.pos;
            self.pos += 2;
            let second = self.hex4()?;
            if (0xDC00..0xE000).contains(&second) {
                0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
            } else {
                self.pos = save;
                first
            }
        } else {
            first
        };
        char::from_u32(code).ok_or_else(|| self.err("lone surrogate escape is not supported"))
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let digits = self
            .s
            .get(self.pos..self.pos + 4)
            .ok_or_else(|| self.err("invalid \\uXXXX escape"))?;
        let mut v = 0u32;
        for &d in digits {
            let nibble = (d as char)
                .to_digit(16)
                .ok_or_else(|| self.err("invalid \\uXXXX escape"))?;
            v = v * 16 + nibble;
        }
        self.pos += 4;
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::pyjson::to_python_json;

    fn roundtrip(text: &str) -> String {
        to_python_json(&from_python_json(text).unwrap(), None, false)
    }

    #[test]
    fn floats_are_correctly_rounded() {
        // serde_json's default parser reads each of these as a neighbouring double.
        for s in [
            "945.4736971466593",
            "7.3843761164766875",
            "-244.10190540625126",
            "0.08838834764831845",
        ] {
            assert_eq!(roundtrip(s), s);
            assert_eq!(from_python_json(s).unwrap().as_f64(), s.parse::<f64>().ok());
        }
    }

    #[test]
    fn numbers_follow_python() {
        assert_eq!(
            roundtrip("[0, -0, 1.0, -0.0, 1e5, 1E-7, 2.50, 12345678901234567890]"),
            "[0, 0, 1.0, -0.0, 100000.0, 1e-07, 2.5, 12345678901234567890]"
        );
        assert_eq!(roundtrip("-9223372036854775808"), "-9223372036854775808");
        // Beyond u64: Python keeps the integer; a Value cannot, so it becomes a float.
        assert_eq!(
            roundtrip("123456789012345678901234"),
            "1.2345678901234569e+23"
        );
        for bad in [
            "01",
            "1.",
            ".5",
            "-",
            "1e",
            "+1",
            "1.5e+",
            "0x10",
            "1e400",
            "NaN",
            "Infinity",
            "-Infinity",
        ] {
            assert!(from_python_json(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn strings_escapes_and_surrogates() {
        let v = from_python_json(r#""a\"\\\/\b\f\n\r\t\u00e9\uD83D\uDE00é😀""#).unwrap();
        assert_eq!(
            v,
            Value::String("a\"\\/\u{8}\u{c}\n\r\t\u{e9}\u{1F600}é😀".into())
        );
        for bad in [
            "\"\\ud800\"",
            "\"\\ude00\"",
            "\"\\x\"",
            "\"a\nb\"",
            "\"abc",
            "\"\\u12\"",
        ] {
            assert!(from_python_json(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn structure_and_duplicates() {
        assert_eq!(
            roundtrip(" {\"b\": 1, \"a\": [true, false, null, {}], \"b\": 2}\n"),
            r#"{"b": 2, "a": [true, false, null, {}]}"#
        );
        for bad in [
            "",
            "{",
            "[1,]",
            "{\"a\" 1}",
            "{\"a\": 1,}",
            "{a: 1}",
            "[1] x",
            "[1 2]",
            "tru",
            "{'a': 1}",
        ] {
            assert!(from_python_json(bad).is_err(), "{bad:?}");
        }
        let deep = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        assert!(from_python_json(&deep).unwrap_err().contains("too deep"));
        let ok = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        assert!(from_python_json(&ok).is_ok());
    }

    #[test]
    fn error_positions_are_line_and_column() {
        let err = from_python_json("{\n  \"a\": 1,\n  \"b\" 2\n}").unwrap_err();
        assert_eq!(err, "expecting ':' delimiter at line 3 column 7");
    }
}
