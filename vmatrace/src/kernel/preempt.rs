//! The kernel's preemption model: whether a task can be preempted inside an fentry/fexit
//! program.
//!
//! A tracing program runs with migration disabled but preemptible on `full`, `lazy` and
//! RT kernels; a task preempted inside one leaves the program active on its CPU, and the
//! kernel skips every other run of it there until the task resumes (counted as the
//! program's recursion misses, which vmatrace reports as losses). kprobe programs run
//! with preemption disabled. So the model says how lossy fentry/fexit can be.
//!
//! Sources, best first: `/sys/kernel/debug/sched/preempt` (the current mode of a
//! `PREEMPT_DYNAMIC` kernel: `none voluntary (full) lazy`), `/sys/kernel/realtime` (1 on
//! `PREEMPT_RT`), the build config, the version string (`uname -v`: `SMP PREEMPT_DYNAMIC`,
//! `PREEMPT_RT`, `PREEMPT_LAZY`). A dynamic kernel whose debugfs is not readable has the
//! config's default mode, which a boot parameter may have changed: said so.

use serde::Serialize;

use super::config::KernelConfig;

pub const SCHED_PREEMPT: &str = "/sys/kernel/debug/sched/preempt";
pub const REALTIME: &str = "/sys/kernel/realtime";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PreemptModel {
    None,
    Voluntary,
    Full,
    Lazy,
    Rt,
}

impl PreemptModel {
    pub const fn key(self) -> &'static str {
        match self {
            PreemptModel::None => "none",
            PreemptModel::Voluntary => "voluntary",
            PreemptModel::Full => "full",
            PreemptModel::Lazy => "lazy",
            PreemptModel::Rt => "rt",
        }
    }

    /// Whether a task can be preempted while it runs kernel code, so inside a tracing
    /// program (`full`, `lazy`, RT).
    pub const fn preempts_kernel_code(self) -> bool {
        matches!(
            self,
            PreemptModel::Full | PreemptModel::Lazy | PreemptModel::Rt
        )
    }

    fn from_key(k: &str) -> Option<PreemptModel> {
        Some(match k {
            "none" => PreemptModel::None,
            "voluntary" => PreemptModel::Voluntary,
            "full" => PreemptModel::Full,
            "lazy" => PreemptModel::Lazy,
            _ => return None,
        })
    }
}

/// The model and how it was found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Preemption {
    /// `None`: no source said.
    pub model: Option<PreemptModel>,
    /// Selectable at boot or run time (`PREEMPT_DYNAMIC`), when known.
    pub dynamic: Option<bool>,
    /// Where the answer comes from, in words.
    pub source: String,
}

/// What the sources hold (each `None` when unreadable or not given).
#[derive(Clone, Copy, Debug, Default)]
pub struct Sources<'a> {
    /// `/sys/kernel/debug/sched/preempt`.
    pub sched_preempt: Option<&'a str>,
    /// `/sys/kernel/realtime`.
    pub realtime: Option<&'a str>,
    pub config: Option<&'a KernelConfig>,
    /// `/proc/sys/kernel/version` (`uname -v`).
    pub version: Option<&'a str>,
}

/// The current mode in `/sys/kernel/debug/sched/preempt`: the parenthesised word.
pub fn parse_sched_preempt(text: &str) -> Option<PreemptModel> {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix('(')?.strip_suffix(')'))
        .and_then(PreemptModel::from_key)
}

fn from_config(c: &KernelConfig) -> Option<PreemptModel> {
    if c.is_enabled("PREEMPT_RT") {
        Some(PreemptModel::Rt)
    } else if c.is_enabled("PREEMPT_LAZY") {
        Some(PreemptModel::Lazy)
    } else if c.is_enabled("PREEMPT") {
        Some(PreemptModel::Full)
    } else if c.is_enabled("PREEMPT_VOLUNTARY") {
        Some(PreemptModel::Voluntary)
    } else if c.is_enabled("PREEMPT_NONE") {
        Some(PreemptModel::None)
    } else {
        None
    }
}

fn from_version(v: &str) -> Option<PreemptModel> {
    let words: Vec<&str> = v.split_whitespace().collect();
    if words.contains(&"PREEMPT_RT") {
        Some(PreemptModel::Rt)
    } else if words.contains(&"PREEMPT_LAZY") {
        Some(PreemptModel::Lazy)
    } else if words.contains(&"PREEMPT") {
        Some(PreemptModel::Full)
    } else {
        None
    }
}

pub fn detect(s: Sources<'_>) -> Preemption {
    let dynamic = s
        .config
        .map(|c| c.is_enabled("PREEMPT_DYNAMIC"))
        .or_else(|| s.version.map(|v| v.contains("PREEMPT_DYNAMIC")));
    if let Some(m) = s.sched_preempt.and_then(parse_sched_preempt) {
        return Preemption {
            model: Some(m),
            dynamic: Some(true),
            source: SCHED_PREEMPT.into(),
        };
    }
    if s.realtime.is_some_and(|r| r.trim() == "1") {
        return Preemption {
            model: Some(PreemptModel::Rt),
            dynamic,
            source: REALTIME.into(),
        };
    }
    let caveat = if dynamic == Some(true) {
        "; PREEMPT_DYNAMIC: the boot's preempt= may differ (read /sys/kernel/debug/sched/preempt as root)"
    } else {
        ""
    };
    if let Some(m) = s.config.and_then(from_config) {
        return Preemption {
            model: Some(m),
            dynamic,
            source: format!("kernel config default{caveat}"),
        };
    }
    if let Some(m) = s.version.and_then(from_version) {
        return Preemption {
            model: Some(m),
            dynamic,
            source: format!("kernel version string{caveat}"),
        };
    }
    Preemption {
        model: None,
        dynamic,
        source: "no readable source (sched/preempt, realtime, config, version)".into(),
    }
}

impl Preemption {
    /// One line for `probes` and the plan's notes.
    pub fn describe(&self) -> String {
        match self.model {
            Some(m) if m.preempts_kernel_code() => format!(
                "preemption: {} ({}): a task preempted inside an fentry/fexit program makes \
                 the kernel skip that program's other runs on its CPU until it resumes \
                 (counted as losses: `*_runs_skipped`); kprobe programs run with preemption \
                 disabled",
                m.key(),
                self.source
            ),
            Some(m) => format!(
                "preemption: {} ({}): kernel code is not preempted, fentry/fexit runs are \
                 skipped only on real recursion",
                m.key(),
                self.source
            ),
            None => format!("preemption: unknown ({})", self.source),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> KernelConfig {
        KernelConfig::parse(text, "test").expect("config")
    }

    #[test]
    fn the_dynamic_mode_in_debugfs_wins() {
        assert_eq!(
            parse_sched_preempt("none voluntary full (lazy)\n"),
            Some(PreemptModel::Lazy)
        );
        assert_eq!(
            parse_sched_preempt("none voluntary (full) lazy"),
            Some(PreemptModel::Full)
        );
        assert_eq!(parse_sched_preempt("none voluntary full lazy"), None);
        let c = config("CONFIG_PREEMPT_VOLUNTARY=y\nCONFIG_PREEMPT_DYNAMIC=y\n");
        let p = detect(Sources {
            sched_preempt: Some("none voluntary full (lazy)"),
            config: Some(&c),
            ..Sources::default()
        });
        assert_eq!((p.model, p.dynamic), (Some(PreemptModel::Lazy), Some(true)));
        assert!(
            p.describe()
                .starts_with("preemption: lazy (/sys/kernel/debug/sched/preempt)")
        );
    }

    #[test]
    fn rt_config_and_version_fall_back_in_order() {
        let p = detect(Sources {
            realtime: Some("1\n"),
            ..Sources::default()
        });
        assert_eq!(p.model, Some(PreemptModel::Rt));
        let c = config("CONFIG_PREEMPT_VOLUNTARY=y\nCONFIG_PREEMPT_DYNAMIC=y\n");
        let p = detect(Sources {
            config: Some(&c),
            version: Some("#1 SMP PREEMPT_DYNAMIC Debian 7.3.4-1"),
            ..Sources::default()
        });
        assert_eq!(p.model, Some(PreemptModel::Voluntary));
        assert!(
            p.source
                .contains("PREEMPT_DYNAMIC: the boot's preempt= may differ")
        );
        assert!(!p.describe().contains("skip that program"));
        let p = detect(Sources {
            version: Some("#1 SMP PREEMPT_RT Debian 7.3.4-1"),
            ..Sources::default()
        });
        assert_eq!(p.model, Some(PreemptModel::Rt));
        assert!(
            p.describe()
                .contains("kprobe programs run with preemption disabled")
        );
        let p = detect(Sources {
            version: Some("#1 SMP Debian"),
            ..Sources::default()
        });
        assert_eq!(p.model, None);
        assert!(p.describe().starts_with("preemption: unknown"));
    }
}
