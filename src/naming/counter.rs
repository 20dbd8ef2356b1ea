//! The reference's counter scan of one folder entry, including Python's `int()` parsing rules.

/// The reference's `map_filename` + filter for one entry: `None` if the entry does not count,
/// otherwise its counter as Python's `int()` parses it (`Ok(0)` when that fails), or `Err(())`
/// when the number does not fit in an `i128`.
pub(super) fn entry_counter(
    name: &str,
    filename: &str,
    prefix_len: usize,
) -> Option<Result<i128, ()>> {
    let cut = name
        .char_indices()
        .nth(prefix_len + 1)
        .map_or(name.len(), |(i, _)| i);
    let (candidate, rest) = name.split_at(cut);
    let mut chars = candidate.chars();
    if chars.next_back() != Some('_') || chars.as_str() != filename {
        return None;
    }
    let digits = rest.split('_').next().unwrap_or_default();
    Some(match parse_python_int(digits) {
        PyInt::Value(v) => Ok(v),
        PyInt::Invalid => Ok(0),
        PyInt::TooLarge => Err(()),
    })
}

/// Outcome of [`parse_python_int`].
#[derive(Debug, PartialEq, Eq)]
enum PyInt {
    Value(i128),
    Invalid,
    TooLarge,
}

/// Python's `int(text)` in base 10, as far as a file name can exercise it: surrounding whitespace
/// (Unicode `White_Space`, which is what `int()` strips), one optional sign, then one or more
/// decimal digits of any script. Underscores never reach here (the caller cuts at the first `_`).
fn parse_python_int(text: &str) -> PyInt {
    let trimmed = text.trim_matches(char::is_whitespace);
    let (negative, body) = match trimmed.strip_prefix('-') {
        Some(body) => (true, body),
        None => (false, trimmed.strip_prefix('+').unwrap_or(trimmed)),
    };
    if body.is_empty() {
        return PyInt::Invalid;
    }
    let mut value: i128 = 0;
    for c in body.chars() {
        let Some(digit) = decimal_digit(c) else {
            return PyInt::Invalid;
        };
        match value
            .checked_mul(10)
            .and_then(|v| v.checked_add(i128::from(digit)))
        {
            Some(v) => value = v,
            None => return PyInt::TooLarge,
        }
    }
    PyInt::Value(if negative { -value } else { value })
}

/// Code points of the digit zero of every run of Unicode decimal digits (category Nd, Unicode 14,
/// as in Python 3.11's `unicodedata`); each run holds the ten digits 0–9 in order.
const DIGIT_ZEROS: [u32; 66] = [
    0x0030, 0x0660, 0x06F0, 0x07C0, 0x0966, 0x09E6, 0x0A66, 0x0AE6, 0x0B66, 0x0BE6, 0x0C66, 0x0CE6,
    0x0D66, 0x0DE6, 0x0E50, 0x0ED0, 0x0F20, 0x1040, 0x1090, 0x17E0, 0x1810, 0x1946, 0x19D0, 0x1A80,
    0x1A90, 0x1B50, 0x1BB0, 0x1C40, 0x1C50, 0xA620, 0xA8D0, 0xA900, 0xA9D0, 0xA9F0, 0xAA50, 0xABF0,
    0xFF10, 0x104A0, 0x10D30, 0x11066, 0x110F0, 0x11136, 0x111D0, 0x112F0, 0x11450, 0x114D0,
    0x11650, 0x116C0, 0x11730, 0x118E0, 0x11950, 0x11C50, 0x11D50, 0x11DA0, 0x16A60, 0x16AC0,
    0x16B50, 0x1D7CE, 0x1D7D8, 0x1D7E2, 0x1D7EC, 0x1D7F6, 0x1E140, 0x1E2F0, 0x1E950, 0x1FBF0,
];

/// The value of a decimal digit of any script, like Python's `unicodedata.decimal`.
pub(super) fn decimal_digit(c: char) -> Option<u32> {
    let cp = u32::from(c);
    let i = DIGIT_ZEROS.partition_point(|&zero| zero <= cp);
    let zero = DIGIT_ZEROS.get(i.checked_sub(1)?)?;
    let value = cp - zero;
    (value < 10).then_some(value)
}
