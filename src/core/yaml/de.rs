//! Typed values straight from a plain document's recorded events, so the file is not parsed again.
//!
//! This is a fast path, not a second YAML reader: it reads only what it can read exactly as
//! serde-saphyr would (plain decimal numbers, `true`/`false`, strings that are not null,
//! one-key maps for enum variants, mappings with distinct plain keys) and gives up on anything
//! else, unknown fields included. Giving up costs nothing but time: the caller then asks
//! serde-saphyr, whose value and messages are the ones users see. Debug builds compare the two
//! on every document that gets this far.

use std::fmt;

use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, Visitor};

use super::{Ev, Events, Item};

/// Builds a `T` from `events` (a complete plain document of `source`), or `None` when
/// serde-saphyr must decide.
pub(super) fn from_events<T: DeserializeOwned>(events: &Events, source: &str) -> Option<T> {
    let mut de = Reader {
        events,
        source,
        at: 0,
    };
    let value = T::deserialize(&mut de).ok()?;
    (de.at == events.list.len()).then_some(value)
}

/// Why the fast path gave up; what it was is serde-saphyr's to say.
#[derive(Debug)]
struct GiveUp;

impl fmt::Display for GiveUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("left to serde-saphyr")
    }
}

impl std::error::Error for GiveUp {}

impl de::Error for GiveUp {
    fn custom<M: fmt::Display>(_: M) -> Self {
        GiveUp
    }
}

type Result<T> = std::result::Result<T, GiveUp>;

struct Reader<'d> {
    events: &'d Events,
    source: &'d str,
    at: usize,
}

/// Plain scalars that YAML reads as null; serde-saphyr refuses them as strings.
fn is_null(text: &str) -> bool {
    matches!(text, "" | "~" | "null" | "Null" | "NULL")
}

/// A decimal integer as serde-saphyr reads it without a doubt: `0`, or digits not starting
/// with `0`, with a `-` before them when `signed`.
fn is_decimal(text: &str, signed: bool) -> bool {
    let digits = match text.strip_prefix('-') {
        Some(digits) if signed => digits,
        Some(_) => return false,
        None => text,
    };
    !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'))
}

impl<'d> Reader<'d> {
    fn peek(&self) -> Result<&'d Ev> {
        self.events.list.get(self.at).ok_or(GiveUp)
    }

    fn next(&mut self) -> Result<&'d Ev> {
        let ev = self.peek()?;
        self.at += 1;
        Ok(ev)
    }

    /// The next event's text and whether it is plain, when it is a scalar.
    fn scalar(&self) -> Result<(&'d str, bool)> {
        let ev = self.peek()?;
        match ev.item {
            Item::Scalar { plain, .. } => Ok((self.events.text(ev, self.source), plain)),
            _ => Err(GiveUp),
        }
    }

    /// Takes a scalar that reads as a string.
    fn string(&mut self) -> Result<&'d str> {
        let (text, plain) = self.scalar()?;
        if plain && is_null(text) {
            return Err(GiveUp);
        }
        self.at += 1;
        Ok(text)
    }

    /// Takes a plain scalar for a number or a boolean.
    fn plain(&mut self) -> Result<&'d str> {
        match self.scalar()? {
            (text, true) => {
                self.at += 1;
                Ok(text)
            }
            _ => Err(GiveUp),
        }
    }

    /// Takes a decimal integer; `signed` for signed targets (serde-saphyr refuses even `-0`
    /// for unsigned ones).
    fn integer<N: TryFrom<i64>>(&mut self, signed: bool) -> Result<N> {
        let text = self.plain()?;
        if !is_decimal(text, signed) {
            return Err(GiveUp);
        }
        let n: i64 = text.parse().map_err(|_| GiveUp)?;
        N::try_from(n).map_err(|_| GiveUp)
    }

    fn end(&mut self) -> Result<()> {
        match self.next()?.item {
            Item::End => Ok(()),
            _ => Err(GiveUp),
        }
    }

    /// Opens the mapping that comes next, checking that its keys are plain, distinct strings
    /// and not merge keys. Returns its number of entries.
    fn open_map(&mut self) -> Result<usize> {
        let Item::MapStart { end, children } = self.peek()?.item else {
            return Err(GiveUp);
        };
        let mut keys: Vec<&str> = Vec::with_capacity(children as usize / 2);
        let mut i = self.at + 1;
        while i < end as usize {
            let ev = &self.events.list[i];
            let Item::Scalar { plain: true, .. } = ev.item else {
                return Err(GiveUp);
            };
            let key = self.events.text(ev, self.source);
            if is_null(key) || key == "<<" || keys.contains(&key) {
                return Err(GiveUp);
            }
            keys.push(key);
            i = match self.events.list.get(i + 1).map(|v| v.item) {
                Some(Item::MapStart { end, .. } | Item::SeqStart { end, .. }) => end as usize + 1,
                Some(Item::Scalar { .. }) => i + 2,
                _ => return Err(GiveUp),
            };
        }
        self.at += 1;
        Ok(keys.len())
    }
}

impl<'de> de::Deserializer<'de> for &mut Reader<'de> {
    type Error = GiveUp;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value> {
        Err(GiveUp)
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.plain()? {
            "true" => visitor.visit_bool(true),
            "false" => visitor.visit_bool(false),
            _ => Err(GiveUp),
        }
    }

    fn deserialize_i8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_i8(self.integer(true)?)
    }

    fn deserialize_i16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_i16(self.integer(true)?)
    }

    fn deserialize_i32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_i32(self.integer(true)?)
    }

    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_i64(self.integer(true)?)
    }

    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_u8(self.integer(false)?)
    }

    fn deserialize_u16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_u16(self.integer(false)?)
    }

    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_u32(self.integer(false)?)
    }

    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_u64(self.integer(false)?)
    }

    fn deserialize_f32<V: Visitor<'de>>(self, _: V) -> Result<V::Value> {
        Err(GiveUp)
    }

    /// `-12`, `0.5`: digits with at most one point inside, read as Rust (and serde-saphyr) do.
    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let text = self.plain()?;
        let digits = text.strip_prefix('-').unwrap_or(text);
        let (whole, fraction) = digits.split_once('.').unwrap_or((digits, "0"));
        let decimal = |d: &str| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit());
        if !(decimal(whole) && decimal(fraction)) {
            return Err(GiveUp);
        }
        visitor.visit_f64(text.parse().map_err(|_| GiveUp)?)
    }

    fn deserialize_char<V: Visitor<'de>>(self, _: V) -> Result<V::Value> {
        Err(GiveUp)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_borrowed_str(self.string()?)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, _: V) -> Result<V::Value> {
        Err(GiveUp)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, _: V) -> Result<V::Value> {
        Err(GiveUp)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.scalar() {
            Ok((text, true)) if is_null(text) => {
                self.at += 1;
                visitor.visit_none()
            }
            _ => match self.peek()?.item {
                Item::Scalar { .. } | Item::MapStart { .. } | Item::SeqStart { .. } => {
                    visitor.visit_some(self)
                }
                Item::End | Item::Alias => Err(GiveUp),
            },
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, _: V) -> Result<V::Value> {
        Err(GiveUp)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(self, _: &'static str, _: V) -> Result<V::Value> {
        Err(GiveUp)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: V,
    ) -> Result<V::Value> {
        Err(GiveUp)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let Item::SeqStart { children, .. } = self.next()?.item else {
            return Err(GiveUp);
        };
        let mut items = Items {
            de: &mut *self,
            left: children as usize,
        };
        let value = visitor.visit_seq(&mut items)?;
        if items.left > 0 {
            return Err(GiveUp);
        }
        self.end()?;
        Ok(value)
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _: usize, _: V) -> Result<V::Value> {
        Err(GiveUp)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: usize,
        _: V,
    ) -> Result<V::Value> {
        Err(GiveUp)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let entries = self.open_map()?;
        let mut entries = Entries {
            de: &mut *self,
            left: entries,
        };
        let value = visitor.visit_map(&mut entries)?;
        if entries.left > 0 {
            return Err(GiveUp);
        }
        self.end()?;
        Ok(value)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        self.deserialize_map(visitor)
    }

    /// `variant` (a unit variant) or `{variant: value}`.
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        match self.peek()?.item {
            Item::Scalar { .. } => {
                let variant = self.string()?;
                visitor.visit_enum(Variant {
                    de: self,
                    variant,
                    in_map: false,
                })
            }
            Item::MapStart { .. } => {
                if self.open_map()? != 1 {
                    return Err(GiveUp);
                }
                let variant = self.string()?;
                visitor.visit_enum(Variant {
                    de: self,
                    variant,
                    in_map: true,
                })
            }
            _ => Err(GiveUp),
        }
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_str(visitor)
    }

    /// An unknown field: serde-saphyr reports it, with the rest.
    fn deserialize_ignored_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value> {
        Err(GiveUp)
    }
}

/// The items of a sequence.
struct Items<'r, 'd> {
    de: &'r mut Reader<'d>,
    left: usize,
}

impl<'de> de::SeqAccess<'de> for Items<'_, 'de> {
    type Error = GiveUp;

    fn next_element_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<Option<S::Value>> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.de).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

/// The entries of a mapping, its keys checked by [`Reader::open_map`].
struct Entries<'r, 'd> {
    de: &'r mut Reader<'d>,
    left: usize,
}

impl<'de> de::MapAccess<'de> for Entries<'_, 'de> {
    type Error = GiveUp;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.de).map(Some)
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value> {
        seed.deserialize(&mut *self.de)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

/// An enum's variant: a scalar (`in_map` false) or the key of a one-key mapping.
struct Variant<'r, 'd> {
    de: &'r mut Reader<'d>,
    variant: &'d str,
    in_map: bool,
}

impl<'de, 'r> de::EnumAccess<'de> for Variant<'r, 'de> {
    type Error = GiveUp;
    type Variant = Self;

    fn variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<(S::Value, Self)> {
        let name = seed.deserialize(IntoDeserializer::<GiveUp>::into_deserializer(self.variant))?;
        Ok((name, self))
    }
}

impl<'de> de::VariantAccess<'de> for Variant<'_, 'de> {
    type Error = GiveUp;

    /// `variant`, or `{variant: null}`.
    fn unit_variant(self) -> Result<()> {
        if self.in_map {
            match self.de.plain()? {
                text if is_null(text) => self.de.end()?,
                _ => return Err(GiveUp),
            }
        }
        Ok(())
    }

    fn newtype_variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<S::Value> {
        if !self.in_map {
            return Err(GiveUp);
        }
        let value = seed.deserialize(&mut *self.de)?;
        self.de.end()?;
        Ok(value)
    }

    fn tuple_variant<V: Visitor<'de>>(self, _: usize, _: V) -> Result<V::Value> {
        Err(GiveUp)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        if !self.in_map {
            return Err(GiveUp);
        }
        let value = de::Deserializer::deserialize_struct(&mut *self.de, "", fields, visitor)?;
        self.de.end()?;
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use serde::Deserialize;

    use super::*;
    use crate::core::yaml::documents;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        #[serde(default)]
        text: Option<String>,
        #[serde(default)]
        name: String,
        #[serde(default)]
        count: Option<u32>,
        #[serde(default)]
        weight: Option<i64>,
        #[serde(default)]
        ratio: Option<f64>,
        #[serde(default)]
        on: Option<bool>,
        #[serde(default)]
        mode: Option<Mode>,
        #[serde(default)]
        steps: Vec<Step>,
        #[serde(default)]
        labels: BTreeMap<String, String>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "camelCase")]
    enum Mode {
        Fast,
        Slow,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "camelCase")]
    enum Step {
        SetWeight(i64),
        Pause(Pause),
        Stop,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Pause {
        #[serde(default)]
        duration: Option<String>,
    }

    /// Whether the walk's record gave `text`'s value; when it did, serde-saphyr must give the
    /// same value and report no unknown field.
    fn fast(text: &str) -> bool {
        let (docs, diags) = documents("f.yaml", text);
        assert!(diags.is_empty(), "{text}: {diags:?}");
        let doc = &docs[0];
        let built = (doc.alone && doc.events.plain)
            .then(|| from_events::<Probe>(&doc.events, doc.source))
            .flatten();
        if let Some(value) = &built {
            let slow = doc.deserialize_text::<Probe>("f.yaml", &doc.paths());
            assert!(
                matches!(&slow, Ok((v, unknown)) if v == value && unknown.is_empty()),
                "{text}: {value:?} but serde-saphyr says {slow:?}"
            );
        }
        built.is_some()
    }

    #[test]
    fn reads_plain_documents_as_serde_saphyr_does() {
        for text in [
            "name: web\n",
            "text: ~\n",
            "text: null\n",
            "text:\n",
            "text: Null\n",
            "text: NULL\n",
            "text: 'null'\n",
            "text: \"~\"\n",
            "text: 1.5\n",
            "text: true\n",
            "text: |\n  two\n  lines\n",
            "text: >\n  folded\n  text\n",
            "text: \"esc\\taped\"\n",
            "text: plain\n  folded\n",
            "count: 0\n",
            "count: 42\n",
            "weight: -5\n",
            "weight: -0\n",
            "ratio: 0.25\n",
            "ratio: -3\n",
            "ratio: 007.5\n",
            "on: true\n",
            "on: false\n",
            "mode: fast\n",
            "mode: \"slow\"\n",
            "mode: {fast: ~}\n",
            "steps: [{setWeight: 5}, {pause: {}}, {pause: {duration: 5m}}, stop, {stop: null}]\n",
            "labels: {a: b, c: \"d\", e: 5}\n",
            "# a comment\n\nname: web\nlabels:\n  team: x\nsteps:\n  - setWeight: 10\n  - pause: {duration: 1m}\n",
            "---\nname: web\n...\n",
        ] {
            assert!(fast(text), "{text}");
        }
    }

    #[test]
    fn leaves_the_rest_to_serde_saphyr() {
        for text in [
            "name: ~\n",
            "on: yes\n",
            "on: True\n",
            "count: -0\n",
            "count: +5\n",
            "count: 007\n",
            "count: 0x10\n",
            "count: \"5\"\n",
            "weight: 1_000\n",
            "ratio: 1e3\n",
            "ratio: .5\n",
            "ratio: .inf\n",
            "name: a\nname: b\n",
            "name: a\n\"name\": b\n",
            "<<: {name: a}\n",
            "text: &a x\nname: *a\n",
            "text: !!str 5\n",
            "nme: web\n",
            "? [a]\n: b\n",
            "%YAML 1.2\n---\nname: a\n",
            "name: a\n---\nname: b\n",
            "steps: [{setWeight: 5, pause: {}}]\n",
            "steps: [setWeight]\n",
            "steps: [{pause: ~}]\n",
            "mode: {fast: 1}\n",
            "labels: {~: b}\n",
            "- a\n",
        ] {
            assert!(!fast(text), "{text}");
        }
    }

    fn field() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "text", "name", "count", "weight", "ratio", "on", "mode", "steps", "labels", "other",
        ])
    }

    fn value() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "~",
            "null",
            "Null",
            "",
            "0",
            "-0",
            "007",
            "+1",
            "1_0",
            "0x1F",
            "1.5",
            ".5",
            "-2.50",
            "1e3",
            "true",
            "True",
            "yes",
            "fast",
            "Slow",
            "\"x\"",
            "'null'",
            "a b",
            "\"5\"",
            "[]",
            "{}",
            "[stop, {setWeight: -3}, {pause: {duration: 1m}}]",
            "[{stop: ~}, {pause: ~}]",
            "{fast: ~}",
            "{a: b, c: 1}",
            "{a: b, a: c}",
            "&x 1",
            "*x",
        ])
    }

    proptest! {
        #[test]
        fn agrees_with_serde_saphyr(entries in prop::collection::vec((field(), value()), 0..6)) {
            let text: String = entries.iter().map(|(k, v)| format!("{k}: {v}\n")).collect();
            let (docs, diags) = documents("f.yaml", &text);
            if diags.is_empty() && !docs.is_empty() {
                fast(&text);
            }
        }
    }
}
