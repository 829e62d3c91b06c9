//! Where `record -o` writes, without ever costing the user a file.
//!
//! The path is checked before anything is attached (a wrong path fails at once) but
//! nothing is created, truncated or removed until tracing has started:
//! - a new path is created exclusively (mode 0600) once tracing starts;
//! - an existing regular file (or a symlink to one) is refused unless `--force`; with it,
//!   the trace goes to a temporary file beside it that replaces the path only when the
//!   recording completed, so a failed run leaves the old file as it was;
//! - a device, FIFO or socket (`/dev/null`, a VM's serial port, `/dev/stdout`) is opened
//!   for writing as it is: never created, truncated or removed;
//! - `-` is standard output (refused when it is the user's terminal).

use std::{
    fs::{File, OpenOptions},
    io::Write,
    os::unix::fs::{FileTypeExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use anyhow::Context;

use super::exit::Failure;

/// Mode of trace files this process creates: they show every traced task's activity.
const TRACE_FILE_MODE: u32 = 0o600;

/// What `-o` names, decided before tracing starts.
#[derive(Debug, PartialEq, Eq)]
pub enum TraceTarget {
    Stdout,
    /// A path that does not exist yet.
    New(PathBuf),
    /// An existing regular file the user allowed to replace (`--force`).
    Replace(PathBuf),
    /// A device, FIFO or socket: written as it is.
    Device(PathBuf),
}

impl TraceTarget {
    /// Check `-o` without touching the file system beyond looking.
    pub fn check(output: &str, force: bool) -> anyhow::Result<Self> {
        if output == "-" {
            // SAFETY: tcgetpgrp/getpgrp only query; fd 1 may be anything.
            let interactive = unsafe { libc::tcgetpgrp(1) == libc::getpgrp() };
            if interactive {
                return Err(Failure::Usage(
                    "refusing to write a binary trace to your terminal: redirect stdout or use -o FILE"
                        .into(),
                )
                .into());
            }
            return Ok(Self::Stdout);
        }
        let path = PathBuf::from(output);
        match std::fs::metadata(&path) {
            Ok(md) if md.is_dir() => {
                Err(Failure::Usage(format!("-o {output}: is a directory")).into())
            }
            Ok(md) if md.is_file() => {
                if force {
                    Ok(Self::Replace(path))
                } else {
                    Err(Failure::Usage(format!(
                        "-o {output}: the file exists; refusing to overwrite it (--force \
                         replaces it once the new recording is complete)"
                    ))
                    .into())
                }
            }
            Ok(md) => {
                let t = md.file_type();
                if t.is_char_device() || t.is_fifo() || t.is_socket() || t.is_block_device() {
                    Ok(Self::Device(path))
                } else {
                    Err(Failure::Usage(format!("-o {output}: not a file or a device")).into())
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if std::fs::symlink_metadata(&path).is_ok() {
                    return Err(Failure::Usage(format!(
                        "-o {output}: a symbolic link to nothing; refusing to create its target"
                    ))
                    .into());
                }
                let dir = parent_of(&path);
                let md = std::fs::metadata(&dir)
                    .with_context(|| format!("-o {output}: no directory {}", dir.display()))?;
                anyhow::ensure!(
                    md.is_dir(),
                    "-o {output}: {} is not a directory",
                    dir.display()
                );
                Ok(Self::New(path))
            }
            Err(e) => Err(e).with_context(|| format!("-o {output}")),
        }
    }

    /// Open the output: call only once tracing has started.
    pub fn open(self) -> anyhow::Result<TraceFile> {
        match self {
            Self::Stdout => {
                // A serial line on stdout (a VM's ttyS1 as `>&3`) must pass bytes unchanged.
                make_raw_if_tty(1)?;
                Ok(TraceFile {
                    writer: Box::new(std::io::stdout()),
                    pending: None,
                })
            }
            Self::New(path) => {
                let f = create_exclusive(&path)
                    .with_context(|| format!("cannot create the trace {}", path.display()))?;
                Ok(TraceFile {
                    writer: Box::new(f),
                    pending: None,
                })
            }
            Self::Replace(path) => {
                let tmp = temporary_beside(&path);
                let f = create_exclusive(&tmp)
                    .with_context(|| format!("cannot create {}", tmp.display()))?;
                Ok(TraceFile {
                    writer: Box::new(f),
                    pending: Some(Pending {
                        tmp,
                        target: path,
                        committed: false,
                    }),
                })
            }
            Self::Device(path) => {
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .with_context(|| format!("cannot open {} for writing", path.display()))?;
                make_raw_if_tty(std::os::fd::AsRawFd::as_raw_fd(&f))?;
                Ok(TraceFile {
                    writer: Box::new(f),
                    pending: None,
                })
            }
        }
    }
}

/// An open trace output; for `--force`, the temporary file that replaces the target.
pub struct TraceFile {
    pub writer: Box<dyn Write + Send>,
    pending: Option<Pending>,
}

impl TraceFile {
    /// Split off the writer (for the recorder) and what finishes the replacement.
    pub fn into_parts(self) -> (Box<dyn Write + Send>, Option<Pending>) {
        (self.writer, self.pending)
    }
}

/// A `--force` recording in its temporary file. Dropped without [`Pending::commit`], the
/// temporary file is removed and the target is left as it was.
#[derive(Debug)]
pub struct Pending {
    tmp: PathBuf,
    target: PathBuf,
    committed: bool,
}

impl Pending {
    /// The recording is complete: it replaces the target.
    pub fn commit(mut self) -> anyhow::Result<()> {
        std::fs::rename(&self.tmp, &self.target).with_context(|| {
            format!(
                "cannot move the trace {} over {}",
                self.tmp.display(),
                self.target.display()
            )
        })?;
        self.committed = true;
        Ok(())
    }

    /// The recording failed: keep it where it is for inspection, say where.
    pub fn keep(mut self) -> PathBuf {
        self.committed = true;
        self.tmp.clone()
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn temporary_beside(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "trace".into());
    parent_of(path).join(format!(".{name}.{}.partial", std::process::id()))
}

fn create_exclusive(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(TRACE_FILE_MODE)
        .open(path)
}

/// A serial line or terminal as trace output must pass bytes unchanged (no `\n` →
/// `\r\n`, no flow-control characters): put it in raw mode.
fn make_raw_if_tty(fd: std::os::fd::RawFd) -> anyhow::Result<()> {
    // SAFETY: isatty only inspects the descriptor.
    if unsafe { libc::isatty(fd) } != 1 {
        return Ok(());
    }
    // SAFETY: termios is plain data; tcgetattr fills it for a valid terminal fd.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is an open terminal, `t` a valid out-pointer.
    if unsafe { libc::tcgetattr(fd, &mut t) } != 0 {
        return Err(std::io::Error::last_os_error()).context("tcgetattr on the trace output");
    }
    // SAFETY: cfmakeraw only edits the struct.
    unsafe { libc::cfmakeraw(&mut t) };
    // SAFETY: as above; TCSANOW applies the settings at once.
    if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) } != 0 {
        return Err(std::io::Error::last_os_error())
            .context("cannot put the trace output terminal in raw mode");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(r: anyhow::Result<TraceTarget>) -> u8 {
        super::super::exit::status_of(&r.expect_err("refused"))
    }

    #[test]
    fn existing_files_and_links_are_refused_without_force() {
        let dir = tempfile::tempdir().expect("tempdir");
        let old = dir.path().join("old.vmatrace");
        std::fs::write(&old, b"precious").expect("write");
        let link = dir.path().join("link.vmatrace");
        std::os::unix::fs::symlink(&old, &link).expect("symlink");
        for p in [&old, &link] {
            assert_eq!(
                code(TraceTarget::check(p.to_str().expect("utf8"), false)),
                2
            );
        }
        assert_eq!(std::fs::read(&old).expect("read"), b"precious");
        assert_eq!(
            TraceTarget::check(old.to_str().expect("utf8"), true).expect("forced"),
            TraceTarget::Replace(old.clone())
        );
        assert_eq!(
            code(TraceTarget::check(dir.path().to_str().expect("utf8"), true)),
            2
        );
    }

    #[test]
    fn a_forced_replacement_only_lands_when_committed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let old = dir.path().join("old.vmatrace");
        std::fs::write(&old, b"precious").expect("write");
        let t = TraceTarget::check(old.to_str().expect("utf8"), true).expect("forced");
        let (mut w, pending) = t.open().expect("open").into_parts();
        w.write_all(b"new trace").expect("write");
        drop(pending); // the session failed
        assert_eq!(std::fs::read(&old).expect("read"), b"precious");
        assert_eq!(
            std::fs::read_dir(dir.path()).expect("ls").count(),
            1,
            "no temp left"
        );
        let t = TraceTarget::check(old.to_str().expect("utf8"), true).expect("forced");
        let (mut w, pending) = t.open().expect("open").into_parts();
        w.write_all(b"new trace").expect("write");
        drop(w);
        pending.expect("pending").commit().expect("commit");
        assert_eq!(std::fs::read(&old).expect("read"), b"new trace");
    }

    #[test]
    fn devices_are_written_as_they_are_and_new_paths_need_a_directory() {
        assert_eq!(
            TraceTarget::check("/dev/null", false).expect("device"),
            TraceTarget::Device("/dev/null".into())
        );
        assert!(TraceTarget::check("/nonexistent-dir/x.vmatrace", false).is_err());
        let dir = tempfile::tempdir().expect("tempdir");
        let new = dir.path().join("new.vmatrace");
        let t = TraceTarget::check(new.to_str().expect("utf8"), false).expect("new");
        assert!(!new.exists(), "checking creates nothing");
        drop(t.open().expect("open"));
        assert!(new.exists());
    }
}
