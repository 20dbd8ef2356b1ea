use super::*;

fn nothing_allowed(_: &str) -> bool {
    false
}

fn parse_ok(data: &[u8]) -> Pickle {
    parse(data, &nothing_allowed).unwrap()
}

#[test]
fn protocol_2_dict_filled_after_it_was_memoized() {
    // {'a': 1, 'b': [True, None]} as pickle.dumps(..., protocol=2) writes it: the dict is put in
    // the memo before SETITEMS fills it, and a later BINGET must see the filled dict.
    let data = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01K\x01X\x01\x00\x00\x00bq\x02]q\x03(\x88Neuh\x00\x86q\x04.";
    let p = parse_ok(data);
    let Value::Tuple(items) = p.get(p.root) else {
        panic!("{:?}", p.get(p.root))
    };
    assert_eq!(items.len(), 2);
    assert_eq!(items[0], items[1], "the memo shares one dict");
    let Value::Dict(pairs) = p.get(items[0]) else {
        panic!()
    };
    assert_eq!(pairs.len(), 2);
    assert_eq!(p.str(pairs[0].0), Some("a"));
    assert_eq!(p.int(pairs[0].1), Some(1));
    let list = p.items(pairs[1].1).unwrap();
    assert_eq!(p.get(list[0]), &Value::Bool(true));
    assert_eq!(p.get(list[1]), &Value::None);
}

#[test]
fn protocol_4_opcodes() {
    // FRAME, SHORT_BINUNICODE, MEMOIZE, STACK_GLOBAL, EMPTY_TUPLE, REDUCE, BININT2, LONG1, POP.
    let mut data = b"\x80\x04\x95\x30\x00\x00\x00\x00\x00\x00\x00".to_vec();
    data.extend_from_slice(b"\x8c\x0bcollections\x94\x8c\x0bOrderedDict\x94\x93\x94)R\x94");
    data.extend_from_slice(b"\x8c\x01k\x94M\x39\x30s\x8a\x02\xff\x7f0.");
    let p = parse_ok(&data);
    let Value::Dict(pairs) = p.get(p.root) else {
        panic!("{:?}", p.get(p.root))
    };
    assert_eq!(pairs.len(), 1);
    assert_eq!(p.str(pairs[0].0), Some("k"));
    assert_eq!(p.int(pairs[0].1), Some(12345));
}

#[test]
fn long_integers_are_twos_complement() {
    assert_eq!(long(vec![0xff]), Value::Int(-1));
    assert_eq!(long(vec![0xff, 0x00]), Value::Int(255));
    assert_eq!(long(vec![]), Value::Int(0));
    assert!(matches!(long(vec![1; 9]), Value::BigInt(_)));
}

#[test]
fn protocol_2_bytes_are_rebuilt_from_latin1_text() {
    // _codecs.encode('\x00\xff', 'latin1'), as Python 3 pickles bytes at protocol 2.
    let data =
        b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00\x00\xc3\xbfX\x06\x00\x00\x00latin1\x86R.";
    let p = parse_ok(data);
    assert_eq!(p.get(p.root), &Value::Bytes(vec![0, 255]));
}

#[test]
fn python_2_module_names_are_mapped() {
    // __builtin__.set([1]), as protocol 2 writes Python 3's builtins for Python 2 readers.
    let data = b"\x80\x02c__builtin__\nset\n]K\x01a\x85R.";
    let p = parse_ok(data);
    let Value::Set(items) = p.get(p.root) else {
        panic!("{:?}", p.get(p.root))
    };
    assert_eq!(p.int(items[0]), Some(1));
}

#[test]
fn globals_outside_the_allowlist_are_refused_by_name() {
    let cases: [(&[u8], &str); 4] = [
        (
            b"\x80\x02cposix\nsystem\nX\x02\x00\x00\x00ls\x85R.",
            "posix.system",
        ),
        (b"\x80\x02c__builtin__\nexec\n.", "builtins.exec"),
        (
            b"\x80\x04\x8c\nsubprocess\x8c\x05Popen\x93.",
            "subprocess.Popen",
        ),
        (b"\x80\x02c__main__\nEvil\n)\x81.", "__main__.Evil"),
    ];
    for (data, name) in cases {
        let err = parse(data, &nothing_allowed).unwrap_err();
        assert!(err.contains(&format!("`{name}`")), "{err}");
    }
    // The same global is accepted when allowed, and its call recorded, not made.
    let data = b"\x80\x02cposix\nsystem\nX\x02\x00\x00\x00ls\x85R.";
    let p = parse(data, &|g| g == "posix.system").unwrap();
    assert!(matches!(p.get(p.root), Value::Call { func, .. } if func == "posix.system"));
}

#[test]
fn structural_faults_are_errors_not_panics() {
    let cases: [(&[u8], &str); 8] = [
        (b"\x80\x02", "truncated"),
        (b"\x80\x02X\xff\xff\xff\x7f", "truncated"),
        (b"\x80\x02h\x05.", "never stored"),
        (b"\x80\x02R.", "stack is empty"),
        (b"\x80\x02(u.", "stack is empty"),
        (b"\x80\x02K\x00K\x01K\x02s.", "not a dict"),
        (b"\x80\x02\x82\x01.", "EXT"),
        (b"\x80\x06.", "protocol 6"),
    ];
    for (data, want) in cases {
        let err = parse(data, &nothing_allowed).unwrap_err();
        assert!(err.contains(want), "{data:?}: {err}");
    }
}

#[test]
fn marks_protect_what_is_below_them() {
    // POP under a MARK may not take what the MARK protects.
    let err = parse(b"\x80\x02K\x01(0.", &nothing_allowed).unwrap_err();
    assert!(err.contains("stack is empty"), "{err}");
}

#[test]
fn copying_one_value_again_and_again_is_bounded() {
    // A list of 1000 items memoized, then `set(list)` built 10,000 times from the memo: ten
    // million item copies from a stream of about 200 KB.
    let mut data = b"\x80\x02]q\x00(".to_vec();
    data.extend(std::iter::repeat_n(b"K\x01".as_slice(), 1000).flatten());
    data.extend_from_slice(b"e0");
    for _ in 0..10_000 {
        data.extend_from_slice(b"c__builtin__\nset\nh\x00\x85R0");
    }
    data.extend_from_slice(b"N.");
    let err = parse(&data, &nothing_allowed).unwrap_err();
    assert!(err.contains("copies more data than it holds"), "{err}");
}

#[test]
fn a_stream_of_small_objects_is_bounded() {
    // One value per opcode byte: NONE, an empty list, a memo entry, a memo read, a DUP. Each
    // would take some 60 bytes of memory per byte of the stream.
    let n = (1 << 22) + 10;
    let cases: [(&str, Vec<u8>); 4] = [
        ("NONE", [&b"\x80\x02"[..], &vec![b'N'; n]].concat()),
        ("EMPTY_LIST", [&b"\x80\x02"[..], &vec![b']'; n]].concat()),
        (
            "MEMOIZE",
            [&b"\x80\x04N"[..], &vec![0x94; n], &b"."[..]].concat(),
        ),
        (
            "BINGET",
            [&b"\x80\x02Nq\x00"[..], &b"h\x00".repeat(n), &b"."[..]].concat(),
        ),
    ];
    for (what, data) in cases {
        let err = parse(&data, &nothing_allowed).unwrap_err();
        assert!(
            err.contains("builds more than 4194304 objects") && err.contains("hostile"),
            "{what}: {err}"
        );
    }
    // Items copied into containers count too: `set(list)` of a million items, four times, is
    // within the copy budget of its 2 MB stream but over the object count.
    let mut data = b"\x80\x02]q\x00(".to_vec();
    data.extend(std::iter::repeat_n(b"K\x01".as_slice(), 1_000_000).flatten());
    data.extend_from_slice(b"e0");
    for _ in 0..4 {
        data.extend_from_slice(b"c__builtin__\nset\nh\x00\x85R0");
    }
    data.extend_from_slice(b"N.");
    assert!(
        data.len() * 8 + (1 << 20) > 4_000_000,
        "within the copy budget"
    );
    let err = parse(&data, &nothing_allowed).unwrap_err();
    assert!(err.contains("builds more than"), "{err}");
}
