//! Kernel addresses in exported records: replaced by keyed hashes unless the operator
//! opts in to raw addresses (`--raw-addresses`). A raw `vm_area_struct *` or `mm_struct *`
//! reveals the KASLR slide of the direct map; a keyed hash still lets a reader correlate
//! records of one run (same object → same hash) without revealing anything across runs.

use std::hash::Hasher;

use serde_json::Value;
use siphasher::sip::SipHasher13;

/// How addresses are written.
#[derive(Clone, Debug)]
pub struct Redactor {
    /// SipHash key; `None` = raw addresses.
    key: Option<(u64, u64)>,
}

/// True for values in the x86-64 kernel half that are not small negative errnos
/// (`ERR_PTR` values -1..-4095 stay readable).
pub fn looks_like_kernel_address(v: u64) -> bool {
    (0xffff_8000_0000_0000..=0xffff_ffff_ffff_f000).contains(&v)
}

impl Redactor {
    /// Keyed hashes with a fresh random key for this run.
    pub fn random() -> std::io::Result<Self> {
        let mut k = [0u8; 16];
        fill_random(&mut k)?;
        let (a, b) = k.split_at(8);
        let mut k0 = [0u8; 8];
        let mut k1 = [0u8; 8];
        k0.copy_from_slice(a);
        k1.copy_from_slice(b);
        Ok(Self::with_key(
            u64::from_le_bytes(k0),
            u64::from_le_bytes(k1),
        ))
    }

    pub fn with_key(k0: u64, k1: u64) -> Self {
        Self {
            key: Some((k0, k1)),
        }
    }

    pub fn raw() -> Self {
        Self { key: None }
    }

    pub fn is_raw(&self) -> bool {
        self.key.is_none()
    }

    /// How the log says addresses are written (`keyed_hash` or `raw`).
    pub fn mode_key(&self) -> &'static str {
        if self.is_raw() { "raw" } else { "keyed_hash" }
    }

    /// A kernel pointer: `null` for NULL, `"h:<16 hex>"` hashed, `"0x<hex>"` raw.
    pub fn pointer(&self, addr: u64) -> Value {
        if addr == 0 {
            return Value::Null;
        }
        Value::String(match self.key {
            None => format!("{addr:#x}"),
            Some((k0, k1)) => {
                let mut h = SipHasher13::new_with_keys(k0, k1);
                h.write_u64(addr);
                format!("h:{:016x}", h.finish())
            }
        })
    }

    /// A value that is sometimes a kernel pointer (an argument or return value): pointers
    /// are redacted, anything else is kept as a number.
    pub fn maybe_pointer(&self, v: u64) -> Value {
        if looks_like_kernel_address(v) {
            self.pointer(v)
        } else {
            Value::from(v)
        }
    }

    /// A signed return value: kernel pointers redacted, errnos and small values kept.
    pub fn ret(&self, v: i64) -> Value {
        if looks_like_kernel_address(v as u64) {
            self.pointer(v as u64)
        } else {
            Value::from(v)
        }
    }
}

fn fill_random(buf: &mut [u8]) -> std::io::Result<()> {
    // SAFETY: `buf` is valid for `buf.len()` bytes of writes.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if usize::try_from(n).ok() == Some(buf.len()) {
        return Ok(());
    }
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_stable_per_key_and_hide_the_address() {
        let a = 0xffff_8881_2345_6780u64;
        let r = Redactor::with_key(1, 2);
        let h = r.pointer(a);
        assert_eq!(h, r.pointer(a));
        let s = h.as_str().expect("string");
        assert!(s.starts_with("h:") && s.len() == 18, "{s}");
        assert!(!s.contains("2345"), "{s}");
        assert_ne!(h, Redactor::with_key(1, 3).pointer(a));
        assert_ne!(h, r.pointer(a + 8));
        assert_eq!(r.pointer(0), Value::Null);
    }

    #[test]
    fn raw_mode_prints_hex() {
        assert_eq!(
            Redactor::raw().pointer(0xffff_8881_0000_0040),
            Value::String("0xffff888100000040".into())
        );
    }

    #[test]
    fn errnos_and_user_values_stay_readable() {
        let r = Redactor::with_key(9, 9);
        assert_eq!(r.ret(-4), Value::from(-4));
        assert_eq!(r.ret(-4095), Value::from(-4095));
        assert_eq!(r.ret(0), Value::from(0));
        assert!(r.ret(0xffff_8881_0000_0000u64 as i64).as_str().is_some());
        assert_eq!(
            r.maybe_pointer(0x7fff_0000_1000),
            Value::from(0x7fff_0000_1000u64)
        );
        assert!(r.maybe_pointer(0xffff_ffff_8100_0000).as_str().is_some());
    }

    #[test]
    fn random_keys_differ() {
        let a = Redactor::random().expect("randomness");
        let b = Redactor::random().expect("randomness");
        assert_ne!(
            a.pointer(0xffff_8880_0000_1000),
            b.pointer(0xffff_8880_0000_1000)
        );
    }
}
