//! The tekken tokenizer of a Mistral 3 text encoder (ComfyUI's `mistral3_24b`, Flux 2 dev's),
//! both ways between ComfyUI's `tekken_model` tensor (the bytes of a tekken JSON: `config`,
//! `vocab` entries with `rank`/`token_bytes`, `special_tokens` with `rank`/`token_str`) and
//! llama.cpp's `tokenizer.ggml.*` metadata:
//!
//! - [`to_metadata`] writes what llama.cpp's `convert_hf_to_gguf.py` writes for Mistral Small
//!   3.x from the transformers tokenizer that transformers' tekken converter makes
//!   (`_set_vocab_gpt2`): model `gpt2`, pre-tokenizer `tekken`, the special tokens first (by
//!   rank, type control), then the vocabulary by rank in GPT-2's `bytes_to_unicode` characters
//!   (type normal) up to the embedding's rows, the merges the converter derives from the ranks,
//!   and the `<s>`/`</s>`/`<unk>` ids;
//! - [`from_metadata`] builds the tekken JSON ComfyUI-GGUF's loader builds from them
//!   (`gguf_tekken_tokenizer_loader`), byte for byte as Python's `json.dumps` writes it.

use std::collections::HashMap;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::quant::describe::write_string as json_str;
use crate::read::gguf::{MetaArray, MetaValue};

/// The top-level key ComfyUI keeps the tokenizer under.
pub(crate) const TEKKEN: &str = "tekken_model";

/// llama.cpp's token types.
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const UNUSED: i32 = 5;

/// The loader's fixed `config` object.
const LOADER_CONFIG: &str = r#"{"num_vocab_tokens": 150000, "default_vocab_size": 131072}"#;

/// Mistral Small 3.1's text config where the tensors do not say (`config.json`).
const CONTEXT_LENGTH: u32 = 131_072;
const ROPE_FREQ_BASE: f32 = 1.0e9;
const RMS_EPS: f32 = 1.0e-5;

/// GPT-2's `bytes_to_unicode`: the printable character standing for each byte.
fn byte_chars() -> [char; 256] {
    let mut out = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..256u32 {
        let printable =
            (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
        let c = if printable {
            b
        } else {
            next += 1;
            next - 1
        };
        out[b as usize] = char::from_u32(c).unwrap_or('\0');
    }
    out
}

/// `bytes` in `bytes_to_unicode` characters (a byte-level BPE token's text).
fn to_chars(table: &[char; 256], bytes: &[u8]) -> String {
    bytes.iter().map(|&b| table[b as usize]).collect()
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (Python's `base64.b64encode`).
pub(crate) fn b64_encode(data: &[u8], out: &mut String) {
    for chunk in data.chunks(3) {
        let n = chunk.len();
        let v = u32::from(chunk[0]) << 16
            | u32::from(*chunk.get(1).unwrap_or(&0)) << 8
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= n {
                out.push(B64[(v >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
}

/// Strict standard base64 (padding required, as tekken files write it).
fn b64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.as_bytes();
    if !s.len().is_multiple_of(4) {
        return None;
    }
    let val = |c: u8| B64.iter().position(|&x| x == c).map(|p| p as u32);
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    for (i, q) in s.chunks(4).enumerate() {
        let last = i + 1 == s.len() / 4;
        let pad = q.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut v = 0u32;
        for &c in &q[..4 - pad] {
            v = v << 6 | val(c)?;
        }
        v <<= 6 * pad as u32;
        out.extend_from_slice(&v.to_be_bytes()[1..4 - pad]);
    }
    Some(out)
}

fn missing(k: &str, what: &str) -> Error {
    Error::InvalidInput(format!(
        "the text-encoder GGUF has no {what} `tokenizer.ggml.{k}`, which ComfyUI-GGUF's loader \
         needs to rebuild a Mistral 3 encoder's tokenizer (`{TEKKEN}`)"
    ))
}

/// The tekken JSON bytes ComfyUI-GGUF's loader builds from a `llama` text-encoder GGUF's
/// metadata (see the [module docs](self)), given the file's metadata lookup.
///
/// # Errors
/// [`Error::InvalidInput`] naming the field when `tokenizer.ggml.model` is not `gpt2`, the
/// token or type list is missing or of another kind, or a normal token holds a character that
/// is not one of GPT-2's byte characters (the loader fails on it too).
pub(crate) fn from_metadata(get: impl Fn(&str) -> Option<MetaValue>) -> Result<Vec<u8>> {
    let field = |k: &str| get(&format!("tokenizer.ggml.{k}"));
    match field("model") {
        Some(MetaValue::String(s)) if s == "gpt2" => {}
        Some(MetaValue::String(s)) => {
            return Err(Error::InvalidInput(format!(
                "the text-encoder GGUF's tokenizer (`tokenizer.ggml.model`) is `{s}`, not the \
                 byte-level BPE (`gpt2`) one a Mistral 3 encoder needs (ComfyUI-GGUF's loader \
                 refuses it too)"
            )))
        }
        _ => return Err(missing("model", "string")),
    }
    let Some(MetaValue::Array(MetaArray::String(tokens))) = field("tokens") else {
        return Err(missing("tokens", "string list"));
    };
    let types: Vec<i64> = match field("token_type") {
        Some(MetaValue::Array(MetaArray::I32(v))) => v.iter().map(|&x| x.into()).collect(),
        Some(MetaValue::Array(MetaArray::U32(v))) => v.iter().map(|&x| x.into()).collect(),
        _ => return Err(missing("token_type", "integer list")),
    };
    let mut decode = HashMap::with_capacity(256);
    for (b, c) in byte_chars().into_iter().enumerate() {
        decode.insert(c, b as u8);
    }
    let mut vocab = String::with_capacity(tokens.len() * 48);
    let mut specials = String::new();
    let mut n_vocab = 0usize;
    let mut bytes = Vec::new();
    // The loader zips the two lists: the shorter decides.
    for (idx, (token, ty)) in tokens.iter().zip(&types).enumerate() {
        if *ty == i64::from(CONTROL) {
            if !specials.is_empty() {
                specials.push_str(", ");
            }
            specials.push_str(&format!("{{\"rank\": {idx}, \"token_str\": "));
            json_str(token, &mut specials);
            specials.push_str(", \"is_control\": true}");
            continue;
        }
        bytes.clear();
        for c in token.chars() {
            let Some(&b) = decode.get(&c) else {
                return Err(Error::InvalidInput(format!(
                    "token {idx} of `tokenizer.ggml.tokens` ({token:?}) holds {c:?}, which is \
                     not a byte of GPT-2's byte-level alphabet; ComfyUI-GGUF's loader cannot \
                     rebuild the tekken tokenizer from it"
                )));
            };
            bytes.push(b);
        }
        if n_vocab > 0 {
            vocab.push_str(", ");
        }
        vocab.push_str(&format!("{{\"rank\": {n_vocab}, \"token_bytes\": \""));
        b64_encode(&bytes, &mut vocab);
        vocab.push_str("\", \"token_str\": ");
        json_str(&String::from_utf8_lossy(&bytes), &mut vocab);
        vocab.push('}');
        n_vocab += 1;
    }
    let json = format!(
        "{{\"config\": {LOADER_CONFIG}, \"vocab\": [{vocab}], \"special_tokens\": [{specials}]}}"
    );
    Ok(json.into_bytes())
}

/// What a tekken file holds that GGUF carries.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Tekken {
    /// The special tokens' strings, by rank (ranks without an entry are `<SPECIAL_n>`, as
    /// mistral-common fills them).
    pub specials: Vec<String>,
    /// The vocabulary's bytes, by rank.
    pub vocab: Vec<Vec<u8>>,
}

fn bad(reason: String) -> Error {
    Error::InvalidInput(format!("`{TEKKEN}` is not a tekken tokenizer: {reason}"))
}

fn rank_of(entry: &Value, list: &str, i: usize) -> Result<usize> {
    entry
        .get("rank")
        .and_then(Value::as_u64)
        .and_then(|r| usize::try_from(r).ok())
        .ok_or_else(|| bad(format!("entry {i} of `{list}` has no whole-number `rank`")))
}

/// Parses the bytes of a tekken JSON.
///
/// # Errors
/// [`Error::InvalidInput`] for bytes that are not JSON, a missing `vocab` or
/// `special_tokens` list, an entry without `rank`, `token_bytes` (base64) or `token_str`, or
/// ranks that repeat or leave gaps.
pub(crate) fn parse(data: &[u8]) -> Result<Tekken> {
    let v: Value =
        serde_json::from_slice(data).map_err(|e| bad(format!("it is not JSON ({e})")))?;
    let list = |k: &str| {
        v.get(k)
            .and_then(Value::as_array)
            .ok_or_else(|| bad(format!("it has no `{k}` list")))
    };
    let mut vocab: Vec<Option<Vec<u8>>> = Vec::new();
    for (i, e) in list("vocab")?.iter().enumerate() {
        let rank = rank_of(e, "vocab", i)?;
        let bytes = e
            .get("token_bytes")
            .and_then(Value::as_str)
            .and_then(b64_decode)
            .ok_or_else(|| bad(format!("vocab entry {i} has no base64 `token_bytes`")))?;
        if bytes.is_empty() {
            return Err(bad(format!("vocab entry {i} is empty")));
        }
        place(&mut vocab, rank, bytes, "vocab")?;
    }
    let vocab = vocab
        .into_iter()
        .enumerate()
        .map(|(r, b)| b.ok_or_else(|| bad(format!("no vocab entry has rank {r}"))))
        .collect::<Result<Vec<_>>>()?;
    let mut specials: Vec<Option<String>> = Vec::new();
    for (i, e) in list("special_tokens")?.iter().enumerate() {
        let rank = rank_of(e, "special_tokens", i)?;
        let s = e
            .get("token_str")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("special token {i} has no `token_str`")))?;
        place(&mut specials, rank, s.to_string(), "special_tokens")?;
    }
    let declared = v
        .get("config")
        .and_then(|c| c.get("default_num_special_tokens"))
        .and_then(Value::as_u64)
        .and_then(|n| usize::try_from(n).ok());
    if let Some(n) = declared {
        if n > MAX_GAP {
            return Err(bad(format!(
                "`default_num_special_tokens` is {n}, more than a tokenizer holds"
            )));
        }
        if specials.len() > n {
            return Err(bad(format!(
                "a special token has rank {}, beyond its {n} special tokens",
                specials.len() - 1
            )));
        }
        specials.resize(n, None);
    }
    let specials = specials
        .into_iter()
        .enumerate()
        .map(|(r, s)| s.unwrap_or_else(|| format!("<SPECIAL_{r}>")))
        .collect();
    Ok(Tekken { specials, vocab })
}

/// How far past the entries read a rank or count may reach (bounds what a hostile file makes
/// this allocate; tekken files hold a few hundred thousand entries).
const MAX_GAP: usize = 1 << 20;

fn place<T>(list: &mut Vec<Option<T>>, rank: usize, v: T, name: &str) -> Result<()> {
    if rank >= list.len() {
        // A rank far beyond the entries is a gap that the check after reading reports.
        if rank > list.len() + MAX_GAP {
            return Err(bad(format!("a `{name}` rank of {rank} leaves a gap")));
        }
        list.resize_with(rank + 1, || None);
    }
    if list[rank].replace(v).is_some() {
        return Err(bad(format!("two `{name}` entries have rank {rank}")));
    }
    Ok(())
}

/// The merges transformers' tekken converter derives from the ranks of `vocab` (every split
/// of a token into two shorter tokens, ordered by the token's rank, then by the ranks of the
/// two parts), in llama.cpp's `"left right"` form.
pub(crate) fn merges(vocab: &[Vec<u8>]) -> Vec<String> {
    let table = byte_chars();
    let ranks: HashMap<&[u8], usize> = vocab
        .iter()
        .enumerate()
        .map(|(r, b)| (b.as_slice(), r))
        .collect();
    let mut out = Vec::new();
    let mut local = Vec::new();
    for token in vocab {
        local.clear();
        for i in 1..token.len() {
            let (l, r) = token.split_at(i);
            if let (Some(&a), Some(&b)) = (ranks.get(l), ranks.get(r)) {
                local.push((a, b, i));
            }
        }
        local.sort_unstable();
        for &(_, _, i) in &local {
            let (l, r) = token.split_at(i);
            out.push(format!("{} {}", to_chars(&table, l), to_chars(&table, r)));
        }
    }
    out
}

/// llama.cpp's `tokenizer.ggml.*` metadata of `tk` for an embedding of `rows` tokens (see the
/// [module docs](self)).
///
/// # Errors
/// [`Error::InvalidInput`] when the special tokens alone fill the embedding, or `<s>`, `</s>`
/// or `<unk>` is not among them.
pub(crate) fn to_metadata(tk: &Tekken, rows: usize) -> Result<Vec<(String, MetaValue)>> {
    let n_special = tk.specials.len();
    if n_special >= rows {
        return Err(Error::InvalidInput(format!(
            "`{TEKKEN}` has {n_special} special tokens, as many as the {rows} rows of the token \
             embedding or more"
        )));
    }
    let id = |s: &str| {
        tk.specials
            .iter()
            .position(|t| t == s)
            .and_then(|i| u32::try_from(i).ok())
            .ok_or_else(|| {
                Error::InvalidInput(format!(
                    "`{TEKKEN}` has no `{s}` special token, which llama.cpp's Mistral tokenizer \
                     metadata names"
                ))
            })
    };
    let (bos, eos, unk) = (id("<s>")?, id("</s>")?, id("<unk>")?);
    let used = &tk.vocab[..tk.vocab.len().min(rows - n_special)];
    let table = byte_chars();
    let mut tokens = Vec::with_capacity(rows);
    let mut types = Vec::with_capacity(rows);
    tokens.extend(tk.specials.iter().cloned());
    types.resize(n_special, CONTROL);
    tokens.extend(used.iter().map(|b| to_chars(&table, b)));
    types.resize(tokens.len(), NORMAL);
    for i in tokens.len()..rows {
        tokens.push(format!("[PAD{i}]"));
        types.push(UNUSED);
    }
    let s = |k: &str| format!("tokenizer.ggml.{k}");
    Ok(vec![
        (s("model"), MetaValue::String("gpt2".into())),
        (s("pre"), MetaValue::String("tekken".into())),
        (s("tokens"), MetaValue::Array(MetaArray::String(tokens))),
        (s("token_type"), MetaValue::Array(MetaArray::I32(types))),
        (
            s("merges"),
            MetaValue::Array(MetaArray::String(merges(used))),
        ),
        (s("bos_token_id"), MetaValue::U32(bos)),
        (s("eos_token_id"), MetaValue::U32(eos)),
        (s("unknown_token_id"), MetaValue::U32(unk)),
        (s("add_bos_token"), MetaValue::Bool(true)),
        (s("add_eos_token"), MetaValue::Bool(false)),
    ])
}

/// The `llama.*` hyper-parameters llama.cpp's converter writes for Mistral Small 3.x beyond
/// the block count and the embedding and feed-forward widths: the head counts ComfyUI-GGUF's
/// loader permutes with (32 and 8), key and value length and rope dimension from the
/// projections' rows over those heads, the vocabulary size from the embedding's rows, and the
/// context length, rope base and RMS epsilon of Mistral Small 3.1's config. `shape` looks a
/// tensor's shape up by its transformers name.
pub(crate) fn hyper_parameters(
    shape: impl Fn(&str) -> Option<Vec<usize>>,
) -> Vec<(String, MetaValue)> {
    let (heads, kv_heads) = (super::LLAMA_HEADS, super::LLAMA_KV_HEADS);
    let rows = |k: &str| shape(k).and_then(|s| s.first().copied());
    let per_head = |k: &str, h: usize| rows(k).map(|r| (r / h) as u32);
    let key = per_head("model.layers.0.self_attn.q_proj.weight", heads);
    let value = per_head("model.layers.0.self_attn.v_proj.weight", kv_heads);
    let a = |k: &str| format!("llama.{k}");
    let mut out = vec![
        (a("context_length"), MetaValue::U32(CONTEXT_LENGTH)),
        (a("attention.head_count"), MetaValue::U32(heads as u32)),
        (
            a("attention.head_count_kv"),
            MetaValue::U32(kv_heads as u32),
        ),
        (a("rope.freq_base"), MetaValue::F32(ROPE_FREQ_BASE)),
        (
            a("attention.layer_norm_rms_epsilon"),
            MetaValue::F32(RMS_EPS),
        ),
    ];
    if let Some(k) = key {
        out.push((a("attention.key_length"), MetaValue::U32(k)));
    }
    if let Some(v) = value {
        out.push((a("attention.value_length"), MetaValue::U32(v)));
    }
    if let Some(n) = rows("model.embed_tokens.weight") {
        out.push((a("vocab_size"), MetaValue::U32(n as u32)));
    }
    if let Some(k) = key {
        out.push((a("rope.dimension_count"), MetaValue::U32(k)));
    }
    out
}

#[cfg(test)]
mod tests;
