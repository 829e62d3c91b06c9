//! The per-VMA lock refcount model (see issue "The refcount model").
//!
//! The state machine itself lands here; `generation` says which kernel code it models.

pub mod generation;
pub use generation::Generation;
