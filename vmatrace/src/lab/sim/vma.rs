//! Simulated `vm_area_struct` objects and their slab.
//!
//! The VMA slab is `SLAB_TYPESAFE_BY_RCU` since 6.15: a freed object may be handed to
//! another mm at once while RCU readers still hold a pointer to it, so readers must cope
//! with a refcount of 0 (`inc_not_zero` fails) or a foreign `vm_mm`. The simulated slab
//! never releases memory either: objects live for the whole run and are recycled LIFO
//! (hot objects first, like a slab freelist), which makes reuse races frequent.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};

/// Where the fake slab starts: a direct-map address, as `kmem_cache_alloc` would return.
pub const VMA_SLAB_BASE: u64 = 0xffff_8881_0a40_0000;
/// `sizeof(struct vm_area_struct)` on Debian cloud-amd64 builds
/// (`docs/protocol.md#struct-offsets`).
pub const VMA_OBJECT_SIZE: u64 = 192;
/// `vma_lock_init()` sets `vm_lock_seq` to `UINT_MAX`.
pub const VM_LOCK_SEQ_INIT: u32 = u32::MAX;
/// `VM_READ | VM_WRITE | VM_MAYREAD | VM_MAYWRITE` (an anonymous private mapping).
pub const VM_FLAGS_ANON_RW: u64 = 0x73;

pub struct SimVma {
    /// `vma->vm_refcnt.refs`
    pub vm_refcnt: AtomicU32,
    /// `vma->vm_lock_seq`
    pub vm_lock_seq: AtomicU32,
    /// `vma->vm_mm` (the fake address of the owning mm).
    pub vm_mm: AtomicU64,
    pub vm_start: AtomicU64,
    pub vm_end: AtomicU64,
    pub vm_flags: AtomicU64,
    /// Not a kernel field: tasks that currently own a reader reference, kept by the
    /// simulator to check the refcount against an independent count.
    pub holders: AtomicU32,
    /// Not a kernel field: a fault was injected on this object since its allocation.
    /// One fault per object lifetime: after a fault its history is corrupt, and a
    /// validator may rightly report only the first violation of an object.
    pub faulted: AtomicBool,
    /// Not a kernel field: the write exclusion's `ExcludeExit` (readers excluded) is in
    /// the ring and the flag is still set. Changed only with the ring held.
    pub excluded_visible: AtomicBool,
    /// Not a kernel field: the sequence of the last `WriteLockExit` (success) in the
    /// ring. Changed only with the ring held.
    pub locked_visible_seq: AtomicU32,
}

impl SimVma {
    fn new() -> Self {
        Self {
            vm_refcnt: AtomicU32::new(0),
            vm_lock_seq: AtomicU32::new(VM_LOCK_SEQ_INIT),
            vm_mm: AtomicU64::new(0),
            vm_start: AtomicU64::new(0),
            vm_end: AtomicU64::new(0),
            vm_flags: AtomicU64::new(0),
            holders: AtomicU32::new(0),
            faulted: AtomicBool::new(false),
            excluded_visible: AtomicBool::new(false),
            locked_visible_seq: AtomicU32::new(VM_LOCK_SEQ_INIT),
        }
    }
}

/// The `vm_area_cachep` stand-in. Index `i` is the object at `VMA_SLAB_BASE + i * 192`.
pub struct Slab {
    objects: Box<[SimVma]>,
    free: Mutex<Vec<u32>>,
}

impl Slab {
    pub fn new(capacity: u32) -> Self {
        Self {
            objects: (0..capacity).map(|_| SimVma::new()).collect(),
            // Reversed so that index 0 is handed out first.
            free: Mutex::new((0..capacity).rev().collect()),
        }
    }

    pub fn get(&self, idx: u32) -> &SimVma {
        // Indices only come from `alloc` (or from the tree, which stores them), so they
        // are in range; fall back to object 0 rather than panic if that ever breaks.
        self.objects
            .get(idx as usize)
            .unwrap_or_else(|| &self.objects[0])
    }

    pub fn addr(idx: u32) -> u64 {
        VMA_SLAB_BASE + u64::from(idx) * VMA_OBJECT_SIZE
    }

    /// Take an object off the freelist (`kmem_cache_alloc`); `None` when exhausted.
    pub fn alloc(&self) -> Option<u32> {
        self.free.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    /// Return an object (`kmem_cache_free`). RCU readers may still look at it.
    pub fn free(&self, idx: u32) {
        self.free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(idx);
    }

    pub fn capacity(&self) -> usize {
        self.objects.len()
    }

    /// Objects currently allocated.
    pub fn in_use(&self) -> usize {
        self.capacity() - self.free.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slab_reuses_freed_objects_first() {
        let s = Slab::new(3);
        let a = s.alloc().unwrap();
        let b = s.alloc().unwrap();
        assert_ne!(a, b);
        s.free(a);
        assert_eq!(s.alloc(), Some(a), "LIFO reuse, like a slab freelist");
        assert_eq!(s.in_use(), 2);
        assert!(s.alloc().is_some());
        assert_eq!(s.alloc(), None, "exhaustion is reported, not a panic");
        assert_eq!(Slab::addr(1) - Slab::addr(0), VMA_OBJECT_SIZE);
    }
}
