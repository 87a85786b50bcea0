//! JSON field filtering and reshaping by JSON pointer (RFC 6901, with `*`
//! for any array element or object member).
//!
//! - `allow`: a member is kept when a pointer names it or something inside
//!   it; containers on the way to an allowed member are kept (possibly
//!   empty); scalars a pointer would have to go through are removed.
//! - `deny`: every member a pointer names is removed; a pointer that names
//!   nothing removes nothing.
//! - `move`: the value at `from` is removed and put at `to`, replacing what
//!   was there; objects missing on the way to `to` are created, `-` appends
//!   to an array. When `from` is absent nothing happens; when `to` cannot be
//!   reached (a scalar or a missing array index on the way) the value stays
//!   at `from`.
//!
//! Values nest at most 128 deep (serde_json's recursion limit, always on),
//! which bounds the recursion here.

use raft::model::transform::{Pointer, Step};
use serde_json::Value;

/// A set of pointers as a trie, so one walk serves them all.
#[derive(Debug, Default, Clone)]
pub struct Trie {
    terminal: bool,
    any: Option<Box<Trie>>,
    keys: Vec<(String, Trie)>,
}

impl Trie {
    /// The trie of `pointers`.
    pub fn new<'a>(pointers: impl IntoIterator<Item = &'a Pointer>) -> Self {
        let mut root = Trie::default();
        for pointer in pointers {
            let mut node = &mut root;
            for step in &pointer.0 {
                node = match step {
                    Step::Any => node.any.get_or_insert_with(Box::default),
                    Step::Key(key) => {
                        let at = match node.keys.iter().position(|(k, _)| k == key) {
                            Some(at) => at,
                            None => {
                                node.keys.push((key.clone(), Trie::default()));
                                node.keys.len() - 1
                            }
                        };
                        &mut node.keys[at].1
                    }
                };
            }
            node.terminal = true;
        }
        root
    }

    /// Whether no pointer was given.
    pub fn is_empty(&self) -> bool {
        !self.terminal && self.any.is_none() && self.keys.is_empty()
    }

    /// The children matching an object member or array index.
    fn children<'t>(&'t self, key: &str, out: &mut Vec<&'t Trie>) {
        if let Some(any) = &self.any {
            out.push(any);
        }
        for (k, child) in &self.keys {
            if k == key {
                out.push(child);
            }
        }
    }
}

fn matching<'t>(nodes: &[&'t Trie], key: &str) -> Vec<&'t Trie> {
    let mut out = Vec::new();
    for node in nodes {
        node.children(key, &mut out);
    }
    out
}

/// Keeps only what the `allow` trie names.
pub fn allow(value: &mut Value, trie: &Trie) {
    if !trie.is_empty() {
        allow_in(value, &[trie]);
    }
}

/// Filters `value` under `nodes`; `false` when `value` itself goes.
fn allow_in(value: &mut Value, nodes: &[&Trie]) -> bool {
    if nodes.iter().any(|n| n.terminal) {
        return true;
    }
    match value {
        Value::Object(map) => {
            map.retain(|key, member| {
                let children = matching(nodes, key);
                !children.is_empty() && allow_in(member, &children)
            });
            true
        }
        Value::Array(items) => {
            let mut index = 0;
            items.retain_mut(|item| {
                let children = matching(nodes, &index.to_string());
                index += 1;
                !children.is_empty() && allow_in(item, &children)
            });
            true
        }
        _ => false,
    }
}

/// Removes what the `deny` trie names.
pub fn deny(value: &mut Value, trie: &Trie) {
    if !trie.is_empty() {
        deny_in(value, &[trie]);
    }
}

fn deny_in(value: &mut Value, nodes: &[&Trie]) {
    // `false`: remove the member.
    let visit = |key: &str, member: &mut Value| -> bool {
        let children = matching(nodes, key);
        if children.iter().any(|c| c.terminal) {
            return false;
        }
        if !children.is_empty() {
            deny_in(member, &children);
        }
        true
    };
    match value {
        Value::Object(map) => map.retain(|key, member| visit(key, member)),
        Value::Array(items) => {
            let mut index = 0;
            items.retain_mut(|item| {
                let keep = visit(&index.to_string(), item);
                index += 1;
                keep
            });
        }
        _ => {}
    }
}

fn index(key: &str, len: usize) -> Option<usize> {
    if key.len() > 1 && key.starts_with('0') {
        return None;
    }
    key.parse::<usize>().ok().filter(|i| *i < len)
}

fn key(step: &Step) -> &str {
    match step {
        Step::Key(key) => key,
        Step::Any => "*",
    }
}

/// Removes and returns the value at `path` (no wildcards).
fn take(value: &mut Value, path: &[Step]) -> Option<Value> {
    let (last, parents) = path.split_last()?;
    let mut node = value;
    for step in parents {
        node = match node {
            Value::Object(map) => map.get_mut(key(step))?,
            Value::Array(items) => {
                let at = index(key(step), items.len())?;
                &mut items[at]
            }
            _ => return None,
        };
    }
    match node {
        Value::Object(map) => map.shift_remove(key(last)),
        Value::Array(items) => index(key(last), items.len()).map(|at| items.remove(at)),
        _ => None,
    }
}

/// Puts `moved` at `path`, creating missing objects; gives it back when
/// the path cannot be reached.
fn put(value: &mut Value, path: &[Step], moved: Value) -> Result<(), Value> {
    let Some((last, parents)) = path.split_last() else {
        return Err(moved);
    };
    let mut node = value;
    for step in parents {
        node = match node {
            Value::Object(map) => map
                .entry(key(step).to_owned())
                .or_insert_with(|| Value::Object(serde_json::Map::new())),
            Value::Array(items) => match index(key(step), items.len()) {
                Some(at) => &mut items[at],
                None => return Err(moved),
            },
            _ => return Err(moved),
        };
    }
    match node {
        Value::Object(map) => {
            map.insert(key(last).to_owned(), moved);
            Ok(())
        }
        Value::Array(items) => {
            let last = key(last);
            if last == "-" {
                items.push(moved);
            } else if let Some(at) = index(last, items.len() + 1) {
                items.insert(at, moved);
            } else {
                return Err(moved);
            }
            Ok(())
        }
        _ => Err(moved),
    }
}

/// Moves the value at `from` to `to` (see the module docs).
pub fn move_value(value: &mut Value, from: &Pointer, to: &Pointer) {
    let Some(moved) = take(value, &from.0) else {
        return;
    };
    if let Err(moved) = put(value, &to.0, moved) {
        // `from` was just emptied, so its parent is there to take it back.
        let _ = put(value, &from.0, moved);
    }
}

/// The nesting depth of `value` (a scalar is 0).
pub fn depth(value: &Value) -> usize {
    match value {
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}
