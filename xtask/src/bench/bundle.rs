//! The benchmark's initramfs: the vm-test image (busybox, static vmatrace, `/init`) plus
//! Debian's bpftrace and every shared library `ldd` says it needs, at the same paths, so
//! the guest's dynamic loader finds them without an ld.so.cache.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};

use crate::vm::{
    self,
    initramfs::{self, CpioWriter, Entry},
};

use super::guest::{BPFTRACE_SCRIPT, BPFTRACE_SCRIPT_PATH};

/// bpftrace and its libraries: `(absolute guest path, host file)`.
pub struct Bpftrace {
    pub files: Vec<(String, PathBuf)>,
}

/// Paths in `ldd` output: `libx.so.1 => /lib/.../libx.so.1 (0x...)` and the loader's
/// `/lib64/ld-linux-x86-64.so.2 (0x...)`; the vDSO has no file.
pub fn ldd_paths(out: &str) -> Result<Vec<String>, String> {
    let mut v = Vec::new();
    for line in out.lines() {
        let l = line.trim();
        if l.is_empty() || l.starts_with("linux-vdso") {
            continue;
        }
        if l.contains("not found") {
            return Err(format!("missing library: {l}"));
        }
        let path = match l.split_once("=>") {
            Some((_, rhs)) => rhs.split_whitespace().next(),
            None => l.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            v.push(p.to_string());
        }
    }
    Ok(v)
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// Debian's bpftrace on this host, with its libraries.
pub fn bpftrace() -> anyhow::Result<Bpftrace> {
    let bin = which("bpftrace").context("bpftrace is not installed")?;
    let out = crate::util::output(Command::new("ldd").arg(&bin)).context("ldd bpftrace")?;
    let libs = ldd_paths(&out).map_err(anyhow::Error::msg)?;
    let mut files = vec![("/bin/bpftrace".to_string(), bin)];
    for l in libs {
        files.push((l.clone(), PathBuf::from(l)));
    }
    Ok(Bpftrace { files })
}

/// Every ancestor directory of `path`, outermost first (`a`, `a/b` for `/a/b/c`).
fn ancestors(path: &str) -> Vec<String> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    (1..parts.len()).map(|i| parts[..i].join("/")).collect()
}

pub fn initramfs(
    vmatrace: &Path,
    bpftrace: Option<&Bpftrace>,
    init: &str,
    out: &Path,
) -> anyhow::Result<()> {
    let busybox = fs::read(vm::BUSYBOX)
        .with_context(|| format!("reading {} (cargo xtask setup installs it)", vm::BUSYBOX))?;
    let bin = fs::read(vmatrace).with_context(|| format!("reading {}", vmatrace.display()))?;
    let mut dirs: BTreeSet<String> = initramfs::BASE_DIRS.iter().map(|s| s.to_string()).collect();
    let mut extra = Vec::new();
    if let Some(b) = bpftrace {
        for (guest, host) in &b.files {
            let data = fs::read(host).with_context(|| format!("reading {}", host.display()))?;
            dirs.extend(ancestors(guest));
            extra.push((guest.trim_start_matches('/').to_string(), data));
        }
    }
    if let Some(d) = out.parent() {
        fs::create_dir_all(d)?;
    }
    let file = fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut w = CpioWriter::new(std::io::BufWriter::new(file));
    // BTreeSet order puts every parent before its children.
    for d in &dirs {
        w.add(&Entry::Dir { path: d })?;
    }
    initramfs::add_base(&mut w, &busybox, &bin, init)?;
    w.add(&Entry::File {
        path: BPFTRACE_SCRIPT_PATH.trim_start_matches('/'),
        mode: 0o644,
        data: BPFTRACE_SCRIPT.as_bytes(),
    })?;
    for (path, data) in &extra {
        w.add(&Entry::File {
            path,
            mode: 0o755,
            data,
        })?;
    }
    w.finish().context("writing the initramfs")?;
    let len = fs::metadata(out)?.len();
    if len == 0 {
        bail!("{} is empty", out.display());
    }
    println!(
        "bench: initramfs {} ({:.0} MB{})",
        out.display(),
        len as f64 / 1e6,
        if bpftrace.is_some() {
            ", with bpftrace and its libraries"
        } else {
            ""
        }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output() {
        let out = "\tlinux-vdso.so.1 (0x00007f)\n\tlibbpf.so.1 => /lib/x86_64-linux-gnu/libbpf.so.1 (0x7f)\n\t/lib64/ld-linux-x86-64.so.2 (0x7f)\n";
        assert_eq!(
            ldd_paths(out).expect("paths"),
            [
                "/lib/x86_64-linux-gnu/libbpf.so.1",
                "/lib64/ld-linux-x86-64.so.2"
            ]
        );
        assert!(ldd_paths("\tlibfoo.so => not found\n").is_err());
        assert_eq!(
            ancestors("/lib/x86_64-linux-gnu/libbpf.so.1"),
            ["lib", "lib/x86_64-linux-gnu"]
        );
        assert!(ancestors("/init").is_empty());
    }
}
