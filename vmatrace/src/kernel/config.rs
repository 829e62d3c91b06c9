//! The kernel's build configuration (`/proc/config.gz`, `/boot/config-$(uname -r)`, or a
//! file given offline). Only a few options change what the planner may attach; the rest
//! of the file is parsed but not interpreted.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;

pub const PROC_CONFIG_GZ: &str = "/proc/config.gz";

/// The options the planner and `vmatrace probes` look at.
pub const INTERESTING: &[&str] = &[
    "KPROBE_EVENTS_ON_NOTRACE",
    "KPROBES",
    "KPROBE_EVENTS",
    "FPROBE",
    "DEBUG_INFO_BTF",
];

/// One option's value. `# CONFIG_X is not set` and an absent line both mean `NotSet`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigValue {
    Yes,
    Module,
    NotSet,
    /// A string or number option, as written (quotes kept).
    Other(String),
}

/// A parsed kernel config, plus where it came from (shown in plan notes).
#[derive(Clone, Debug)]
pub struct KernelConfig {
    pub source: String,
    values: BTreeMap<String, ConfigValue>,
}

impl KernelConfig {
    /// Parse the text of a `.config`. Names are stored without the `CONFIG_` prefix.
    /// Unknown lines are an error: a file that is not a kernel config must not be read as
    /// "every option not set".
    pub fn parse(text: &str, source: impl Into<String>) -> anyhow::Result<KernelConfig> {
        let mut values = BTreeMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# CONFIG_") {
                if let Some(name) = rest.strip_suffix(" is not set") {
                    values.insert(name.to_string(), ConfigValue::NotSet);
                }
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let (name, value) = line
                .strip_prefix("CONFIG_")
                .and_then(|l| l.split_once('='))
                .with_context(|| format!("line {}: not a kernel config line: {line:?}", n + 1))?;
            let value = match value {
                "y" => ConfigValue::Yes,
                "m" => ConfigValue::Module,
                "n" => ConfigValue::NotSet,
                v => ConfigValue::Other(v.to_string()),
            };
            values.insert(name.to_string(), value);
        }
        if values.is_empty() {
            anyhow::bail!("no CONFIG_ lines: not a kernel config");
        }
        Ok(KernelConfig {
            source: source.into(),
            values,
        })
    }

    /// Read a config file: plain text, gzip (`/proc/config.gz`) or zstd.
    pub fn read(path: &Path) -> anyhow::Result<KernelConfig> {
        let text = super::input::read_capped_text(path, super::input::CONFIG)?;
        KernelConfig::parse(&text, path.display().to_string())
            .with_context(|| format!("{}: bad kernel config", path.display()))
    }

    /// `name` without the `CONFIG_` prefix. An option the file does not mention is not set.
    pub fn get(&self, name: &str) -> &ConfigValue {
        self.values.get(name).unwrap_or(&ConfigValue::NotSet)
    }

    pub fn is_enabled(&self, name: &str) -> bool {
        matches!(self.get(name), ConfigValue::Yes | ConfigValue::Module)
    }

    /// `KPROBES=y, FPROBE=not set, ...` for the options in [`INTERESTING`].
    pub fn summary(&self) -> String {
        INTERESTING
            .iter()
            .map(|name| {
                let v = match self.get(name) {
                    ConfigValue::Yes => "y",
                    ConfigValue::Module => "m",
                    ConfigValue::NotSet => "not set",
                    ConfigValue::Other(s) => s.as_str(),
                };
                format!("{name}={v}")
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBIAN: &str = "\
#
# Automatically generated file; DO NOT EDIT.
CONFIG_KPROBES=y
CONFIG_LOCALVERSION=\"\"
# CONFIG_KPROBE_EVENTS_ON_NOTRACE is not set
CONFIG_FPROBE=m
";

    #[test]
    fn parses_set_unset_and_absent() {
        let c = KernelConfig::parse(DEBIAN, "t").unwrap();
        assert_eq!(c.get("KPROBES"), &ConfigValue::Yes);
        assert!(c.is_enabled("FPROBE"));
        assert!(!c.is_enabled("KPROBE_EVENTS_ON_NOTRACE"));
        assert_eq!(c.get("DEBUG_INFO_BTF"), &ConfigValue::NotSet);
        assert_eq!(c.get("LOCALVERSION"), &ConfigValue::Other("\"\"".into()));
        assert_eq!(
            c.summary(),
            "KPROBE_EVENTS_ON_NOTRACE=not set, KPROBES=y, KPROBE_EVENTS=not set, FPROBE=m, \
             DEBUG_INFO_BTF=not set"
        );
    }

    #[test]
    fn rejects_what_is_not_a_config() {
        assert!(KernelConfig::parse("ffffffff81000000 T _stext\n", "t").is_err());
        assert!(KernelConfig::parse("# only comments\n", "t").is_err());
    }

    #[test]
    fn reads_gzip_and_reports_corruption() {
        use std::io::Write as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.gz");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(DEBIAN.as_bytes()).unwrap();
        let bytes = gz.finish().unwrap();
        std::fs::write(&path, &bytes).unwrap();
        assert!(KernelConfig::read(&path).unwrap().is_enabled("KPROBES"));
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let err = format!("{:#}", KernelConfig::read(&path).unwrap_err());
        assert!(err.contains("corrupt gzip"), "{err}");
    }
}
