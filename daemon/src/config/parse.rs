//! The file's shape: which tables and keys it may hold, read by the `toml` crate into
//! serde-derived structs (`deny_unknown_fields`), every value kept with its span.
//!
//! Leaves are `Spanned<toml::Value>` rather than typed fields so that `values` can say
//! "expected an integer, found a string" and check ranges at the value's own position; serde's
//! "invalid type: string \"10\", expected i64" would be the only other wording on offer.
//!
//! Kept as a hand walk over the parsed document ([`DeTable`]), for what toml does not report:
//! * the dotted path of the offending key with array indices (`channel[1].capcity`): toml's
//!   error carries only a span and a message (its key list is private and has no indices), so
//!   the path is found by looking up the error's span in the document;
//! * which table an unknown key sits in, for the "did you mean" and "belongs in [logging]" hints;
//! * `version` before anything else, so a file for another version is refused as such and not
//!   for the keys this broker does not know (serde reports fields in file order);
//! * that `[per_uid]`, `[logging]` and each `[[channel]]` are tables: serde-derived structs also
//!   take an array, by position, and the message would not say "double brackets".

use super::error::{describe, unknown_key, KnownKeys, Source};
use super::ConfigError;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use std::ops::Range;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// Any value, with where it is; its type is checked by `values`.
pub(super) type Leaf = Spanned<toml::Value>;

/// The only config format version this broker reads.
pub(super) const CONFIG_VERSION: i64 = 1;

/// The top level of the file. Field order is the order keys are listed in hints.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Document {
    pub version: Option<Leaf>,
    pub socket: Option<Leaf>,
    pub socket_mode: Option<Leaf>,
    pub default_capacity: Option<Leaf>,
    pub max_capacity: Option<Leaf>,
    pub max_channels: Option<Leaf>,
    pub max_clients: Option<Leaf>,
    pub admin_groups: Option<Spanned<StringList>>,
    pub max_ring_bytes: Option<Leaf>,
    pub request_timeout: Option<Leaf>,
    pub per_uid: Option<PerUidTable>,
    pub logging: Option<LoggingTable>,
    /// `[[channel]]` sections, or `channel = [{ ... }, ...]` written inline.
    pub channel: Option<Vec<Spanned<ChannelTable>>>,
}

/// `[per_uid]`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PerUidTable {
    pub max_clients: Option<Leaf>,
    pub max_channels: Option<Leaf>,
    pub max_ring_bytes: Option<Leaf>,
    pub max_attaches_per_sec: Option<Leaf>,
    pub max_durable_consumers: Option<Leaf>,
}

/// `[logging]`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LoggingTable {
    pub level: Option<Leaf>,
    pub format: Option<Leaf>,
}

/// One `[[channel]]`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ChannelTable {
    pub name: Option<Leaf>,
    pub capacity: Option<Leaf>,
    pub producers: Option<Spanned<StringList>>,
    pub consumers: Option<Spanned<StringList>>,
    pub max_producers: Option<Leaf>,
    pub max_consumers: Option<Leaf>,
    pub slow_consumer: Option<Leaf>,
}

/// A list of strings as written: one string (a one-entry list), or an array whose elements
/// keep their own spans so an unknown user is reported at its line; anything else is kept as
/// its type's name for the error.
pub(super) enum StringList {
    One(String),
    Many(Vec<Leaf>),
    Other(&'static str),
}

impl<'de> Deserialize<'de> for StringList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ListVisitor;
        impl<'de> Visitor<'de> for ListVisitor {
            type Value = StringList;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or an array of strings")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<StringList, E> {
                Ok(StringList::One(text.to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<StringList, A::Error> {
                let mut elements = Vec::new();
                while let Some(element) = seq.next_element::<Leaf>()? {
                    elements.push(element);
                }
                Ok(StringList::Many(elements))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<StringList, E> {
                Ok(StringList::Other("an integer"))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<StringList, E> {
                Ok(StringList::Other("a float"))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<StringList, E> {
                Ok(StringList::Other("a boolean"))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<StringList, A::Error> {
                // toml hands a date/time over as a map too; let toml::Value tell them apart.
                let value = toml::Value::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(StringList::Other(describe(value.type_str())))
            }
        }
        deserializer.deserialize_any(ListVisitor)
    }
}

/// Parses the text into a [`Document`]; syntax errors, unknown keys and wrongly shaped tables
/// come back as errors that name their line and key.
pub(super) fn read(source: Source<'_>) -> Result<Document, ConfigError> {
    let parsed = DeTable::parse(source.text).map_err(|err| {
        // One line, always something to read: parser messages can be empty or span lines.
        let mut message = match err.message().trim() {
            "" => "invalid TOML".to_string(),
            text => text.lines().map(str::trim).collect::<Vec<_>>().join("; "),
        };
        // toml points at the second key but does not name it.
        if message == "duplicate key" {
            if let Some(key) = err.span().and_then(|span| source.text.get(span)) {
                message = format!("duplicate key `{key}`");
            }
        }
        source.error(err.span(), None, message)
    })?;
    check_version(source, parsed.get_ref())?;
    check_shapes(source, parsed.get_ref())?;
    let document = Document::deserialize(toml::de::Deserializer::from(parsed.clone()))
        .map_err(|err| explain(source, parsed.get_ref(), &err))?;
    if document.version.is_none() {
        return Err(source.error(
            Some(0..0),
            Some("version"),
            format!(
                "missing: every config file needs `version = {CONFIG_VERSION}` (put it at the top)"
            ),
        ));
    }
    Ok(document)
}

/// A file for another version may use keys this broker does not know; say so first.
fn check_version(source: Source<'_>, root: &DeTable<'_>) -> Result<(), ConfigError> {
    let Some(value) = top_level(root, "version") else {
        return Ok(());
    };
    let found = match value.get_ref() {
        DeValue::Integer(number) => match i64::from_str_radix(number.as_str(), number.radix()) {
            Ok(CONFIG_VERSION) => return Ok(()),
            Ok(other) => other.to_string(),
            Err(_) => number.to_string(),
        },
        other => {
            return Err(source.error(
                Some(value.span()),
                Some("version"),
                format!(
                    "expected an integer (1), found {}",
                    describe(other.type_str())
                ),
            ))
        }
    };
    Err(source.error(
        Some(value.span()),
        Some("version"),
        format!("unsupported config version {found}, this broker reads version {CONFIG_VERSION}"),
    ))
}

/// The tables must be tables: serde would also fill a struct from an array, by position.
fn check_shapes(source: Source<'_>, root: &DeTable<'_>) -> Result<(), ConfigError> {
    for (key, section) in [("per_uid", "[per_uid]"), ("logging", "[logging]")] {
        if let Some(value) = top_level(root, key) {
            if !matches!(value.get_ref(), DeValue::Table(_)) {
                return Err(source.error(
                    Some(value.span()),
                    Some(key),
                    format!(
                        "expected a table ({section}), found {}",
                        describe(value.get_ref().type_str())
                    ),
                ));
            }
        }
    }
    let Some(channels) = top_level(root, "channel") else {
        return Ok(());
    };
    let array = match channels.get_ref() {
        DeValue::Array(array) => array,
        DeValue::Table(_) => {
            return Err(source.error(
                Some(channels.span()),
                Some("channel"),
                "channels are an array of tables: write each one as a [[channel]] section (double brackets)",
            ))
        }
        other => {
            return Err(source.error(
                Some(channels.span()),
                Some("channel"),
                format!(
                    "expected [[channel]] tables, found {}",
                    describe(other.type_str())
                ),
            ))
        }
    };
    for (index, element) in array.iter().enumerate() {
        if !matches!(element.get_ref(), DeValue::Table(_)) {
            return Err(source.error(
                Some(element.span()),
                Some(&format!("channel[{index}]")),
                format!(
                    "expected a table, found {}",
                    describe(element.get_ref().type_str())
                ),
            ));
        }
    }
    Ok(())
}

/// A top-level value by key.
fn top_level<'d, 'i>(root: &'d DeTable<'i>, key: &str) -> Option<&'d Spanned<DeValue<'i>>> {
    root.iter()
        .find(|(name, _)| name.get_ref() == key)
        .map(|(_, value)| value)
}

/// Where toml's error points: the dotted path of the key, the key itself, and the value.
struct Located<'d, 'i> {
    path: String,
    /// The table path the key sits in (`""` for the top level).
    parent: String,
    key: &'d str,
    value: &'d DeValue<'i>,
}

/// The deepest key or value in `table` whose key or value span is `span`.
fn locate<'d, 'i>(
    table: &'d DeTable<'i>,
    span: &Range<usize>,
    prefix: &str,
) -> Option<Located<'d, 'i>> {
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.get_ref().to_string()
        } else {
            format!("{prefix}.{}", key.get_ref())
        };
        if let Some(found) = locate_in(value.get_ref(), span, &path, key.get_ref()) {
            return Some(found);
        }
        if key.span() == *span || value.span() == *span {
            return Some(Located {
                path,
                parent: prefix.to_string(),
                key: key.get_ref(),
                value: value.get_ref(),
            });
        }
    }
    None
}

/// [`locate`] inside a value: a table's keys, or an array's elements (`path[index]`).
fn locate_in<'d, 'i>(
    value: &'d DeValue<'i>,
    span: &Range<usize>,
    path: &str,
    key: &'d str,
) -> Option<Located<'d, 'i>> {
    match value {
        DeValue::Table(table) => locate(table, span, path),
        DeValue::Array(array) => array.iter().enumerate().find_map(|(index, element)| {
            let element_path = format!("{path}[{index}]");
            locate_in(element.get_ref(), span, &element_path, key).or_else(|| {
                (element.span() == *span).then(|| Located {
                    path: element_path,
                    parent: path.to_string(),
                    key,
                    value: element.get_ref(),
                })
            })
        }),
        _ => None,
    }
}

/// The keys each table takes, read from the derived structs so hints cannot drift from them.
pub(super) fn known_keys() -> KnownKeys {
    KnownKeys {
        top: fields::<Document>(),
        channel: fields::<ChannelTable>(),
        logging: fields::<LoggingTable>(),
    }
}

/// Turns toml's error (a span and a message) into ours, with key path and hint.
fn explain(source: Source<'_>, root: &DeTable<'_>, err: &toml::de::Error) -> ConfigError {
    let span = err.span();
    let Some(found) = span.as_ref().and_then(|span| locate(root, span, "")) else {
        return source.error(span, None, err.message());
    };
    if !err.message().starts_with("unknown field") {
        // The parser reads integers of any length; one that does not fit TOML's 64 bits is
        // refused only when its value is taken.
        let message = match found.value {
            DeValue::Integer(_) => "number too large to fit in target type",
            _ => err.message().trim(),
        };
        return source.error(span, Some(&found.path), message);
    }
    let keys = known_keys();
    let own = match found.parent.as_str() {
        "" => keys.top,
        "logging" => keys.logging,
        "per_uid" => fields::<PerUidTable>(),
        _ => keys.channel,
    };
    let message = unknown_key(found.key, found.parent.is_empty(), own, &keys);
    source.error(span, Some(&found.path), message)
}

/// The field names a derived struct accepts: serde hands them to `deserialize_struct`.
fn fields<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    struct Fields<'a>(&'a mut &'static [&'static str]);
    impl<'de> Deserializer<'de> for Fields<'_> {
        type Error = de::value::Error;
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("only the field names were wanted"))
        }
        fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }
    let mut names: &'static [&'static str] = &[];
    // Always an error: it is how the names come out.
    let _ = T::deserialize(Fields(&mut names));
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_lists_come_from_the_structs() {
        let keys = known_keys();
        assert_eq!(keys.top.first(), Some(&"version"));
        assert_eq!(keys.top.last(), Some(&"channel"));
        assert_eq!(keys.logging, ["level", "format"]);
        assert_eq!(fields::<PerUidTable>().len(), 5);
        assert!(keys.channel.contains(&"slow_consumer"));
    }
}
