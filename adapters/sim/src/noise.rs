//! Deterministic pseudo-noise: the same device id and time always give the same wobble,
//! so tests are repeatable and two simulated devices do not wobble in lockstep.

/// A seed from a device id (FNV-1a), stable across runs and platforms.
pub(crate) fn seed_from(id: &str) -> u64 {
    id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// SplitMix64 finaliser: a cheap, well-mixed hash of one word.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A value in `[0, 1)` for lattice point `n`.
fn lattice(seed: u64, n: i64) -> f64 {
    // The top 53 bits fill an f64 mantissa exactly.
    (mix(seed ^ mix(n as u64)) >> 11) as f64 / (1u64 << 53) as f64
}

/// Smooth value noise in `[0, 1)`: random values every `period_s` seconds, eased between,
/// so power wanders like a real load or a passing cloud instead of jumping each read.
pub(crate) fn smooth(seed: u64, t_secs: f64, period_s: f64) -> f64 {
    let x = t_secs / period_s;
    let n = x.floor();
    let f = x - n;
    let ease = f * f * (3.0 - 2.0 * f);
    let a = lattice(seed, n as i64);
    let b = lattice(seed, n as i64 + 1);
    a + (b - a) * ease
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeatable_and_bounded() {
        let s = seed_from("pv1");
        assert_ne!(s, seed_from("pv2"));
        for i in 0..1000 {
            let t = f64::from(i) * 37.3;
            let v = smooth(s, t, 60.0);
            assert!((0.0..1.0).contains(&v), "{v}");
            assert_eq!(v, smooth(s, t, 60.0));
        }
    }
}
