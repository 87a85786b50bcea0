//! XML ⇄ JSON, with quick-xml (see docs/transform.md for the mapping).
//!
//! XML → JSON:
//! - the document is `{"<root>": <element>}`;
//! - an element without attributes or child elements is its text, or
//!   `null` when it has none;
//! - otherwise an object: each attribute as `"@name": "value"`, each child
//!   element under its name, its text (if any) as `"#text"`;
//! - child elements repeated under one name become an array, in document
//!   order (a single child is not an array);
//! - text is trimmed; CDATA is text; comments, processing instructions and
//!   the XML declaration are dropped; every value is a string;
//! - names are kept as written, namespace prefixes included (`soap:Body`,
//!   `@xmlns:soap`).
//!
//! Safety: a `<!DOCTYPE …>` (and so any entity declaration) is refused, so
//! no entity can expand (billion laughs) and nothing external is fetched;
//! only the five predefined entities and character references are
//! resolved; nesting deeper than the route's `max_depth` is refused; input
//! is UTF-8 and was size-limited before it got here. The parse keeps its own
//! stack, so nesting never grows the thread's stack.
//!
//! JSON → XML is the reverse: `"@x"` members become attributes, `"#text"`
//! text, arrays repeated elements (an array inside an array, or at the root,
//! becomes `<item>` elements); `null` is an empty element; numbers and
//! booleans are printed. A document that is an object with a single
//! (non-array) member gives the root element; anything else is wrapped in
//! the route's `xml_root` (default `root`).

use quick_xml::XmlVersion;
use quick_xml::events::{BytesStart, Event};
use quick_xml::reader::Reader;
use raft::model::validate::is_xml_name;
use serde_json::{Map, Value};

use super::BodyError;

/// An element being read.
struct Open {
    name: String,
    members: Map<String, Value>,
    text: String,
    attributes: bool,
    children: bool,
}

impl Open {
    fn start(element: &BytesStart<'_>) -> Result<Self, BodyError> {
        let name = element.name().0.to_owned();
        let mut members = Map::new();
        for attribute in element.attributes() {
            let attribute =
                attribute.map_err(|e| BodyError::InvalidXml(format!("bad attribute: {e}")))?;
            let value = attribute
                .normalized_value(XmlVersion::Implicit1_0)
                .map_err(|e| BodyError::InvalidXml(format!("bad attribute value: {e}")))?;
            members.insert(
                format!("@{}", attribute.key.0),
                Value::String(value.into_owned()),
            );
        }
        Ok(Self {
            name,
            attributes: !members.is_empty(),
            members,
            text: String::new(),
            children: false,
        })
    }

    fn finish(self) -> (String, Value) {
        let text = self.text.trim();
        let value = if !self.attributes && !self.children {
            if text.is_empty() {
                Value::Null
            } else {
                Value::String(text.to_owned())
            }
        } else {
            let mut members = self.members;
            if !text.is_empty() {
                members.insert("#text".to_owned(), Value::String(text.to_owned()));
            }
            Value::Object(members)
        };
        (self.name, value)
    }

    fn add_child(&mut self, name: String, value: Value) {
        self.children = true;
        match self.members.get_mut(&name) {
            None => {
                self.members.insert(name, value);
            }
            // Element values are never arrays: an array is a repetition.
            Some(Value::Array(items)) => items.push(value),
            Some(existing) => {
                let first = existing.take();
                *existing = Value::Array(vec![first, value]);
            }
        }
    }
}

/// The five entities XML predefines.
pub(crate) fn predefined(name: &str) -> Option<char> {
    Some(match name {
        "lt" => '<',
        "gt" => '>',
        "amp" => '&',
        "apos" => '\'',
        "quot" => '"',
        _ => return None,
    })
}

/// Reads an XML document into JSON.
pub fn to_json(input: &[u8], max_depth: usize) -> Result<Value, BodyError> {
    let input = input.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(input);
    let text = std::str::from_utf8(input)
        .map_err(|_| BodyError::InvalidXml("the document is not UTF-8".into()))?;
    let mut reader = Reader::from_str(text);
    reader.config_mut().check_end_names = true;
    let mut stack: Vec<Open> = Vec::new();
    let mut root: Option<(String, Value)> = None;
    let at = |reader: &Reader<&[u8]>| reader.buffer_position();
    loop {
        let event = reader
            .read_event()
            .map_err(|e| BodyError::InvalidXml(format!("at byte {}: {e}", at(&reader))))?;
        match event {
            Event::DocType(_) => return Err(BodyError::XmlDtd),
            Event::Start(_) | Event::Empty(_) if root.is_some() => {
                return Err(BodyError::InvalidXml(
                    "more than one root element".to_owned(),
                ));
            }
            Event::Start(element) => {
                if stack.len() >= max_depth {
                    return Err(BodyError::TooDeep(max_depth));
                }
                stack.push(Open::start(&element)?);
            }
            Event::Empty(element) => {
                if stack.len() >= max_depth {
                    return Err(BodyError::TooDeep(max_depth));
                }
                let (name, value) = Open::start(&element)?.finish();
                match stack.last_mut() {
                    Some(parent) => parent.add_child(name, value),
                    None => root = Some((name, value)),
                }
            }
            Event::End(_) => {
                let Some(open) = stack.pop() else {
                    return Err(BodyError::InvalidXml("unexpected end tag".to_owned()));
                };
                let (name, value) = open.finish();
                match stack.last_mut() {
                    Some(parent) => parent.add_child(name, value),
                    None => root = Some((name, value)),
                }
            }
            Event::Text(text) => {
                let content = text.xml10_content();
                match stack.last_mut() {
                    Some(open) => open.text.push_str(&content),
                    None if content.trim().is_empty() => {}
                    None => {
                        return Err(BodyError::InvalidXml(
                            "text outside the root element".to_owned(),
                        ));
                    }
                }
            }
            Event::CData(data) => match stack.last_mut() {
                Some(open) => open.text.push_str(&data.xml10_content()),
                None => {
                    return Err(BodyError::InvalidXml(
                        "CDATA outside the root element".to_owned(),
                    ));
                }
            },
            Event::GeneralRef(reference) => {
                let ch = match reference.resolve_char_ref() {
                    Ok(Some(ch)) => ch,
                    Ok(None) => predefined(&reference).ok_or_else(|| {
                        BodyError::InvalidXml(format!(
                            "undeclared entity &{};",
                            reference.chars().take(64).collect::<String>()
                        ))
                    })?,
                    Err(e) => return Err(BodyError::InvalidXml(e.to_string())),
                };
                match stack.last_mut() {
                    Some(open) => open.text.push(ch),
                    None => {
                        return Err(BodyError::InvalidXml(
                            "a reference outside the root element".to_owned(),
                        ));
                    }
                }
            }
            Event::Comment(_) | Event::PI(_) | Event::Decl(_) => {}
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err(BodyError::InvalidXml(
            "the document ends inside an element".to_owned(),
        ));
    }
    let Some((name, value)) = root else {
        return Err(BodyError::InvalidXml("no root element".to_owned()));
    };
    let mut document = Map::new();
    document.insert(name, value);
    Ok(Value::Object(document))
}

/// Writes JSON as an XML document (see the module docs).
pub fn from_json(value: &Value, root: &str) -> Result<String, BodyError> {
    let mut out = String::with_capacity(256);
    out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>");
    match value {
        Value::Object(map) if map.len() == 1 => {
            let (name, inner) = map.iter().next().expect("one member");
            if !inner.is_array() && !name.starts_with(['@', '#']) {
                element(&mut out, name, inner)?;
                return Ok(out);
            }
            element(&mut out, root, value)?;
        }
        _ => element(&mut out, root, value)?,
    }
    Ok(out)
}

fn name_ok(name: &str) -> Result<(), BodyError> {
    if is_xml_name(name) {
        Ok(())
    } else {
        Err(BodyError::NotConvertible(format!(
            "{:?} is not an XML name",
            name.chars().take(64).collect::<String>()
        )))
    }
}

/// Appends `text` escaped, refusing characters XML 1.0 cannot carry
/// (controls other than tab, LF and CR; U+FFFE, U+FFFF).
fn push_text(out: &mut String, text: &str) -> Result<(), BodyError> {
    if text.chars().any(|ch| {
        (ch < ' ' && !matches!(ch, '\t' | '\n' | '\r')) || matches!(ch, '\u{fffe}' | '\u{ffff}')
    }) {
        return Err(BodyError::NotConvertible(
            "a string holds a character XML 1.0 cannot carry".to_owned(),
        ));
    }
    out.push_str(&quick_xml::escape::escape(text));
    Ok(())
}

fn scalar(value: &Value) -> Option<std::borrow::Cow<'_, str>> {
    match value {
        Value::String(s) => Some(s.as_str().into()),
        Value::Number(n) => Some(n.to_string().into()),
        Value::Bool(b) => Some(if *b { "true" } else { "false" }.into()),
        Value::Null => Some("".into()),
        _ => None,
    }
}

/// A member: an array repeats the element.
fn member(out: &mut String, name: &str, value: &Value) -> Result<(), BodyError> {
    match value {
        Value::Array(items) => {
            for item in items {
                element(out, name, item)?;
            }
            Ok(())
        }
        _ => element(out, name, value),
    }
}

fn element(out: &mut String, name: &str, value: &Value) -> Result<(), BodyError> {
    name_ok(name)?;
    out.push('<');
    out.push_str(name);
    match value {
        Value::Null => {
            out.push_str("/>");
            return Ok(());
        }
        Value::Array(items) => {
            out.push('>');
            for item in items {
                element(out, "item", item)?;
            }
        }
        Value::Object(map) => {
            for (key, attribute) in map {
                if let Some(attribute_name) = key.strip_prefix('@') {
                    name_ok(attribute_name)?;
                    let Some(text) = scalar(attribute) else {
                        return Err(BodyError::NotConvertible(format!(
                            "attribute {key:?} is not a scalar"
                        )));
                    };
                    out.push(' ');
                    out.push_str(attribute_name);
                    out.push_str("=\"");
                    push_text(out, &text)?;
                    out.push('"');
                }
            }
            out.push('>');
            for (key, child) in map {
                if key.starts_with('@') {
                    continue;
                }
                if key == "#text" {
                    let Some(text) = scalar(child) else {
                        return Err(BodyError::NotConvertible(
                            "\"#text\" is not a scalar".to_owned(),
                        ));
                    };
                    push_text(out, &text)?;
                } else {
                    member(out, key, child)?;
                }
            }
        }
        scalar_value => {
            out.push('>');
            if let Some(text) = scalar(scalar_value) {
                push_text(out, &text)?;
            }
        }
    }
    out.push_str("</");
    out.push_str(name);
    out.push('>');
    Ok(())
}
