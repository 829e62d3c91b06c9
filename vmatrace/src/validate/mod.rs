//! The validator: replays observed events per VMA through the refcount model and
//! reports every transition the model does not allow.

pub mod anomaly;
pub mod conformance;
mod evidence;
pub(crate) mod hash;
mod open_calls;
pub mod phase;
pub mod rules;
pub mod validator;

pub use anomaly::{Anomaly, AnomalyKind, Severity};
pub use phase::Phase;
pub use validator::Validator;

#[cfg(test)]
mod tests;
