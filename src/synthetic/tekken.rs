//! A synthetic tekken tokenizer for the Mistral 3 encoder (Flux 2 dev's `tekken_model`): tekken
//! v7's layout — at full size 1000 special tokens (`<unk>`, `<s>`, `</s>`, `[INST]` … then
//! `<SPECIAL_n>`), a byte-level BPE vocabulary of 150000 tokens whose first 256 are the bytes and
//! every later one the concatenation of two earlier ones (so the merges llama.cpp derives exist),
//! and `default_vocab_size` 131072, the encoder's embedding rows; at test size the 20 named
//! specials and 980 tokens for the tiny encoder's 1000 rows. Deterministic, built once per
//! process.

use std::collections::HashSet;
use std::sync::OnceLock;

use serde_json::{json, Value};

use crate::gguf_text::tekken::b64_encode;

/// The lengths in bytes of the full-size and the test-size file (the synthetic tensors'
/// shapes; a test checks them).
pub(crate) const BYTES: usize = 10_209_397;
pub(crate) const TINY_BYTES: usize = 52_722;

/// Tekken v7's named special tokens, by rank; the rest up to 1000 are `<SPECIAL_n>`.
const NAMED: [&str; 20] = [
    "<unk>",
    "<s>",
    "</s>",
    "[INST]",
    "[/INST]",
    "[AVAILABLE_TOOLS]",
    "[/AVAILABLE_TOOLS]",
    "[TOOL_RESULTS]",
    "[/TOOL_RESULTS]",
    "[TOOL_CALLS]",
    "[IMG]",
    "<pad>",
    "[IMG_BREAK]",
    "[IMG_END]",
    "[PREFIX]",
    "[MIDDLE]",
    "[SUFFIX]",
    "[SYSTEM_PROMPT]",
    "[/SYSTEM_PROMPT]",
    "[TOOL_CONTENT]",
];
/// The longest token made.
const MAX_LEN: usize = 16;

/// One size: special tokens, vocabulary, embedding rows.
struct Size {
    specials: usize,
    vocab: usize,
    default_vocab_size: usize,
}

const FULL: Size = Size {
    specials: 1000,
    vocab: 150_000,
    default_vocab_size: 131_072,
};
const TINY: Size = Size {
    specials: NAMED.len(),
    vocab: 980,
    default_vocab_size: 1000,
};

/// The tekken JSON's bytes of `len` bytes (the full-size or test-size file), if one is.
pub(crate) fn json_bytes(len: usize) -> Option<&'static [u8]> {
    static FULL_JSON: OnceLock<Vec<u8>> = OnceLock::new();
    static TINY_JSON: OnceLock<Vec<u8>> = OnceLock::new();
    match len {
        BYTES => Some(FULL_JSON.get_or_init(|| build(&FULL))),
        TINY_BYTES => Some(TINY_JSON.get_or_init(|| build(&TINY))),
        _ => None,
    }
}

fn build(size: &Size) -> Vec<u8> {
    let mut vocab: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
    let mut seen: HashSet<Vec<u8>> = vocab.iter().cloned().collect();
    let mut state = 0x7e6b_6b65_6e00_0007_u64;
    let mut next = || {
        // splitmix64
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    while vocab.len() < size.vocab {
        let n = vocab.len() as u64;
        // Earlier (more frequent) tokens are picked more often, as BPE merges them.
        let mut pick = || (next() % n).min(next() % n) as usize;
        let (a, b) = (pick(), pick());
        if vocab[a].len() + vocab[b].len() > MAX_LEN {
            continue;
        }
        let token = [vocab[a].as_slice(), vocab[b].as_slice()].concat();
        if seen.insert(token.clone()) {
            vocab.push(token);
        }
    }
    let entries: Vec<Value> = vocab
        .iter()
        .enumerate()
        .map(|(rank, t)| {
            let mut b64 = String::new();
            b64_encode(t, &mut b64);
            let text = std::str::from_utf8(t).ok();
            json!({"rank": rank, "token_bytes": b64, "token_str": text})
        })
        .collect();
    let specials: Vec<Value> = (0..size.specials)
        .map(|rank| {
            let s = NAMED
                .get(rank)
                .map_or_else(|| format!("<SPECIAL_{rank}>"), |s| s.to_string());
            json!({"rank": rank, "token_str": s, "is_control": true})
        })
        .collect();
    let doc = json!({
        "config": {
            "pattern": "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
            "num_vocab_tokens": size.vocab,
            "default_vocab_size": size.default_vocab_size,
            "default_num_special_tokens": size.specials,
            "version": "v7",
        },
        "vocab": entries,
        "special_tokens": specials,
    });
    serde_json::to_vec(&doc).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf_text::tekken::{merges, parse, to_metadata};
    use crate::read::gguf::{MetaArray, MetaValue};

    #[test]
    fn the_synthetic_tekken_is_a_byte_level_bpe_of_mistral3s_size() {
        for (len, size) in [(BYTES, FULL), (TINY_BYTES, TINY)] {
            let tk = parse(&build(&size)).unwrap();
            assert_eq!(json_bytes(len).unwrap().len(), len);
            assert_eq!(tk.specials.len(), size.specials);
            assert_eq!(&tk.specials[..4], ["<unk>", "<s>", "</s>", "[INST]"]);
            assert_eq!(tk.vocab.len(), size.vocab);
            let used = &tk.vocab[..size.default_vocab_size - size.specials];
            // Every multi-byte token has at least one merge of two tokens before it.
            let m = merges(used);
            assert!(m.len() >= used.len() - 256, "{}", m.len());
            let meta = to_metadata(&tk, size.default_vocab_size).unwrap();
            let Some(MetaValue::Array(MetaArray::String(tokens))) = meta
                .iter()
                .find(|(k, _)| k == "tokenizer.ggml.tokens")
                .map(|(_, v)| v.clone())
            else {
                panic!("no tokens")
            };
            assert_eq!(tokens.len(), size.default_vocab_size);
            assert_eq!(tokens[size.specials], "Ā");
        }
        assert_eq!(
            parse(json_bytes(BYTES).unwrap()).unwrap().specials[999],
            "<SPECIAL_999>"
        );
        assert!(json_bytes(64).is_none());
    }
}
