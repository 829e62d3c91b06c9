//! Types shared by the eBPF programs and the userspace daemon, plus the refcount
//! model of the per-VMA lock.
//!
//! Everything here is `#![no_std]` so the eBPF crate can use it; userspace enables the
//! `user` feature for `aya::Pod` impls and `std` for formatting helpers.
#![no_std]

#[cfg(feature = "std")]
extern crate std;

pub mod counters;
pub mod event;
pub mod globals;
pub mod model;

pub use counters::Counter;
pub use event::{Event, EventKind};
pub use globals::{OFFSET_ABSENT, Offsets, ProgramConfig};
