//! Duplicate keys in JSON objects.
//!
//! JSON parsers (serde_json included) keep the last of two equal keys without a word, so a
//! safetensors header or an index that names one tensor twice would be read as if the first
//! entry were not there. The readers of headers and indexes call [`first_duplicate`] to refuse
//! such files instead.

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::collections::HashSet;
use std::fmt;

/// The first key that occurs twice in the object reached by following `path` (a list of keys
/// from the top-level object; empty for the top-level object itself), or `None` when there is
/// none, when `path` does not lead to an object, or when `json` is not valid JSON (the caller's
/// own parse reports that).
pub fn first_duplicate(json: &[u8], path: &[&str]) -> Option<String> {
    let mut de = serde_json::Deserializer::from_slice(json);
    Dups { path }.deserialize(&mut de).ok().flatten()
}

/// Looks for a duplicate in the object at `path`.
struct Dups<'p> {
    path: &'p [&'p str],
}

impl<'de> DeserializeSeed<'de> for Dups<'_> {
    type Value = Option<String>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Dups<'_> {
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut seen = HashSet::new();
        let mut found = None;
        while let Some(key) = map.next_key::<String>()? {
            match self.path.split_first() {
                None => {
                    if found.is_none() && !seen.insert(key.clone()) {
                        found = Some(key);
                    }
                    map.next_value::<IgnoredAny>()?;
                }
                Some((first, rest)) if key == *first => {
                    let inner = map.next_value_seed(Dups { path: rest })?;
                    found = found.or(inner);
                }
                Some(_) => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(found)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::first_duplicate;

    #[test]
    fn finds_the_first_duplicate_at_the_path() {
        assert_eq!(
            first_duplicate(br#"{"a":1,"b":2,"a":3}"#, &[]),
            Some("a".into())
        );
        assert_eq!(first_duplicate(br#"{"a":1,"b":{"a":2}}"#, &[]), None);
        assert_eq!(
            first_duplicate(br#"{"b":{"x":[1,{"y":2}],"z":null,"x":"s"}}"#, &["b"]),
            Some("x".into())
        );
        // Duplicates elsewhere do not count, nor do non-objects at the path.
        assert_eq!(first_duplicate(br#"{"m":1,"m":2,"b":{}}"#, &["b"]), None);
        assert_eq!(first_duplicate(br#"{"b":[1,2]}"#, &["b"]), None);
        assert_eq!(first_duplicate(br#"{"b":true,"b":false}"#, &["c"]), None);
        // Escapes are compared decoded: "\u0061" is "a".
        assert_eq!(
            first_duplicate(br#"{"a":1,"\u0061":2}"#, &[]),
            Some("a".into())
        );
    }

    #[test]
    fn invalid_json_is_left_to_the_caller() {
        assert_eq!(first_duplicate(b"{\"a\":1,\"a\"", &[]), None);
        assert_eq!(first_duplicate(b"", &[]), None);
        assert_eq!(first_duplicate(b"\xff", &[]), None);
    }
}
