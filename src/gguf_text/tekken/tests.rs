use super::*;

fn meta(tokens: &[&str], types: &[i32]) -> impl Fn(&str) -> Option<MetaValue> {
    let tokens: Vec<String> = tokens.iter().map(|s| s.to_string()).collect();
    let types = types.to_vec();
    move |k: &str| match k {
        "tokenizer.ggml.model" => Some(MetaValue::String("gpt2".into())),
        "tokenizer.ggml.tokens" => Some(MetaValue::Array(MetaArray::String(tokens.clone()))),
        "tokenizer.ggml.token_type" => Some(MetaValue::Array(MetaArray::I32(types.clone()))),
        _ => None,
    }
}

#[test]
fn gpt2_byte_characters() {
    let t = byte_chars();
    // Printable bytes stand for themselves; the rest count up from U+0100 in byte order.
    assert_eq!(
        (t[b'!' as usize], t[b'~' as usize], t[0xe9]),
        ('!', '~', 'é')
    );
    assert_eq!((t[0], t[b' ' as usize], t[b'\n' as usize]), ('Ā', 'Ġ', 'Ċ'));
    assert_eq!((t[0x7f], t[0xad]), ('ġ', 'Ń'));
    let mut all: Vec<char> = t.to_vec();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 256);
}

#[test]
fn base64_and_json_strings_are_pythons() {
    for (raw, enc) in [
        (&b""[..], ""),
        (b"f", "Zg=="),
        (b"fo", "Zm8="),
        (b"foo", "Zm9v"),
        (&[0xff, 0xfe, 0x00, 0x80][..], "//4AgA=="),
    ] {
        let mut s = String::new();
        b64_encode(raw, &mut s);
        assert_eq!(s, enc);
        assert_eq!(b64_decode(enc).unwrap(), raw);
    }
    assert!(b64_decode("Zg=").is_none() && b64_decode("Z===").is_none());
    assert!(b64_decode("Zg==Zg==").is_none() && b64_decode("Z!==").is_none());
    // json.dumps("a\"\\\n\t\x01\x7fé\u2581😀\ufffd~ ")
    let mut s = String::new();
    json_str("a\"\\\n\t\u{1}\u{7f}é\u{2581}😀\u{fffd}~ ", &mut s);
    assert_eq!(
        s,
        r#""a\"\\\n\t\u0001\u007f\u00e9\u2581\ud83d\ude00\ufffd~ ""#
    );
}

#[test]
fn the_loaders_json_from_metadata() {
    // Two specials, then "Ġa", an invalid lone continuation byte, "é" as its two bytes, and a
    // truncated three-byte sequence followed by "!".
    let json = from_metadata(meta(
        &["<unk>", "<s>", "Ġa", "\u{0122}", "Ã©", "ãĤ!"],
        &[3, 3, 1, 1, 1, 1],
    ))
    .unwrap();
    assert_eq!(
        String::from_utf8(json).unwrap(),
        concat!(
            r#"{"config": {"num_vocab_tokens": 150000, "default_vocab_size": 131072}, "vocab": ["#,
            r#"{"rank": 0, "token_bytes": "IGE=", "token_str": " a"}, "#,
            r#"{"rank": 1, "token_bytes": "gA==", "token_str": "\ufffd"}, "#,
            r#"{"rank": 2, "token_bytes": "w6k=", "token_str": "\u00e9"}, "#,
            r#"{"rank": 3, "token_bytes": "44Ih", "token_str": "\ufffd!"}], "#,
            r#""special_tokens": [{"rank": 0, "token_str": "<unk>", "is_control": true}, "#,
            r#"{"rank": 1, "token_str": "<s>", "is_control": true}]}"#
        )
    );
}

#[test]
fn missing_and_foreign_metadata_is_named() {
    let e = from_metadata(|_| None).unwrap_err().to_string();
    assert!(e.contains("tokenizer.ggml.model"), "{e}");
    let e =
        from_metadata(|k| (k == "tokenizer.ggml.model").then(|| MetaValue::String("t5".into())))
            .unwrap_err()
            .to_string();
    assert!(e.contains("`t5`") && e.contains("gpt2"), "{e}");
    let e =
        from_metadata(|k| (k == "tokenizer.ggml.model").then(|| MetaValue::String("gpt2".into())))
            .unwrap_err()
            .to_string();
    assert!(e.contains("tokenizer.ggml.tokens"), "{e}");
    let m = meta(&["a"], &[1]);
    let e = from_metadata(|k| (k != "tokenizer.ggml.token_type").then(|| m(k)).flatten())
        .unwrap_err()
        .to_string();
    assert!(e.contains("tokenizer.ggml.token_type"), "{e}");
    let e = from_metadata(meta(&["<s>", "a b"], &[3, 1]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("token 1") && e.contains("' '"), "{e}");
}

/// A tekken JSON with three specials (one rank left to mistral-common's filler) and a small
/// byte-level vocabulary.
fn tekken_json() -> String {
    let vocab: Vec<String> = ["a", "b", "c", " ", "ab", "abc", " a", "bc"]
        .iter()
        .enumerate()
        .map(|(r, t)| {
            let mut b = String::new();
            b64_encode(t.as_bytes(), &mut b);
            format!(r#"{{"rank": {r}, "token_bytes": "{b}", "token_str": "{t}"}}"#)
        })
        .collect();
    format!(
        r#"{{"config": {{"default_vocab_size": 12, "default_num_special_tokens": 4}},
            "vocab": [{}],
            "special_tokens": [{{"rank": 0, "token_str": "<unk>", "is_control": true}},
                {{"rank": 2, "token_str": "</s>", "is_control": true}},
                {{"rank": 1, "token_str": "<s>", "is_control": true}}]}}"#,
        vocab.join(", ")
    )
}

#[test]
fn a_tekken_file_becomes_llama_cpps_metadata_and_comes_back() {
    let tk = parse(tekken_json().as_bytes()).unwrap();
    assert_eq!(tk.specials, ["<unk>", "<s>", "</s>", "<SPECIAL_3>"]);
    assert_eq!(tk.vocab.len(), 8);
    // Splits of each token into two tokens, by the token's rank, then the parts' ranks.
    assert_eq!(merges(&tk.vocab), ["a b", "a bc", "ab c", "Ġ a", "b c"]);
    let m = to_metadata(&tk, 14).unwrap();
    let get = |k: &str| m.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let Some(MetaValue::Array(MetaArray::String(tokens))) = get("tokenizer.ggml.tokens") else {
        panic!("no tokens")
    };
    assert_eq!(
        tokens,
        [
            "<unk>",
            "<s>",
            "</s>",
            "<SPECIAL_3>",
            "a",
            "b",
            "c",
            "Ġ",
            "ab",
            "abc",
            "Ġa",
            "bc",
            "[PAD12]",
            "[PAD13]"
        ]
    );
    assert_eq!(
        get("tokenizer.ggml.token_type"),
        Some(MetaValue::Array(MetaArray::I32(vec![
            3, 3, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 5, 5
        ])))
    );
    assert_eq!(get("tokenizer.ggml.bos_token_id"), Some(MetaValue::U32(1)));
    assert_eq!(get("tokenizer.ggml.eos_token_id"), Some(MetaValue::U32(2)));
    assert_eq!(
        get("tokenizer.ggml.unknown_token_id"),
        Some(MetaValue::U32(0))
    );
    assert_eq!(
        get("tokenizer.ggml.pre"),
        Some(MetaValue::String("tekken".into()))
    );
    // Fewer rows than tokens: the vocabulary is cut, and merges only among what is kept.
    let m = to_metadata(&tk, 9).unwrap();
    let merges_of = |m: &[(String, MetaValue)]| match &m[4].1 {
        MetaValue::Array(MetaArray::String(v)) => v.clone(),
        _ => panic!("no merges"),
    };
    assert_eq!(merges_of(&m), ["a b"]);
    assert!(to_metadata(&tk, 4).is_err());
    // The loader's JSON from that metadata parses back to the same vocabulary.
    let full = to_metadata(&tk, 12).unwrap();
    let json =
        from_metadata(|k| full.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())).unwrap();
    let back = parse(&json).unwrap();
    assert_eq!(back, tk);
    assert_eq!(to_metadata(&back, 12).unwrap(), full);
}

#[test]
fn malformed_tekken_files_are_refused() {
    for (json, what) in [
        ("not json", "not JSON"),
        (r#"{"special_tokens": []}"#, "`vocab`"),
        (r#"{"vocab": []}"#, "`special_tokens`"),
        (
            r#"{"vocab": [{"token_bytes": "YQ=="}], "special_tokens": []}"#,
            "rank",
        ),
        (
            r#"{"vocab": [{"rank": 0, "token_bytes": "Y"}], "special_tokens": []}"#,
            "base64",
        ),
        (
            r#"{"vocab": [{"rank": 1, "token_bytes": "YQ=="}], "special_tokens": []}"#,
            "rank 0",
        ),
        (
            r#"{"vocab": [{"rank": 0, "token_bytes": "YQ=="}, {"rank": 0, "token_bytes": "Yg=="}], "special_tokens": []}"#,
            "two",
        ),
        (
            r#"{"vocab": [], "special_tokens": [{"rank": 0}]}"#,
            "token_str",
        ),
        (
            r#"{"vocab": [], "special_tokens": [{"rank": 99999999999, "token_str": "a"}]}"#,
            "gap",
        ),
        (
            r#"{"config": {"default_num_special_tokens": 99999999999}, "vocab": [], "special_tokens": []}"#,
            "default_num_special_tokens",
        ),
    ] {
        let e = parse(json.as_bytes()).unwrap_err().to_string();
        assert!(
            e.contains(what) && e.contains("tekken_model"),
            "{json}: {e}"
        );
    }
    let no_bos = parse(
        br#"{"vocab": [{"rank": 0, "token_bytes": "YQ=="}], "special_tokens": [{"rank": 0, "token_str": "<unk>"}]}"#,
    )
    .unwrap();
    let e = to_metadata(&no_bos, 4).unwrap_err().to_string();
    assert!(e.contains("<s>"), "{e}");
}

#[test]
fn mistral_hyper_parameters_from_shapes_and_config() {
    let hp = hyper_parameters(|k| match k {
        "model.layers.0.self_attn.q_proj.weight" => Some(vec![4096, 5120]),
        "model.layers.0.self_attn.v_proj.weight" => Some(vec![1024, 5120]),
        "model.embed_tokens.weight" => Some(vec![131_072, 5120]),
        _ => None,
    });
    let get = |k: &str| hp.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    assert_eq!(get("llama.attention.key_length"), Some(MetaValue::U32(128)));
    assert_eq!(
        get("llama.attention.value_length"),
        Some(MetaValue::U32(128))
    );
    assert_eq!(get("llama.rope.dimension_count"), Some(MetaValue::U32(128)));
    assert_eq!(get("llama.vocab_size"), Some(MetaValue::U32(131_072)));
    assert_eq!(
        get("llama.attention.head_count_kv"),
        Some(MetaValue::U32(8))
    );
    assert_eq!(get("llama.rope.freq_base"), Some(MetaValue::F32(1.0e9)));
}

#[test]
fn invalid_utf8_is_replaced_as_python_replaces_it() {
    // Python 3.11: json.dumps(bytes.fromhex(h).decode("utf-8", "replace")).
    for (hex, want) in [
        ("f08080", r#""\ufffd\ufffd\ufffd""#),
        ("eda080", r#""\ufffd\ufffd\ufffd""#),
        ("f4908080", r#""\ufffd\ufffd\ufffd\ufffd""#),
        ("e08061", r#""\ufffd\ufffda""#),
        ("c0af", r#""\ufffd\ufffd""#),
        ("f09f98", r#""\ufffd""#),
        ("f09f988080", r#""\ud83d\ude00\ufffd""#),
        ("e282acfffe", r#""\u20ac\ufffd\ufffd""#),
        ("61c3", r#""a\ufffd""#),
    ] {
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let mut s = String::new();
        json_str(&String::from_utf8_lossy(&bytes), &mut s);
        assert_eq!(s, want, "{hex}");
    }
}
