//! Kernel-facing introspection: symbols, ftrace, BTF, generation, offsets, probe plan.
//! Everything here parses files; nothing needs root except reading the real /proc files.

pub mod plan;
pub mod programs;
