//! The kernel matrix: which Debian kernel builds to boot, chosen from the apt index, and
//! the cache of their `vmlinuz` images (`~/.cache/vmatrace/kernels/<abi>-<flavour>/`).

use std::{
    cmp::Ordering,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, bail};

use super::{apt::IndexEntry, debver};

/// One generation of the per-VMA lock code the matrix must cover
/// (`docs/protocol.md#generations`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Generation {
    /// What `--kernel` accepts.
    pub key: &'static str,
    pub why: &'static str,
    pub flavour: &'static str,
    pub major: u32,
    /// Accepted minor versions (newest build among them wins).
    pub minors: &'static [u32],
}

pub const MATRIX: &[Generation] = &[
    Generation {
        key: "6.18",
        why: "vma_mark_detached global, enter/exit-locked inlined",
        flavour: "cloud-amd64",
        major: 6,
        minors: &[18],
    },
    Generation {
        key: "6.19",
        why: "__vma_enter_locked out of line (notrace), killable writers",
        flavour: "cloud-amd64",
        major: 6,
        minors: &[19],
    },
    Generation {
        key: "7-cloud",
        why: "__vma_start_exclude_readers, inline fast detach (7.2/7.3)",
        flavour: "cloud-amd64",
        major: 7,
        minors: &[2, 3],
    },
    Generation {
        key: "7-rt",
        why: "PREEMPT_RT build of 7.x",
        flavour: "rt-amd64",
        major: 7,
        minors: &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
    },
];

/// A bootable kernel build found in the index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelBuild {
    /// ABI name plus flavour, as in the package names: `7.3.4+deb13-cloud-amd64`.
    pub name: String,
    /// Debian package version: `7.3.4-1~bpo13+1`.
    pub version: String,
    /// The package that holds `vmlinuz`.
    pub image_package: String,
}

/// `(major, minor)` of a Debian kernel package version (`7.3.4-1`, `7.3~rc7-1~exp1`).
pub fn upstream_major_minor(version: &str) -> Option<(u32, u32)> {
    let upstream = version.split(['-', '~', '+']).next()?;
    let mut it = upstream.split('.');
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// Every `linux-image-<abi>-<flavour>` in the index (not debug, not meta packages without
/// an ABI), with the package that carries its kernel image.
pub fn builds(index: &[IndexEntry]) -> Vec<KernelBuild> {
    let names: std::collections::HashSet<(&str, &str)> = index
        .iter()
        .map(|e| (e.package.as_str(), e.version.as_str()))
        .collect();
    let mut out = Vec::new();
    for e in index {
        let Some(name) = e.package.strip_prefix("linux-image-") else {
            continue;
        };
        // ABI names start with a digit; `linux-image-cloud-amd64` is a meta package.
        if !name.starts_with(|c: char| c.is_ascii_digit())
            || name.ends_with("-dbg")
            || name.ends_with("-unsigned")
        {
            continue;
        }
        // Newer builds split the image out: prefer the unsigned binary (smaller, same
        // kernel), then the signed one; older builds carry vmlinuz themselves.
        let unsigned = format!("linux-binary-unsigned-{name}");
        let signed = format!("linux-binary-{name}");
        let image_package = if !e.depends.contains(&signed) {
            e.package.clone()
        } else if names.contains(&(unsigned.as_str(), e.version.as_str())) {
            unsigned
        } else {
            signed
        };
        out.push(KernelBuild {
            name: name.to_string(),
            version: e.version.clone(),
            image_package,
        });
    }
    out.sort_by(|a, b| {
        a.name
            .cmp(&b.name)
            .then_with(|| debver::compare(&a.version, &b.version))
    });
    out.dedup_by(|later, earlier| {
        // Same build listed by several suites: keep the newest version.
        if later.name == earlier.name {
            *earlier = later.clone();
            true
        } else {
            false
        }
    });
    out
}

/// The newest build of a generation.
pub fn newest<'a>(builds: &'a [KernelBuild], g: &Generation) -> Option<&'a KernelBuild> {
    builds
        .iter()
        .filter(|b| b.name.ends_with(&format!("-{}", g.flavour)))
        .filter(|b| {
            // The flavour suffix must be the whole rest: `-cloud-amd64` is not `-amd64`.
            let abi = &b.name[..b.name.len() - g.flavour.len() - 1];
            !abi.contains('-')
        })
        .filter(|b| {
            upstream_major_minor(&b.version)
                .is_some_and(|(maj, min)| maj == g.major && g.minors.contains(&min))
        })
        .max_by(|a, b| match debver::compare(&a.version, &b.version) {
            Ordering::Equal => a.name.cmp(&b.name),
            o => o,
        })
}

/// The cache directory of one build.
pub fn cache_dir(cache: &Path, name: &str) -> PathBuf {
    cache.join("kernels").join(name)
}

/// A cached `vmlinuz` for `name`, if a previous run extracted one.
pub fn cached(cache: &Path, name: &str) -> Option<PathBuf> {
    let p = cache_dir(cache, name).join("vmlinuz");
    fs::metadata(&p).is_ok_and(|m| m.len() > 0).then_some(p)
}

/// Builds present in the cache (for when apt cannot be reached).
pub fn cached_builds(cache: &Path) -> Vec<KernelBuild> {
    let Ok(rd) = fs::read_dir(cache.join("kernels")) else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            cached(cache, &name)?;
            let version = fs::read_to_string(e.path().join("version"))
                .ok()?
                .trim()
                .to_string();
            Some(KernelBuild {
                name,
                version,
                image_package: String::new(),
            })
        })
        .collect()
}

/// Extract the kernel image from a downloaded .deb into the cache.
pub fn extract_vmlinuz(deb: &Path, cache: &Path, build: &KernelBuild) -> anyhow::Result<PathBuf> {
    let dir = cache_dir(cache, &build.name);
    let tmp = dir.with_extension("partial");
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut dpkg = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdout(Stdio::piped())
        .spawn()
        .context("starting dpkg-deb")?;
    let tar_in = dpkg.stdout.take().context("dpkg-deb stdout")?;
    let tar = Command::new("tar")
        .args(["-x", "--wildcards", "--no-same-owner", "-C"])
        .arg(&tmp)
        .args(["./boot/vmlinuz-*", "./usr/lib/modules/*/vmlinuz*"])
        .stdin(tar_in)
        .stderr(Stdio::null())
        .status()
        .context("starting tar")?;
    let dpkg_ok = dpkg.wait()?.success();
    // tar exits non-zero when one of the two patterns matched nothing; judge by the result.
    let found = find_vmlinuz(&tmp);
    let Some(image) = found else {
        bail!(
            "no vmlinuz in {} (dpkg-deb ok: {dpkg_ok}, tar: {tar}); package layout changed?",
            deb.display()
        );
    };
    fs::rename(&image, tmp.join("vmlinuz"))?;
    fs::write(tmp.join("version"), format!("{}\n", build.version))?;
    for sub in ["boot", "usr"] {
        let _ = fs::remove_dir_all(tmp.join(sub));
    }
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&tmp, &dir).with_context(|| format!("moving {} into place", dir.display()))?;
    Ok(dir.join("vmlinuz"))
}

fn find_vmlinuz(dir: &Path) -> Option<PathBuf> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).ok()?.filter_map(|e| e.ok()) {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if e.file_name().to_string_lossy().starts_with("vmlinuz") {
                return Some(p);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(package: &str, version: &str, depends: &str) -> IndexEntry {
        IndexEntry {
            package: package.into(),
            version: version.into(),
            depends: depends.into(),
        }
    }

    fn index() -> Vec<IndexEntry> {
        vec![
            entry(
                "linux-image-6.18.5+deb13-cloud-amd64",
                "6.18.5-1~bpo13+1",
                "kmod",
            ),
            entry(
                "linux-image-6.18.15+deb13-cloud-amd64",
                "6.18.15-1~bpo13+1",
                "kmod",
            ),
            entry(
                "linux-image-6.18.15+deb13-rt-amd64",
                "6.18.15-1~bpo13+1",
                "kmod",
            ),
            entry(
                "linux-image-7.2.13+deb14-cloud-amd64",
                "7.2.13-1",
                "linux-binary-7.2.13+deb14-cloud-amd64 (= 7.2.13-1)",
            ),
            entry("linux-binary-7.2.13+deb14-cloud-amd64", "7.2.13-1", ""),
            entry(
                "linux-image-7.3.4+deb13-cloud-amd64",
                "7.3.4-1~bpo13+1",
                "linux-binary-7.3.4+deb13-cloud-amd64 (= 7.3.4-1~bpo13+1)",
            ),
            entry(
                "linux-binary-unsigned-7.3.4+deb13-cloud-amd64",
                "7.3.4-1~bpo13+1",
                "",
            ),
            entry(
                "linux-image-7.3-cloud-amd64",
                "7.3~rc7-1~exp1",
                "linux-binary-7.3-cloud-amd64",
            ),
            entry(
                "linux-image-7.3.4+deb13-cloud-amd64-dbg",
                "7.3.4-1~bpo13+1",
                "",
            ),
            entry(
                "linux-image-7.2.13+deb14-rt-amd64",
                "7.2.13-1",
                "linux-binary-7.2.13+deb14-rt-amd64",
            ),
            entry(
                "linux-image-cloud-amd64",
                "7.3.4-1",
                "linux-image-7.3.4+deb13-cloud-amd64",
            ),
        ]
    }

    #[test]
    fn picks_newest_per_generation() {
        let b = builds(&index());
        let pick = |key: &str| {
            let g = MATRIX.iter().find(|g| g.key == key).expect("generation");
            newest(&b, g).map(|k| (k.name.clone(), k.image_package.clone()))
        };
        assert_eq!(
            pick("6.18"),
            Some((
                "6.18.15+deb13-cloud-amd64".into(),
                "linux-image-6.18.15+deb13-cloud-amd64".into()
            ))
        );
        assert_eq!(pick("6.19"), None);
        assert_eq!(
            pick("7-cloud"),
            Some((
                "7.3.4+deb13-cloud-amd64".into(),
                "linux-binary-unsigned-7.3.4+deb13-cloud-amd64".into()
            ))
        );
        assert_eq!(
            pick("7-rt"),
            Some((
                "7.2.13+deb14-rt-amd64".into(),
                "linux-binary-7.2.13+deb14-rt-amd64".into()
            ))
        );
    }

    #[test]
    fn reads_major_minor() {
        assert_eq!(upstream_major_minor("7.3~rc7-1~exp1"), Some((7, 3)));
        assert_eq!(upstream_major_minor("6.18.15-1~bpo13+1"), Some((6, 18)));
        assert_eq!(upstream_major_minor("garbage"), None);
    }
}
