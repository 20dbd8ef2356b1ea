//! Unit tests of the quantized layouts: descriptions, validation (one test per error), spans and
//! members. The arithmetic is tested against comfy-kitchen's fixtures in `tests/quant.rs`.

use super::*;
use crate::error::Error;
use crate::model::dtype::Dtype;

fn message(result: crate::Result<impl std::fmt::Debug>) -> String {
    let err = result.unwrap_err();
    assert!(
        matches!(err, Error::Quantized { .. } | Error::InvalidInput(_)),
        "{err:?}"
    );
    err.to_string()
}

fn member<'a>(name: &'a str, dtype: Dtype, shape: &'a [usize]) -> StoredMember<'a> {
    StoredMember { name, dtype, shape }
}

// ---- descriptions ----

#[test]
fn descriptions_parse_and_print_as_comfyui_writes_them() {
    let d = QuantDescription::parse("l", br#"{"format": "nvfp4"}"#).unwrap();
    assert_eq!(d, QuantDescription::new(Format::Nvfp4));
    assert_eq!(d.to_json(), r#"{"format": "nvfp4"}"#);
    let d = QuantDescription::parse(
        "l",
        br#"{"format":"float8_e4m3fn","full_precision_matrix_mult":true,"orig_dtype":"x"}"#,
    )
    .unwrap();
    assert!(
        d.full_precision_matrix_mult,
        "unknown keys are ignored, as ComfyUI does"
    );
    assert_eq!(
        d.to_json(),
        r#"{"format": "float8_e4m3fn", "full_precision_matrix_mult": true}"#
    );
    let convrot_off = br#"{"format": "int8_tensorwise", "convrot": false, "group_size": 7}"#;
    assert_eq!(
        QuantDescription::parse("l", convrot_off).unwrap().format,
        Format::Int8Tensorwise
    );
}

#[test]
fn a_description_that_is_not_json_is_refused() {
    let text = message(QuantDescription::parse(
        "blocks.3.attn",
        b"{\"format\": nvfp4",
    ));
    assert!(
        text.contains("blocks.3.attn") && text.contains("not valid JSON"),
        "{text}"
    );
    let text = message(QuantDescription::parse("l", &[0xff, 0xfe]));
    assert!(text.contains("not valid JSON"), "{text}");
}

#[test]
fn a_description_that_is_not_an_object_or_names_no_format_is_refused() {
    let text = message(QuantDescription::parse("l", b"[1, 2]"));
    assert!(text.contains("not a JSON object"), "{text}");
    let text = message(QuantDescription::parse("l", br#"{"group_size": 16}"#));
    assert!(text.contains("names no format"), "{text}");
    let text = message(QuantDescription::parse("l", br#"{"format": 4}"#));
    assert!(text.contains("not a name"), "{text}");
}

#[test]
fn an_unknown_format_is_named_with_its_layer() {
    let text = message(QuantDescription::parse(
        "double_blocks.0.img_mlp.0",
        br#"{"format": "fp6_e3m2"}"#,
    ));
    assert!(text.contains("double_blocks.0.img_mlp.0"), "{text}");
    assert!(
        text.contains("unknown quantization format `fp6_e3m2`"),
        "{text}"
    );
    assert!(
        text.contains("nvfp4"),
        "lists the supported formats: {text}"
    );
}

#[test]
fn comfyui_formats_this_crate_cannot_decode_are_refused_by_name() {
    for name in ["convrot_w4a4", "asym_w4a8_int8", "awq_w4a16"] {
        let json = format!(r#"{{"format": "{name}"}}"#);
        let text = message(QuantDescription::parse("l", json.as_bytes()));
        assert!(
            text.contains(name) && text.contains("not supported"),
            "{text}"
        );
    }
    let text = message(QuantDescription::parse(
        "l",
        br#"{"format": "int8_tensorwise", "params": {"convrot": true}}"#,
    ));
    assert!(text.contains("convrot"), "{text}");
    let text = message(QuantDescription::parse(
        "l",
        br#"{"format": "nvfp4", "num_experts": 8}"#,
    ));
    assert!(text.contains("num_experts"), "{text}");
    let text = message(QuantDescription::parse(
        "l",
        br#"{"format": "mxfp8", "group_size": 16}"#,
    ));
    assert!(text.contains("group_size") && text.contains("32"), "{text}");
    let text = message(QuantDescription::parse(
        "l",
        br#"{"format": "nvfp4", "full_precision_matrix_mult": "yes"}"#,
    ));
    assert!(text.contains("full_precision_matrix_mult"), "{text}");
}

#[test]
fn quantization_metadata_round_trips_in_comfyui_spacing() {
    let layers = vec![
        (
            "model.diffusion_model.b.1".to_string(),
            QuantDescription::new(Format::Mxfp8),
        ),
        (
            "model.diffusion_model.a.0".to_string(),
            QuantDescription::new(Format::Nvfp4),
        ),
        (
            "caf\u{e9}\"".to_string(),
            QuantDescription::new(Format::Int8Tensorwise),
        ),
    ];
    let text = quantization_metadata(&layers);
    assert_eq!(
        text,
        r#"{"format_version": "1.0", "layers": {"model.diffusion_model.b.1": {"format": "mxfp8"}, "model.diffusion_model.a.0": {"format": "nvfp4"}, "caf\u00e9\"": {"format": "int8_tensorwise"}}}"#
    );
    assert_eq!(
        parse_quantization_metadata(&text).unwrap(),
        layers,
        "order kept"
    );
}

#[test]
fn bad_quantization_metadata_is_refused() {
    let text = message(parse_quantization_metadata("{layers"));
    assert!(
        text.contains("_quantization_metadata") && text.contains("not valid JSON"),
        "{text}"
    );
    let text = message(parse_quantization_metadata(r#"{"format_version": "1.0"}"#));
    assert!(text.contains("no `layers`"), "{text}");
    let text = message(parse_quantization_metadata(
        r#"{"layers": {"x.y": {"format": "q4_0"}}}"#,
    ));
    assert!(text.contains("x.y") && text.contains("q4_0"), "{text}");
    let text = message(parse_quantization_metadata(
        r#"{"layers": {"x.y": "nvfp4"}}"#,
    ));
    assert!(text.contains("not a JSON object"), "{text}");
}

#[test]
fn the_scaled_fp8_marker_reads_as_comfyui_reads_it() {
    let m = ScaledFp8Marker::parse("model.diffusion_model.scaled_fp8", Dtype::F32, &[0]).unwrap();
    assert_eq!((m.fp8, m.input_scaling), (Fp8::E4M3, true));
    let m = ScaledFp8Marker::parse("k", Dtype::F8_E5M2, &[2]).unwrap();
    assert_eq!((m.fp8, m.input_scaling), (Fp8::E5M2, false));
    assert_eq!(m.tensor(), (Dtype::F8_E5M2, vec![2]));
    assert_eq!(
        m.description(Fp8::E5M2).to_json(),
        r#"{"format": "float8_e5m2", "full_precision_matrix_mult": true}"#
    );
    let text = message(ScaledFp8Marker::parse("m.scaled_fp8", Dtype::I64, &[0]));
    assert!(
        text.contains("m.scaled_fp8") && text.contains("I64"),
        "{text}"
    );
}

// ---- layouts and members ----

#[test]
fn members_have_comfyuis_names_dtypes_and_padded_shapes() {
    let l = QuantLayout::new("l", Format::Nvfp4, &[33, 70]).unwrap();
    let got: Vec<_> = l
        .members()
        .into_iter()
        .map(|m| (m.name, m.dtype, m.shape))
        .collect();
    assert_eq!(
        got,
        [
            ("weight", Dtype::U8, vec![48, 40]),
            ("weight_scale", Dtype::F8_E4M3, vec![128, 8]),
            ("weight_scale_2", Dtype::F32, vec![]),
            ("comfy_quant", Dtype::U8, vec![19]),
        ]
    );
    let l = QuantLayout::new("l", Format::Mxfp8, &[130, 8]).unwrap();
    let shapes: Vec<_> = l.members().into_iter().map(|m| m.shape).collect();
    assert_eq!(shapes, [vec![160, 32], vec![256, 4], vec![19]]);
    let l = QuantLayout::new("l", Format::Int8Tensorwise, &[4, 6])
        .unwrap()
        .with_row_scales()
        .unwrap();
    assert_eq!(l.members()[1].shape, [4, 1]);
    assert_eq!(l.members()[1].role, Role::RowScales);
    let l = QuantLayout::new("l", Format::ScaledFp8(Fp8::E4M3), &[8, 4, 3, 3]).unwrap();
    let names: Vec<_> = l.members().into_iter().map(|m| m.name).collect();
    assert_eq!(
        names,
        ["weight", "scale_weight"],
        "no per-layer description"
    );
}

#[test]
fn block_formats_take_2d_tensors_with_elements() {
    let text = message(QuantLayout::new("conv_in", Format::Nvfp4, &[8, 4, 3, 3]));
    assert!(text.contains("conv_in") && text.contains("2-D"), "{text}");
    let text = message(QuantLayout::new("l", Format::Float8(Fp8::E4M3), &[0, 5]));
    assert!(text.contains("no elements"), "{text}");
    let text = message(
        QuantLayout::new("l", Format::Float8(Fp8::E4M3), &[4])
            .unwrap()
            .with_row_scales(),
    );
    assert!(text.contains("row scales"), "{text}");
}

/// A stored nvfp4 layer (and its bias) with chosen code and block-scale shapes.
struct StoredNvfp4<'a> {
    rows: usize,
    code_cols: usize,
    scale_shape: &'a [usize],
}

fn nvfp4_members(rows: usize, code_cols: usize, scale_shape: &[usize]) -> StoredNvfp4<'_> {
    StoredNvfp4 {
        rows,
        code_cols,
        scale_shape,
    }
}

impl StoredNvfp4<'_> {
    fn read(&self, logical: Option<&[usize]>) -> crate::Result<QuantLayout> {
        let codes = [self.rows, self.code_cols];
        let members = [
            member("weight", Dtype::U8, &codes),
            member("weight_scale", Dtype::F8_E4M3, self.scale_shape),
            member("weight_scale_2", Dtype::F32, &[]),
            member("bias", Dtype::BF16, &[7]),
        ];
        QuantLayout::from_stored("l", Format::Nvfp4, &members, logical)
    }
}

#[test]
fn stored_layers_take_the_models_logical_shape() {
    let stored = nvfp4_members(48, 40, &[128, 8]);
    let l = stored.read(Some(&[33, 70])).unwrap();
    assert_eq!((l.shape(), l.numel()), (&[33, 70][..], 33 * 70));
    let l = stored.read(None).unwrap();
    assert_eq!(l.shape(), [48, 80], "the file alone gives the padded shape");
    let text = message(stored.read(Some(&[33, 60])));
    assert!(text.contains("does not fit"), "{text}");
}

#[test]
fn nvfp4_columns_that_are_not_whole_blocks_are_refused() {
    let text = message(nvfp4_members(16, 5, &[128, 4]).read(None));
    assert!(
        text.contains("10 values") && text.contains("cannot hold"),
        "{text}"
    );
    let members = [member("weight", Dtype::U8, &[32])];
    let text = message(QuantLayout::from_stored("l", Format::Nvfp4, &members, None));
    assert!(text.contains("2-D"), "{text}");
}

#[test]
fn codes_whose_shape_does_not_fit_their_scales_are_refused() {
    let text = message(nvfp4_members(48, 40, &[128, 4]).read(None));
    assert!(
        text.contains("do not fit") && text.contains("[128, 8]"),
        "{text}"
    );
    let text = message(nvfp4_members(256, 8, &[128, 4]).read(None));
    assert!(text.contains("[256, 4]"), "{text}");
}

#[test]
fn missing_codes_or_scales_are_refused() {
    let members = [member("weight_scale", Dtype::F32, &[])];
    let text = message(QuantLayout::from_stored(
        "l",
        Format::Float8(Fp8::E4M3),
        &members,
        None,
    ));
    assert!(text.contains("`weight` are missing"), "{text}");
    let members = [
        member("weight", Dtype::U8, &[16, 8]),
        member("weight_scale", Dtype::F8_E4M3, &[128, 4]),
    ];
    let text = message(QuantLayout::from_stored(
        "x.y",
        Format::Nvfp4,
        &members,
        None,
    ));
    assert!(
        text.contains("`x.y.weight_scale_2`, which is missing"),
        "{text}"
    );
    let members = [member("weight", Dtype::F8_E4M3, &[4, 4])];
    let text = message(QuantLayout::from_stored(
        "l",
        Format::ScaledFp8(Fp8::E4M3),
        &members,
        None,
    ));
    assert!(text.contains("`l.scale_weight`"), "{text}");
}

#[test]
fn extra_scales_from_another_layout_are_refused() {
    let members = [
        member("weight", Dtype::F8_E4M3, &[4, 4]),
        member("weight_scale", Dtype::F32, &[]),
        member("weight_scale_2", Dtype::F32, &[]),
    ];
    let text = message(QuantLayout::from_stored(
        "l",
        Format::Float8(Fp8::E4M3),
        &members,
        None,
    ));
    assert!(
        text.contains("`l.weight_scale_2` does not belong"),
        "{text}"
    );
    let members = [
        member("weight", Dtype::F8_E4M3, &[4, 4]),
        member("scale_weight", Dtype::F32, &[]),
        member("comfy_quant", Dtype::U8, &[20]),
    ];
    let text = message(QuantLayout::from_stored(
        "l",
        Format::ScaledFp8(Fp8::E4M3),
        &members,
        None,
    ));
    assert!(text.contains("comfy_quant"), "{text}");
}

#[test]
fn codes_or_scales_of_the_wrong_dtype_are_refused() {
    let members = [
        member("weight", Dtype::U8, &[4, 4]),
        member("weight_scale", Dtype::F32, &[]),
    ];
    let text = message(QuantLayout::from_stored(
        "l",
        Format::Float8(Fp8::E4M3),
        &members,
        None,
    ));
    assert!(text.contains("must be F8_E4M3, not U8"), "{text}");
    let members = [
        member("weight", Dtype::I8, &[4, 4]),
        member("weight_scale", Dtype::I64, &[]),
    ];
    let text = message(QuantLayout::from_stored(
        "l",
        Format::Int8Tensorwise,
        &members,
        None,
    ));
    assert!(text.contains("`l.weight_scale` is I64"), "{text}");
    let members = [
        member("weight", Dtype::F8_E4M3, &[32, 32]),
        member("weight_scale", Dtype::F8_E4M3, &[128, 4]),
    ];
    let text = message(QuantLayout::from_stored("l", Format::Mxfp8, &members, None));
    assert!(text.contains("F8_E8M0"), "{text}");
    let members = [
        member("weight", Dtype::F8_E4M3, &[4]),
        member("scale_weight", Dtype::F32, &[]),
        member("scale_input", Dtype::U8, &[]),
    ];
    let text = message(QuantLayout::from_stored(
        "l",
        Format::ScaledFp8(Fp8::E4M3),
        &members,
        None,
    ));
    assert!(text.contains("scale_input"), "{text}");
    let members = [
        member("weight", Dtype::I8, &[4]),
        member("weight_scale", Dtype::F32, &[]),
        member("comfy_quant", Dtype::I64, &[3]),
    ];
    let text = message(QuantLayout::from_stored(
        "l",
        Format::Int8Tensorwise,
        &members,
        None,
    ));
    assert!(text.contains("1-D U8"), "{text}");
}

#[test]
fn scales_of_the_wrong_shape_are_refused() {
    let members = [
        member("weight", Dtype::F8_E4M3, &[4, 4]),
        member("weight_scale", Dtype::F32, &[2]),
    ];
    let text = message(QuantLayout::from_stored(
        "l",
        Format::Float8(Fp8::E4M3),
        &members,
        None,
    ));
    assert!(
        text.contains("shape [2]") && text.contains("scalar"),
        "{text}"
    );
    let members = [
        member("weight", Dtype::I8, &[4, 6]),
        member("weight_scale", Dtype::F32, &[6, 1]),
    ];
    let text = message(QuantLayout::from_stored(
        "l",
        Format::Int8Tensorwise,
        &members,
        None,
    ));
    assert!(text.contains("[4, 1]"), "{text}");
    let members = [
        member("weight", Dtype::U8, &[16, 8]),
        member("weight_scale", Dtype::U8, &[128, 4]),
        member("weight_scale_2", Dtype::F32, &[1]),
        member("pre_quant_scale", Dtype::F32, &[8]),
    ];
    let text = message(QuantLayout::from_stored("l", Format::Nvfp4, &members, None));
    assert!(text.contains("[16], one factor per column"), "{text}");
}

#[test]
fn int8_row_scales_and_optional_members_are_recognised() {
    for shape in [&[4usize, 1][..], &[4]] {
        let members = [
            member("weight", Dtype::I8, &[4, 6]),
            member("weight_scale", Dtype::F32, shape),
        ];
        let l = QuantLayout::from_stored("l", Format::Int8Tensorwise, &members, None).unwrap();
        assert!(l.has_row_scales());
        assert_eq!(l.reductions(), [Reduction::RowAbsMax]);
    }
    let members = [
        member("weight", Dtype::F8_E4M3, &[4, 4]),
        member("weight_scale", Dtype::BF16, &[1]),
        member("input_scale", Dtype::F32, &[]),
    ];
    let l = QuantLayout::from_stored("l", Format::Float8(Fp8::E4M3), &members, None).unwrap();
    assert!(l.has_input_scale() && !l.has_row_scales());
    assert_eq!(l.members()[2].name, "input_scale");
}

// ---- scales ----

fn fp8_layout() -> QuantLayout {
    QuantLayout::new("l", Format::Float8(Fp8::E4M3), &[2, 2]).unwrap()
}

#[test]
fn zero_negative_and_non_finite_scales_are_refused() {
    for bad in [0.0f32, -0.5, f32::NAN, f32::INFINITY] {
        let text = message(Scales::tensor("blocks.1", bad));
        assert!(
            text.contains("blocks.1") && text.contains("finite and positive"),
            "{text}"
        );
        let bytes = bad.to_le_bytes();
        let data = [MemberData {
            name: "weight_scale",
            dtype: Dtype::F32,
            bytes: &bytes,
        }];
        let text = message(fp8_layout().read_scales(&data));
        assert!(text.contains("`l.weight_scale`"), "{text}");
    }
    let text = message(Scales::rows("l", vec![1.0, 0.0]));
    assert!(text.contains("row 1"), "{text}");
    let text = message(Scales::none().with_input_scale("l", -1.0));
    assert!(text.contains("input scale"), "{text}");
}

#[test]
fn scale_bytes_are_read_as_comfyui_converts_them() {
    let bytes = half::bf16::from_f32(0.25).to_le_bytes();
    let data = [MemberData {
        name: "weight_scale",
        dtype: Dtype::BF16,
        bytes: &bytes,
    }];
    assert_eq!(
        fp8_layout().read_scales(&data).unwrap().tensor_scale(),
        Some(0.25)
    );
    let data = [MemberData {
        name: "weight_scale",
        dtype: Dtype::F32,
        bytes: &bytes,
    }];
    let text = message(fp8_layout().read_scales(&data));
    assert!(text.contains("does not hold 1 float"), "{text}");
    let text = message(fp8_layout().read_scales(&[]));
    assert!(text.contains("missing"), "{text}");
}

#[test]
fn fresh_scales_follow_comfyuis_recalculate_rules() {
    let facts = |a: f32| Facts {
        abs_max: Some(a),
        row_abs_max: None,
    };
    let s = fp8_layout()
        .fresh_scales(&facts(448.0), Precision::Bf16)
        .unwrap();
    assert_eq!(s.tensor_scale(), Some(1.0));
    // An all-zero tensor has no fp8 scale, except through ComfyUI's f16 reciprocal clamp.
    let text = message(fp8_layout().fresh_scales(&facts(0.0), Precision::F32));
    assert!(
        text.contains("all zeros") && text.contains("unquantized"),
        "{text}"
    );
    let s = fp8_layout()
        .fresh_scales(&facts(0.0), Precision::F16)
        .unwrap();
    assert_eq!(s.tensor_scale(), Some(1.0 / 65504.0));
    let text = message(fp8_layout().fresh_scales(&facts(f32::NAN), Precision::F32));
    assert!(text.contains("NaN"), "{text}");
    let int8 = QuantLayout::new("l", Format::Int8Tensorwise, &[3]).unwrap();
    assert_eq!(
        int8.fresh_scales(&facts(0.0), Precision::F32)
            .unwrap()
            .tensor_scale(),
        Some(1e-30)
    );
    let nvfp4 = QuantLayout::new("l", Format::Nvfp4, &[16, 16]).unwrap();
    let s = nvfp4.fresh_scales(&facts(3.0), Precision::Bf16).unwrap();
    assert_eq!(
        s.tensor_scale(),
        Some(half::bf16::from_f32(3.0 / 2688.0).to_f32())
    );
    let text = message(nvfp4.fresh_scales(&Facts::default(), Precision::F32));
    assert!(text.contains("AbsMax"), "{text}");
    let mx = QuantLayout::new("l", Format::Mxfp8, &[32, 32]).unwrap();
    assert_eq!(
        mx.fresh_scales(&Facts::default(), Precision::F32).unwrap(),
        Scales::none()
    );
}

#[test]
fn reducers_fold_ranges_in_any_order() {
    let l = QuantLayout::new("l", Format::Int8Tensorwise, &[3, 4])
        .unwrap()
        .with_row_scales()
        .unwrap();
    let values = [
        1.0, -2.0, 0.5, 0.0, -7.0, 3.0, 1.0, 1.0, 0.25, 0.0, -0.5, 0.125,
    ];
    let mut r = l.reducer();
    r.update(5..12, &values[5..]).unwrap();
    r.update(0..5, &values[..5]).unwrap();
    assert_eq!(r.finish().row_abs_max, Some(vec![2.0, 7.0, 0.5]));
    let mut r = fp8_layout().reducer();
    r.update(0..2, &[1.0, f32::NAN]).unwrap();
    r.update(2..4, &[9.0, 1.0]).unwrap();
    assert!(
        r.finish().abs_max.unwrap().is_nan(),
        "NaN propagates like torch.amax"
    );
    let text = message(l.reducer().update(0..3, &[1.0]));
    assert!(text.contains("got 1 values"), "{text}");
}

// ---- spans ----

#[test]
fn read_spans_round_out_to_blocks_and_bands() {
    let l = QuantLayout::new("l", Format::Nvfp4, &[33, 70]).unwrap();
    // Element 70 + 20 is row 1, column 20: block 1 (columns 16..32).
    let s = l.read_span(90..91).unwrap();
    assert_eq!(s.elements, 86..102);
    assert_eq!(s.codes, 40 + 8..40 + 16);
    assert_eq!(s.block_scales, 0..1024);
    // The last row's last block holds columns 64..70 (6 logical values).
    let s = l.read_span(33 * 70 - 1..33 * 70).unwrap();
    assert_eq!(s.elements, 33 * 70 - 6..33 * 70);
    let s = l.read_span(0..0).unwrap();
    assert!(s.codes.is_empty() && s.elements.is_empty());
    let text = message(l.read_span(0..33 * 70 + 1));
    assert!(text.contains("outside"), "{text}");
    let fp8 = fp8_layout().read_span(1..3).unwrap();
    assert_eq!((fp8.codes, fp8.block_scales), (1..3, 0..0));
}

#[test]
fn write_spans_are_whole_rows_and_the_last_owns_the_padding() {
    let l = QuantLayout::new("l", Format::Mxfp8, &[130, 8]).unwrap();
    assert_eq!(l.write_unit(), 8);
    let s = l.write_span(8..16).unwrap();
    assert_eq!((s.codes, s.block_scales), (32..64, 0..512));
    let last = l.write_span(129 * 8..130 * 8).unwrap();
    assert_eq!(last.codes, 129 * 32..160 * 32, "rows 130..160 are padding");
    assert_eq!(last.block_scales, 512..1024, "to the end of the member");
    let text = message(l.write_span(3..16));
    assert!(text.contains("whole rows"), "{text}");
}

// ---- decode and encode arguments ----

#[test]
fn decode_and_encode_check_their_buffers_spans_and_scales() {
    let l = QuantLayout::new("l", Format::Nvfp4, &[16, 16]).unwrap();
    let other = QuantLayout::new("l", Format::Mxfp8, &[32, 32]).unwrap();
    let scales = Scales::tensor("l", 1.0).unwrap();
    let span = l.read_span(0..16).unwrap();
    let mut out = [0f32; 16];
    let text = message(l.decode(&scales, Precision::F32, &span, &[0; 7], &[0; 512], &mut out));
    assert!(text.contains("do not fit"), "{text}");
    // An mxfp8 span of the same elements: other code bytes.
    let foreign = other.read_span(0..16).unwrap();
    let mut out32 = [0f32; 32];
    let text = message(l.decode(
        &scales,
        Precision::F32,
        &foreign,
        &[0; 32],
        &[0; 512],
        &mut out32,
    ));
    assert!(text.contains("not a read span"), "{text}");
    let text = message(l.decode(
        &Scales::none(),
        Precision::F32,
        &span,
        &[0; 8],
        &[0; 512],
        &mut out,
    ));
    assert!(text.contains("needs a tensor scale"), "{text}");
    let wspan = l.write_span(0..256).unwrap();
    let mut codes = [0u8; 128];
    let mut bs = [0u8; 512];
    let text = message(l.encode(
        &Scales::none(),
        Precision::F32,
        &wspan,
        &[0.0; 256],
        &mut codes,
        &mut bs,
    ));
    assert!(text.contains("needs a tensor scale"), "{text}");
    l.encode(
        &scales,
        Precision::F32,
        &wspan,
        &[0.0; 256],
        &mut codes,
        &mut bs,
    )
    .unwrap();
}

#[test]
fn nan_or_negative_block_scales_are_refused() {
    let l = QuantLayout::new("l", Format::Nvfp4, &[16, 16]).unwrap();
    let scales = Scales::tensor("l", 1.0).unwrap();
    let span = l.read_span(0..16).unwrap();
    for bad in [0x7Fu8, 0xFF, 0x90] {
        let mut bs = [0u8; 512];
        bs[0] = bad;
        let text = message(l.check_block_scales(&bs));
        assert!(
            text.contains("block scale byte 0") && text.contains("damaged"),
            "{text}"
        );
        let text = message(l.decode(
            &scales,
            Precision::F32,
            &span,
            &[0; 8],
            &bs,
            &mut [0f32; 16],
        ));
        assert!(text.contains("row 0, block 0"), "{text}");
    }
    let mx = QuantLayout::new("l", Format::Mxfp8, &[32, 32]).unwrap();
    let mut bs = [0u8; 512];
    bs[300] = 0xFF;
    let text = message(mx.check_block_scales(&bs));
    assert!(
        text.contains("byte 300") && text.contains("e8m0 NaN"),
        "{text}"
    );
    bs[300] = 0xFE;
    mx.check_block_scales(&bs).unwrap();
}

#[test]
fn smoothed_nvfp4_weights_decode_with_their_factors_and_refuse_requantizing() {
    let members = [
        member("weight", Dtype::U8, &[16, 8]),
        member("weight_scale", Dtype::F8_E4M3, &[128, 4]),
        member("weight_scale_2", Dtype::F32, &[]),
        member("pre_quant_scale", Dtype::F32, &[16]),
    ];
    let l = QuantLayout::from_stored("l", Format::Nvfp4, &members, None).unwrap();
    let two = 2.0f32.to_le_bytes();
    let factors: Vec<u8> = (0..16)
        .flat_map(|i| (1.0 + i as f32).to_le_bytes())
        .collect();
    let data = [
        MemberData {
            name: "weight_scale_2",
            dtype: Dtype::F32,
            bytes: &two,
        },
        MemberData {
            name: "pre_quant_scale",
            dtype: Dtype::F32,
            bytes: &factors,
        },
    ];
    let scales = l.read_scales(&data).unwrap();
    let span = l.read_span(0..16).unwrap();
    let mut block_scales = [0u8; 512];
    block_scales[0] = 0x38; // e4m3 1.0
    let codes = [0x22u8; 8]; // every value e2m1 1.0
    let mut out = [0f32; 16];
    l.decode(
        &scales,
        Precision::F32,
        &span,
        &codes,
        &block_scales,
        &mut out,
    )
    .unwrap();
    let expect: Vec<f32> = (0..16).map(|i| 2.0 * (1.0 + i as f32)).collect();
    assert_eq!(out.to_vec(), expect);
    let wspan = l.write_span(0..256).unwrap();
    let text = message(l.encode(
        &scales,
        Precision::F32,
        &wspan,
        &[0.0; 256],
        &mut [0; 128],
        &mut [0; 512],
    ));
    assert!(text.contains("pre_quant_scale"), "{text}");
}

#[test]
fn small_members_are_written_as_comfyui_stores_them() {
    let l = QuantLayout::new("l", Format::Nvfp4, &[16, 16]).unwrap();
    let scales = Scales::tensor("l", 0.5).unwrap();
    let got = l.small_members(&scales).unwrap();
    let names: Vec<_> = got.iter().map(|(m, _)| m.name).collect();
    assert_eq!(names, ["weight_scale_2", "comfy_quant"]);
    assert_eq!(got[0].1, 0.5f32.to_le_bytes());
    assert_eq!(got[1].1, br#"{"format": "nvfp4"}"#);
    let text = message(l.small_members(&Scales::none()));
    assert!(text.contains("no value for `l.weight_scale_2`"), "{text}");
    let fpmm = fp8_layout().with_full_precision_matrix_mult(true);
    let desc = fpmm
        .small_members(&Scales::tensor("l", 1.0).unwrap())
        .unwrap();
    assert_eq!(
        desc[1].1,
        br#"{"format": "float8_e4m3fn", "full_precision_matrix_mult": true}"#
    );
}
