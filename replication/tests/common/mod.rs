//! What the simulations share: their seeded random numbers (splitmix64,
//! so a seed names one run).

#![allow(dead_code)]

/// A seeded source of numbers.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// True `percent` times in a hundred.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// The seeds to run: `AERODB_SIM_SEED=s` replays one, `AERODB_SIM_SEEDS=n`
/// runs `0..n`, else `0..default`.
pub fn seeds(default: u64) -> Vec<u64> {
    if let Ok(s) = std::env::var("AERODB_SIM_SEED") {
        return vec![s.parse().expect("AERODB_SIM_SEED is a number")];
    }
    let n = std::env::var("AERODB_SIM_SEEDS").map_or(default, |n| {
        n.parse().expect("AERODB_SIM_SEEDS is a number")
    });
    (0..n).collect()
}
