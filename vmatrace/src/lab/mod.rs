//! The lab: what exercises the per-VMA lock without being part of the tracer.
//!
//! - [`sim`]: the simulated kernel (a userspace port of the lock with real atomics and
//!   threads, fault injection), feeding the same pipeline as a live session
//!   (`vmatrace simulate`).
//! - [`stress`]: the real VMA-lock workload the VM tests trace, and the race widener
//!   (`vmatrace stress`).
//!
//! The product's modules (`kernel`, `live`, `pipeline`, `validate`, ...) never depend on
//! the lab; only the CLI wires it in.

pub mod sim;
pub mod stress;
