//! Writer threads: every operation here write-locks VMAs of the arenas while readers
//! fault on them (`vma_start_write`), and many detach VMAs (`vma_mark_detached` /
//! `__vma_exclude_readers_for_detach`): MAP_FIXED replacement, munmap, mremap over a slot.
//! Partial-slot ranges make the kernel split VMAs; undoing the change merges them again.

use std::{
    io,
    sync::atomic::{AtomicBool, Ordering},
};

use super::{Shared, arena::Arena, ops::Op, rng::Rng, sys};

pub fn run(shared: &Shared, stop: &AtomicBool, seed: u64) {
    let mut rng = Rng::new(seed);
    while !stop.load(Ordering::Relaxed) {
        let r = match rng.below(9) {
            0 | 1 => mprotect_toggle(shared, &mut rng),
            2 => mmap_replace(shared, &mut rng),
            3 => mremap_over(shared, &mut rng),
            4 => mremap_grow(shared),
            5 => madvise(shared, &mut rng),
            6 => huge_reshape(shared, &mut rng),
            _ => guarded_cycle(shared, &mut rng),
        };
        if let Err((op, e)) = r {
            shared.error(op, &e);
        }
    }
}

type OpResult = Result<(), (Op, io::Error)>;

fn tag(op: Op) -> impl Fn(io::Error) -> (Op, io::Error) {
    move |e| (op, e)
}

/// A random page-aligned sub-range of a slot: `(addr, len)`, at least one page, usually
/// not the whole slot (so the kernel has to split the VMA).
fn sub_range(a: &Arena, slot: usize, rng: &mut Rng) -> (usize, usize) {
    let first = rng.below(a.slot_pages);
    let pages = 1 + rng.below(a.slot_pages - first);
    (a.slot_addr(slot) + first * a.page, pages * a.page)
}

fn mprotect_toggle(s: &Shared, rng: &mut Rng) -> OpResult {
    let a = &s.direct;
    let (addr, len) = sub_range(a, rng.below(a.slots), rng);
    sys::mprotect(addr, len, sys::RWX).map_err(tag(Op::Mprotect))?;
    sys::mprotect(addr, len, sys::RW).map_err(tag(Op::Mprotect))?;
    s.ops.add(Op::Mprotect, 2);
    Ok(())
}

fn mmap_replace(s: &Shared, rng: &mut Rng) -> OpResult {
    let a = &s.direct;
    let (addr, len) = sub_range(a, rng.below(a.slots), rng);
    let got = sys::mmap_anon(addr, len, sys::RW, libc::MAP_FIXED).map_err(tag(Op::MmapReplace))?;
    debug_assert_eq!(got, addr);
    s.ops.add(Op::MmapReplace, 1);
    Ok(())
}

fn mremap_over(s: &Shared, rng: &mut Rng) -> OpResult {
    let a = &s.direct;
    let (addr, len) = sub_range(a, rng.below(a.slots), rng);
    let chunk = sys::mmap_anon(0, len, sys::RW, libc::MAP_POPULATE).map_err(tag(Op::Mremap))?;
    if let Err(e) = sys::mremap_fixed(chunk, len, addr) {
        let _ = sys::munmap(chunk, len);
        return Err((Op::Mremap, e));
    }
    s.ops.add(Op::Mremap, 1);
    Ok(())
}

fn mremap_grow(s: &Shared) -> OpResult {
    let page = s.direct.page;
    let chunk =
        sys::mmap_anon(0, 2 * page, sys::RW, libc::MAP_POPULATE).map_err(tag(Op::MremapGrow))?;
    let grown = match sys::mremap_grow(chunk, 2 * page, 16 * page) {
        Ok(p) => p,
        Err(e) => {
            let _ = sys::munmap(chunk, 2 * page);
            return Err((Op::MremapGrow, e));
        }
    };
    s.ops.add(Op::MremapGrow, 1);
    sys::munmap(grown, 16 * page).map_err(tag(Op::Munmap))?;
    s.ops.add(Op::Munmap, 1);
    Ok(())
}

fn madvise(s: &Shared, rng: &mut Rng) -> OpResult {
    let a = &s.direct;
    let (addr, len) = sub_range(a, rng.below(a.slots), rng);
    sys::madvise_dontneed(addr, len).map_err(tag(Op::MadviseDontneed))?;
    s.ops.add(Op::MadviseDontneed, 1);
    Ok(())
}

/// Reshape a whole 2 MiB slot while readers may be zeroing a huge page in it. Every
/// variant keeps the slot readable and writable.
fn huge_reshape(s: &Shared, rng: &mut Rng) -> OpResult {
    let a = &s.huge;
    let slot = rng.below(a.slots);
    let (addr, len) = (a.slot_addr(slot), a.slot_len());
    match rng.below(3) {
        0 => {
            sys::mmap_anon(addr, len, sys::RW, libc::MAP_FIXED).map_err(tag(Op::MmapReplace))?;
            sys::madvise_hugepage(addr, len);
            s.ops.add(Op::MmapReplace, 1);
        }
        1 => {
            sys::madvise_dontneed(addr, len).map_err(tag(Op::MadviseDontneed))?;
            s.ops.add(Op::MadviseDontneed, 1);
        }
        _ => {
            sys::mprotect(addr, len, sys::RWX).map_err(tag(Op::Mprotect))?;
            sys::mprotect(addr, len, sys::RW).map_err(tag(Op::Mprotect))?;
            s.ops.add(Op::Mprotect, 2);
        }
    }
    s.ops.add(Op::HugeReshape, 1);
    Ok(())
}

/// Map a vacant guarded slot again. NOREPLACE: if another mapping took part of the hole
/// since the munmap (the kernel is free to place new mappings there), leave it alone, count
/// it, and try again on a later visit.
fn remap_vacant(s: &Shared, a: &Arena, slot: usize) -> OpResult {
    let (addr, len) = (a.slot_addr(slot), a.slot_len());
    match sys::mmap_anon(
        addr,
        len,
        sys::RW,
        libc::MAP_FIXED_NOREPLACE | libc::MAP_POPULATE,
    ) {
        Ok(got) if got == addr => {
            a.set_vacant(slot, false);
            s.ops.add(Op::MmapReplace, 1);
            Ok(())
        }
        Ok(got) => {
            // A kernel that ignores MAP_FIXED_NOREPLACE placed it elsewhere: undo.
            let _ = sys::munmap(got, len);
            s.ops.add(Op::SlotTaken, 1);
            Ok(())
        }
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
            s.ops.add(Op::SlotTaken, 1);
            Ok(())
        }
        Err(e) => Err((Op::MmapReplace, e)),
    }
}

/// Reshape one guarded slot: unmap and re-map it, protect part of it `PROT_NONE` and back,
/// or replace it. Readers copying from it meet EFAULT in between.
fn guarded_cycle(s: &Shared, rng: &mut Rng) -> OpResult {
    let a = &s.guarded;
    let Some(claim) = a.try_claim(rng.below(a.slots)) else {
        return Ok(());
    };
    let (addr, len) = (a.slot_addr(claim.slot), a.slot_len());
    if a.is_vacant(claim.slot) {
        return remap_vacant(s, a, claim.slot);
    }
    match rng.below(3) {
        0 => {
            sys::munmap(addr, len).map_err(tag(Op::Munmap))?;
            s.ops.add(Op::Munmap, 1);
            a.set_vacant(claim.slot, true);
            remap_vacant(s, a, claim.slot)?;
        }
        1 => {
            let (sub, sub_len) = sub_range(a, claim.slot, rng);
            sys::mprotect(sub, sub_len, libc::PROT_NONE).map_err(tag(Op::Mprotect))?;
            sys::mprotect(sub, sub_len, sys::RW).map_err(tag(Op::Mprotect))?;
            s.ops.add(Op::Mprotect, 2);
        }
        _ => {
            sys::mmap_anon(addr, len, sys::RW, libc::MAP_FIXED | libc::MAP_POPULATE)
                .map_err(tag(Op::MmapReplace))?;
            s.ops.add(Op::MmapReplace, 1);
        }
    }
    Ok(())
}
