//! The daemon pipeline: source → decode → validator → statistics → sinks.

pub mod source;
