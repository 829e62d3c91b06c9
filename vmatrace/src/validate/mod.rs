//! The validator: replays observed events per VMA through the refcount model and
//! reports every transition the model does not allow.

pub mod anomaly;
pub mod validator;

pub use anomaly::{Anomaly, AnomalyKind, Severity};
pub use validator::Validator;
