//! The `.mecha` text format, read as `sd_mecha/serialization.py` reads it: a `version` line,
//! then one instruction a line (`dict`, `literal`, `model`, `merge`), each referring to earlier
//! instructions as `&N` (N counts instructions, comments not included); the last one is the
//! recipe's result.

use super::{Arg, Command, Instruction, Recipe, Value, FORMAT_VERSION};
use crate::error::{Error, Result};

/// Parses a recipe's text.
pub(super) fn parse(text: &str) -> Result<Recipe> {
    let mut lines = text.split('\n').enumerate().map(|(i, l)| (i + 1, l));
    let bad = |line: usize, what: String| Error::InvalidInput(format!("line {line}: {what}"));
    let (_, first) = lines.next().unwrap_or((1, ""));
    let first = first.trim_end();
    let Some(version) = first.strip_prefix("version ") else {
        return Err(bad(
            1,
            format!(
                "expected the header `version {FORMAT_VERSION}` of an sd-mecha recipe, found \
                 `{first}`"
            ),
        ));
    };
    if version.trim() != FORMAT_VERSION {
        return Err(bad(
            1,
            format!(
                "recipe format version `{}`: this build reads version {FORMAT_VERSION} (the \
                 format of sd-mecha 0.1 and later; re-save the recipe with a version of \
                 sd-mecha that writes it)",
                version.trim()
            ),
        ));
    }
    let mut instructions: Vec<Instruction> = Vec::new();
    for (n, raw) in lines {
        let line = raw.trim();
        // sd-mecha skips comments; blank lines (a trailing newline) are skipped too.
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let ins = instruction(line, n, instructions.len()).map_err(|e| bad(n, e))?;
        instructions.push(ins);
    }
    if instructions.is_empty() {
        return Err(Error::InvalidInput(
            "the recipe has no instruction after its version line (its last line is the \
             result)"
                .into(),
        ));
    }
    Ok(Recipe {
        instructions,
        text: text.to_string(),
        path: None,
    })
}

/// One line as an instruction; `index` is the number of instructions before it (what `&N` may
/// reach).
fn instruction(line: &str, n: usize, index: usize) -> std::result::Result<Instruction, String> {
    let tokens = tokenize(line)?;
    let (command, rest) = tokens.split_first().ok_or("an empty instruction")?;
    if command.key.is_some() || command.quoted {
        return Err(format!("`{}` is not a command", command.raw));
    }
    let command = match command.text.as_str() {
        "dict" => Command::Dict,
        "literal" => Command::Literal,
        "model" => Command::Model,
        "merge" => Command::Merge,
        other => {
            return Err(format!(
                "unknown command `{other}` (an instruction is `dict`, `literal`, `model` or \
                 `merge`)"
            ))
        }
    };
    let mut args = Vec::new();
    for (i, t) in rest.iter().enumerate() {
        let value =
            value(t, index).map_err(|e| format!("argument {} (`{}`): {e}", i + 1, t.raw))?;
        args.push(Arg {
            key: t.key.clone(),
            value,
        });
    }
    let ins = Instruction {
        line: n,
        command,
        args,
    };
    check_shape(&ins)?;
    Ok(ins)
}

/// What each command needs: `model` a path, `merge` a method name, `literal` a value, `dict`
/// only `key=value` entries; no keyword twice.
fn check_shape(ins: &Instruction) -> std::result::Result<(), String> {
    let positional: Vec<&Value> = ins.positional().collect();
    for (i, a) in ins.args.iter().enumerate() {
        if let Some(k) = &a.key {
            if ins.args[..i].iter().any(|b| b.key.as_ref() == Some(k)) {
                return Err(format!("the keyword `{k}` is given twice"));
            }
        }
    }
    match ins.command {
        Command::Model => match positional.first() {
            Some(Value::Str(_)) if positional.len() == 1 => Ok(()),
            Some(Value::Str(_)) => Err("`model` takes one path (in quotes) and keywords".into()),
            _ => Err("`model` takes the model's path, in quotes, first".into()),
        },
        Command::Merge => match positional.first() {
            Some(Value::Str(_)) => Ok(()),
            _ => Err("`merge` takes the method's name, in quotes, first".into()),
        },
        Command::Literal => match positional.len() {
            1 => Ok(()),
            _ => Err("`literal` takes one value (a number, string or `&N` of a dict)".into()),
        },
        Command::Dict => match positional.first() {
            None => Ok(()),
            Some(_) => Err("`dict` takes only `key=value` entries".into()),
        },
    }
}

/// A token: `key=` when it has one (an `=` before any quote), its text with escapes resolved,
/// whether that text was quoted, and the raw form for messages.
struct Token {
    key: Option<String>,
    text: String,
    quoted: bool,
    raw: String,
}

/// Splits a line as sd-mecha's `tokenize` does: spaces separate tokens outside quotes, `\`
/// escapes the next character, a quoted string ends its token.
fn tokenize(line: &str) -> std::result::Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut current = String::new();
    let mut raw = String::new();
    let mut prefix: Option<String> = None;
    let mut escape = false;
    let mut quoted = false;
    for c in line.chars() {
        raw.push(c);
        if escape {
            escape = false;
            current.push(c);
            continue;
        }
        match c {
            '\\' => escape = true,
            '"' if !quoted => {
                quoted = true;
                prefix = Some(std::mem::take(&mut current));
            }
            '"' => {
                quoted = false;
                let before = prefix.take().unwrap_or_default();
                tokens.push(token(&before, std::mem::take(&mut current), true, &raw));
                raw.clear();
            }
            ' ' | '\t' if !quoted => {
                if !current.is_empty() {
                    tokens.push(token("", std::mem::take(&mut current), false, raw.trim()));
                }
                raw.clear();
            }
            _ => current.push(c),
        }
    }
    if quoted {
        return Err("a quote is not closed".into());
    }
    if escape {
        return Err("the line ends with a `\\` that escapes nothing".into());
    }
    if !current.is_empty() {
        tokens.push(token("", current, false, raw.trim()));
    }
    Ok(tokens)
}

/// A token from the text before a quote (`key=` or nothing) and its body.
fn token(before: &str, body: String, quoted: bool, raw: &str) -> Token {
    let (key, text) = match quoted {
        true => match before.strip_suffix('=') {
            Some(k) if !k.is_empty() => (Some(k.to_string()), body),
            _ => (None, format!("{before}{body}")),
        },
        false => match body.split_once('=') {
            Some((k, v)) if !k.is_empty() => (Some(k.to_string()), v.to_string()),
            _ => (None, body),
        },
    };
    Token {
        key,
        text,
        quoted,
        raw: raw.trim().to_string(),
    }
}

/// A token's value, as sd-mecha's `get_arg_value` reads it: `null`/`true`/`false`, `&N`, a
/// quoted string, a float when it has `.` or `e`, else an integer.
fn value(t: &Token, index: usize) -> std::result::Result<Value, String> {
    if t.quoted {
        return Ok(Value::Str(t.text.clone()));
    }
    let s = t.text.as_str();
    match s {
        "" => return Err("a keyword without a value".into()),
        "null" => return Ok(Value::Null),
        "true" => return Ok(Value::Bool(true)),
        "false" => return Ok(Value::Bool(false)),
        _ => {}
    }
    if let Some(r) = s.strip_prefix('&') {
        let r: usize = r
            .parse()
            .map_err(|_| "a reference is `&` and an instruction's index".to_string())?;
        if r >= index {
            return Err(format!(
                "the reference &{r} is not an earlier instruction (instructions count from \
                 &0; {index} come before this line)"
            ));
        }
        return Ok(Value::Ref(r));
    }
    if s.contains('.') || s.to_ascii_lowercase().contains('e') {
        return s
            .parse::<f64>()
            .map(Value::Float)
            .map_err(|_| "not a number, reference, quoted string, null, true or false".into());
    }
    s.parse::<i64>()
        .map(Value::Int)
        .map_err(|_| "not a number, reference, quoted string, null, true or false".into())
}
