//! The guest's initramfs: an uncompressed cpio "newc" archive written here (no external
//! `cpio` needed; the kernel unpacks uncompressed archives, and skipping compression
//! saves the TCG guest a decompression pass).
//!
//! Contents: busybox (static), the static `vmatrace`, `/init` (mounts the pseudo
//! filesystems, runs the scenario), and a `/dev/console` node so init has a console
//! before devtmpfs is mounted.

use std::io::{self, Write};

/// One archive member.
pub enum Entry<'a> {
    Dir {
        path: &'a str,
    },
    File {
        path: &'a str,
        mode: u32,
        data: &'a [u8],
    },
    Symlink {
        path: &'a str,
        target: &'a str,
    },
    CharDev {
        path: &'a str,
        major: u32,
        minor: u32,
    },
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

pub struct CpioWriter<W: Write> {
    out: W,
    ino: u32,
    written: u64,
}

impl<W: Write> CpioWriter<W> {
    pub fn new(out: W) -> Self {
        Self {
            out,
            ino: 1,
            written: 0,
        }
    }

    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.out.write_all(b)?;
        self.written += b.len() as u64;
        Ok(())
    }

    fn pad4(&mut self) -> io::Result<()> {
        let pad = (4 - (self.written % 4) as usize) % 4;
        self.put(&[0u8; 3][..pad])
    }

    fn header(&mut self, name: &str, mode: u32, size: usize, rdev: (u32, u32)) -> io::Result<()> {
        let name = name.trim_start_matches('/');
        let fields = [
            self.ino,
            mode,
            0, // uid
            0, // gid
            if mode & S_IFDIR == S_IFDIR { 2 } else { 1 },
            0, // mtime: fixed, so the archive is reproducible
            u32::try_from(size).map_err(|_| io::Error::other("cpio member over 4 GiB"))?,
            0,
            0,
            rdev.0,
            rdev.1,
            (name.len() + 1) as u32,
            0,
        ];
        self.ino += 1;
        let mut h = String::from("070701");
        for f in fields {
            h.push_str(&format!("{f:08x}"));
        }
        self.put(h.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad4()
    }

    pub fn add(&mut self, e: &Entry<'_>) -> io::Result<()> {
        match *e {
            Entry::Dir { path } => self.header(path, S_IFDIR | 0o755, 0, (0, 0)),
            Entry::File { path, mode, data } => {
                self.header(path, S_IFREG | (mode & 0o7777), data.len(), (0, 0))?;
                self.put(data)?;
                self.pad4()
            }
            Entry::Symlink { path, target } => {
                self.header(path, S_IFLNK | 0o777, target.len(), (0, 0))?;
                self.put(target.as_bytes())?;
                self.pad4()
            }
            Entry::CharDev { path, major, minor } => {
                self.header(path, S_IFCHR | 0o600, 0, (major, minor))
            }
        }
    }

    pub fn finish(mut self) -> io::Result<W> {
        self.header("TRAILER!!!", 0, 0, (0, 0))?;
        // Pad to 512 bytes as cpio(1) does; the kernel does not need it, but tools do.
        let pad = (512 - (self.written % 512) as usize) % 512;
        self.put(&vec![0u8; pad])?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Directories every guest image has (mount points and `/bin`).
pub const BASE_DIRS: &[&str] = &[
    "bin", "sbin", "dev", "proc", "sys", "tmp", "root", "etc", "mnt",
];

/// What every guest image holds besides its directories: the console, busybox with its
/// `sh` link, the static `vmatrace` and `/init`. The directories must be written first.
pub fn add_base<W: Write>(
    w: &mut CpioWriter<W>,
    busybox: &[u8],
    vmatrace: &[u8],
    init: &str,
) -> io::Result<()> {
    w.add(&Entry::CharDev {
        path: "dev/console",
        major: 5,
        minor: 1,
    })?;
    w.add(&Entry::File {
        path: "bin/busybox",
        mode: 0o755,
        data: busybox,
    })?;
    w.add(&Entry::Symlink {
        path: "bin/sh",
        target: "busybox",
    })?;
    w.add(&Entry::File {
        path: "bin/vmatrace",
        mode: 0o755,
        data: vmatrace,
    })?;
    w.add(&Entry::File {
        path: "init",
        mode: 0o755,
        data: init.as_bytes(),
    })
}

/// The whole guest image.
pub fn build(busybox: &[u8], vmatrace: &[u8], init: &str) -> io::Result<Vec<u8>> {
    let mut w = CpioWriter::new(Vec::with_capacity(busybox.len() + vmatrace.len() + 4096));
    for d in BASE_DIRS {
        w.add(&Entry::Dir { path: d })?;
    }
    add_base(&mut w, busybox, vmatrace, init)?;
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parse the archive back (newc) and check names, modes, sizes and alignment.
    #[test]
    fn round_trips_newc() {
        let img = build(b"BUSYBOX", b"VMATRACE!", "#!/bin/sh\necho hi\n").expect("build");
        assert_eq!(img.len() % 512, 0);
        let mut off = 0;
        let mut seen = Vec::new();
        loop {
            let h = std::str::from_utf8(&img[off..off + 110]).expect("ascii header");
            assert_eq!(&h[..6], "070701", "magic at {off}");
            let field = |i: usize| u32::from_str_radix(&h[6 + 8 * i..14 + 8 * i], 16).expect("hex");
            let (mode, size, namesize) = (field(1), field(6) as usize, field(11) as usize);
            let name =
                std::str::from_utf8(&img[off + 110..off + 110 + namesize - 1]).expect("name");
            assert_eq!(img[off + 110 + namesize - 1], 0);
            let data_at = (off + 110 + namesize).div_ceil(4) * 4;
            let data = &img[data_at..data_at + size];
            off = (data_at + size).div_ceil(4) * 4;
            if name == "TRAILER!!!" {
                break;
            }
            seen.push((name.to_string(), mode, data.to_vec(), (field(9), field(10))));
        }
        let get = |n: &str| {
            seen.iter()
                .find(|s| s.0 == n)
                .unwrap_or_else(|| panic!("{n} missing"))
        };
        assert_eq!(get("bin/vmatrace").2, b"VMATRACE!");
        assert_eq!(get("bin/vmatrace").1, S_IFREG | 0o755);
        assert_eq!(get("init").2, b"#!/bin/sh\necho hi\n");
        assert_eq!(get("bin/sh").1 & 0o170000, S_IFLNK);
        assert_eq!(get("bin/sh").2, b"busybox");
        assert_eq!(get("dev/console").1 & 0o170000, S_IFCHR);
        assert_eq!(get("dev/console").3, (5, 1));
        assert_eq!(get("proc").1 & 0o170000, S_IFDIR);
    }
}
