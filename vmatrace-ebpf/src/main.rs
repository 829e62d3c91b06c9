#![no_std]
#![no_main]

use aya_ebpf::{macros::kprobe, programs::ProbeContext};

#[kprobe]
pub fn vsw_enter(_ctx: ProbeContext) -> u32 {
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
