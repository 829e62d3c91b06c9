//! The per-VMA lock refcount model (`docs/protocol.md`).
//!
//! - [`generation`]: which kernel code is modelled.
//! - [`refcnt`]: what a sampled `vm_refcnt` means, the wake predicate, start-exclude
//!   results: pure functions the live validator applies to every sample.
//! - [`machine`]: the kernel functions as sequences of atomic steps on one VMA and its
//!   mm, with typed outcomes.
//! - [`explore`] (std): every interleaving of a machine's tasks, the invariants, and
//!   counterexample traces; `vmatrace model --dot` projects it onto an automaton.

#[cfg(feature = "std")]
pub mod automaton;
#[cfg(feature = "std")]
pub mod explore;
pub mod generation;
pub mod machine;
pub mod refcnt;

pub use generation::Generation;
pub use refcnt::{ExcludeResult, RefcntClass};
