//! Trace files: record a live session, replay it offline through the same pipeline.
//!
//! Layout in [`format`] and `docs/trace-format.md`. [`TraceWriter`] writes, [`TraceReader`]
//! reads and validates (every problem is a [`TraceError`] with a byte offset),
//! [`Recorder`] is the pipeline sink that records a live session, and [`replay`] turns a
//! reader into a pipeline source (as fast as possible, at recorded pace, or following a
//! growing stream).

pub mod format;
pub mod reader;
pub mod recorder;
pub mod replay;
pub mod sequence;
pub mod writer;

pub use format::{ClockBase, FilterInfo, HookRecord, Record, TraceError, TraceHeader};
pub use reader::{ReadOptions, TraceReader};
pub use recorder::{Recorder, RecordingStatus};
pub use replay::{ReplayOptions, ReplayOutcome};
pub use sequence::SequenceLosses;
pub use writer::TraceWriter;

#[cfg(test)]
mod tests;
