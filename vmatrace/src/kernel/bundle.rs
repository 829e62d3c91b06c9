//! A kernel bundle: what `probes` needs to plan a kernel offline, captured on a host of
//! the fleet (`vmatrace capture-kernel -o DIR`) and planned anywhere else
//! (`vmatrace probes --bundle DIR`).
//!
//! The directory holds the raw inputs under fixed names plus `bundle.json`, the manifest
//! (release, what was captured, why anything is missing). Kernel addresses are not needed
//! to plan and are zeroed unless asked for: a bundle is shared like a log.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::info::{KALLSYMS, KPROBE_BLACKLIST, KernelInfo, TRACEFS_DIRS, VMLINUX_BTF};
use super::input::{self, read_capped, read_capped_text};

pub const MANIFEST: &str = "bundle.json";
pub const BTF_FILE: &str = "vmlinux.btf";
pub const KALLSYMS_FILE: &str = "kallsyms";
pub const FILTER_FUNCTIONS_FILE: &str = "available_filter_functions";
pub const BLACKLIST_FILE: &str = "kprobes-blacklist";
pub const CONFIG_FILE: &str = "config";
/// Bumped when a field changes meaning.
pub const SCHEMA: u32 = 1;

/// `bundle.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub schema: u32,
    /// `uname -r` of the captured kernel.
    pub release: String,
    pub captured_at: String,
    pub vmatrace_version: String,
    /// Whether `kallsyms` and the blacklist keep their addresses (`--keep-addresses`).
    pub addresses: bool,
    /// Files present in the bundle, by role (`btf`, `kallsyms`, `filter_functions`,
    /// `kprobe_blacklist`, `config`).
    pub files: std::collections::BTreeMap<String, String>,
    /// `<tracefs>/events/mmap_lock` event names (`None`: tracefs was not readable).
    pub mmap_lock_tracepoints: Option<Vec<String>>,
    /// Why an optional input is missing.
    pub missing: Vec<String>,
}

/// `/proc/kallsyms` with every address zeroed (`0000000000000000 T name [module]`).
pub fn zero_kallsyms_addresses(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        match line.split_once(char::is_whitespace) {
            Some((addr, rest)) if addr.chars().all(|c| c.is_ascii_hexdigit()) => {
                out.push_str(&"0".repeat(addr.len()));
                out.push(' ');
                out.push_str(rest.trim_start());
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// The kprobe blacklist (`0xSTART-0xEND\tname`) with every range zeroed.
pub fn zero_blacklist_addresses(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        match line.split_once(char::is_whitespace) {
            Some((range, rest)) if range.contains('-') => {
                out.push_str("0x0-0x0\t");
                out.push_str(rest.trim_start());
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Write `bytes` as a new file `name` in `dir` (mode 0640; never over an existing one).
fn write_new(dir: &Path, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = dir.join(name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o640)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Capture the running kernel into `dir`, which must not exist or be empty (nothing in
/// it is ever overwritten). Returns the manifest written.
pub fn capture(dir: &Path, keep_addresses: bool, now_rfc3339: &str) -> anyhow::Result<Manifest> {
    let btf = read_capped(Path::new(VMLINUX_BTF), input::BTF).with_context(|| {
        format!("cannot read {VMLINUX_BTF} (kernel built without CONFIG_DEBUG_INFO_BTF?)")
    })?;
    let kallsyms = read_capped_text(Path::new(KALLSYMS), input::KALLSYMS)?;
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string());
    let mut missing = Vec::new();
    let mut files = std::collections::BTreeMap::new();
    let tracefs = TRACEFS_DIRS
        .iter()
        .map(PathBuf::from)
        .find(|d| d.join("events").is_dir());
    let (filter_functions, mmap_lock_tracepoints) = match &tracefs {
        Some(d) => {
            let aff = d.join("available_filter_functions");
            let list = match read_capped_text(&aff, input::FTRACE_LIST) {
                Ok(t) => Some(t),
                Err(e) => {
                    missing.push(format!("filter_functions: {e:#}"));
                    None
                }
            };
            let events = std::fs::read_dir(d.join("events/mmap_lock")).map(|rd| {
                let mut v: Vec<String> = rd
                    .filter_map(Result::ok)
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                v.sort();
                v
            });
            (list, Some(events.unwrap_or_default()))
        }
        None => {
            missing.push(
                "filter_functions, mmap_lock tracepoints: tracefs is not mounted or not \
                 readable (/sys/kernel/tracing)"
                    .into(),
            );
            (None, None)
        }
    };
    let blacklist = match read_capped_text(Path::new(KPROBE_BLACKLIST), input::FTRACE_LIST) {
        Ok(t) => Some(t),
        Err(e) => {
            missing.push(format!("kprobe_blacklist: {e:#}"));
            None
        }
    };
    let boot = PathBuf::from(format!("/boot/config-{release}"));
    let config = [Path::new(super::config::PROC_CONFIG_GZ), boot.as_path()]
        .into_iter()
        .find(|p| p.exists())
        .map(|p| read_capped(p, input::CONFIG));
    let config = match config {
        Some(Ok(c)) => Some(c),
        Some(Err(e)) => {
            missing.push(format!("config: {e:#}"));
            None
        }
        None => {
            missing.push(format!(
                "config: neither {} nor {} exists",
                super::config::PROC_CONFIG_GZ,
                boot.display()
            ));
            None
        }
    };

    create_empty_dir(dir)?;
    write_new(dir, BTF_FILE, &btf)?;
    files.insert("btf".to_string(), BTF_FILE.to_string());
    let kallsyms = if keep_addresses {
        kallsyms
    } else {
        zero_kallsyms_addresses(&kallsyms)
    };
    write_new(dir, KALLSYMS_FILE, kallsyms.as_bytes())?;
    files.insert("kallsyms".to_string(), KALLSYMS_FILE.to_string());
    if let Some(t) = filter_functions {
        write_new(dir, FILTER_FUNCTIONS_FILE, t.as_bytes())?;
        files.insert("filter_functions".into(), FILTER_FUNCTIONS_FILE.into());
    }
    if let Some(t) = blacklist {
        let t = if keep_addresses {
            t
        } else {
            zero_blacklist_addresses(&t)
        };
        write_new(dir, BLACKLIST_FILE, t.as_bytes())?;
        files.insert("kprobe_blacklist".into(), BLACKLIST_FILE.into());
    }
    if let Some(c) = config {
        write_new(dir, CONFIG_FILE, &c)?;
        files.insert("config".into(), CONFIG_FILE.into());
    }
    let manifest = Manifest {
        schema: SCHEMA,
        release,
        captured_at: now_rfc3339.to_string(),
        vmatrace_version: env!("VMATRACE_LONG_VERSION").to_string(),
        addresses: keep_addresses,
        files,
        mmap_lock_tracepoints,
        missing,
    };
    let mut json = serde_json::to_vec_pretty(&manifest)?;
    json.push(b'\n');
    write_new(dir, MANIFEST, &json)?;
    Ok(manifest)
}

/// Create `dir` (mode 0750), or accept an existing empty directory.
fn create_empty_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    match std::fs::DirBuilder::new().mode(0o750).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let empty = std::fs::read_dir(dir)
                .with_context(|| format!("{} exists and is not a directory", dir.display()))?
                .next()
                .is_none();
            anyhow::ensure!(
                empty,
                "{} exists and is not empty: give a new directory (nothing is overwritten)",
                dir.display()
            );
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("cannot create {}", dir.display())),
    }
}

/// Read a bundle's manifest.
pub fn read_manifest(dir: &Path) -> anyhow::Result<Manifest> {
    let path = dir.join(MANIFEST);
    let text = read_capped_text(&path, input::CONFIG)
        .with_context(|| format!("{} is not a kernel bundle", dir.display()))?;
    let m: Manifest = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a bundle manifest", path.display()))?;
    anyhow::ensure!(
        m.schema == SCHEMA,
        "{}: bundle schema {} (this vmatrace reads {SCHEMA})",
        path.display(),
        m.schema
    );
    Ok(m)
}

/// The kernel a bundle describes, as `probes` plans it.
pub fn load(dir: &Path) -> anyhow::Result<KernelInfo> {
    let m = read_manifest(dir)?;
    let file = |role: &str| -> anyhow::Result<Option<PathBuf>> {
        m.files
            .get(role)
            .map(|name| {
                // Names only: a manifest cannot point outside its directory.
                anyhow::ensure!(
                    !name.contains('/') && name != ".." && !name.is_empty(),
                    "{}: bad file name {name:?} for {role}",
                    dir.join(MANIFEST).display()
                );
                Ok(dir.join(name))
            })
            .transpose()
    };
    let (Some(btf), Some(kallsyms)) = (file("btf")?, file("kallsyms")?) else {
        anyhow::bail!(
            "{}: the bundle has no btf or no kallsyms",
            dir.join(MANIFEST).display()
        );
    };
    let mut info = KernelInfo::from_files(
        &btf,
        &kallsyms,
        file("filter_functions")?.as_deref(),
        file("kprobe_blacklist")?.as_deref(),
        Some(m.release.clone()),
    )?;
    if let Some(c) = file("config")? {
        info = info.with_config(&c)?;
    }
    info.mmap_lock_tracepoints = m.mmap_lock_tracepoints.clone();
    info.remarks
        .extend(m.missing.iter().map(|w| format!("not in the bundle: {w}")));
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_zeroed_names_kept() {
        let k = "ffffffff81000000 T _stext\nffffffffc0a01000 t nft_do_chain\t[nf_tables]\n";
        let z = zero_kallsyms_addresses(k);
        assert_eq!(
            z,
            "0000000000000000 T _stext\n0000000000000000 t nft_do_chain\t[nf_tables]\n"
        );
        assert!(
            crate::kernel::symbols::Kallsyms::parse(&z).is_ok(),
            "still a kallsyms dump"
        );
        let b = "0xffffffff81a00000-0xffffffff81a00100\tdo_int3\n";
        let zb = zero_blacklist_addresses(b);
        assert_eq!(zb, "0x0-0x0\tdo_int3\n");
        let parsed = crate::kernel::ftrace::KprobeBlacklist::parse(&zb).expect("blacklist");
        assert!(parsed.contains("do_int3"));
    }

    #[test]
    fn a_manifest_cannot_point_outside_its_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = Manifest {
            schema: SCHEMA,
            release: "7.0.0".into(),
            captured_at: "2026-12-06T00:00:00Z".into(),
            vmatrace_version: "test".into(),
            addresses: false,
            files: [("btf".to_string(), "../../etc/passwd".to_string())]
                .into_iter()
                .collect(),
            mmap_lock_tracepoints: None,
            missing: Vec::new(),
        };
        std::fs::write(
            dir.path().join(MANIFEST),
            serde_json::to_vec(&m).expect("json"),
        )
        .expect("write");
        let e = load(dir.path()).expect_err("refused");
        assert!(format!("{e:#}").contains("bad file name"), "{e:#}");
        let mut m2 = m.clone();
        m2.schema = 99;
        std::fs::write(
            dir.path().join(MANIFEST),
            serde_json::to_vec(&m2).expect("json"),
        )
        .expect("write");
        let e = load(dir.path()).expect_err("refused");
        assert!(format!("{e:#}").contains("schema 99"), "{e:#}");
    }

    #[test]
    fn a_non_empty_directory_is_never_written_into() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("keep"), b"user data").expect("write");
        let e = create_empty_dir(dir.path()).expect_err("refused");
        assert!(format!("{e:#}").contains("not empty"), "{e:#}");
        assert_eq!(
            std::fs::read(dir.path().join("keep")).expect("read"),
            b"user data"
        );
        let fresh = dir.path().join("new");
        create_empty_dir(&fresh).expect("created");
        create_empty_dir(&fresh).expect("an empty one is fine");
    }
}
