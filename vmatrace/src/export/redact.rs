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

/// What a field holds, by the eBPF programs' contract for its event kind (not by the
/// shape of its value: a 5-level-paging direct map starts at `0xff11_0000_0000_0000`,
/// below the range a value test written for 4-level paging looks at).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A kernel pointer: hashed whatever its value; NULL is `null`, and an `ERR_PTR`
    /// (a pointer-typed return carrying `-MAX_ERRNO..-1`) stays a readable errno.
    Pointer,
    /// A number, a flag or a user-space address, or a field the kind leaves unused (or a
    /// kind this build does not know). Kept as a number, except in the kernel half: no
    /// number the programs write lands there, and a trace file is input, so such a
    /// value is hashed rather than trusted.
    Value,
}

/// `MAX_ERRNO` (include/linux/err.h): `ERR_PTR` values are the top 4095 of the space.
const MAX_ERRNO: u64 = 4095;

/// `IS_ERR_VALUE`: a negative errno in a pointer-sized value.
pub fn is_err_value(v: u64) -> bool {
    v >= MAX_ERRNO.wrapping_neg()
}

/// True for values in the kernel half of the address space (bit 63 set: from
/// `0xffff_8000_0000_0000` with 4-level paging, from `0xff00_0000_0000_0000` with
/// 5-level) that are not `ERR_PTR` errnos.
pub fn looks_like_kernel_address(v: u64) -> bool {
    v >> 63 == 1 && !is_err_value(v)
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

    /// An argument (`Event::arg`) of the given role.
    pub fn arg(&self, v: u64, role: Role) -> Value {
        match role {
            Role::Pointer => self.pointer(v),
            Role::Value if looks_like_kernel_address(v) => self.pointer(v),
            Role::Value => Value::from(v),
        }
    }

    /// A return value (`Event::ret`, sign-extended) of the given role: errnos stay
    /// numbers in every role.
    pub fn ret(&self, v: i64, role: Role) -> Value {
        let bits = v as u64;
        match role {
            Role::Pointer if is_err_value(bits) => Value::from(v),
            Role::Pointer => self.pointer(bits),
            Role::Value if looks_like_kernel_address(bits) => self.pointer(bits),
            Role::Value => Value::from(v),
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
        for role in [Role::Pointer, Role::Value] {
            assert_eq!(r.ret(-4, role), Value::from(-4));
            assert_eq!(r.ret(-4095, role), Value::from(-4095));
        }
        assert_eq!(r.ret(0, Role::Value), Value::from(0));
        assert_eq!(r.ret(0, Role::Pointer), Value::Null);
        assert_eq!(
            r.arg(0x7fff_0000_1000, Role::Value),
            Value::from(0x7fff_0000_1000u64)
        );
        // The 5-level user half ends below bit 56: still a user address.
        assert_eq!(
            r.arg(0x00ff_ffff_ffff_f000, Role::Value),
            Value::from(0x00ff_ffff_ffff_f000u64)
        );
    }

    /// 4-level (`0xffff_8…`) and 5-level (`0xff11_…` direct map, `0xff33_…` as seen on a
    /// recording host) kernel pointers are hashed in every pointer-capable position.
    #[test]
    fn kernel_pointers_of_both_paging_layouts_are_hashed() {
        let r = Redactor::with_key(9, 9);
        for p in [
            0xffff_8881_0000_0000u64,
            0xffff_ffff_8100_0000,
            0xff11_0000_0000_1000,
            0xff33_1fd7_4245_8c00,
            0xff00_0000_0000_0000,
            0x8000_0000_0000_0000,
        ] {
            assert!(looks_like_kernel_address(p), "{p:#x}");
            let hashed = |v: Value| v.as_str().is_some_and(|s| s.starts_with("h:"));
            assert!(hashed(r.arg(p, Role::Pointer)), "{p:#x}");
            assert!(hashed(r.arg(p, Role::Value)), "{p:#x}");
            assert!(hashed(r.ret(p as i64, Role::Pointer)), "{p:#x}");
            assert!(hashed(r.ret(p as i64, Role::Value)), "{p:#x}");
        }
        // By role, even a value no test would take for an address is hashed.
        assert!(r.arg(0x1000, Role::Pointer).as_str().is_some());
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
