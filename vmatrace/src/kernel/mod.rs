//! Kernel-facing introspection: symbols, ftrace, BTF, generation, offsets, probe plan.
//! Everything here parses files; nothing needs root except reading the real /proc files.
//!
//! - [`KernelInfo`]: a kernel's BTF, kallsyms, ftrace list, kprobe blacklist and build
//!   config ([`config::KernelConfig`]: `CONFIG_KPROBE_EVENTS_ON_NOTRACE` decides whether
//!   notrace functions can be kprobed), read from the running system or from files;
//! - [`Capabilities`]: what this process and kernel allow (kprobe PMU, tracing programs);
//! - [`planner::plan`]: the [`plan::ProbePlan`] for a kernel; [`report`] renders it.
//!
//! Typical use: `KernelInfo::from_running_kernel()`, `Capabilities::detect()`, then
//! `caps.probe_tracing_programs(&info)` (or set `tracing_programs` from a real fentry
//! load) and `plan(&info, &caps)`. With `tracing_programs == Some(false)` the planner
//! picks kprobes wherever they work; `Capabilities::assume_all()` plans for a normal
//! root deployment (offline plans of another kernel).

pub mod btf;
pub mod bundle;
pub mod caps;
pub mod config;
pub mod consistency;
pub mod ftrace;
pub mod generation;
pub mod info;
pub mod input;
pub mod offsets;
pub mod plan;
pub mod planner;
pub mod preempt;
pub mod programs;
pub mod report;
pub mod symbolize;
pub mod symbols;
pub mod syscalls;

pub use caps::Capabilities;
pub use info::KernelInfo;
pub use planner::{PlanError, plan, plan_with};
