//! BPF arrays read (and, to free a slot, written) through mmap instead of `bpf()`
//! lookups: a lookup raises its CPU's `bpf_prog_active` with preemption enabled, so a
//! daemon preempted inside one makes the kernel skip every kprobe program run on that CPU
//! until it resumes. The VM matrix lost 1 350 runs that way in one oversubscribed run
//! while the counters and `READER_FALLBACKS` were read once a second.

use std::{
    io,
    marker::PhantomData,
    os::fd::{AsFd as _, AsRawFd},
    ptr::NonNull,
};

use aya::maps::MapData;
use vmatrace_common::event::ReaderFallbacks;

/// The possible CPU ids' bound (`nr_cpu_ids`: the highest possible CPU + 1), from
/// `/sys/devices/system/cpu/possible` (`0-3`, `0,2-5`): the rows a per-CPU-row array
/// needs, since `bpf_get_smp_processor_id()` is below it.
pub fn cpu_rows() -> io::Result<u32> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible")?;
    parse_cpu_rows(text.trim()).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unreadable CPU list {text:?} in /sys/devices/system/cpu/possible"),
        )
    })
}

fn parse_cpu_rows(list: &str) -> Option<u32> {
    let mut top = None;
    for part in list.split(',') {
        let last = part.rsplit('-').next()?.trim().parse::<u32>().ok()?;
        top = top.max(Some(last));
    }
    top?.checked_add(1)
}

/// An `Array<T>` created with `BPF_F_MMAPABLE`, mapped shared for reading and writing.
/// Slots are read and written with volatile accesses of the whole value: the programs
/// update them concurrently, so a read may see a slot half-updated (a counter read
/// while it is bumped is one off, which the next snapshot corrects).
pub struct MappedArray<T> {
    base: NonNull<T>,
    len: usize,
    bytes: usize,
    /// Keeps the map (and its fd) alive as long as the mapping.
    _map: MapData,
    _t: PhantomData<T>,
}

// SAFETY: the mapping is plain shared memory owned by this value; every access is a
// volatile copy of a `Copy` value.
unsafe impl<T: Copy + Send> Send for MappedArray<T> {}
// SAFETY: as above; `free` races only with the programs, never corrupts the mapping.
unsafe impl<T: Copy + Sync> Sync for MappedArray<T> {}

impl<T: Copy> MappedArray<T> {
    /// Map every slot of `map`, an array of `T` with `BPF_F_MMAPABLE`.
    pub fn new(map: MapData) -> io::Result<Self> {
        let size = std::mem::size_of::<T>();
        // The kernel rounds array elements up to 8 bytes; the mapping must agree.
        if size == 0 || !size.is_multiple_of(8) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("array element of {size} bytes is not a multiple of 8"),
            ));
        }
        let info = map.info().map_err(io::Error::other)?;
        if info.value_size() as usize != size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the map's values are {} bytes, not {size}",
                    info.value_size()
                ),
            ));
        }
        let len = info.max_entries() as usize;
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .ok()
            .filter(|p| p.is_power_of_two())
            .unwrap_or(4096);
        let bytes = (len * size).div_ceil(page).max(1) * page;
        // SAFETY: a fresh shared mapping of the map's fd at offset 0, of the size the
        // kernel allows for it (values rounded up to a page); checked for failure.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base =
            NonNull::new(ptr.cast::<T>()).ok_or_else(|| io::Error::other("mmap gave NULL"))?;
        Ok(Self {
            base,
            len,
            bytes,
            _map: map,
            _t: PhantomData,
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Slot `i`, or `None` past the end.
    pub fn get(&self, i: usize) -> Option<T> {
        // SAFETY: `i` is within the mapped slots; T is Copy.
        (i < self.len).then(|| unsafe { self.base.as_ptr().add(i).read_volatile() })
    }
}

impl MappedArray<ReaderFallbacks> {
    /// Free slot `i` of `READER_FALLBACKS` (its process is gone): the count first, the
    /// tgid last, so a program that meets the slot meanwhile still sees it taken.
    pub fn free(&self, i: usize) {
        if i < self.len {
            // SAFETY: within the mapped slots; field-wise volatile stores.
            unsafe {
                let p = self.base.as_ptr().add(i);
                std::ptr::addr_of_mut!((*p).count).write_volatile(0);
                std::ptr::addr_of_mut!((*p).tgid).write_volatile(0);
            }
        }
    }
}

impl<T> Drop for MappedArray<T> {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `new` mapped; nothing refers to it afterwards.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_rows_cover_the_highest_possible_cpu() {
        assert_eq!(parse_cpu_rows("0"), Some(1));
        assert_eq!(parse_cpu_rows("0-3"), Some(4));
        // Sparse: the ids, not the count.
        assert_eq!(parse_cpu_rows("0,2-5"), Some(6));
        assert_eq!(parse_cpu_rows("0-1,8"), Some(9));
        assert_eq!(parse_cpu_rows(""), None);
        assert_eq!(parse_cpu_rows("0-x"), None);
    }

    /// Written through `bpf()`, read through the mapping, freed through it, read back
    /// through `bpf()`: both views are the same memory.
    #[test]
    fn the_mapping_is_the_maps_memory() {
        use aya::maps::{Array, IterableMap as _};
        use vmatrace_common::counters::BPF_F_MMAPABLE;
        let mut arr = match Array::<MapData, ReaderFallbacks>::create(3, BPF_F_MMAPABLE) {
            Ok(a) => a,
            Err(e) => {
                eprintln!(
                    "SKIP the_mapping_is_the_maps_memory: cannot create a BPF map here ({e}); the VM matrix maps COUNTERS and READER_FALLBACKS on every kernel"
                );
                return;
            }
        };
        let slot = ReaderFallbacks {
            tgid: 7,
            pad: 0,
            count: 42,
            comm: [b'x'; 16],
        };
        arr.set(2, slot, 0).expect("bpf() update");
        let id = arr.map().info().expect("map info").id();
        let mapped = MappedArray::<ReaderFallbacks>::new(MapData::from_id(id).expect("by id"))
            .expect("mmap");
        assert_eq!(mapped.len(), 3);
        assert_eq!(mapped.get(2), Some(slot));
        assert_eq!(mapped.get(0), Some(ReaderFallbacks::default()));
        assert_eq!(mapped.get(3), None);
        mapped.free(2);
        let back = arr.get(&2, 0).expect("bpf() lookup");
        assert_eq!((back.tgid, back.count, back.comm), (0, 0, [b'x'; 16]));
        // A map without BPF_F_MMAPABLE cannot be mapped: a clear error, no mapping.
        let plain = Array::<MapData, u64>::create(2, 0).expect("plain array");
        let id = plain.map().info().expect("map info").id();
        assert!(MappedArray::<u64>::new(MapData::from_id(id).expect("by id")).is_err());
        // Element size checked against the map's.
        let id = arr.map().info().expect("map info").id();
        assert!(MappedArray::<u64>::new(MapData::from_id(id).expect("by id")).is_err());
    }

    #[test]
    fn this_machine_has_a_cpu_list() {
        let rows = cpu_rows().expect("/sys/devices/system/cpu/possible");
        assert!(rows >= 1);
    }
}
