//! A fast hasher for kernel addresses and tids.
//!
//! SipHash costs more than the rest of a per-event check. Kernel object addresses are
//! aligned (VMAs are 192-byte slab objects), so a plain multiply would leave the low bits
//! (hashbrown's bucket index) constant; folding the 128-bit product mixes the high half in.

use std::hash::{BuildHasherDefault, Hasher};

#[derive(Default, Clone, Copy)]
pub struct AddrHasher(u64);

const K: u64 = 0x9E37_79B9_7F4A_7C15;

impl Hasher for AddrHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(b));
        }
    }

    fn write_u64(&mut self, v: u64) {
        let p = u128::from(self.0 ^ v) * u128::from(K);
        self.0 = (p as u64) ^ ((p >> 64) as u64);
    }

    fn write_u32(&mut self, v: u32) {
        self.write_u64(u64::from(v));
    }
}

pub type AddrMap<V> = std::collections::HashMap<u64, V, BuildHasherDefault<AddrHasher>>;
pub type TidMap<V> = std::collections::HashMap<u32, V, BuildHasherDefault<AddrHasher>>;

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::*;

    #[test]
    fn aligned_addresses_spread_over_low_bits() {
        let b = BuildHasherDefault::<AddrHasher>::default();
        let mut buckets = [0u32; 64];
        for i in 0..6400u64 {
            let h = b.hash_one(0xffff_8880_0000_0000u64 + i * 192);
            buckets[(h & 63) as usize] += 1;
        }
        // 100 per bucket on average; a constant low-bit pattern would put all in one.
        assert!(buckets.iter().all(|&n| n > 50 && n < 150), "{buckets:?}");
    }
}
