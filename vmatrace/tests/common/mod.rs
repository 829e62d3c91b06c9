//! Shared by the integration tests (each declares `pub mod common;` so nothing is dead).
pub mod plans;
