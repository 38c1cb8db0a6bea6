//! JSON shapes the request views are built from that serde's derives do not give: objects passed
//! on to the chat template as sent, objects that refuse arrays, and the API's unions (`content`,
//! `stop`, `prompt`, a `seed` of either sign).
//!
//! Each reports a value of the wrong type through serde at the value's own path, so the request
//! module can name the field; none fails with a message of its own.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

/// A JSON object's members in order, some read as typed values on the way (into `typed`) and all
/// kept in `members`, because messages and template kwargs reach the chat template as sent.
pub struct Passthrough<T> {
    pub typed: T,
    pub members: Map<String, Value>,
}

/// The members of an object that [`Passthrough`] reads as typed values.
pub trait TypedMembers: Default {
    /// Reads `key`'s value if it is a typed member and returns what `members` keeps in its place.
    fn read<'de, A: MapAccess<'de>>(
        &mut self,
        key: &str,
        map: &mut A,
    ) -> Result<Option<Value>, A::Error>;
}

impl<'de, T: TypedMembers> Deserialize<'de> for Passthrough<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: TypedMembers> Visitor<'de> for V<T> {
            type Value = Passthrough<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut typed = T::default();
                let mut members = Map::new();
                while let Some(key) = map.next_key::<String>()? {
                    let kept = match typed.read(&key, &mut map)? {
                        Some(v) => v,
                        None => map.next_value()?,
                    };
                    members.insert(key, kept);
                }
                Ok(Passthrough { typed, members })
            }
        }
        d.deserialize_map(V(PhantomData))
    }
}

/// `T` read from a JSON object only: serde's derived structs would also take an array of their
/// field values, which OpenAI's API never sends.
pub struct Object<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Object<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(Object)
            }
        }
        d.deserialize_map(V(PhantomData))
    }
}

/// A string or an array of `T`: a message's `content` (text, or content parts joined for the
/// template) and `stop` (one stop string or several).
pub enum TextOr<T> {
    Text(String),
    List(Vec<T>),
}

#[derive(Deserialize)]
pub struct Part {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// Any JSON: only a text part needs it to be a string.
    pub text: Option<Value>,
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for TextOr<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = TextOr<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an array")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(TextOr::Text(s.to_owned()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                Vec::deserialize(de::value::SeqAccessDeserializer::new(seq)).map(TextOr::List)
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// `seed`: any JSON integer, signed or not; a negative one wraps into the `u64` seed.
pub struct Seed(pub u64);

impl<'de> Deserialize<'de> for Seed {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Seed;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Seed, E> {
                Ok(Seed(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Seed, E> {
                Ok(Seed(v as u64))
            }
        }
        d.deserialize_any(V)
    }
}

/// The legacy `prompt`, by shape. Reading it never fails: which shapes are refused, and with what
/// message, is decided by the handler.
pub enum Prompt {
    /// A string, or an array holding one string.
    Text(String),
    /// Token ids, at `param` (`prompt`, or `prompt[0]` for an array holding one array); `None`
    /// where an entry is not an unsigned integer.
    Ids {
        param: &'static str,
        ids: Vec<Option<u64>>,
    },
    /// Any other array: several prompts, which are not supported.
    Batch,
    /// Neither a string nor an array.
    Other,
}

impl<'de> Deserialize<'de> for Prompt {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let ids = |a: &[Value]| a.iter().map(Value::as_u64).collect();
        Ok(match Value::deserialize(d)? {
            Value::String(s) => Prompt::Text(s),
            Value::Array(a) => match a.as_slice() {
                [Value::String(s)] => Prompt::Text(s.clone()),
                [Value::Array(inner)] => Prompt::Ids {
                    param: "prompt[0]",
                    ids: ids(inner),
                },
                all if !all.is_empty() && all.iter().all(Value::is_number) => Prompt::Ids {
                    param: "prompt",
                    ids: ids(all),
                },
                _ => Prompt::Batch,
            },
            _ => Prompt::Other,
        })
    }
}

/// Reads `Some` for any present value, `null` included, which then fails as the wrong type.
pub fn not_null<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}
