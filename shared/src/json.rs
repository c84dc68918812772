//! Strict JSON objects: duplicate member names are an error at every depth.
//!
//! `serde_json` keeps the last of duplicate members. For a security token that is a
//! parser-differential hazard (two parsers may read two different `alg`s or `sub`s
//! from the same bytes), so RFC 7515 §4 and RFC 7519 §4 let us reject them instead.

use alloc::string::String;
use core::fmt;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::Error;

/// Parses `bytes` as one JSON object with no duplicate member names at any depth.
pub(crate) fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, Error> {
    match serde_json::from_slice::<Strict>(bytes) {
        Ok(Strict(Value::Object(map))) => Ok(map),
        _ => Err(Error::Json),
    }
}

struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Strict;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Strict, E> {
        Ok(Strict(Value::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Strict, E> {
        Ok(Strict(Value::from(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Strict, E> {
        Ok(Strict(Value::from(v)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Strict, E> {
        Ok(Strict(Value::from(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Strict, E> {
        Ok(Strict(Value::from(v)))
    }
    fn visit_string<E>(self, v: String) -> Result<Strict, E> {
        Ok(Strict(Value::String(v)))
    }
    fn visit_unit<E>(self) -> Result<Strict, E> {
        Ok(Strict(Value::Null))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Strict, A::Error> {
        let mut items = alloc::vec::Vec::new();
        while let Some(Strict(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Strict(Value::Array(items)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Strict, A::Error> {
        let mut members = Map::new();
        while let Some(name) = map.next_key::<String>()? {
            let Strict(value) = map.next_value()?;
            if members.insert(name, value).is_some() {
                return Err(de::Error::custom("duplicate member name"));
            }
        }
        Ok(Strict(Value::Object(members)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_members_are_rejected_at_any_depth() {
        assert_eq!(parse_object(br#"{"a":1,"a":1}"#), Err(Error::Json));
        assert_eq!(parse_object(br#"{"a":{"b":1,"b":2}}"#), Err(Error::Json));
        assert_eq!(parse_object(br#"{"a":[{"b":1,"b":2}]}"#), Err(Error::Json));
    }

    #[test]
    fn only_a_single_object_is_accepted() {
        assert!(parse_object(br#"{"a":[1,"x",null,true,1.5]}"#).is_ok());
        for bad in [
            &b"[]"[..],
            b"1",
            b"\"x\"",
            b"null",
            b"{} {}",
            b"{",
            b"",
            b"{\"a\":\"\\ud800\"}",
        ] {
            assert_eq!(parse_object(bad), Err(Error::Json), "{:?}", bad);
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let mut deep = alloc::vec![b'['; 100_000];
        deep.insert(0, b'{');
        assert_eq!(parse_object(&deep), Err(Error::Json));
    }
}
