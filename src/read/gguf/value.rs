//! GGUF metadata values: the thirteen kinds, read from a file without trusting its claims, and
//! written as version 3 writes them.
//!
//! A value is a kind number (u32) then its bytes, little-endian: integers and floats as
//! themselves, a bool as one byte (0 or 1), a string as a length then UTF-8 bytes, an array as
//! the kind of its elements, a count, then the elements (arrays may hold arrays). Lengths and
//! counts are u64 since version 2, u32 in version 1.

use std::fmt;

use super::cursor::Cursor;

/// Arrays nested deeper than this are refused (ggml's own files nest at most once).
const MAX_DEPTH: usize = 8;

/// The kind of a metadata value (GGUF's `gguf_metadata_value_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValueKind {
    /// `UINT8` (0).
    U8 = 0,
    /// `INT8` (1).
    I8 = 1,
    /// `UINT16` (2).
    U16 = 2,
    /// `INT16` (3).
    I16 = 3,
    /// `UINT32` (4).
    U32 = 4,
    /// `INT32` (5).
    I32 = 5,
    /// `FLOAT32` (6).
    F32 = 6,
    /// `BOOL` (7).
    Bool = 7,
    /// `STRING` (8).
    String = 8,
    /// `ARRAY` (9).
    Array = 9,
    /// `UINT64` (10).
    U64 = 10,
    /// `INT64` (11).
    I64 = 11,
    /// `FLOAT64` (12).
    F64 = 12,
}

impl ValueKind {
    /// The kind of GGUF kind number `n`.
    pub fn from_id(n: u32) -> Option<ValueKind> {
        use ValueKind::*;
        [
            U8, I8, U16, I16, U32, I32, F32, Bool, String, Array, U64, I64, F64,
        ]
        .into_iter()
        .find(|k| *k as u32 == n)
    }

    /// GGUF's name of the kind (`INT32`, `STRING`), as gguf-py spells it.
    pub fn name(self) -> &'static str {
        match self {
            ValueKind::U8 => "UINT8",
            ValueKind::I8 => "INT8",
            ValueKind::U16 => "UINT16",
            ValueKind::I16 => "INT16",
            ValueKind::U32 => "UINT32",
            ValueKind::I32 => "INT32",
            ValueKind::F32 => "FLOAT32",
            ValueKind::Bool => "BOOL",
            ValueKind::String => "STRING",
            ValueKind::Array => "ARRAY",
            ValueKind::U64 => "UINT64",
            ValueKind::I64 => "INT64",
            ValueKind::F64 => "FLOAT64",
        }
    }

    /// The fewest bytes one value of this kind takes (`length` is the size of a length field).
    fn min_size(self, length: u64) -> u64 {
        match self {
            ValueKind::U8 | ValueKind::I8 | ValueKind::Bool => 1,
            ValueKind::U16 | ValueKind::I16 => 2,
            ValueKind::U32 | ValueKind::I32 | ValueKind::F32 => 4,
            ValueKind::U64 | ValueKind::I64 | ValueKind::F64 => 8,
            ValueKind::String => length,
            ValueKind::Array => 4 + length,
        }
    }
}

impl fmt::Display for ValueKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    /// `UINT8`.
    U8(u8),
    /// `INT8`.
    I8(i8),
    /// `UINT16`.
    U16(u16),
    /// `INT16`.
    I16(i16),
    /// `UINT32`.
    U32(u32),
    /// `INT32`.
    I32(i32),
    /// `FLOAT32`.
    F32(f32),
    /// `BOOL`.
    Bool(bool),
    /// `STRING` (UTF-8).
    String(String),
    /// `ARRAY`.
    Array(MetaArray),
    /// `UINT64`.
    U64(u64),
    /// `INT64`.
    I64(i64),
    /// `FLOAT64`.
    F64(f64),
}

/// An array value: its elements, all of one kind (an array of arrays may mix kinds inside).
#[derive(Debug, Clone, PartialEq)]
pub enum MetaArray {
    /// `UINT8` elements.
    U8(Vec<u8>),
    /// `INT8` elements.
    I8(Vec<i8>),
    /// `UINT16` elements.
    U16(Vec<u16>),
    /// `INT16` elements.
    I16(Vec<i16>),
    /// `UINT32` elements.
    U32(Vec<u32>),
    /// `INT32` elements.
    I32(Vec<i32>),
    /// `FLOAT32` elements.
    F32(Vec<f32>),
    /// `BOOL` elements.
    Bool(Vec<bool>),
    /// `STRING` elements.
    String(Vec<String>),
    /// `ARRAY` elements.
    Array(Vec<MetaArray>),
    /// `UINT64` elements.
    U64(Vec<u64>),
    /// `INT64` elements.
    I64(Vec<i64>),
    /// `FLOAT64` elements.
    F64(Vec<f64>),
}

impl MetaValue {
    /// The value's kind.
    pub fn kind(&self) -> ValueKind {
        match self {
            MetaValue::U8(_) => ValueKind::U8,
            MetaValue::I8(_) => ValueKind::I8,
            MetaValue::U16(_) => ValueKind::U16,
            MetaValue::I16(_) => ValueKind::I16,
            MetaValue::U32(_) => ValueKind::U32,
            MetaValue::I32(_) => ValueKind::I32,
            MetaValue::F32(_) => ValueKind::F32,
            MetaValue::Bool(_) => ValueKind::Bool,
            MetaValue::String(_) => ValueKind::String,
            MetaValue::Array(_) => ValueKind::Array,
            MetaValue::U64(_) => ValueKind::U64,
            MetaValue::I64(_) => ValueKind::I64,
            MetaValue::F64(_) => ValueKind::F64,
        }
    }

    /// The string, if the value is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// The array, if the value is one.
    pub fn as_array(&self) -> Option<&MetaArray> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The value as an integer, if it is one of the integer kinds.
    pub fn as_integer(&self) -> Option<i128> {
        Some(match *self {
            MetaValue::U8(v) => v.into(),
            MetaValue::I8(v) => v.into(),
            MetaValue::U16(v) => v.into(),
            MetaValue::I16(v) => v.into(),
            MetaValue::U32(v) => v.into(),
            MetaValue::I32(v) => v.into(),
            MetaValue::U64(v) => v.into(),
            MetaValue::I64(v) => v.into(),
            _ => return None,
        })
    }

    /// Appends the value's bytes (without its kind number) as version 3 writes them.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        match self {
            MetaValue::U8(v) => out.push(*v),
            MetaValue::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
            MetaValue::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
            MetaValue::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
            MetaValue::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
            MetaValue::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
            MetaValue::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
            MetaValue::Bool(v) => out.push(u8::from(*v)),
            MetaValue::String(s) => encode_str(s, out),
            MetaValue::Array(a) => a.encode(out),
            MetaValue::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
            MetaValue::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
            MetaValue::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
        }
    }
}

/// A GGUF string: u64 length, then its bytes.
pub(crate) fn encode_str(s: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

macro_rules! each_array {
    ($a:expr, $v:ident => $body:expr) => {
        match $a {
            MetaArray::U8($v) => $body,
            MetaArray::I8($v) => $body,
            MetaArray::U16($v) => $body,
            MetaArray::I16($v) => $body,
            MetaArray::U32($v) => $body,
            MetaArray::I32($v) => $body,
            MetaArray::F32($v) => $body,
            MetaArray::Bool($v) => $body,
            MetaArray::String($v) => $body,
            MetaArray::Array($v) => $body,
            MetaArray::U64($v) => $body,
            MetaArray::I64($v) => $body,
            MetaArray::F64($v) => $body,
        }
    };
}

impl MetaArray {
    /// The kind of the elements.
    pub fn kind(&self) -> ValueKind {
        match self {
            MetaArray::U8(_) => ValueKind::U8,
            MetaArray::I8(_) => ValueKind::I8,
            MetaArray::U16(_) => ValueKind::U16,
            MetaArray::I16(_) => ValueKind::I16,
            MetaArray::U32(_) => ValueKind::U32,
            MetaArray::I32(_) => ValueKind::I32,
            MetaArray::F32(_) => ValueKind::F32,
            MetaArray::Bool(_) => ValueKind::Bool,
            MetaArray::String(_) => ValueKind::String,
            MetaArray::Array(_) => ValueKind::Array,
            MetaArray::U64(_) => ValueKind::U64,
            MetaArray::I64(_) => ValueKind::I64,
            MetaArray::F64(_) => ValueKind::F64,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        each_array!(self, v => v.len())
    }

    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends the array's bytes (element kind, count, elements) as version 3 writes them.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.kind() as u32).to_le_bytes());
        out.extend_from_slice(&(self.len() as u64).to_le_bytes());
        match self {
            MetaArray::U8(v) => out.extend_from_slice(v),
            MetaArray::Bool(v) => out.extend(v.iter().map(|&b| u8::from(b))),
            MetaArray::String(v) => v.iter().for_each(|s| encode_str(s, out)),
            MetaArray::Array(v) => v.iter().for_each(|a| a.encode(out)),
            MetaArray::I8(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            MetaArray::U16(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            MetaArray::I16(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            MetaArray::U32(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            MetaArray::I32(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            MetaArray::F32(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            MetaArray::U64(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            MetaArray::I64(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            MetaArray::F64(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        }
    }
}

/// Elements shown before `…` when a value is displayed.
const SHOWN: usize = 8;

impl fmt::Display for MetaValue {
    /// A short human form: scalars as themselves, strings as they are, arrays as
    /// `[kind × n] [first elements …]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetaValue::U8(v) => write!(f, "{v}"),
            MetaValue::I8(v) => write!(f, "{v}"),
            MetaValue::U16(v) => write!(f, "{v}"),
            MetaValue::I16(v) => write!(f, "{v}"),
            MetaValue::U32(v) => write!(f, "{v}"),
            MetaValue::I32(v) => write!(f, "{v}"),
            MetaValue::F32(v) => write!(f, "{v}"),
            MetaValue::Bool(v) => write!(f, "{v}"),
            MetaValue::String(s) => f.write_str(s),
            MetaValue::Array(a) => write!(f, "{a}"),
            MetaValue::U64(v) => write!(f, "{v}"),
            MetaValue::I64(v) => write!(f, "{v}"),
            MetaValue::F64(v) => write!(f, "{v}"),
        }
    }
}

impl fmt::Display for MetaArray {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{} × {}] [", self.kind(), self.len())?;
        let more = if self.len() > SHOWN { ", …" } else { "" };
        let items: Vec<String> = match self {
            MetaArray::String(v) => v.iter().take(SHOWN).map(|s| format!("{s:?}")).collect(),
            MetaArray::Array(v) => v.iter().take(SHOWN).map(|a| a.to_string()).collect(),
            other => {
                each_array!(other, v => v.iter().take(SHOWN).map(|x| format!("{x:?}")).collect())
            }
        };
        write!(f, "{}{more}]", items.join(", "))
    }
}

/// Reads a value of kind number `kind`; `what` names it in errors (`metadata key `k``).
pub(super) fn read_value(c: &mut Cursor<'_>, kind: u32, what: &str) -> Result<MetaValue, String> {
    let kind = ValueKind::from_id(kind)
        .ok_or_else(|| format!("{what} has the unknown value type {kind} (GGUF has 0 to 12)"))?;
    Ok(match kind {
        ValueKind::U8 => MetaValue::U8(c.u8()?),
        ValueKind::I8 => MetaValue::I8(c.u8()? as i8),
        ValueKind::U16 => MetaValue::U16(u16::from_le_bytes(c.array()?)),
        ValueKind::I16 => MetaValue::I16(i16::from_le_bytes(c.array()?)),
        ValueKind::U32 => MetaValue::U32(c.u32()?),
        ValueKind::I32 => MetaValue::I32(c.u32()? as i32),
        ValueKind::F32 => MetaValue::F32(f32::from_bits(c.u32()?)),
        ValueKind::Bool => MetaValue::Bool(bool_of(c.u8()?, what)?),
        ValueKind::String => MetaValue::String(c.string(what)?),
        ValueKind::Array => MetaValue::Array(read_array(c, what, 0)?),
        ValueKind::U64 => MetaValue::U64(c.u64()?),
        ValueKind::I64 => MetaValue::I64(c.u64()? as i64),
        ValueKind::F64 => MetaValue::F64(f64::from_bits(c.u64()?)),
    })
}

fn bool_of(b: u8, what: &str) -> Result<bool, String> {
    match b {
        0 => Ok(false),
        1 => Ok(true),
        other => Err(format!(
            "{what} holds the bool byte {other}, neither 0 nor 1"
        )),
    }
}

/// Reads `n` fixed-size elements, the count already checked against the bytes left.
fn fixed<T, const B: usize>(
    c: &mut Cursor<'_>,
    n: usize,
    f: impl Fn([u8; B]) -> T,
) -> Result<Vec<T>, String> {
    let bytes = c.bytes(n * B)?;
    Ok(bytes.as_chunks::<B>().0.iter().map(|b| f(*b)).collect())
}

fn read_array(c: &mut Cursor<'_>, what: &str, depth: usize) -> Result<MetaArray, String> {
    if depth >= MAX_DEPTH {
        return Err(format!(
            "{what} nests arrays more than {MAX_DEPTH} deep; no GGUF writer does that"
        ));
    }
    let kind = c.u32()?;
    let kind = ValueKind::from_id(kind).ok_or_else(|| {
        format!("{what} is an array of the unknown value type {kind} (GGUF has 0 to 12)")
    })?;
    let n = c.length()?;
    let need = n.checked_mul(kind.min_size(c.length_size()));
    if need.is_none_or(|need| need > c.remaining()) {
        return Err(format!(
            "{what} claims an array of {n} {kind} values, more than the {} bytes left in the \
             file hold: the file is truncated or corrupt",
            c.remaining()
        ));
    }
    // Bounded by the bytes left, checked above.
    let n = n as usize;
    Ok(match kind {
        ValueKind::U8 => MetaArray::U8(c.bytes(n)?),
        ValueKind::I8 => MetaArray::I8(fixed(c, n, |b: [u8; 1]| b[0] as i8)?),
        ValueKind::U16 => MetaArray::U16(fixed(c, n, u16::from_le_bytes)?),
        ValueKind::I16 => MetaArray::I16(fixed(c, n, i16::from_le_bytes)?),
        ValueKind::U32 => MetaArray::U32(fixed(c, n, u32::from_le_bytes)?),
        ValueKind::I32 => MetaArray::I32(fixed(c, n, i32::from_le_bytes)?),
        ValueKind::F32 => MetaArray::F32(fixed(c, n, f32::from_le_bytes)?),
        ValueKind::U64 => MetaArray::U64(fixed(c, n, u64::from_le_bytes)?),
        ValueKind::I64 => MetaArray::I64(fixed(c, n, i64::from_le_bytes)?),
        ValueKind::F64 => MetaArray::F64(fixed(c, n, f64::from_le_bytes)?),
        ValueKind::Bool => MetaArray::Bool(
            c.bytes(n)?
                .into_iter()
                .map(|b| bool_of(b, what))
                .collect::<Result<_, _>>()?,
        ),
        ValueKind::String => {
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push(c.string(what)?);
            }
            MetaArray::String(v)
        }
        ValueKind::Array => {
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push(read_array(c, what, depth + 1)?);
            }
            MetaArray::Array(v)
        }
    })
}
