//! Exhaustive and randomized tests of the scalar codecs against slow references
//! (`test_util`: exhaustive search over codes) and the `half` crate.

use crate::compute::codec::*;
use crate::compute::test_util::{e2m1_ref, e4m3_magnitude_ref, e4m3_ref, Rng, E2M1_MAGNITUDES_REF};

fn next_up(x: f32) -> f32 {
    // Positive finite x only.
    f32::from_bits(x.to_bits() + 1)
}

fn next_down(x: f32) -> f32 {
    // Positive x only; next_down(0) is not needed.
    f32::from_bits(x.to_bits() - 1)
}

fn check_e4m3(x: f32) {
    let (got, want) = (e4m3_from_f32(x), e4m3_ref(x));
    assert_eq!(
        got,
        want,
        "e4m3({x:e}) bits {:#010x}: got {got:#04x} want {want:#04x}",
        x.to_bits()
    );
}

#[test]
fn test_e4m3_decode_every_byte() {
    let mut nan_count = 0;
    for b in 0..=255u8 {
        let v = e4m3_to_f32(b);
        if b & 0x7F == 0x7F {
            assert!(v.is_nan(), "{b:#04x} must be NaN");
            assert_eq!(v.is_sign_negative(), b & 0x80 != 0);
            nan_count += 1;
            continue;
        }
        let magnitude = e4m3_magnitude_ref(b & 0x7F);
        assert_eq!(f64::from(v.abs()), magnitude, "{b:#04x}");
        assert_eq!(v.is_sign_negative(), b & 0x80 != 0, "sign of {b:#04x}");
        // Round trip, -0.0 included.
        assert_eq!(e4m3_from_f32(v), b, "round trip of {b:#04x} = {v:e}");
    }
    assert_eq!(nan_count, 2);
    assert_eq!(e4m3_to_f32(0x7E), E4M3_MAX);
    assert_eq!(e4m3_to_f32(0x01), E4M3_MIN_SUBNORMAL);
}

#[test]
fn test_e4m3_encode_random_against_exhaustive_search() {
    let mut rng = Rng::new(1);
    // Exponents 100..=140 span 2^-27 .. 2^13: underflow, subnormals, normals, overflow.
    for _ in 0..3_000_000 {
        check_e4m3(rng.f32_with_exponent(100, 140));
    }
    // f32 subnormals and tiny values.
    for _ in 0..200_000 {
        check_e4m3(rng.f32_with_exponent(0, 3));
    }
    // Any bit pattern (mostly huge, tiny, inf, NaN).
    for _ in 0..500_000 {
        check_e4m3(f32::from_bits(rng.next_u32()));
    }
}

#[test]
fn test_e4m3_midpoints_and_neighbors() {
    // Every pair of adjacent magnitude codes, 0x7E/0x7F included (448 and the overflow 480).
    for code in 0u8..0x7F {
        let low = e4m3_magnitude_ref(code);
        let high = e4m3_magnitude_ref(code + 1);
        let mid = ((low + high) / 2.0) as f32;
        assert_eq!(
            f64::from(mid),
            (low + high) / 2.0,
            "midpoint must be exact in f32"
        );
        // The tie goes to the even code, whichever of the two it is.
        let even = if code % 2 == 0 { code } else { code + 1 };
        assert_eq!(
            e4m3_from_f32(mid),
            even,
            "tie {mid:e} between {code:#04x} and {:#04x}",
            code + 1
        );
        assert_eq!(e4m3_from_f32(-mid), even | 0x80, "tie -{mid:e}");
        for x in [mid, next_up(mid), next_down(mid), low as f32, high as f32] {
            check_e4m3(x);
            check_e4m3(-x);
        }
        if code > 0 {
            check_e4m3(next_down(low as f32));
        }
        check_e4m3(next_up(low as f32));
    }
}

#[test]
fn test_e4m3_overflow_region() {
    for (x, want) in [
        (448.0f32, 0x7E),
        (456.0, 0x7E),
        (464.0, 0x7E),
        (480.0, 0x7F),
        (1e6, 0x7F),
    ] {
        assert_eq!(e4m3_from_f32(x), want, "{x}");
        assert_eq!(e4m3_from_f32(-x), want | 0x80, "-{x}");
    }
    assert_eq!(e4m3_from_f32(next_up(464.0)), 0x7F);
    assert_eq!(e4m3_from_f32(next_down(464.0)), 0x7E);
    let mut x = 400.0f32;
    while x < 600.0 {
        check_e4m3(x);
        check_e4m3(-x);
        x += 0.125;
    }
    for x in [f32::MAX, f32::INFINITY, f32::NAN] {
        check_e4m3(x);
        check_e4m3(-x);
    }
}

#[test]
fn test_e4m3_zero_and_underflow() {
    assert_eq!(e4m3_from_f32(0.0), 0x00);
    assert_eq!(e4m3_from_f32(-0.0), 0x80);
    let tiny = f32::from_bits(1);
    assert_eq!(e4m3_from_f32(tiny), 0x00);
    assert_eq!(e4m3_from_f32(-tiny), 0x80);
    // 2^-10 is the tie between 0 and 2^-9: to the even 0. Just above: 2^-9.
    let half_step = E4M3_MIN_SUBNORMAL / 2.0;
    assert_eq!(e4m3_from_f32(half_step), 0x00);
    assert_eq!(e4m3_from_f32(next_up(half_step)), 0x01);
    assert_eq!(e4m3_from_f32(-next_up(half_step)), 0x81);
    // Smallest normal 2^-6 and its neighbors.
    let min_normal = 1.0f32 / 64.0;
    for x in [min_normal, next_up(min_normal), next_down(min_normal)] {
        check_e4m3(x);
    }
    assert_eq!(e4m3_from_f32(min_normal), 0x08);
}

#[test]
fn test_e2m1_decode_table() {
    for n in 0u8..16 {
        let magnitude = E2M1_MAGNITUDES_REF[usize::from(n & 7)];
        let v = e2m1_to_f32(n);
        assert_eq!(f64::from(v.abs()), magnitude, "nibble {n:#x}");
        assert_eq!(v.is_sign_negative(), n & 8 != 0, "sign of nibble {n:#x}");
        // Only the low 4 bits count.
        assert_eq!(e2m1_to_f32(n | 0xF0).to_bits(), v.to_bits());
    }
}

#[test]
fn test_e2m1_every_tie_and_neighbor() {
    // golden/README.md: 0.25→0, 0.75→1, 1.25→1, 1.75→2, 2.5→2, 3.5→4, 5→4 (values); codes:
    let ties: [(f32, u8); 7] = [
        (0.25, 0),
        (0.75, 2),
        (1.25, 2),
        (1.75, 4),
        (2.5, 4),
        (3.5, 6),
        (5.0, 6),
    ];
    for (t, code) in ties {
        assert_eq!(e2m1_nibble(t), code, "tie {t}");
        assert_eq!(e2m1_nibble(-t), code | 8, "tie -{t}");
        for x in [t, next_up(t), next_down(t)] {
            for x in [x, -x] {
                assert_eq!(e2m1_nibble(x), e2m1_ref(x), "e2m1({x:e})");
            }
        }
    }
    assert_eq!(e2m1_nibble(5.0001), 7);
    assert_eq!(e2m1_nibble(-0.25), 0x8);
    assert_eq!(e2m1_nibble(-1e-30), 0x8);
    assert_eq!(e2m1_nibble(-0.0), 0x0);
    assert_eq!(e2m1_nibble(0.0), 0x0);
    assert_eq!(e2m1_nibble(f32::NAN), 0x7);
    assert_eq!(e2m1_nibble(-f32::NAN), 0x7);
    assert_eq!(e2m1_nibble(f32::NEG_INFINITY), 0xF);
    assert_eq!(e2m1_nibble(-6.0), 0xF);
    assert_eq!(e2m1_nibble(-1e30), 0xF);
}

#[test]
fn test_e2m1_random_against_exhaustive_search() {
    let mut rng = Rng::new(2);
    for _ in 0..2_000_000 {
        let x = ((rng.unit() - 0.5) * 16.0) as f32;
        assert_eq!(e2m1_nibble(x), e2m1_ref(x), "e2m1({x:e})");
    }
    for _ in 0..1_000_000 {
        let x = rng.f32_with_exponent(110, 135);
        assert_eq!(e2m1_nibble(x), e2m1_ref(x), "e2m1({x:e})");
    }
    for _ in 0..200_000 {
        let x = f32::from_bits(rng.next_u32());
        assert_eq!(e2m1_nibble(x), e2m1_ref(x), "e2m1({x:e})");
    }
}

fn check_bf16(x: f32) {
    let got = bf16_round(x);
    let want = half::bf16::from_f32(x).to_f32();
    if want.is_nan() {
        assert!(
            got.is_nan(),
            "bf16_round({:#010x}) must be NaN",
            x.to_bits()
        );
        assert_eq!(got.to_bits() & 0xFFFF, 0, "NaN result must be a bf16 value");
        assert_eq!(got.is_sign_negative(), x.is_sign_negative());
    } else {
        assert_eq!(
            got.to_bits(),
            want.to_bits(),
            "bf16_round({:#010x})",
            x.to_bits()
        );
    }
}

#[test]
fn test_bf16_round_against_half() {
    // Every bf16 value (high half), with every kind of low half: exact, just below / at / just
    // above the tie, and the extremes. Covers all ties, overflow to inf and every NaN class.
    let mut rng = Rng::new(3);
    for high in 0..=0xFFFFu32 {
        for low in [
            0u32,
            1,
            0x7FFF,
            0x8000,
            0x8001,
            0xFFFF,
            rng.next_u32() & 0xFFFF,
        ] {
            check_bf16(f32::from_bits((high << 16) | low));
        }
    }
    for _ in 0..2_000_000 {
        check_bf16(f32::from_bits(rng.next_u32()));
    }
}

fn check_f16(x: f32) {
    let got = f16_round(x);
    let want = half::f16::from_f32(x).to_f32();
    if want.is_nan() {
        assert!(got.is_nan(), "f16_round({:#010x}) must be NaN", x.to_bits());
        assert_eq!(
            half::f16::from_f32(got).to_f32().to_bits(),
            got.to_bits(),
            "NaN result must be an f16 value"
        );
    } else {
        assert_eq!(
            got.to_bits(),
            want.to_bits(),
            "f16_round({x:e} = {:#010x})",
            x.to_bits()
        );
    }
}

#[test]
fn test_f16_round_against_half() {
    // Every f16 value, and the midpoint to the next one (exact in f32) with its neighbors:
    // every tie, subnormal ties and the overflow tie 65520 included.
    for bits in 0..0x7BFFu16 {
        let low = f64::from(half::f16::from_bits(bits).to_f32());
        let high = f64::from(half::f16::from_bits(bits + 1).to_f32());
        let mid = ((low + high) / 2.0) as f32;
        assert_eq!(f64::from(mid), (low + high) / 2.0);
        for x in [
            low as f32,
            mid,
            next_up(mid),
            if mid > 0.0 { next_down(mid) } else { mid },
        ] {
            check_f16(x);
            check_f16(-x);
        }
    }
    for x in [
        65504.0f32,
        65519.99,
        65520.0,
        65536.0,
        1e9,
        f32::INFINITY,
        f32::NAN,
        -0.0,
    ] {
        check_f16(x);
        check_f16(-x);
    }
    let mut rng = Rng::new(4);
    for _ in 0..2_000_000 {
        check_f16(rng.f32_with_exponent(95, 145));
    }
    for _ in 0..1_000_000 {
        check_f16(f32::from_bits(rng.next_u32()));
    }
}
