//! What leaves the process: the anomaly log (JSON Lines), the exit summary and its
//! snapshots while a session runs, the Prometheus metrics made from them, and the
//! redaction of kernel addresses they share.

pub mod anomaly_log;
pub mod clock;
pub mod event_json;
pub mod metrics;
pub mod metrics_server;
pub mod redact;
pub mod run_identity;
pub mod snapshots;
pub mod summary;
pub mod text;
pub mod units;

pub use anomaly_log::{AnomalyLogSink, JsonLinesFile, LogContext, LogStats, Rotation};
pub use redact::Redactor;
pub use text::printable;

#[cfg(test)]
mod tests;
