//! The SentencePiece tokenizer of a umT5 text encoder, both ways between ComfyUI's
//! `spiece_model` tensor (a serialized sentencepiece `ModelProto`) and llama.cpp's
//! `tokenizer.ggml.*` metadata:
//!
//! - [`to_metadata`] writes what llama.cpp's `convert_hf_to_gguf.py` writes for a T5 model from
//!   that file (`_set_vocab_sentencepiece`): model `t5`, each piece's text, score and type (a
//!   user-defined piece becomes a normal one, as there), rows of the embedding beyond the pieces
//!   as `[PADn]` with score −10000 and type unused, `add_space_prefix` and
//!   `remove_extra_whitespaces` from the normalizer, the precompiled character map, and the
//!   unknown, end and padding ids of the trainer spec;
//! - [`from_metadata`] builds the `ModelProto` ComfyUI-GGUF's loader builds from them
//!   (`gguf_tokenizer_loader`), byte for byte as Python's protobuf serializes it: the pieces,
//!   a trainer spec with `vocab_size`, `max_sentence_length` 4096, `byte_fallback`, `eos_id` and
//!   `pad_id`, a normalizer spec with the two flags.

use crate::error::{Error, Result};
use crate::read::gguf::{MetaArray, MetaValue};

/// sentencepiece's `SentencePiece.Type` (and llama.cpp's token types, which share numbers).
const NORMAL: i32 = 1;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;

/// What a `ModelProto` holds that GGUF carries.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SentencePiece {
    /// Each piece: text, score, type.
    pub pieces: Vec<(String, f32, i32)>,
    /// `normalizer_spec.add_dummy_prefix` (default true).
    pub add_dummy_prefix: bool,
    /// `normalizer_spec.remove_extra_whitespaces` (default true).
    pub remove_extra_whitespaces: bool,
    /// `normalizer_spec.precompiled_charsmap`.
    pub charsmap: Vec<u8>,
    /// `trainer_spec.unk_id` (default 0).
    pub unk_id: i32,
    /// `trainer_spec.eos_id` (default 2).
    pub eos_id: i32,
    /// `trainer_spec.pad_id` (default −1: none).
    pub pad_id: i32,
}

fn bad(reason: String) -> Error {
    Error::InvalidInput(format!(
        "`spiece_model` is not a sentencepiece model: {reason}"
    ))
}

/// A protobuf reader over one message's bytes.
struct Wire<'a> {
    data: &'a [u8],
    at: usize,
}

/// One field's value.
enum Field<'a> {
    Varint(u64),
    Fixed32(u32),
    Bytes(&'a [u8]),
    Other,
}

impl<'a> Wire<'a> {
    fn varint(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..70).step_by(7) {
            let b = *self
                .data
                .get(self.at)
                .ok_or_else(|| bad("it ends inside a number".into()))?;
            self.at += 1;
            if shift == 63 && b > 1 {
                return Err(bad("a number overflows 64 bits".into()));
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(bad("a number runs past 10 bytes".into()))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| bad("a field runs past its end".into()))?;
        let out = &self.data[self.at..end];
        self.at = end;
        Ok(out)
    }

    /// The next field's number and value, `None` at the end.
    fn next(&mut self) -> Result<Option<(u64, Field<'a>)>> {
        if self.at == self.data.len() {
            return Ok(None);
        }
        let tag = self.varint()?;
        let value = match tag & 7 {
            0 => Field::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Field::Other
            }
            2 => {
                let n = usize::try_from(self.varint()?)
                    .map_err(|_| bad("a length overflows".into()))?;
                Field::Bytes(self.take(n)?)
            }
            5 => {
                let b = self.take(4)?;
                Field::Fixed32(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            w => {
                return Err(bad(format!(
                    "wire type {w} is not one sentencepiece writes"
                )))
            }
        };
        Ok(Some((tag >> 3, value)))
    }
}

fn fields(data: &[u8], mut each: impl FnMut(u64, Field<'_>) -> Result<()>) -> Result<()> {
    let mut w = Wire { data, at: 0 };
    while let Some((n, f)) = w.next()? {
        each(n, f)?;
    }
    Ok(())
}

/// Parses a serialized `ModelProto` (unknown fields skipped).
///
/// # Errors
/// [`Error::InvalidInput`] for bytes that are not one, or a model without pieces.
pub(crate) fn parse(data: &[u8]) -> Result<SentencePiece> {
    let mut sp = SentencePiece {
        pieces: Vec::new(),
        add_dummy_prefix: true,
        remove_extra_whitespaces: true,
        charsmap: Vec::new(),
        unk_id: 0,
        eos_id: 2,
        pad_id: -1,
    };
    fields(data, |n, f| {
        match (n, f) {
            (1, Field::Bytes(piece)) => {
                let (mut text, mut score, mut ty) = (String::new(), 0f32, NORMAL);
                fields(piece, |n, f| {
                    match (n, f) {
                        (1, Field::Bytes(b)) => {
                            text = String::from_utf8(b.to_vec())
                                .map_err(|_| bad("a piece is not UTF-8".into()))?;
                        }
                        (2, Field::Fixed32(v)) => score = f32::from_bits(v),
                        (3, Field::Varint(v)) => ty = v as i32,
                        _ => {}
                    }
                    Ok(())
                })?;
                sp.pieces.push((text, score, ty));
            }
            (2, Field::Bytes(trainer)) => fields(trainer, |n, f| {
                if let Field::Varint(v) = f {
                    match n {
                        40 => sp.unk_id = v as i32,
                        42 => sp.eos_id = v as i32,
                        43 => sp.pad_id = v as i32,
                        _ => {}
                    }
                }
                Ok(())
            })?,
            (3, Field::Bytes(normalizer)) => fields(normalizer, |n, f| {
                match (n, f) {
                    (2, Field::Bytes(b)) => sp.charsmap = b.to_vec(),
                    (3, Field::Varint(v)) => sp.add_dummy_prefix = v != 0,
                    (4, Field::Varint(v)) => sp.remove_extra_whitespaces = v != 0,
                    _ => {}
                }
                Ok(())
            })?,
            _ => {}
        }
        Ok(())
    })?;
    if sp.pieces.is_empty() {
        return Err(bad("it has no pieces".into()));
    }
    Ok(sp)
}

/// llama.cpp's `tokenizer.ggml.*` metadata of `sp` for an embedding of `rows` tokens (see the
/// [module docs](self)).
///
/// # Errors
/// [`Error::InvalidInput`] when the model has more pieces than the embedding rows, or no
/// padding id (ComfyUI-GGUF's loader needs one).
pub(crate) fn to_metadata(sp: &SentencePiece, rows: usize) -> Result<Vec<(String, MetaValue)>> {
    if sp.pieces.len() > rows {
        return Err(Error::InvalidInput(format!(
            "`spiece_model` has {} pieces, more than the {rows} rows of the token embedding",
            sp.pieces.len()
        )));
    }
    let (Ok(eos), Ok(pad), Ok(unk)) = (
        u32::try_from(sp.eos_id),
        u32::try_from(sp.pad_id),
        u32::try_from(sp.unk_id),
    ) else {
        return Err(Error::InvalidInput(format!(
            "`spiece_model` has no end, padding or unknown token (ids {}, {}, {}); \
             ComfyUI-GGUF's loader needs the end and padding ids to rebuild the tokenizer",
            sp.eos_id, sp.pad_id, sp.unk_id
        )));
    };
    let mut tokens = Vec::with_capacity(rows);
    let mut scores = Vec::with_capacity(rows);
    let mut types = Vec::with_capacity(rows);
    for (text, score, ty) in &sp.pieces {
        tokens.push(text.clone());
        scores.push(*score);
        types.push(if *ty == USER_DEFINED { NORMAL } else { *ty });
    }
    for i in sp.pieces.len()..rows {
        tokens.push(format!("[PAD{i}]"));
        scores.push(-10000.0);
        types.push(UNUSED);
    }
    let s = |k: &str| format!("tokenizer.ggml.{k}");
    let mut out = vec![
        (s("model"), MetaValue::String("t5".into())),
        (s("pre"), MetaValue::String("default".into())),
        (s("tokens"), MetaValue::Array(MetaArray::String(tokens))),
        (s("scores"), MetaValue::Array(MetaArray::F32(scores))),
        (s("token_type"), MetaValue::Array(MetaArray::I32(types))),
        (s("add_space_prefix"), MetaValue::Bool(sp.add_dummy_prefix)),
        (
            s("remove_extra_whitespaces"),
            MetaValue::Bool(sp.remove_extra_whitespaces),
        ),
    ];
    if !sp.charsmap.is_empty() {
        out.push((
            s("precompiled_charsmap"),
            MetaValue::Array(MetaArray::U8(sp.charsmap.clone())),
        ));
    }
    out.extend([
        (s("eos_token_id"), MetaValue::U32(eos)),
        (s("unknown_token_id"), MetaValue::U32(unk)),
        (s("padding_token_id"), MetaValue::U32(pad)),
        (s("add_bos_token"), MetaValue::Bool(false)),
        (s("add_eos_token"), MetaValue::Bool(true)),
    ]);
    Ok(out)
}

fn put_varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_tag(field: u64, wire: u64, out: &mut Vec<u8>) {
    put_varint(field << 3 | wire, out);
}

fn put_bytes(field: u64, b: &[u8], out: &mut Vec<u8>) {
    put_tag(field, 2, out);
    put_varint(b.len() as u64, out);
    out.extend_from_slice(b);
}

/// A protobuf `int32`: negative values as ten-byte varints.
fn put_int(field: u64, v: i64, out: &mut Vec<u8>) {
    put_tag(field, 0, out);
    put_varint(v as u64, out);
}

/// The `ModelProto` bytes ComfyUI-GGUF's loader builds from a text-encoder GGUF's metadata
/// (see the [module docs](self)), given the file's metadata lookup.
///
/// # Errors
/// [`Error::InvalidInput`] naming the field when one the loader reads is missing or of another
/// kind, when `tokenizer.ggml.model` is not `t5`, or when the lists differ in length.
pub(crate) fn from_metadata(get: impl Fn(&str) -> Option<MetaValue>) -> Result<Vec<u8>> {
    let missing = |k: &str, what: &str| {
        Error::InvalidInput(format!(
            "the text-encoder GGUF has no {what} `tokenizer.ggml.{k}`, which ComfyUI-GGUF's \
             loader needs to rebuild its tokenizer (`spiece_model`)"
        ))
    };
    let field = |k: &str| get(&format!("tokenizer.ggml.{k}"));
    match field("model") {
        Some(MetaValue::String(s)) if s == "t5" => {}
        Some(MetaValue::String(s)) => {
            return Err(Error::InvalidInput(format!(
                "the text-encoder GGUF's tokenizer is `{s}`, not the sentencepiece (`t5`) one \
                 a umT5 encoder needs (ComfyUI-GGUF's loader refuses it too)"
            )))
        }
        _ => return Err(missing("model", "string")),
    }
    let flag = |k: &str| match field(k) {
        Some(v) => v
            .as_integer()
            .map(|i| i != 0)
            .or(match v {
                MetaValue::Bool(b) => Some(b),
                _ => None,
            })
            .ok_or_else(|| missing(k, "boolean")),
        None => Err(missing(k, "boolean")),
    };
    let int = |k: &str| {
        field(k)
            .and_then(|v| v.as_integer())
            .ok_or_else(|| missing(k, "integer"))
    };
    let add_prefix = flag("add_space_prefix")?;
    let remove_ws = flag("remove_extra_whitespaces")?;
    let Some(MetaValue::Array(MetaArray::String(tokens))) = field("tokens") else {
        return Err(missing("tokens", "string list"));
    };
    let scores: Vec<f32> = match field("scores") {
        Some(MetaValue::Array(MetaArray::F32(v))) => v,
        Some(MetaValue::Array(MetaArray::F64(v))) => v.iter().map(|&x| x as f32).collect(),
        _ => return Err(missing("scores", "float list")),
    };
    let types: Vec<i64> = match field("token_type") {
        Some(MetaValue::Array(MetaArray::I32(v))) => v.iter().map(|&x| x.into()).collect(),
        Some(MetaValue::Array(MetaArray::U32(v))) => v.iter().map(|&x| x.into()).collect(),
        _ => return Err(missing("token_type", "integer list")),
    };
    let (eos, pad) = (int("eos_token_id")?, int("padding_token_id")?);
    // The loader zips the three lists: the shortest decides.
    let n = tokens.len().min(scores.len()).min(types.len());
    let mut out = Vec::with_capacity(n * 24 + 64);
    let mut piece = Vec::new();
    for i in 0..n {
        piece.clear();
        put_bytes(1, tokens[i].as_bytes(), &mut piece);
        put_tag(2, 5, &mut piece);
        piece.extend_from_slice(&scores[i].to_le_bytes());
        put_int(3, types[i], &mut piece);
        put_bytes(1, &piece, &mut out);
    }
    let mut trainer = Vec::new();
    put_int(4, tokens.len() as i64, &mut trainer);
    put_int(18, 4096, &mut trainer);
    put_int(35, 1, &mut trainer);
    put_int(42, eos as i64, &mut trainer);
    put_int(43, pad as i64, &mut trainer);
    put_bytes(2, &trainer, &mut out);
    let mut normalizer = Vec::new();
    put_int(3, i64::from(add_prefix), &mut normalizer);
    put_int(4, i64::from(remove_ws), &mut normalizer);
    put_bytes(3, &normalizer, &mut out);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `ModelProto` as sentencepiece writes one: pieces, a trainer spec with ids, a
    /// normalizer with a character map and flags.
    fn model() -> Vec<u8> {
        let mut out = Vec::new();
        for (text, score, ty) in [("<pad>", 0.0f32, 3i64), ("</s>", 0.0, 3), ("<unk>", 0.0, 2)]
            .into_iter()
            .chain([("▁a", -1.5, 1), ("b", -2.25, 4), ("<0x00>", 0.0, 6)])
        {
            let mut p = Vec::new();
            put_bytes(1, text.as_bytes(), &mut p);
            put_tag(2, 5, &mut p);
            p.extend_from_slice(&score.to_le_bytes());
            put_int(3, ty, &mut p);
            put_bytes(1, &p, &mut out);
        }
        let mut t = Vec::new();
        put_bytes(2, b"spiece", &mut t);
        put_int(40, 2, &mut t);
        put_int(41, -1, &mut t);
        put_int(42, 1, &mut t);
        put_int(43, 0, &mut t);
        put_bytes(2, &t, &mut out);
        let mut n = Vec::new();
        put_bytes(1, b"nmt_nfkc", &mut n);
        put_bytes(2, &[9, 8, 7], &mut n);
        put_int(3, 1, &mut n);
        put_int(4, 0, &mut n);
        put_bytes(3, &n, &mut out);
        out
    }

    #[test]
    fn a_model_parses_and_becomes_llama_cpps_metadata() {
        let sp = parse(&model()).unwrap();
        assert_eq!(sp.pieces.len(), 6);
        assert_eq!(sp.pieces[3], ("▁a".to_string(), -1.5, 1));
        assert_eq!((sp.unk_id, sp.eos_id, sp.pad_id), (2, 1, 0));
        assert!(sp.add_dummy_prefix && !sp.remove_extra_whitespaces);
        assert_eq!(sp.charsmap, vec![9, 8, 7]);
        let meta = to_metadata(&sp, 8).unwrap();
        let get = |k: &str| meta.iter().find(|(m, _)| m == k).map(|(_, v)| v.clone());
        let Some(MetaValue::Array(MetaArray::String(tokens))) = get("tokenizer.ggml.tokens") else {
            panic!("no tokens")
        };
        assert_eq!(tokens.len(), 8);
        assert_eq!(tokens[6], "[PAD6]");
        assert_eq!(
            get("tokenizer.ggml.token_type"),
            Some(MetaValue::Array(MetaArray::I32(vec![
                3, 3, 2, 1, 1, 6, 5, 5
            ])))
        );
        assert_eq!(
            get("tokenizer.ggml.padding_token_id"),
            Some(MetaValue::U32(0))
        );
        assert!(to_metadata(&sp, 5).is_err());
        // The loader's model from that metadata: the pieces, its trainer and normalizer fields.
        let back = parse(&from_metadata(get).unwrap()).unwrap();
        assert_eq!(back.pieces.len(), 8);
        assert_eq!(back.pieces[4], ("b".to_string(), -2.25, 1));
        assert_eq!((back.eos_id, back.pad_id), (1, 0));
        assert!(back.add_dummy_prefix && !back.remove_extra_whitespaces);
        assert!(back.charsmap.is_empty());
    }

    #[test]
    fn bad_bytes_and_missing_fields_are_refused() {
        assert!(parse(b"").is_err());
        assert!(parse(&[0x0a, 0x05, 0x01]).is_err());
        assert!(parse(&[0xff; 12]).is_err());
        let e = from_metadata(|_| None).unwrap_err().to_string();
        assert!(e.contains("tokenizer.ggml.model"), "{e}");
        let e = from_metadata(|k| {
            (k == "tokenizer.ggml.model").then(|| MetaValue::String("gpt2".into()))
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("gpt2"), "{e}");
    }
}
