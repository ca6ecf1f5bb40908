//! Module arguments: the SPA-JSON object of `context.modules` (`args = { … }`), parsed by
//! PipeWire's own parser (`pw_properties_new_string`). Nested objects and arrays come back as
//! their JSON text; [`parse_object`] and [`parse_json_list`] take them apart.

use crate::pw_sys as pw;
use std::collections::BTreeMap;
use std::ffi::{CStr, CString};

/// The parsed arguments of a module, key → value (strings as PipeWire's parser gives them).
#[derive(Debug, Clone, Default)]
pub struct Args {
    map: BTreeMap<String, String>,
}

impl Args {
    /// Parses `text` (SPA-JSON object, with or without the braces; empty: no arguments).
    pub fn parse(text: &str) -> Result<Args, String> {
        Ok(Args {
            map: parse_object(text)?.into_iter().collect(),
        })
    }

    /// Arguments from pairs (tests).
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Args {
        Args {
            map: pairs
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.map.get(key).map(String::as_str)
    }

    /// Every key.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.map.keys().map(String::as_str)
    }

    /// Fails naming the first key that is not in `valid`.
    pub fn check_keys(&self, valid: &[&str]) -> Result<(), String> {
        for k in self.keys() {
            if !valid.contains(&k) {
                return Err(format!(
                    "{k}: unknown argument; accepted: {}",
                    valid.join(", ")
                ));
            }
        }
        Ok(())
    }
}

/// Parses a SPA-JSON object (`{ a = b c.d = "e f" }`, braces optional) into its key/value
/// pairs with PipeWire's parser; nested values come back as their JSON text.
pub fn parse_object(text: &str) -> Result<Vec<(String, String)>, String> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let c = CString::new(text).map_err(|_| "arguments contain a NUL byte".to_string())?;
    // SAFETY: `c` is a valid C string; the returned properties are ours and freed below; the
    // dict items are valid while the properties live.
    unsafe {
        let props = pw::pw_properties_new_string(c.as_ptr());
        if props.is_null() {
            return Err(format!("cannot parse the arguments as SPA-JSON: {text:?}"));
        }
        let dict = &(*props).dict;
        let mut out = Vec::with_capacity(dict.n_items as usize);
        for i in 0..dict.n_items as usize {
            let item = &*dict.items.add(i);
            if item.key.is_null() {
                continue;
            }
            let k = CStr::from_ptr(item.key).to_string_lossy().into_owned();
            let v = if item.value.is_null() {
                String::new()
            } else {
                CStr::from_ptr(item.value).to_string_lossy().into_owned()
            };
            out.push((k, v));
        }
        pw::pw_properties_free(props);
        Ok(out)
    }
}

/// The elements of a SPA-JSON array of strings (`[ "tcp:4715" "tcp:[::1]:4716" ]`, commas
/// optional); a bare value is a list of one.
pub fn parse_json_list(text: &str) -> Vec<String> {
    let t = text.trim();
    let inner = match t.strip_prefix('[') {
        Some(rest) => rest.strip_suffix(']').unwrap_or(rest),
        None => t,
    };
    let mut out = Vec::new();
    let mut chars = inner.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() || c == ',' {
            chars.next();
        } else if c == '"' {
            chars.next();
            let mut s = String::new();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            s.push(n);
                        }
                    }
                    '"' => break,
                    _ => s.push(c),
                }
            }
            out.push(s);
        } else {
            let mut s = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() || c == ',' {
                    break;
                }
                s.push(c);
                chars.next();
            }
            out.push(s);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists() {
        assert_eq!(parse_json_list(r#"[ "tcp:4715" ]"#), vec!["tcp:4715"]);
        assert_eq!(
            parse_json_list(r#"[ "tcp:127.0.0.1:1", tcp:[::1]:2 ]"#),
            vec!["tcp:127.0.0.1:1", "tcp:[::1]:2"]
        );
        assert_eq!(parse_json_list("tcp:4715"), vec!["tcp:4715"]);
        assert!(parse_json_list("[ ]").is_empty());
    }
}
