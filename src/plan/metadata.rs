//! The header's `__metadata__` (checkpoint-format.md §3).
//!
//! All values are strings. Keys are written sorted, so the same inputs always give the same header
//! bytes (the reference's order is a hash-map's and not reproducible).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value;

use crate::model::{Arch, Prediction};

/// Metadata key holding this tool's name.
pub const TOOL_KEY: &str = "checkpoint_save.tool";
/// Metadata key holding this tool's version.
pub const VERSION_KEY: &str = "checkpoint_save.version";

/// What goes into the header besides the architecture's own keys.
#[derive(Debug, Clone, PartialEq)]
pub struct MetadataOptions {
    /// The API-format prompt of the job; written as `prompt` (an empty string when `None`).
    pub prompt: Option<Value>,
    /// ComfyUI's `extra_pnginfo`: each entry (normally `workflow`) becomes one key.
    pub extra_pnginfo: Option<serde_json::Map<String, Value>>,
    /// Like ComfyUI's `--disable-metadata`: drop `prompt` and the `extra_pnginfo` keys only.
    pub disable: bool,
    /// Add `checkpoint_save.tool` / `checkpoint_save.version`.
    pub provenance: bool,
    /// Further string keys the caller wants written (they win over everything else).
    pub extra: BTreeMap<String, String>,
}

impl Default for MetadataOptions {
    fn default() -> Self {
        Self {
            prompt: None,
            extra_pnginfo: None,
            disable: false,
            provenance: true,
            extra: BTreeMap::new(),
        }
    }
}

/// Builds the metadata the reference writes, plus provenance and the caller's extra keys.
///
/// `title` is `"<filename> <counter>"` (counter not zero-padded); it is only written for the
/// architectures that get `modelspec.*` keys. `arch` is `None` for the generic layout.
pub fn build(
    arch: Option<Arch>,
    prediction: Prediction,
    title: &str,
    opts: &MetadataOptions,
) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    if let Some(id) = arch.and_then(Arch::modelspec_architecture) {
        m.insert("modelspec.architecture".into(), id.into());
        m.insert("modelspec.sai_model_spec".into(), "1.0.0".into());
        m.insert("modelspec.implementation".into(), "sgm".into());
        m.insert("modelspec.title".into(), title.into());
    }
    if let Some(key) = prediction.predict_key() {
        m.insert("modelspec.predict_key".into(), key.into());
    }
    if !opts.disable {
        let prompt = opts.prompt.as_ref().map(python_json).unwrap_or_default();
        m.insert("prompt".into(), prompt);
        if let Some(extra) = &opts.extra_pnginfo {
            for (k, v) in extra {
                m.insert(k.clone(), python_json(v));
            }
        }
    }
    if opts.provenance {
        m.insert(TOOL_KEY.into(), env!("CARGO_PKG_NAME").into());
        m.insert(VERSION_KEY.into(), env!("CARGO_PKG_VERSION").into());
    }
    m.extend(opts.extra.iter().map(|(k, v)| (k.clone(), v.clone())));
    m
}

/// JSON as Python's `json.dumps` writes it by default: `", "` and `": "` separators, non-ASCII
/// as `\uXXXX`, keys in insertion order, floats as Python's `repr`.
pub fn python_json(v: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, v);
    out
}

fn write_value(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => {
                let _ = write!(out, "{i}");
            }
            (_, Some(u), _) => {
                let _ = write!(out, "{u}");
            }
            (_, _, Some(f)) => out.push_str(&python_float(f)),
            _ => out.push_str("null"),
        },
        Value::String(s) => write_string(out, s),
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_value(out, x);
            }
            out.push(']');
        }
        Value::Object(o) => {
            out.push('{');
            for (i, (k, x)) in o.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_string(out, k);
                out.push_str(": ");
                write_value(out, x);
            }
            out.push('}');
        }
    }
}

fn write_string(out: &mut String, s: &str) {
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
            c if c.is_ascii() && !c.is_ascii_control() => out.push(c),
            c => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
        }
    }
    out.push('"');
}

/// Python's float `repr`: shortest round-trip digits, exponent form below 1e-4 and from 1e16.
fn python_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    // Rust's Debug switches to exponent form at the same thresholds as Python's repr.
    let s = format!("{f:?}");
    match s.split_once('e') {
        Some((mant, exp)) => {
            let (sign, digits) = match exp.strip_prefix('-') {
                Some(d) => ('-', d),
                None => ('+', exp),
            };
            format!("{mant}e{sign}{digits:0>2}")
        }
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{self, FIXTURES};
    use serde_json::json;

    #[test]
    fn reference_metadata_for_every_fixture() {
        let opts = MetadataOptions {
            provenance: false,
            ..Default::default()
        };
        for (name, arch, prediction) in FIXTURES {
            let want: BTreeMap<String, String> =
                serde_json::from_value(testutil::expected(name)["metadata"].clone()).unwrap();
            assert_eq!(
                build(Some(arch), prediction, "ComfyUI 1", &opts),
                want,
                "{name}"
            );
        }
    }

    #[test]
    fn disable_drops_only_prompt_and_workflow() {
        let mut extra = serde_json::Map::new();
        extra.insert("workflow".into(), json!({"nodes": []}));
        let opts = MetadataOptions {
            prompt: Some(json!({"3": {"class_type": "KSampler"}})),
            extra_pnginfo: Some(extra),
            ..Default::default()
        };
        let on = build(Some(Arch::Sdxl), Prediction::Eps, "ComfyUI 7", &opts);
        assert_eq!(on["prompt"], r#"{"3": {"class_type": "KSampler"}}"#);
        assert_eq!(on["workflow"], r#"{"nodes": []}"#);
        assert_eq!(on["modelspec.title"], "ComfyUI 7");
        assert_eq!(on[VERSION_KEY], env!("CARGO_PKG_VERSION"));
        let off = build(
            Some(Arch::Sdxl),
            Prediction::Eps,
            "ComfyUI 7",
            &MetadataOptions {
                disable: true,
                ..opts
            },
        );
        assert!(!off.contains_key("prompt") && !off.contains_key("workflow"));
        assert_eq!(off["modelspec.predict_key"], "epsilon");
    }

    #[test]
    fn json_is_encoded_like_python() {
        let v: Value = serde_json::from_str(
            r#"{"b": [1, -2, 0.5, 1e-5, 1e16, 123456.0, 1.5e300], "a": "é \"q\" \n 😀", "n": null, "t": true}"#,
        )
        .unwrap();
        assert_eq!(
            python_json(&v),
            r#"{"b": [1, -2, 0.5, 1e-05, 1e+16, 123456.0, 1.5e+300], "a": "\u00e9 \"q\" \n \ud83d\ude00", "n": null, "t": true}"#
        );
    }
}
