//! The shared memory the readers fault on and the writers reshape.
//!
//! Two arenas, both carved into equal slots:
//! - the **direct** arena stays accessible at all times (writers only switch it between
//!   RW and RWX, replace it with fresh mappings, move chunks over it, drop its pages), so
//!   reader threads store into it with plain volatile writes;
//! - the **guarded** arena is unmapped and `PROT_NONE`d by writers, so readers reach it
//!   only through `pwrite()` from it, where the kernel turns a bad address into EFAULT.
//!
//! The whole range of each arena is reserved with one mapping up front, so the writers'
//! MAP_FIXED calls never land on memory the workload does not own.

use std::{
    io,
    sync::atomic::{AtomicBool, Ordering},
};

use super::sys;

pub struct Arena {
    pub base: usize,
    pub slots: usize,
    pub slot_pages: usize,
    pub page: usize,
    /// Guarded arena only: a writer holds a slot while it is between munmap and mmap.
    busy: Vec<AtomicBool>,
    /// Guarded arena only: a slot whose range could not be re-mapped after munmap because
    /// another mapping (a thread stack, a scratch chunk) took part of the hole. Writers
    /// leave a vacant slot's range alone except to try re-mapping it.
    vacant: Vec<AtomicBool>,
}

impl Arena {
    pub fn new(slots: usize, slot_pages: usize) -> io::Result<Self> {
        Self::aligned(slots, slot_pages, 0)
    }

    /// An arena whose base is a multiple of `align` bytes (0: page-aligned), e.g. 2 MiB so
    /// each slot can hold a transparent huge page.
    pub fn aligned(slots: usize, slot_pages: usize, align: usize) -> io::Result<Self> {
        let page = sys::page_size();
        let len = slots * slot_pages * page;
        let base = if align > page {
            // Over-reserve, then trim the unaligned head and the tail.
            let raw = sys::mmap_anon(0, len + align, sys::RW, libc::MAP_NORESERVE)?;
            let base = raw.next_multiple_of(align);
            if base > raw {
                sys::munmap(raw, base - raw)?;
            }
            let tail = raw + len + align - (base + len);
            if tail > 0 {
                sys::munmap(base + len, tail)?;
            }
            base
        } else {
            sys::mmap_anon(0, len, sys::RW, libc::MAP_NORESERVE)?
        };
        Ok(Self {
            base,
            slots,
            slot_pages,
            page,
            busy: (0..slots).map(|_| AtomicBool::new(false)).collect(),
            vacant: (0..slots).map(|_| AtomicBool::new(false)).collect(),
        })
    }

    pub fn pages(&self) -> usize {
        self.slots * self.slot_pages
    }

    pub fn slot_len(&self) -> usize {
        self.slot_pages * self.page
    }

    pub fn slot_addr(&self, slot: usize) -> usize {
        self.base + slot * self.slot_len()
    }

    pub fn page_addr(&self, page: usize) -> usize {
        self.base + page * self.page
    }

    /// Take a slot for exclusive reshaping; `None` when another writer has it.
    pub fn try_claim(&self, slot: usize) -> Option<SlotClaim<'_>> {
        self.busy[slot]
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| SlotClaim { arena: self, slot })
    }

    pub fn is_vacant(&self, slot: usize) -> bool {
        self.vacant[slot].load(Ordering::Relaxed)
    }

    pub fn set_vacant(&self, slot: usize, vacant: bool) {
        self.vacant[slot].store(vacant, Ordering::Relaxed);
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        // Vacant slots may hold someone else's mapping now: unmap slot by slot, skipping them.
        for slot in 0..self.slots {
            if !self.is_vacant(slot) {
                let _ = sys::munmap(self.slot_addr(slot), self.slot_len());
            }
        }
    }
}

pub struct SlotClaim<'a> {
    arena: &'a Arena,
    pub slot: usize,
}

impl Drop for SlotClaim<'_> {
    fn drop(&mut self) {
        self.arena.busy[self.slot].store(false, Ordering::Release);
    }
}
