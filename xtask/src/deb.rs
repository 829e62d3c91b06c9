//! `cargo xtask deb`: the Debian package, built with `dpkg-deb` from a staged tree (no
//! cargo-deb): the release binary, the systemd unit, the logrotate config, a man page
//! per subcommand and shell completions (made by `vmatrace/examples/dist_assets.rs`
//! from the command line itself), the docs and the alert rules. Then lintian, when it
//! is installed.
//!
//! `check` installs the package for real (`dpkg -i`), runs the installed `vmatrace
//! --version` and `systemd-analyze verify` on the installed unit, and purges it: fine on
//! a throwaway CI machine, refused when a vmatrace package was already installed.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};

use crate::util::{cargo, is_root, output, run, workspace_root};

const PACKAGE: &str = "vmatrace";
/// Where Debian 12's systemd looks for units shipped by packages.
const UNIT_DIR: &str = "lib/systemd/system";

#[derive(Debug, clap::Args)]
pub struct DebArgs {
    /// After building, install the package with dpkg -i, check it, and purge it (root).
    #[arg(long)]
    pub check: bool,
}

pub fn deb(args: &DebArgs) -> anyhow::Result<()> {
    let deb = build()?;
    println!("{}", deb.display());
    if args.check {
        check_contents(&deb)?;
        if let Some(why) = cannot_install_here() {
            bail!("{why}");
        }
        check_install(&deb)?;
    }
    Ok(())
}

fn version() -> anyhow::Result<String> {
    let toml = fs::read_to_string(workspace_root().join("Cargo.toml"))?;
    toml.lines()
        .skip_while(|l| l.trim() != "[workspace.package]")
        .find_map(|l| {
            let v = l.trim().strip_prefix("version")?.trim().strip_prefix('=')?;
            Some(v.trim().trim_matches('"').to_string())
        })
        .context("no version in [workspace.package]")
}

fn gzip_into(from: &Path, to: &Path) -> anyhow::Result<()> {
    // -n: no name or time stamp in the header, so the package is reproducible.
    let gz = Command::new("gzip")
        .args(["-9", "-n", "-c"])
        .arg(from)
        .output()
        .context("gzip")?;
    anyhow::ensure!(gz.status.success(), "gzip {} failed", from.display());
    fs::write(to, gz.stdout)?;
    Ok(())
}

fn install(from: &Path, to: &Path, mode: u32) -> anyhow::Result<()> {
    if let Some(d) = to.parent() {
        fs::create_dir_all(d)?;
    }
    fs::copy(from, to).with_context(|| format!("copy {}", from.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Debian packages providing the shared libraries the binary links (`dpkg -S`).
fn depends(binary: &Path) -> anyhow::Result<Vec<String>> {
    let dump = output(Command::new("objdump").arg("-p").arg(binary))
        .context("objdump (binutils) lists the libraries the binary needs")?;
    let ldconfig = output(Command::new("/sbin/ldconfig").arg("-p")).unwrap_or_default();
    let mut pkgs = Vec::new();
    for lib in dump
        .lines()
        .filter_map(|l| l.trim().strip_prefix("NEEDED"))
        .map(str::trim)
    {
        let path = ldconfig
            .lines()
            .filter(|l| l.trim_start().starts_with(&format!("{lib} ")))
            .filter_map(|l| l.rsplit("=> ").next())
            .map(str::trim)
            .next()
            .with_context(|| format!("{lib} is not known to ldconfig"))?
            .to_string();
        let owner = output(Command::new("dpkg").args(["-S", &path]))
            .or_else(|_| {
                // usrmerge: the package may list it under /usr.
                output(Command::new("dpkg").args(["-S", &format!("/usr{path}")]))
            })
            .with_context(|| format!("no package owns {path}"))?;
        let pkg = owner
            .split(':')
            .next()
            .unwrap_or_default()
            .trim()
            .to_string();
        if !pkg.is_empty() && !pkgs.contains(&pkg) {
            pkgs.push(pkg);
        }
    }
    pkgs.sort();
    Ok(pkgs)
}

fn du_kib(dir: &Path) -> u64 {
    fn walk(p: &Path) -> u64 {
        match fs::symlink_metadata(p) {
            Ok(m) if m.is_dir() => fs::read_dir(p)
                .map(|rd| rd.flatten().map(|e| walk(&e.path())).sum())
                .unwrap_or(0),
            Ok(m) => m.len().div_ceil(1024),
            Err(_) => 0,
        }
    }
    walk(dir)
}

const COPYRIGHT: &str = "\
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: vmatrace
Comment: Live tracer and validator for the Linux kernel's per-VMA lock.

Files: *
Copyright: 2026 the vmatrace authors
License: MIT or Apache-2.0
 On Debian systems the Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0. The MIT license:
 .
 Permission is hereby granted, free of charge, to any person obtaining a copy
 of this software and associated documentation files (the \"Software\"), to deal
 in the Software without restriction, including without limitation the rights
 to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
 copies of the Software, and to permit persons to whom the Software is
 furnished to do so, subject to the following conditions:
 .
 The above copyright notice and this permission notice shall be included in
 all copies or substantial portions of the Software.
 .
 THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
 IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
 FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
 AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
 LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
 OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN
 THE SOFTWARE.
";

// The maintainer scripts dh_installsystemd writes for a unit that is neither enabled
// nor started on install: tracing the kernel is the operator's decision
// (`systemctl enable --now vmatrace`).
const POSTINST: &str = "#!/bin/sh
set -e
if [ \"$1\" = configure ] || [ \"$1\" = abort-upgrade ] || [ \"$1\" = abort-deconfigure ] || [ \"$1\" = abort-remove ]; then
\tif command -v deb-systemd-helper >/dev/null 2>&1; then
\t\tdeb-systemd-helper update-state vmatrace.service >/dev/null || true
\tfi
\tif [ -d /run/systemd/system ]; then
\t\tsystemctl --system daemon-reload >/dev/null || true
\t\tif [ -n \"$2\" ]; then
\t\t\tdeb-systemd-invoke try-restart vmatrace.service >/dev/null || true
\t\tfi
\tfi
fi
";
const PRERM: &str = "#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ \"$1\" = remove ]; then
\tdeb-systemd-invoke stop vmatrace.service >/dev/null || true
fi
";
const POSTRM: &str = "#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ \"$1\" = remove ]; then
\tsystemctl --system daemon-reload >/dev/null || true
fi
if [ \"$1\" = purge ]; then
\tif command -v deb-systemd-helper >/dev/null 2>&1; then
\t\tdeb-systemd-helper purge vmatrace.service >/dev/null || true
\tfi
\trm -rf /var/log/vmatrace
fi
";

/// The docs shipped in /usr/share/doc/vmatrace (the fleet guide first).
const DOCS: &[&str] = &[
    "docs/fleet.md",
    "docs/summary.md",
    "docs/anomaly-log.md",
    "docs/anomaly-kinds.md",
    "docs/trace-format.md",
    "docs/dashboard.md",
    "docs/simulate.md",
    "docs/performance.md",
];

pub fn build() -> anyhow::Result<PathBuf> {
    let root = workspace_root();
    let version = version()?;
    let arch = output(Command::new("dpkg").arg("--print-architecture"))
        .context("dpkg --print-architecture")?
        .trim()
        .to_string();
    eprintln!("deb: building the release binary and the man pages / completions");
    run(cargo().current_dir(&root).args([
        "build",
        "--release",
        "-p",
        "vmatrace",
        "--bin",
        "vmatrace",
        "--example",
        "dist_assets",
    ]))
    .context("cargo build --release")?;
    let target = root.join("target");
    let work = target.join("deb");
    let stage = work.join(format!("{PACKAGE}_{version}_{arch}"));
    if stage.exists() {
        fs::remove_dir_all(&stage)?;
    }
    fs::create_dir_all(&stage)?;
    let assets = work.join("assets");
    let _ = fs::remove_dir_all(&assets);
    run(Command::new(target.join("release/examples/dist_assets")).arg(&assets))
        .context("generating man pages and completions")?;

    let s = |p: &str| stage.join(p);
    let dist = root.join("vmatrace/dist");
    let bin = s("usr/bin/vmatrace");
    install(&target.join("release/vmatrace"), &bin, 0o755)?;
    // Symbols are of no use in the package (no debug info in release builds).
    run(Command::new("strip")
        .args(["--strip-unneeded", "--remove-section=.comment"])
        .arg(&bin))
    .context("strip (binutils)")?;
    install(
        &dist.join("vmatrace.service"),
        &s(&format!("{UNIT_DIR}/vmatrace.service")),
        0o644,
    )?;
    install(
        &dist.join("vmatrace.logrotate"),
        &s("etc/logrotate.d/vmatrace"),
        0o644,
    )?;
    let man = s("usr/share/man/man1");
    fs::create_dir_all(&man)?;
    for e in fs::read_dir(assets.join("man1"))? {
        let p = e?.path();
        let name = p
            .file_name()
            .context("man page")?
            .to_string_lossy()
            .into_owned();
        gzip_into(&p, &man.join(format!("{name}.gz")))?;
        fs::set_permissions(
            man.join(format!("{name}.gz")),
            fs::Permissions::from_mode(0o644),
        )?;
    }
    let c = assets.join("completions");
    install(
        &c.join("vmatrace.bash"),
        &s("usr/share/bash-completion/completions/vmatrace"),
        0o644,
    )?;
    install(
        &c.join("_vmatrace"),
        &s("usr/share/zsh/vendor-completions/_vmatrace"),
        0o644,
    )?;
    install(
        &c.join("vmatrace.fish"),
        &s("usr/share/fish/vendor_completions.d/vmatrace.fish"),
        0o644,
    )?;
    let doc = s("usr/share/doc/vmatrace");
    fs::create_dir_all(doc.join("examples"))?;
    install(&root.join("README.md"), &doc.join("README.md"), 0o644)?;
    for d in DOCS {
        let from = root.join(d);
        let name = from.file_name().context("doc")?;
        install(&from, &doc.join(name), 0o644)?;
    }
    install(
        &dist.join("vmatrace.rules.yml"),
        &doc.join("examples/vmatrace.rules.yml"),
        0o644,
    )?;
    fs::write(doc.join("copyright"), COPYRIGHT)?;
    let changelog = work.join("changelog");
    fs::write(
        &changelog,
        format!(
            "{PACKAGE} ({version}) unstable; urgency=medium\n\n  * Built by cargo xtask deb \
             from git {}.\n\n -- vmatrace maintainers <vmatrace@example.invalid>  {}\n",
            git_revision(&root),
            output(Command::new("date").args(["-R", "-u", "-d", "@0"]))
                .unwrap_or_default()
                .trim()
        ),
    )?;
    gzip_into(&changelog, &doc.join("changelog.gz"))?;
    for d in ["usr/share/doc/vmatrace", "usr/share/doc/vmatrace/examples"] {
        fs::set_permissions(s(d), fs::Permissions::from_mode(0o755))?;
    }

    let debian = s("DEBIAN");
    fs::create_dir_all(&debian)?;
    let deps = depends(&bin)?;
    let control = format!(
        "Package: {PACKAGE}\n\
         Version: {version}\n\
         Architecture: {arch}\n\
         Maintainer: vmatrace maintainers <vmatrace@example.invalid>\n\
         Installed-Size: {}\n\
         Depends: {}\n\
         Recommends: logrotate\n\
         Suggests: prometheus\n\
         Section: admin\n\
         Priority: optional\n\
         Description: live tracer and validator for the kernel's per-VMA lock\n \
         vmatrace attaches eBPF programs to the Linux kernel's per-VMA lock paths\n \
         (vm_refcnt, kernels 6.15 and later), validates every event against a model\n \
         of the refcount protocol and reports anomalies as JSON Lines, with wait-time\n \
         histograms, a live dashboard and Prometheus metrics. The systemd unit\n \
         (not enabled on install) runs it headless with a metrics endpoint on\n \
         loopback.\n",
        du_kib(&stage),
        deps.join(", ")
    );
    fs::write(debian.join("control"), control)?;
    fs::write(debian.join("conffiles"), "/etc/logrotate.d/vmatrace\n")?;
    for (name, text) in [("postinst", POSTINST), ("prerm", PRERM), ("postrm", POSTRM)] {
        fs::write(debian.join(name), text)?;
        fs::set_permissions(debian.join(name), fs::Permissions::from_mode(0o755))?;
    }
    let deb = work.join(format!("{PACKAGE}_{version}_{arch}.deb"));
    run(Command::new("dpkg-deb")
        .args(["--build", "--root-owner-group", "-Zxz"])
        .arg(&stage)
        .arg(&deb))
    .context("dpkg-deb --build")?;
    lintian(&deb);
    Ok(deb)
}

fn git_revision(root: &Path) -> String {
    output(
        Command::new("git")
            .current_dir(root)
            .args(["rev-parse", "--short", "HEAD"]),
    )
    .map(|s| s.trim().to_string())
    .unwrap_or_else(|_| "unknown".into())
}

/// Print lintian's findings (they are listed, with why they stay, in docs/fleet.md).
fn lintian(deb: &Path) {
    match Command::new("lintian")
        .args(["--no-tag-display-limit", "--info"])
        .arg(deb)
        .output()
    {
        Ok(o) => {
            let text = String::from_utf8_lossy(&o.stdout);
            if text.trim().is_empty() {
                eprintln!("deb: lintian: no findings");
            } else {
                eprintln!("deb: lintian:\n{}", text.trim_end());
            }
        }
        Err(_) => eprintln!("deb: lintian is not installed (cargo xtask setup installs it)"),
    }
}

fn dpkg_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .stderr(std::process::Stdio::null())
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// Why the package cannot be installed here for a check (`None`: it can).
pub fn cannot_install_here() -> Option<String> {
    if !is_root() {
        return Some("installing the package to check it needs root".into());
    }
    if dpkg_installed(PACKAGE) {
        return Some(
            "a vmatrace package is already installed here: not replacing (and then purging) \
             it for a check; `dpkg --purge vmatrace` first if it may go"
                .into(),
        );
    }
    None
}

/// What `dpkg-deb` says of the package: its fields, its files, their owners.
pub fn check_contents(deb: &Path) -> anyhow::Result<()> {
    let info = output(Command::new("dpkg-deb").arg("--info").arg(deb))?;
    for field in ["Package: vmatrace", "Depends: ", "Architecture: "] {
        anyhow::ensure!(
            info.contains(field),
            "dpkg-deb --info lacks {field:?}:\n{info}"
        );
    }
    let contents = output(Command::new("dpkg-deb").arg("--contents").arg(deb))?;
    for path in [
        "./usr/bin/vmatrace",
        &format!("./{UNIT_DIR}/vmatrace.service"),
        "./etc/logrotate.d/vmatrace",
        "./usr/share/man/man1/vmatrace.1.gz",
        "./usr/share/man/man1/vmatrace-run.1.gz",
        "./usr/share/man/man1/vmatrace-replay.1.gz",
        "./usr/share/bash-completion/completions/vmatrace",
        "./usr/share/zsh/vendor-completions/_vmatrace",
        "./usr/share/fish/vendor_completions.d/vmatrace.fish",
        "./usr/share/doc/vmatrace/fleet.md",
        "./usr/share/doc/vmatrace/copyright",
        "./usr/share/doc/vmatrace/examples/vmatrace.rules.yml",
    ] {
        anyhow::ensure!(
            contents.lines().any(|l| l.ends_with(path)),
            "the package lacks {path}"
        );
    }
    anyhow::ensure!(
        contents.lines().all(|l| l.contains(" root/root ")),
        "every file must be root-owned:\n{contents}"
    );
    Ok(())
}

/// Install for real, check the installed binary, unit and man page, purge.
pub fn check_install(deb: &Path) -> anyhow::Result<()> {
    eprintln!("deb: dpkg -i {}", deb.display());
    run(Command::new("dpkg").arg("-i").arg(deb)).context("dpkg -i")?;
    let installed = (|| -> anyhow::Result<()> {
        let v = output(Command::new("/usr/bin/vmatrace").arg("--version"))?;
        anyhow::ensure!(
            v.starts_with("vmatrace ") && v.contains("(git "),
            "--version: {v}"
        );
        eprintln!("deb: installed {}", v.trim());
        let unit = format!("/{UNIT_DIR}/vmatrace.service");
        let verify = Command::new("systemd-analyze")
            .args(["verify", "--man=no", &unit])
            .output()
            .context("systemd-analyze")?;
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&verify.stdout),
            String::from_utf8_lossy(&verify.stderr)
        );
        anyhow::ensure!(
            verify.status.success() && said.trim().is_empty(),
            "systemd-analyze verify {unit}: {said}"
        );
        let man = Command::new("man")
            .args(["-w", "vmatrace-run"])
            .output()
            .map(|o| o.status.success());
        anyhow::ensure!(
            !matches!(man, Ok(false)),
            "man -w vmatrace-run finds no page"
        );
        Ok(())
    })();
    eprintln!("deb: dpkg --purge {PACKAGE}");
    let purged = run(Command::new("dpkg").args(["--purge", PACKAGE]));
    installed?;
    purged.context("dpkg --purge")?;
    anyhow::ensure!(
        !Path::new("/usr/bin/vmatrace").exists() && !dpkg_installed(PACKAGE),
        "the purge left vmatrace behind"
    );
    eprintln!("deb: installed, verified and purged");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_is_the_workspaces() {
        let v = version().expect("version");
        assert!(v.split('.').count() == 3, "{v}");
    }

    #[test]
    fn maintainer_scripts_are_valid_sh() {
        for (name, text) in [("postinst", POSTINST), ("prerm", PRERM), ("postrm", POSTRM)] {
            let out = Command::new("sh")
                .args(["-n", "-c", text])
                .output()
                .expect("sh");
            assert!(
                out.status.success(),
                "{name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(text.starts_with("#!/bin/sh\nset -e\n"), "{name}");
        }
    }
}
