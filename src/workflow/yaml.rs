//! The part of YAML an `extra_model_paths.yaml` is written in: sections of `key: value` entries,
//! values plain or quoted on one line, or `|` / `>` block scalars over several; `#` comments.
//! Anything else (lists, anchors, flow collections, deeper nesting) is refused with its line,
//! rather than read wrongly.

/// Sections in file order, each with its entries in order.
pub(crate) type Sections = Vec<(String, Vec<(String, String)>)>;

/// Parses `text`.
///
/// # Errors
/// A message naming the line for anything outside the subset.
pub(crate) fn parse(text: &str) -> Result<Sections, String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out: Sections = Vec::new();
    let mut i = 0;
    let mut section_indent: Option<usize> = None;
    while i < lines.len() {
        let raw = lines[i];
        let line = strip_comment(raw);
        if line.trim().is_empty() {
            i += 1;
            continue;
        }
        let line_no = i + 1;
        let at = |msg: &str| format!("line {line_no}: {msg} (`{}`)", raw.trim());
        if raw.starts_with('\t') {
            return Err(at("tabs are not allowed for indentation in YAML"));
        }
        let indent = line.len() - line.trim_start().len();
        let (key, value) = split_entry(line.trim()).ok_or_else(|| {
            at("expected `key: value`; lists and other YAML forms are not read here")
        })?;
        if indent == 0 {
            if !value.is_empty() {
                // `name: value` at the top: ComfyUI expects a section of folders.
                return Err(at("a section needs its entries on the lines below it"));
            }
            out.push((key, Vec::new()));
            section_indent = None;
            i += 1;
            continue;
        }
        let Some((_, entries)) = out.last_mut() else {
            return Err(at("an indented entry outside any section"));
        };
        match section_indent {
            None => section_indent = Some(indent),
            Some(s) if s != indent => {
                return Err(at(
                    "entries of one section must share their indentation; nested \
                               mappings are not read here",
                ))
            }
            Some(_) => {}
        }
        i += 1;
        let value = match value.as_str() {
            "|" | "|-" | "|+" | ">" | ">-" | ">+" => {
                let (block, next) = block_scalar(&lines, i, indent, &value);
                i = next;
                block
            }
            v if v.starts_with(['[', '{', '&', '*', '!', '-']) => {
                return Err(at(
                    "flow collections, anchors, tags and lists are not read here",
                ))
            }
            v => unquote(v).map_err(|e| at(&e))?,
        };
        entries.push((key, value));
    }
    Ok(out)
}

/// `key: value` (the value may be empty).
fn split_entry(s: &str) -> Option<(String, String)> {
    let (k, v) = if let Some(k) = s.strip_suffix(':') {
        (k, "")
    } else {
        s.split_once(": ")?
    };
    let k = k.trim();
    if k.is_empty() || k.starts_with('-') {
        return None;
    }
    let k = unquote(k).ok()?;
    Some((k, v.trim().to_string()))
}

/// A plain or quoted one-line scalar.
fn unquote(v: &str) -> Result<String, String> {
    if let Some(inner) = v.strip_prefix('"') {
        let inner = inner
            .strip_suffix('"')
            .ok_or("an unterminated double-quoted value")?;
        let mut out = String::new();
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some('\\') => out.push('\\'),
                Some('"') => out.push('"'),
                Some(other) => return Err(format!("the escape `\\{other}` is not read here")),
                None => return Err("a value ending in `\\`".into()),
            }
        }
        return Ok(out);
    }
    if let Some(inner) = v.strip_prefix('\'') {
        let inner = inner
            .strip_suffix('\'')
            .ok_or("an unterminated single-quoted value")?;
        return Ok(inner.replace("''", "'"));
    }
    Ok(v.to_string())
}

/// The lines of a block scalar starting at `from`, more indented than its key; returns the
/// value and the next line to read.
fn block_scalar(lines: &[&str], from: usize, key_indent: usize, style: &str) -> (String, usize) {
    let mut i = from;
    let mut body: Vec<&str> = Vec::new();
    let mut indent = None;
    while i < lines.len() {
        let l = lines[i];
        if l.trim().is_empty() {
            body.push("");
            i += 1;
            continue;
        }
        let n = l.len() - l.trim_start().len();
        if n <= key_indent {
            break;
        }
        let base = *indent.get_or_insert(n);
        if n < base {
            break;
        }
        body.push(&l[base..]);
        i += 1;
    }
    while body.last() == Some(&"") {
        body.pop();
    }
    let sep = if style.starts_with('>') { " " } else { "\n" };
    let mut value = body.join(sep);
    if !style.ends_with('-') && !value.is_empty() {
        value.push('\n');
    }
    (value, i)
}

/// The line without a `#` comment (one that starts the line or follows a space, outside
/// quotes).
fn strip_comment(line: &str) -> &str {
    let (mut single, mut double) = (false, false);
    let mut prev = ' ';
    for (i, c) in line.char_indices() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if !single && !double && prev.is_whitespace() => return line[..i].trim_end(),
            _ => {}
        }
        prev = c;
    }
    line.trim_end()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_entries_blocks_quotes_and_comments() {
        let text = "\
#config
a111:
    base_path: path/to/webui/   # where it is
    checkpoints: 'models/Stable # diffusion'
    vae: \"models/VAE\"
    loras: |
         models/Lora
         models/LyCORIS

    is_default: true
empty:
";
        let s = parse(text).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].0, "a111");
        let e: Vec<(&str, &str)> = s[0]
            .1
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            e,
            [
                ("base_path", "path/to/webui/"),
                ("checkpoints", "models/Stable # diffusion"),
                ("vae", "models/VAE"),
                ("loras", "models/Lora\nmodels/LyCORIS\n"),
                ("is_default", "true"),
            ]
        );
        assert!(s[1].1.is_empty());
    }

    #[test]
    fn other_yaml_is_refused_with_its_line() {
        for (text, line) in [
            ("a:\n  - x\n", "line 2"),
            ("a: b\n", "line 1"),
            ("a:\n  b:\n     c: d\n", "line 3"),
            ("a:\n  b: [x, y]\n", "line 2"),
            ("  b: x\n", "line 1"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(line), "{text}: {e}");
        }
    }
}
