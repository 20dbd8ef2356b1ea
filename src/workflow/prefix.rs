//! The frontend's text replacements in a save node's `filename_prefix` (ComfyUI_frontend's
//! `applyTextReplacements`, run when a UI graph is queued): `%date:FORMAT%` becomes the local
//! time in that format, and `%Node.widget%` the value of that widget of the node whose "Node
//! name for S&R" property (else title) is `Node`. Only the classes in [`SUBSTITUTED`] get them;
//! CheckpointSave is not among them, so its prefix stays verbatim, as does every prefix of an
//! API-format prompt (the server itself only expands `%year%`… in [`crate::naming`]).

use serde_json::Value;

use crate::naming::LocalTime;

/// The save classes whose `filename_prefix` the frontend rewrites (its `saveNodeTypes` set, as
/// far as this tool runs them).
pub(super) const SUBSTITUTED: &[&str] = &["CLIPSave", "VAESave", "ModelSave", "LoraSave"];

/// What a `%Node.widget%` token can name: one node of the graph.
pub(super) struct Named<'a> {
    /// Its "Node name for S&R" property.
    pub(super) sr_name: Option<&'a str>,
    /// Its title as the frontend shows it.
    pub(super) title: String,
    /// Its widget values by name.
    pub(super) widgets: Vec<(String, &'a Value)>,
}

/// `value` with every `%…%` token replaced as the frontend replaces it; tokens it leaves
/// (unknown nodes or widgets, `%width%`) stay as written. `now` is called once, if a date is.
pub(super) fn apply(value: &str, nodes: &[Named<'_>], now: impl Fn() -> LocalTime) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    // The frontend's `/%([^%]+)%/g`: a `%`, at least one other character, a `%`.
    while let Some(start) = rest.find('%') {
        let after = &rest[start + 1..];
        let Some(len) = after.find('%').filter(|&n| n > 0) else {
            // `%%` gives no match at the first `%`; the scan resumes at the second.
            let skip = start + 1;
            out.push_str(&rest[..skip]);
            rest = &rest[skip..];
            continue;
        };
        out.push_str(&rest[..start]);
        let text = &after[..len];
        match replacement(text, nodes, &now) {
            Some(r) => out.push_str(&r),
            None => {
                out.push('%');
                out.push_str(text);
                out.push('%');
            }
        }
        rest = &after[len + 1..];
    }
    out.push_str(rest);
    out
}

/// What one token's text (between the `%`s) becomes, `None` to leave it.
fn replacement(text: &str, nodes: &[Named<'_>], now: &impl Fn() -> LocalTime) -> Option<String> {
    let split: Vec<&str> = text.split('.').collect();
    if split.len() != 2 {
        // As the frontend: only the part before any `.` is the date format.
        return split[0]
            .strip_prefix("date:")
            .map(|format| format_date(format, &now()));
    }
    let (name, widget) = (split[0], split[1]);
    let by_sr = nodes.iter().find(|n| n.sr_name == Some(name));
    let node = by_sr.or_else(|| nodes.iter().find(|n| n.title == name))?;
    let (_, v) = node.widgets.iter().find(|(w, _)| w == widget)?;
    Some(sanitize(&js_string(v)))
}

/// A widget value as JavaScript's `value + ''` writes it.
fn js_string(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Number(n) => match n.as_f64() {
            // JS numbers are doubles: `1.0` is written `1`.
            Some(x) if x.fract() == 0.0 && x.abs() < 1e21 => format!("{x:.0}"),
            _ => n.to_string(),
        },
        Value::Bool(b) => b.to_string(),
        Value::Array(a) => a.iter().map(js_string).collect::<Vec<_>>().join(","),
        Value::Object(_) => "[object Object]".to_string(),
    }
}

/// The frontend's `/[/?<>\\:*|"\x00-\x1F\x7F]/g` → `_`: a widget value cannot add folders or
/// characters file systems refuse.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '/' | '?' | '<' | '>' | '\\' | ':' | '*' | '|' | '"' => '_',
            c if c <= '\u{1f}' || c == '\u{7f}' => '_',
            c => c,
        })
        .collect()
}

/// The frontend's `formatDate`: each run of `yyyy`, `yy`, `MM`, `M`, `dd`, `d`, `hh`, `h`, `mm`,
/// `m`, `ss`, `s` becomes that field (`h` is the 24-hour hour), padded to the token's length;
/// anything else, a lone `y` or a `yyy` included, stays.
pub(super) fn format_date(format: &str, t: &LocalTime) -> String {
    let mut out = String::with_capacity(format.len() + 8);
    let mut rest = format;
    while let Some(c) = rest.chars().next() {
        let field = match c {
            'd' => Some(t.day),
            'M' => Some(t.month),
            'h' => Some(t.hour),
            'm' => Some(t.minute),
            's' => Some(t.second),
            _ => None,
        };
        if let Some(v) = field {
            // The regex's `dd?`: one or two of the letter.
            let n = if rest[1..].starts_with(c) { 2 } else { 1 };
            out.push_str(&format!("{v:0n$}"));
            rest = &rest[n..];
            continue;
        }
        if c == 'y' {
            // `yyy?y?`: two to four `y`; `yyy` matches and stays as written.
            let n = rest.chars().take_while(|&x| x == 'y').count().min(4);
            match n {
                4 => out.push_str(&t.year.to_string()),
                2 => out.push_str(&format!("{:02}", t.year.rem_euclid(100))),
                _ => out.push_str(&rest[..n]),
            }
            rest = &rest[n..];
            continue;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const T: LocalTime = LocalTime {
        year: 2026,
        month: 3,
        day: 7,
        hour: 9,
        minute: 5,
        second: 4,
    };

    #[test]
    fn dates_format_as_the_frontend_formats_them() {
        assert_eq!(format_date("yyyy-MM-dd", &T), "2026-03-07");
        assert_eq!(format_date("yy M d h:m:s", &T), "26 3 7 9:5:4");
        assert_eq!(format_date("hh-mm-ss", &T), "09-05-04");
        assert_eq!(format_date("y yyy yyyyy x", &T), "y yyy 2026y x");
    }

    #[test]
    fn node_widgets_are_found_by_sr_name_then_title() {
        let (a, b) = (json!("sub/a.safetensors"), json!(0.5));
        let nodes = [
            Named {
                sr_name: Some("CheckpointLoaderSimple"),
                title: "Load Checkpoint".into(),
                widgets: vec![("ckpt_name".into(), &a)],
            },
            Named {
                sr_name: None,
                title: "Mix".into(),
                widgets: vec![("ratio".into(), &b)],
            },
        ];
        let out = apply(
            "%date:yyyy%/m_%CheckpointLoaderSimple.ckpt_name%_%Mix.ratio%_%Nope.x%_%width%_%%",
            &nodes,
            || T,
        );
        assert_eq!(out, "2026/m_sub_a.safetensors_0.5_%Nope.x%_%width%_%%");
    }
}
