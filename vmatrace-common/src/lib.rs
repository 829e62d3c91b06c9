//! Types shared by the eBPF programs and the userspace daemon, plus the refcount
//! model of the per-VMA lock.
//!
//! Everything here is `#![no_std]` so the eBPF crate can use it; userspace enables the
//! `user` feature for `aya::Pod` impls, `std` for formatting helpers and `serde` for the
//! serde forms of the types the trace header and the probe plan store.
#![no_std]

#[cfg(feature = "std")]
extern crate std;

pub mod counters;
pub mod event;
pub mod globals;
pub mod model;
#[cfg(feature = "serde")]
mod serde_forms;

pub use counters::Counter;
pub use event::{Event, EventKind};
pub use globals::{OFFSET_ABSENT, Offsets, ProgramConfig};
