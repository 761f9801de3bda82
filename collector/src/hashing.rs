//! The hasher of the per-event hash maps (the metrics' signature tallies,
//! the enrichment metadata): their keys are small integers, addresses and
//! packed words, hashed on every event, for which SipHash (the standard
//! library's default, made for untrusted strings) costs more than the
//! lookup itself.

use std::hash::{BuildHasher, Hasher};

/// A multiply-rotate hasher over whole words (the keys are small packed
/// integers and addresses, not strings), seeded per map so that the bucket
/// of a key cannot be predicted from outside.
#[derive(Clone, Copy)]
pub struct Seeded(u64);

impl Seeded {
    #[must_use]
    pub fn new() -> Self {
        Self(std::collections::hash_map::RandomState::new().hash_one(0x5167_6874_6c69_6e65_u64))
    }
}

impl Default for Seeded {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Seeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Seeded")
    }
}

impl BuildHasher for Seeded {
    type Hasher = WordHasher;
    fn build_hasher(&self) -> WordHasher {
        WordHasher(self.0)
    }
}

pub struct WordHasher(u64);

const K: u64 = 0xf135_7aea_2e62_a9c5;

impl Hasher for WordHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            if let Some(w) = word.get_mut(..rest.len()) {
                w.copy_from_slice(rest);
            }
            self.write_u64(u64::from_le_bytes(word) ^ (rest.len() as u64) << 59);
        }
    }
    #[inline]
    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }
    #[inline]
    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }
    #[inline]
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(K).rotate_left(26);
    }
    #[inline]
    fn write_u128(&mut self, n: u128) {
        self.write_u64(n as u64);
        self.write_u64((n >> 64) as u64);
    }
    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        // Mix the high bits down: hashbrown picks buckets from the low bits
        // and control bytes from the top seven.
        let h = self.0;
        (h ^ (h >> 29)).wrapping_mul(K) ^ (h >> 32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hasher_spreads_small_keys() {
        let s = Seeded::new();
        let mut buckets = std::collections::HashSet::new();
        for k in 0u64..1024 {
            buckets.insert(s.hash_one(k) & 1023);
        }
        assert!(buckets.len() > 600, "{}", buckets.len());
    }
}
