//! Types shared by the eBPF programs and the userspace daemon, plus the refcount
//! model of the per-VMA lock.
//!
//! Everything here is `#![no_std]` so the eBPF crate can use it; userspace enables the
//! `user` feature for `aya::Pod` impls and `std` for formatting helpers.
#![no_std]

#[cfg(feature = "std")]
extern crate std;

pub mod config;
pub mod counters;
pub mod event;
pub mod model;

pub use config::{OFFSET_ABSENT, Offsets, ProgramConfig};
pub use counters::Counter;
pub use event::{Event, EventKind};
