//! Load-time globals, overridden by the loader (`EbpfLoader::override_global`) before the
//! programs load. They sit in `.rodata`, which aya freezes: the verifier reads them as
//! known constants, so a branch on `OFFSET_ABSENT` or on `GENERATION` is pruned.
//!
//! Fields are read one at a time with volatile loads straight from the global, so each
//! load is a direct read of the frozen map value (a constant to the verifier) and the
//! compiler cannot fold the built-in defaults.

use vmatrace_common::{Offsets, ProgramConfig, globals::MmapLockTpOffsets};

#[unsafe(no_mangle)]
pub static OFFSETS: Offsets = Offsets::ABSENT;

#[unsafe(no_mangle)]
pub static CONFIG: ProgramConfig = ProgramConfig::DEFAULT;

/// `vmatrace_common::model::Generation as u32` (0 = unknown: generation-specific
/// arguments and return values are not interpreted).
#[unsafe(no_mangle)]
pub static GENERATION: u32 = 0;

#[unsafe(no_mangle)]
pub static MMAP_LOCK_TP: MmapLockTpOffsets = MmapLockTpOffsets::DEFAULT;

/// Generation numbers (`vmatrace_common::model::Generation`).
pub const GEN_6_15: u32 = 1;
pub const GEN_6_19: u32 = 2;
pub const GEN_7_0: u32 = 3;

/// Read one field of a global with a volatile load.
macro_rules! global {
    ($g:ident . $($f:tt).+) => {
        // SAFETY: a field of a static that lives as long as the program.
        unsafe { core::ptr::read_volatile(&raw const $crate::globals::$g.$($f).+) }
    };
    ($g:ident) => {
        // SAFETY: a static that lives as long as the program.
        unsafe { core::ptr::read_volatile(&raw const $crate::globals::$g) }
    };
}
pub(crate) use global;

#[inline(always)]
pub fn generation() -> u32 {
    global!(GENERATION)
}
