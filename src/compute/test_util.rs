//! Test helpers: a deterministic RNG, encoders built on the `half` crate (independent of the
//! code under test), and slow, obviously-correct reference codecs (exhaustive search).

use crate::compute::numerics::SourceDtype;

/// SplitMix64: tiny, deterministic, good enough to spread test values.
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// The next 32 random bits.
    pub fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller), as f32.
    pub fn normal(&mut self) -> f32 {
        let u1 = 1.0 - self.unit();
        let u2 = self.unit();
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }

    /// A power of two between 2^-10 and 2^4: spreads magnitudes, stays inside f16's range.
    pub fn scale(&mut self) -> f32 {
        2f32.powi(self.below(15) as i32 - 10)
    }

    /// A random f32 with a random sign and mantissa and a biased exponent in `lo..=hi`
    /// (0 gives subnormals and zero).
    pub fn f32_with_exponent(&mut self, lo: u32, hi: u32) -> f32 {
        let exponent = lo + self.below(u64::from(hi - lo + 1)) as u32;
        let bits = (self.next_u32() & 0x807F_FFFF) | (exponent << 23);
        f32::from_bits(bits)
    }
}

/// Encodes `values` as little-endian `dtype` elements, rounding with the `half` crate.
pub fn encode(values: &[f32], dtype: SourceDtype) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * dtype.size());
    for v in values {
        match dtype {
            SourceDtype::Bf16 => {
                out.extend_from_slice(&half::bf16::from_f32(*v).to_bits().to_le_bytes())
            }
            SourceDtype::F16 => {
                out.extend_from_slice(&half::f16::from_f32(*v).to_bits().to_le_bytes())
            }
            SourceDtype::F32 => out.extend_from_slice(&v.to_le_bytes()),
        }
    }
    out
}

/// Rounds like [`encode`] then decodes: the value a weight of `dtype` holds.
pub fn round_ref(x: f32, dtype: SourceDtype) -> f32 {
    match dtype {
        SourceDtype::Bf16 => half::bf16::from_f32(x).to_f32(),
        SourceDtype::F16 => half::f16::from_f32(x).to_f32(),
        SourceDtype::F32 => x,
    }
}

/// The value of E4M3 magnitude code `code` (0..=0x7F) from the format definition, in f64.
/// Code 0x7F (NaN in E4M3FN) gets the value 480 it would have without the NaN rule, the
/// overflow point of round-to-nearest.
pub fn e4m3_magnitude_ref(code: u8) -> f64 {
    let exponent = i32::from(code >> 3);
    let mantissa = f64::from(code & 7);
    if exponent == 0 {
        mantissa / 8.0 * 2f64.powi(-6)
    } else {
        (1.0 + mantissa / 8.0) * 2f64.powi(exponent - 7)
    }
}

/// All 128 magnitude codes' values ([`e4m3_magnitude_ref`]), computed once.
fn e4m3_magnitudes_ref() -> &'static [f64; 128] {
    static TABLE: std::sync::OnceLock<[f64; 128]> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| std::array::from_fn(|code| e4m3_magnitude_ref(code as u8)))
}

/// Reference f32 → E4M3FN: the nearest of all magnitude codes by exhaustive search, ties to
/// the even code; anything nearer to the virtual 480 (or beyond), inf and NaN give NaN 0x7F;
/// the sign bit is always kept.
pub fn e4m3_ref(x: f32) -> u8 {
    let sign = if x.is_sign_negative() { 0x80 } else { 0x00 };
    if !x.is_finite() {
        return 0x7F | sign;
    }
    let a = f64::from(x).abs();
    let mut best = 0u8;
    let mut best_distance = f64::INFINITY;
    for (code, value) in e4m3_magnitudes_ref().iter().enumerate() {
        let distance = (value - a).abs();
        if distance < best_distance || (distance == best_distance && code % 2 == 0) {
            best = code as u8;
            best_distance = distance;
        }
    }
    if a > 480.0 {
        best = 0x7F;
    }
    best | sign
}

/// Reference E2M1 magnitudes, by code.
pub const E2M1_MAGNITUDES_REF: [f64; 8] = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0];

/// Reference ModelOpt `_cast_fp4`: sign bit = `x < 0`; magnitude = the nearest E2M1 value by
/// exhaustive search, ties to the even code; NaN and everything from 6 up give 7.
pub fn e2m1_ref(x: f32) -> u8 {
    let sign = if x < 0.0 { 0x8 } else { 0x0 };
    let a = f64::from(x).abs();
    if x.is_nan() {
        return 7;
    }
    if a >= 6.0 {
        return sign | 7;
    }
    let mut best = 0u8;
    let mut best_distance = f64::INFINITY;
    for (code, value) in E2M1_MAGNITUDES_REF.iter().enumerate() {
        let distance = (value - a).abs();
        if distance < best_distance || (distance == best_distance && code % 2 == 0) {
            best = code as u8;
            best_distance = distance;
        }
    }
    sign | best
}
