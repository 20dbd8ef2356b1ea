//! A pickle parser that executes nothing: the opcodes of protocols 2 to 5 (what `torch.save`
//! writes, whatever `pickle_protocol` it was given) are read into inert values.
//!
//! A pickle is a program: `GLOBAL` names any importable callable and `REDUCE` calls it, which is
//! how a downloaded `.ckpt` runs code when Python loads it. Here a global is only accepted when
//! the caller's allowlist names it (anything else — `os.system`, `builtins.exec`, a class — is
//! refused by name before anything else is read), and a call is never made: it becomes a
//! [`Value::Call`] record of the callable's name and its arguments, which the caller interprets
//! (a tensor rebuild, say). Python's own container constructors (`collections.OrderedDict`,
//! `builtins.set`, `_codecs.encode` for bytes) are turned into the containers they build.
//!
//! Values live in an arena and refer to each other by index, so the memo (which shares objects,
//! and lets `SETITEMS` fill a dict after it was memoized) needs no reference counting. Every size
//! read from the stream is bounded by the stream's own length.

mod machine;

/// Index of a value in [`Pickle::values`].
pub(crate) type Id = usize;

/// One unpickled value. Nothing in it was executed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer too large for 64 bits (kept as its little-endian two's-complement bytes).
    BigInt(Vec<u8>),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Id>),
    List(Vec<Id>),
    /// Key-value pairs in insertion order.
    Dict(Vec<(Id, Id)>),
    Set(Vec<Id>),
    /// An allowlisted global, named `module.name`, as data.
    Global(String),
    /// `persistent_load(pid)`: the pid value, for the caller to resolve.
    Persistent(Id),
    /// An allowlisted callable applied to arguments (a tuple), recorded, not run; `state` is what
    /// `BUILD` gave it, if anything.
    Call {
        func: String,
        args: Id,
        state: Option<Id>,
    },
}

/// A parsed pickle: its values and the one it evaluates to.
#[derive(Debug)]
pub(crate) struct Pickle {
    pub values: Vec<Value>,
    pub root: Id,
}

impl Pickle {
    /// The value at `id`.
    pub fn get(&self, id: Id) -> &Value {
        &self.values[id]
    }

    /// The string at `id`, if it is one.
    pub fn str(&self, id: Id) -> Option<&str> {
        match self.get(id) {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The integer at `id`, if it is one.
    pub fn int(&self, id: Id) -> Option<i64> {
        match self.get(id) {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(i64::from(*b)),
            _ => None,
        }
    }

    /// The items of the tuple or list at `id`.
    pub fn items(&self, id: Id) -> Option<&[Id]> {
        match self.get(id) {
            Value::Tuple(v) | Value::List(v) => Some(v),
            _ => None,
        }
    }
}

/// Python's containers built by calling a global: made directly, never called.
pub(super) const CONTAINERS: [&str; 5] = [
    "collections.OrderedDict",
    "collections.Counter",
    "builtins.set",
    "builtins.bytearray",
    "_codecs.encode",
];

/// Module names protocol-2 pickles written by Python 3 use for Python 2 compatibility (the
/// common ones of Python's `_compat_pickle`), mapped back so globals are named as Python 3 knows
/// them.
pub(super) fn python3_module(module: &str) -> &str {
    match module {
        "__builtin__" | "exceptions" => "builtins",
        "copy_reg" => "copyreg",
        "commands" => "subprocess",
        "cPickle" => "pickle",
        "Queue" => "queue",
        "UserDict" | "UserList" | "UserString" => "collections",
        "StringIO" | "cStringIO" => "io",
        "thread" => "_thread",
        "urllib2" => "urllib.request",
        "_winreg" => "winreg",
        other => other,
    }
}

/// Parses `data`, accepting only the globals `allowed` says yes to (plus Python's own
/// containers, see the module docs).
///
/// # Errors
/// A message naming the refused global, an opcode this parser does not read (by name and byte),
/// or the structural fault (truncated stream, stack underflow, a memo index never stored).
pub(crate) fn parse(data: &[u8], allowed: &dyn Fn(&str) -> bool) -> Result<Pickle, String> {
    let (values, root) = machine::run(data, allowed)?;
    Ok(Pickle { values, root })
}

/// Names read from the file, as messages quote them (the one rule for every reader).
pub(crate) use crate::printable::{clipped, CLIP_CHARS};

impl Value {
    /// What the value is, for a message: small values whole, containers by kind and length,
    /// text and bytes clipped (see [`clipped`]).
    pub(crate) fn describe(&self) -> String {
        match self {
            Value::None => "None".into(),
            Value::Bool(b) => b.to_string(),
            Value::Int(i) => i.to_string(),
            Value::BigInt(b) => format!("an integer of {} bytes", b.len()),
            Value::Float(f) => f.to_string(),
            Value::Str(s) => format!("the text `{}`", clipped(s)),
            Value::Bytes(b) if b.len() <= CLIP_CHARS / 4 => {
                format!("the bytes b\"{}\"", b.escape_ascii())
            }
            Value::Bytes(b) => format!(
                "the bytes b\"{}…\" ({} bytes)",
                b[..CLIP_CHARS / 4].escape_ascii(),
                b.len()
            ),
            Value::Tuple(v) => format!("a tuple of {} items", v.len()),
            Value::List(v) => format!("a list of {} items", v.len()),
            Value::Dict(v) => format!("a dict of {} items", v.len()),
            Value::Set(v) => format!("a set of {} items", v.len()),
            Value::Global(g) => format!("the global `{}`", clipped(g)),
            Value::Persistent(_) => "a persistent reference".into(),
            Value::Call { func, .. } => format!("a `{}` object", clipped(func)),
        }
    }
}

/// A `LONG1`/`LONG4` integer: little-endian two's complement.
pub(super) fn long(bytes: Vec<u8>) -> Value {
    if bytes.len() > 8 {
        return Value::BigInt(bytes);
    }
    let negative = bytes.last().is_some_and(|&b| b & 0x80 != 0);
    let mut full = [if negative { 0xFF } else { 0 }; 8];
    full[..bytes.len()].copy_from_slice(&bytes);
    Value::Int(i64::from_le_bytes(full))
}

/// The error for an opcode this parser does not read, by name where it has one.
pub(super) fn unsupported(op: u8, at: usize) -> String {
    let name = match op {
        b'S' => "STRING (protocol 0)",
        b'V' => "UNICODE (protocol 0)",
        b'i' => "INST",
        b'o' => "OBJ",
        b'P' => "PERSID (protocol 0)",
        0x82..=0x84 => "EXT (extension registry)",
        0x97 => "NEXT_BUFFER (out-of-band data)",
        0x98 => "READONLY_BUFFER (out-of-band data)",
        _ => "an unknown opcode",
    };
    format!("the pickle uses {name} (byte 0x{op:02x} at {at}), which is not read")
}

#[cfg(test)]
mod tests;
