//! Debian kernel packages through apt, in a private apt state directory.
//!
//! The machine's own apt configuration is reused only for the mirror URI and keyring (read
//! from its sources at run time, so no host name is written into this repository) and for
//! its apt.conf (proxies). Lists, caches and the source list live under
//! `~/.cache/vmatrace/apt`, so the host's apt state is never touched.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};

/// Suites searched for kernels, next to whatever the machine is configured for.
pub const SUITES: &[&str] = &["sid", "experimental", "trixie-backports"];
const DEFAULT_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// A Debian archive as configured on this machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mirror {
    pub uri: String,
    pub keyring: Option<String>,
}

/// Find the main Debian archive in deb822 (`*.sources`) or one-line (`*.list`) sources:
/// the first `deb` entry that is not a security archive.
pub fn find_mirror(sources: &[(PathBuf, String)]) -> Option<Mirror> {
    for (path, text) in sources {
        let found = if path.extension().is_some_and(|e| e == "sources") {
            mirror_deb822(text)
        } else {
            mirror_one_line(text)
        };
        if found.is_some() {
            return found;
        }
    }
    None
}

fn is_main_archive(uri: &str, suites: &str) -> bool {
    !uri.contains("security") && !suites.split_whitespace().any(|s| s.ends_with("-security"))
}

fn mirror_deb822(text: &str) -> Option<Mirror> {
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
        };
        let (Some(types), Some(uris), Some(suites)) =
            (field("Types"), field("URIs"), field("Suites"))
        else {
            continue;
        };
        if !types.split_whitespace().any(|t| t == "deb") {
            continue;
        }
        let Some(uri) = uris.split_whitespace().next() else {
            continue;
        };
        if is_main_archive(uri, &suites) {
            return Some(Mirror {
                uri: uri.to_string(),
                keyring: field("Signed-By").filter(|k| k.starts_with('/')),
            });
        }
    }
    None
}

fn mirror_one_line(text: &str) -> Option<Mirror> {
    for line in text.lines().map(str::trim) {
        let Some(rest) = line.strip_prefix("deb ") else {
            continue;
        };
        let mut keyring = None;
        let rest = match rest.trim_start().strip_prefix('[') {
            Some(opts) => {
                let (opts, after) = opts.split_once(']')?;
                keyring = opts
                    .split_whitespace()
                    .find_map(|o| o.strip_prefix("signed-by="))
                    .map(str::to_string);
                after
            }
            None => rest,
        };
        let mut words = rest.split_whitespace();
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else {
            continue;
        };
        if is_main_archive(uri, suite) {
            return Some(Mirror {
                uri: uri.to_string(),
                keyring,
            });
        }
    }
    None
}

/// Read this machine's apt sources.
pub fn system_sources() -> Vec<(PathBuf, String)> {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(rd) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        more.sort();
        files.extend(more);
    }
    files
        .into_iter()
        .filter_map(|p| fs::read_to_string(&p).ok().map(|t| (p, t)))
        .collect()
}

/// One binary package stanza of a `Packages` index (only what kernel selection needs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    pub package: String,
    pub version: String,
    pub depends: String,
}

/// The stanzas of a `Packages` file whose package name starts with `prefix`.
pub fn parse_packages(text: &str, prefix: &str) -> Vec<IndexEntry> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let mut package = None;
        let mut version = None;
        let mut depends = String::new();
        for line in stanza.lines() {
            if let Some(v) = line.strip_prefix("Package: ") {
                if !v.starts_with(prefix) {
                    break;
                }
                package = Some(v.trim().to_string());
            } else if let Some(v) = line.strip_prefix("Version: ") {
                version = Some(v.trim().to_string());
            } else if let Some(v) = line.strip_prefix("Depends: ") {
                depends = v.trim().to_string();
            }
        }
        if let (Some(package), Some(version)) = (package, version) {
            out.push(IndexEntry {
                package,
                version,
                depends,
            });
        }
    }
    out
}

/// The private apt environment.
pub struct Apt {
    root: PathBuf,
}

impl Apt {
    pub fn new(root: &Path) -> anyhow::Result<Self> {
        for d in [
            "lists/partial",
            "cache/archives/partial",
            "empty",
            "download",
        ] {
            fs::create_dir_all(root.join(d))
                .with_context(|| format!("creating {}", root.join(d).display()))?;
        }
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    /// Write the private source list for `mirror`.
    pub fn configure(&self, mirror: &Mirror) -> anyhow::Result<()> {
        let keyring = mirror
            .keyring
            .clone()
            .unwrap_or_else(|| DEFAULT_KEYRING.to_string());
        let list: String = SUITES
            .iter()
            .map(|s| format!("deb [signed-by={keyring}] {} {s} main\n", mirror.uri))
            .collect();
        let path = self.root.join("sources.list");
        fs::write(&path, list).with_context(|| format!("writing {}", path.display()))
    }

    fn cmd(&self, tool: &str) -> Command {
        let mut c = Command::new(tool);
        let r = |p: &str| self.root.join(p).display().to_string();
        for (k, v) in [
            ("Dir::State::Lists", r("lists")),
            ("Dir::State::status", "/dev/null".to_string()),
            ("Dir::Cache", r("cache")),
            ("Dir::Etc::SourceList", r("sources.list")),
            ("Dir::Etc::SourceParts", r("empty")),
            ("Dir::Etc::Preferences", "/dev/null".to_string()),
            ("Dir::Etc::PreferencesParts", r("empty")),
            ("APT::Architecture", "amd64".to_string()),
            ("APT::Architectures", "amd64".to_string()),
            // Plain Packages files, so we can read them; no translations or AppStream data.
            ("Acquire::GzipIndexes", "false".to_string()),
            ("Acquire::Languages", "none".to_string()),
            (
                "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled",
                "false".to_string(),
            ),
            (
                "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled",
                "false".to_string(),
            ),
            (
                "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled",
                "false".to_string(),
            ),
            (
                "Acquire::IndexTargets::deb::DEP-11-icons-hidpi::DefaultEnabled",
                "false".to_string(),
            ),
            // A sandboxed download user cannot write into a root-owned cache under ~.
            ("APT::Sandbox::User", "root".to_string()),
        ] {
            c.arg("-o").arg(format!("{k}={v}"));
        }
        c
    }

    pub fn update(&self) -> anyhow::Result<()> {
        let out = self
            .cmd("apt-get")
            .args(["-q", "update"])
            .output()
            .context("starting apt-get update")?;
        if !out.status.success() {
            bail!(
                "apt-get update (private state in {}) failed: {}",
                self.root.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Every `linux-` package of the downloaded indexes.
    pub fn kernel_index(&self) -> anyhow::Result<Vec<IndexEntry>> {
        let dir = self.root.join("lists");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let p = e?.path();
            if p.file_name()
                .is_some_and(|n| n.to_string_lossy().ends_with("_Packages"))
            {
                let text =
                    fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
                out.extend(parse_packages(&text, "linux-"));
            }
        }
        Ok(out)
    }

    /// Download `package=version` into the private download dir; returns the .deb path.
    pub fn download(&self, package: &str, version: &str) -> anyhow::Result<PathBuf> {
        let dir = self.root.join("download");
        let out = self
            .cmd("apt-get")
            .current_dir(&dir)
            .args(["-q", "download", &format!("{package}={version}")])
            .output()
            .context("starting apt-get download")?;
        if !out.status.success() {
            bail!(
                "apt-get download {package}={version} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        // apt names the file <package>_<version with ':' escaped>_<arch>.deb.
        let found = fs::read_dir(&dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name().is_some_and(|n| {
                    let n = n.to_string_lossy();
                    n.starts_with(&format!("{package}_")) && n.ends_with(".deb")
                })
            });
        found.with_context(|| {
            format!(
                "apt-get download left no {package}_*.deb in {}",
                dir.display()
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn finds_mirror_in_deb822_skipping_security() {
        let text = "Types: deb\nURIs: http://mirror.invalid/debian-security\nSuites: bookworm-security\nComponents: main\n\n\
                    Types: deb\n# comment\nURIs: http://mirror.invalid/debian\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /k.gpg\n";
        let m = find_mirror(&[(PathBuf::from("/x/debian.sources"), text.to_string())]);
        assert_eq!(
            m,
            Some(Mirror {
                uri: "http://mirror.invalid/debian".into(),
                keyring: Some("/k.gpg".into())
            })
        );
    }

    #[test]
    fn finds_mirror_in_one_line_list() {
        let text = "# x\ndeb http://m.invalid/debian-security bookworm-security main\n\
                    deb [arch=amd64 signed-by=/k.gpg] http://m.invalid/debian bookworm main\n";
        let m = find_mirror(&[(PathBuf::from("/etc/apt/sources.list"), text.to_string())]);
        assert_eq!(
            m,
            Some(Mirror {
                uri: "http://m.invalid/debian".into(),
                keyring: Some("/k.gpg".into())
            })
        );
        assert_eq!(
            find_mirror(&[(PathBuf::from("/a.list"), "deb-src http://x y main".into())]),
            None
        );
    }

    #[test]
    fn parses_packages_stanzas() {
        let text = "Package: linux-image-7.3.4+deb13-cloud-amd64\nSource: linux-signed-amd64\nVersion: 7.3.4-1~bpo13+1\n\
                    Depends: linux-base-7.3.4+deb13-cloud-amd64 (= 7.3.4-1~bpo13+1), linux-binary-7.3.4+deb13-cloud-amd64\n\n\
                    Package: zsh\nVersion: 5\n\nPackage: linux-base-7.3.4+deb13-cloud-amd64\nVersion: 7.3.4-1~bpo13+1\n";
        let e = parse_packages(text, "linux-");
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].version, "7.3.4-1~bpo13+1");
        assert!(
            e[0].depends
                .contains("linux-binary-7.3.4+deb13-cloud-amd64")
        );
        assert_eq!(e[1].package, "linux-base-7.3.4+deb13-cloud-amd64");
        assert!(e[1].depends.is_empty());
    }
}
