use super::*;

/// The k-th largest of `values`' magnitudes, by sorting.
fn sorted_kth(values: &[u32], k: u64) -> u32 {
    let mut v = values.to_vec();
    v.sort_unstable_by(|a, b| b.cmp(a));
    v[k as usize - 1]
}

#[test]
fn brackets_hold_the_rank_of_a_fair_sample() {
    // Magnitudes 0..n shuffled by a multiplicative hash; the sample is every 16th value.
    let n = 1 << 20;
    let all: Vec<u32> = (0..n as u32)
        .map(|i| i.wrapping_mul(2_654_435_761) % n as u32)
        .collect();
    for k in [
        1u64,
        10,
        1000,
        n as u64 / 5,
        n as u64 / 2,
        n as u64 - 3,
        n as u64,
    ] {
        let mut sample: Vec<u32> = all.iter().step_by(16).copied().collect();
        let (low, high) = bracket(&mut sample, k, n);
        let want = sorted_kth(&all, k);
        assert!(
            low <= want && want <= high,
            "k {k}: {want} outside {low}..={high}"
        );
        // Narrow: a few percent of the values, not all of them.
        let inside = all.iter().filter(|&&b| b >= low && b <= high).count();
        assert!(inside < n / 16, "k {k}: {inside} values in the bracket");
    }
}

#[test]
fn bracket_counts_match_a_plain_filter() {
    // Magnitudes all over the range (signs, NaN, Inf patterns included), every length
    // around the groups of eight.
    let values: Vec<f32> = (0..1000u32)
        .map(|i| f32::from_bits(i.wrapping_mul(2_654_435_761) ^ (i << 29)))
        .collect();
    let brackets = [
        (0x3F00_0000, 0x3F80_0000),
        (0, 0x7FFF_FFFF),
        (0x7F80_0000, u32::MAX),
        (0x1000_0000, 0x1000_0000),
        (5, 4),
    ];
    for (low, high) in brackets {
        let span = high.wrapping_sub(low);
        for len in [0, 1, 7, 8, 9, 63, 64, 1000] {
            let v = &values[..len];
            let want_over = v.iter().filter(|&&x| magnitude(x) > high).count() as u32;
            let want: Vec<u32> = v
                .iter()
                .map(|&x| magnitude(x))
                .filter(|b| b.wrapping_sub(low) <= span)
                .collect();
            let mut kept = vec![7u32];
            let over = count_bracket(v, low, span, high, &mut kept);
            assert_eq!(
                (over, &kept[1..]),
                (want_over, &want[..]),
                "{low} {high} {len}"
            );
            let mut kept = Vec::new();
            let over = count_bracket_lanes(v, low, span, high, &mut kept);
            assert_eq!((over, kept), (want_over, want), "{low} {high} {len}");
        }
    }
}

#[test]
fn the_sample_is_a_run_from_the_middle_of_every_chunk() {
    let r = sample_ranges(100, 32);
    assert_eq!(r, [15..17, 47..49, 79..81, 97..99]);
    assert_eq!(chunks(25, 10).collect::<Vec<_>>(), [0..10, 10..20, 20..25]);
}
