//! The one JSON string escaper that matches Python's `json.dumps` (`ensure_ascii=True`), shared
//! by the shard index writer and the metadata serializer so both write the bytes Python does.

/// Appends `s` as a JSON string literal exactly as Python's `json.dumps` writes it: `\"`, `\\`,
/// `\n`, `\r`, `\t`, `\b`, `\f`, printable ASCII as is, everything else as `\uXXXX` (UTF-16
/// surrogate pairs above the BMP).
pub fn push_py_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{:04x}", unit));
                }
            }
        }
    }
    out.push('"');
}
