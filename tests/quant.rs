//! The quantized formats against comfy-kitchen: codes, scales and dequantized values of the
//! fixtures in `tests/fixtures/quant/` (made by `make_fixtures.py` there with kitchen's eager
//! backend) reproduced bit for bit, through spans cut at odd places as a streaming engine would.

use std::collections::BTreeMap;
use std::ops::Range;

use checkpoint_save::quant::{
    Format, Fp8, MemberData, Precision, QuantLayout, Role, Scales, StoredMember,
};
use safetensors::{Dtype, SafeTensors};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/quant");

const FILES: [(&str, Format); 5] = [
    ("float8_e4m3fn", Format::Float8(Fp8::E4M3)),
    ("float8_e5m2", Format::Float8(Fp8::E5M2)),
    ("int8_tensorwise", Format::Int8Tensorwise),
    ("mxfp8", Format::Mxfp8),
    ("nvfp4", Format::Nvfp4),
];

fn read(name: &str) -> Vec<u8> {
    std::fs::read(format!("{DIR}/{name}.safetensors")).unwrap()
}

/// One case of a fixture file, as its `cases` metadata describes it.
struct Case {
    name: String,
    input: String,
    precision: Precision,
    scale: Option<f32>,
    per_row: bool,
}

fn cases(bytes: &[u8]) -> Vec<Case> {
    let (_, metadata) = SafeTensors::read_metadata(bytes).unwrap();
    let text = &metadata.metadata().as_ref().unwrap()["cases"];
    let cases: BTreeMap<String, serde_json::Value> = serde_json::from_str(text).unwrap();
    cases
        .into_iter()
        .map(|(name, c)| Case {
            name,
            input: c["input"].as_str().unwrap().to_string(),
            precision: match c["precision"].as_str().unwrap() {
                "f32" => Precision::F32,
                "bf16" => Precision::Bf16,
                _ => Precision::F16,
            },
            scale: c["scale"].as_f64().map(|s| s as f32),
            per_row: c["per_row"].as_bool().unwrap_or(false),
        })
        .collect()
}

/// A float tensor's values as f32 (exact for every dtype here).
fn floats(dtype: Dtype, bytes: &[u8]) -> Vec<f32> {
    match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => panic!("{other} is not a value dtype"),
    }
}

fn same(ours: f32, theirs: f32) -> bool {
    ours.to_bits() == theirs.to_bits() || (ours.is_nan() && theirs.is_nan())
}

fn member_len(shape: &[usize], dtype: Dtype) -> usize {
    shape.iter().product::<usize>() * dtype.bitsize() / 8
}

/// Three uneven pieces of `0..n` in units of `unit`.
fn pieces(n: u64, unit: u64) -> Vec<Range<u64>> {
    let units = n / unit;
    let a = (units / 3 + 1).min(units);
    let b = (units * 2 / 3 + 1).clamp(a, units);
    [0..a, a..b, b..units]
        .into_iter()
        .filter(|r| !r.is_empty())
        .map(|r| r.start * unit..r.end * unit)
        .collect()
}

fn layout_for(case: &Case, format: Format, shape: &[usize]) -> QuantLayout {
    let layout = QuantLayout::new(&case.name, format, shape).unwrap();
    if case.per_row {
        layout.with_row_scales().unwrap()
    } else {
        layout
    }
}

/// Scales as an encoder gets them: fresh from the reductions folded in two pieces, or given.
fn scales_for(case: &Case, layout: &QuantLayout, values: &[f32]) -> Scales {
    match case.scale {
        Some(s) => Scales::tensor(&case.name, s).unwrap(),
        None => {
            let mut reducer = layout.reducer();
            let half = values.len() / 2;
            reducer
                .update(half as u64..values.len() as u64, &values[half..])
                .unwrap();
            reducer.update(0..half as u64, &values[..half]).unwrap();
            layout
                .fresh_scales(&reducer.finish(), case.precision)
                .unwrap()
        }
    }
}

/// Encodes the whole tensor in uneven write spans into buffers that start as a sentinel pattern,
/// so a byte the encoder forgets shows.
fn encode_all(
    layout: &QuantLayout,
    scales: &Scales,
    precision: Precision,
    values: &[f32],
) -> (Vec<u8>, Vec<u8>) {
    let members = layout.members();
    let size = |role| {
        members
            .iter()
            .find(|m| m.role == role)
            .map_or(0, |m| member_len(&m.shape, m.dtype))
    };
    let mut codes = vec![0xA5u8; size(Role::Codes)];
    let mut block_scales = vec![0xA5u8; size(Role::BlockScales)];
    for range in pieces(layout.numel(), layout.write_unit()) {
        let span = layout.write_span(range.clone()).unwrap();
        let (c, b) = (span.codes.clone(), span.block_scales.clone());
        layout
            .encode(
                scales,
                precision,
                &span,
                &values[range.start as usize..range.end as usize],
                &mut codes[c.start as usize..c.end as usize],
                &mut block_scales[b.start as usize..b.end as usize],
            )
            .unwrap();
    }
    (codes, block_scales)
}

/// Decodes the whole tensor through read spans that start and end inside blocks.
fn decode_all(
    layout: &QuantLayout,
    scales: &Scales,
    precision: Precision,
    codes: &[u8],
    block_scales: &[u8],
) -> Vec<f32> {
    let n = layout.numel();
    let mut out = vec![f32::NAN; n as usize];
    let cuts = [0, (n / 3 + 7).min(n), (2 * n / 3 + 3).min(n), n];
    for w in cuts.windows(2) {
        let range = w[0]..w[1].max(w[0]);
        if range.is_empty() {
            continue;
        }
        let span = layout.read_span(range.clone()).unwrap();
        let mut tmp = vec![0f32; (span.elements.end - span.elements.start) as usize];
        let (c, b) = (span.codes.clone(), span.block_scales.clone());
        layout
            .decode(
                scales,
                precision,
                &span,
                &codes[c.start as usize..c.end as usize],
                &block_scales[b.start as usize..b.end as usize],
                &mut tmp,
            )
            .unwrap();
        let skip = (range.start - span.elements.start) as usize;
        let len = (range.end - range.start) as usize;
        out[range.start as usize..range.end as usize].copy_from_slice(&tmp[skip..skip + len]);
    }
    out
}

fn for_each_case(mut f: impl FnMut(Format, &Case, &SafeTensors, &SafeTensors)) {
    let inputs_bytes = read("inputs");
    let inputs = SafeTensors::deserialize(&inputs_bytes).unwrap();
    let mut count = 0;
    for (file, format) in FILES {
        let bytes = read(file);
        let fixture = SafeTensors::deserialize(&bytes).unwrap();
        for case in cases(&bytes) {
            f(format, &case, &fixture, &inputs);
            count += 1;
        }
    }
    assert!(count >= 50, "only {count} cases");
}

#[test]
fn quantizing_gives_kitchens_codes_scales_and_members() {
    for_each_case(|format, case, fixture, inputs| {
        let input = inputs.tensor(&case.input).unwrap();
        let values = floats(input.dtype(), input.data());
        let layout = layout_for(case, format, input.shape());
        let scales = scales_for(case, &layout, &values);
        let (codes, block_scales) = encode_all(&layout, &scales, case.precision, &values);
        let name = &case.name;
        for member in layout.members() {
            let theirs = fixture.tensor(&format!("{name}.{}", member.name)).unwrap();
            assert_eq!(
                (member.dtype, member.shape.as_slice()),
                (theirs.dtype(), theirs.shape()),
                "{name}.{}",
                member.name
            );
            let ours: &[u8] = match member.role {
                Role::Codes => &codes,
                Role::BlockScales => &block_scales,
                _ => continue,
            };
            let diff = ours.iter().zip(theirs.data()).position(|(a, b)| a != b);
            assert_eq!(
                diff, None,
                "{name}.{} differs at byte {diff:?}",
                member.name
            );
            assert_eq!(ours.len(), theirs.data().len());
        }
        for (member, bytes) in layout.small_members(&scales).unwrap() {
            let theirs = fixture.tensor(&format!("{name}.{}", member.name)).unwrap();
            assert_eq!(bytes, theirs.data(), "{name}.{}", member.name);
        }
    });
}

/// The layout and scales of a fixture case as a reader finds them in the file.
fn stored(
    format: Format,
    case: &Case,
    fixture: &SafeTensors,
    shape: &[usize],
) -> (QuantLayout, Scales) {
    let names = ["weight", "weight_scale", "weight_scale_2", "comfy_quant"];
    let views: Vec<_> = names
        .iter()
        .filter_map(|n| Some((*n, fixture.tensor(&format!("{}.{n}", case.name)).ok()?)))
        .collect();
    let members: Vec<_> = views
        .iter()
        .map(|(name, v)| StoredMember {
            name,
            dtype: v.dtype(),
            shape: v.shape(),
        })
        .collect();
    let layout = QuantLayout::from_stored(&case.name, format, &members, Some(shape)).unwrap();
    let data: Vec<_> = views
        .iter()
        .map(|(name, v)| MemberData {
            name,
            dtype: v.dtype(),
            bytes: v.data(),
        })
        .collect();
    (layout.clone(), layout.read_scales(&data).unwrap())
}

fn block_scale_bytes<'a>(fixture: &'a SafeTensors, case: &Case, format: Format) -> &'a [u8] {
    if format.has_block_scales() {
        fixture
            .tensor(&format!("{}.weight_scale", case.name))
            .unwrap()
            .data()
    } else {
        &[]
    }
}

#[test]
fn dequantizing_gives_kitchens_values_in_every_output_dtype() {
    for_each_case(|format, case, fixture, inputs| {
        let shape = inputs.tensor(&case.input).unwrap().shape().to_vec();
        let (layout, scales) = stored(format, case, fixture, &shape);
        assert_eq!(layout.has_row_scales(), case.per_row, "{}", case.name);
        let codes = fixture.tensor(&format!("{}.weight", case.name)).unwrap();
        let block_scales = block_scale_bytes(fixture, case, format);
        layout.check_block_scales(block_scales).unwrap();
        for (suffix, precision) in [
            ("f32", Precision::F32),
            ("bf16", Precision::Bf16),
            ("f16", Precision::F16),
        ] {
            let ours = decode_all(&layout, &scales, precision, codes.data(), block_scales);
            let theirs = fixture
                .tensor(&format!("{}.dequant_{suffix}", case.name))
                .unwrap();
            let theirs = floats(theirs.dtype(), theirs.data());
            let diff = ours.iter().zip(&theirs).position(|(a, b)| !same(*a, *b));
            assert_eq!(
                diff.map(|i| (i, ours[i], theirs[i])),
                None,
                "{} dequantized to {suffix}",
                case.name
            );
        }
    });
}

#[test]
fn bf16_through_each_format_and_back_equals_kitchens_round_trip() {
    let mut checked = 0;
    for_each_case(|format, case, fixture, inputs| {
        if case.precision != Precision::Bf16 {
            return;
        }
        let input = inputs.tensor(&case.input).unwrap();
        let values = floats(input.dtype(), input.data());
        let layout = layout_for(case, format, input.shape());
        let scales = scales_for(case, &layout, &values);
        let (codes, block_scales) = encode_all(&layout, &scales, Precision::Bf16, &values);
        let back = decode_all(&layout, &scales, Precision::Bf16, &codes, &block_scales);
        let theirs = fixture
            .tensor(&format!("{}.dequant_bf16", case.name))
            .unwrap();
        let theirs = floats(theirs.dtype(), theirs.data());
        assert!(
            back.iter().zip(&theirs).all(|(a, b)| same(*a, *b)),
            "{}",
            case.name
        );
        checked += 1;
    });
    assert!(checked >= 25, "{checked}");
}

#[test]
fn legacy_scaled_fp8_has_the_float8_arithmetic_under_its_own_names() {
    for (file, fp8) in [("float8_e4m3fn", Fp8::E4M3), ("float8_e5m2", Fp8::E5M2)] {
        let bytes = read(file);
        let fixture = SafeTensors::deserialize(&bytes).unwrap();
        let inputs_bytes = read("inputs");
        let inputs = SafeTensors::deserialize(&inputs_bytes).unwrap();
        for case in cases(&bytes) {
            let input = inputs.tensor(&case.input).unwrap();
            let values = floats(input.dtype(), input.data());
            let layout = layout_for(&case, Format::ScaledFp8(fp8), input.shape());
            let names: Vec<_> = layout.members().iter().map(|m| m.name).collect();
            assert_eq!(names, ["weight", "scale_weight"]);
            let scales = scales_for(&case, &layout, &values);
            let (codes, _) = encode_all(&layout, &scales, case.precision, &values);
            let theirs = fixture.tensor(&format!("{}.weight", case.name)).unwrap();
            assert_eq!(codes, theirs.data(), "{}", case.name);
            let scale = fixture
                .tensor(&format!("{}.weight_scale", case.name))
                .unwrap();
            let stored = [
                StoredMember {
                    name: "weight",
                    dtype: theirs.dtype(),
                    shape: theirs.shape(),
                },
                StoredMember {
                    name: "scale_weight",
                    dtype: scale.dtype(),
                    shape: scale.shape(),
                },
            ];
            // The marker does not decide the codes' type: the codes' dtype does.
            let read =
                QuantLayout::from_stored(&case.name, Format::ScaledFp8(Fp8::E4M3), &stored, None)
                    .unwrap();
            assert_eq!(read.format(), Format::ScaledFp8(fp8));
            let data = [MemberData {
                name: "scale_weight",
                dtype: scale.dtype(),
                bytes: scale.data(),
            }];
            let scales = read.read_scales(&data).unwrap();
            let back = decode_all(&read, &scales, Precision::F32, theirs.data(), &[]);
            let deq = fixture
                .tensor(&format!("{}.dequant_f32", case.name))
                .unwrap();
            let deq = floats(deq.dtype(), deq.data());
            assert!(
                back.iter().zip(&deq).all(|(a, b)| same(*a, *b)),
                "{}",
                case.name
            );
        }
    }
}
