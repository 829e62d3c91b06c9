//! Reading the planner's input files with a bound on what is read and inflated.
//!
//! Operators pass these files by name (`vmatrace probes --btf FILE`), and a wrong name is
//! easy: `/dev/zero`, a disk image, or a 100 KB zstd file that inflates to gigabytes
//! would be read whole and get the process killed for memory. Every input has a size no
//! real one comes near; past it the read stops with an error naming the file and the
//! limit. Compressed input (zstd, gzip) is bounded by its *inflated* size, which is what
//! takes the memory.

use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use anyhow::Context;

/// What a file is and how large it may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    /// What the file should be, for the error ("a vmlinux BTF").
    pub what: &'static str,
    pub bytes: u64,
}

/// `/sys/kernel/btf/vmlinux`: about 5 MB on a distribution kernel, under 10 MB with
/// every option on.
pub const BTF: Limit = Limit {
    what: "a vmlinux BTF",
    bytes: 64 << 20,
};
/// `/proc/kallsyms`: about 15 MB with modules loaded, under 50 MB on the largest configs.
pub const KALLSYMS: Limit = Limit {
    what: "a /proc/kallsyms dump",
    bytes: 256 << 20,
};
/// `available_filter_functions` and the kprobe blacklist: a few MB at most.
pub const FTRACE_LIST: Limit = Limit {
    what: "an ftrace function list",
    bytes: 64 << 20,
};
/// A kernel `.config`: about 300 KB.
pub const CONFIG: Limit = Limit {
    what: "a kernel config",
    bytes: 16 << 20,
};

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} MiB", self.bytes >> 20)
    }
}

const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];

/// The contents of `path`, zstd or gzip input inflated, at most `limit.bytes` of them
/// (after inflating): more is an error, not a partial read. The file's size is not
/// trusted (procfs and sysfs report 0 or a page; `/dev/zero` reports 0): one byte past
/// the limit is read to tell "exactly the limit" from "more".
pub fn read_capped(path: &Path, limit: Limit) -> anyhow::Result<Vec<u8>> {
    let f = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut r = BufReader::new(f);
    let head = r
        .fill_buf()
        .with_context(|| format!("cannot read {}", path.display()))?;
    let (kind, inner): (&str, Box<dyn Read>) = if head.starts_with(ZSTD_MAGIC) {
        let d = zstd::stream::read::Decoder::with_buffer(r)
            .with_context(|| format!("{}: cannot start zstd decoding", path.display()))?;
        ("zstd", Box::new(d))
    } else if head.starts_with(GZIP_MAGIC) {
        ("gzip", Box::new(flate2::read::MultiGzDecoder::new(r)))
    } else {
        ("", Box::new(r))
    };
    let mut out = Vec::new();
    inner
        .take(limit.bytes + 1)
        .read_to_end(&mut out)
        .with_context(|| match kind {
            "" => format!("cannot read {}", path.display()),
            k => format!("{}: corrupt {k} data", path.display()),
        })?;
    if out.len() as u64 > limit.bytes {
        anyhow::bail!(
            "{}: more than {limit}{}, the limit for {}: not such a file?",
            path.display(),
            if kind.is_empty() {
                String::new()
            } else {
                format!(" once {kind}-inflated")
            },
            limit.what
        );
    }
    Ok(out)
}

/// [`read_capped`] as UTF-8 text.
pub fn read_capped_text(path: &Path, limit: Limit) -> anyhow::Result<String> {
    let bytes = read_capped(path, limit)?;
    String::from_utf8(bytes).with_context(|| format!("{}: not UTF-8 text", path.display()))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    const SMALL: Limit = Limit {
        what: "a test file",
        bytes: 1 << 20,
    };

    fn err(r: anyhow::Result<Vec<u8>>) -> String {
        format!("{:#}", r.expect_err("over the limit"))
    }

    #[test]
    fn plain_zstd_and_gzip_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let text = b"CONFIG_KPROBES=y\n".repeat(100);
        let plain = dir.path().join("plain");
        std::fs::write(&plain, &text).unwrap();
        let zst = dir.path().join("z.zst");
        std::fs::write(&zst, zstd::encode_all(&text[..], 3).unwrap()).unwrap();
        let gz = dir.path().join("g.gz");
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(&text).unwrap();
        std::fs::write(&gz, e.finish().unwrap()).unwrap();
        for p in [&plain, &zst, &gz] {
            assert_eq!(read_capped(p, SMALL).unwrap(), text, "{}", p.display());
        }
        // Exactly at the limit is fine; an empty file too.
        let exact = dir.path().join("exact");
        std::fs::write(&exact, vec![b'x'; 1 << 20]).unwrap();
        assert_eq!(read_capped(&exact, SMALL).unwrap().len(), 1 << 20);
        let empty = dir.path().join("empty");
        std::fs::write(&empty, b"").unwrap();
        assert!(read_capped(&empty, SMALL).unwrap().is_empty());
    }

    /// A sparse file far over the limit costs no disk, and the read stops at the limit.
    #[test]
    fn a_large_file_is_refused_with_its_name_and_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big");
        File::create(&big).unwrap().set_len(1 << 40).unwrap();
        let e = err(read_capped(&big, SMALL));
        assert!(e.contains(&big.display().to_string()), "{e}");
        assert!(
            e.contains("more than 1 MiB, the limit for a test file"),
            "{e}"
        );
    }

    /// A zstd bomb and a gzip bomb: small files whose inflated size is over the limit.
    #[test]
    fn compressed_input_is_bounded_by_its_inflated_size() {
        let dir = tempfile::tempdir().unwrap();
        let zeros = vec![0u8; 4 << 20];
        let zst = dir.path().join("bomb.zst");
        std::fs::write(&zst, zstd::encode_all(&zeros[..], 19).unwrap()).unwrap();
        assert!(std::fs::metadata(&zst).unwrap().len() < 4096);
        let e = err(read_capped(&zst, SMALL));
        assert!(e.contains("more than 1 MiB once zstd-inflated"), "{e}");
        let gz = dir.path().join("bomb.gz");
        let mut g = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        g.write_all(&zeros).unwrap();
        std::fs::write(&gz, g.finish().unwrap()).unwrap();
        let e = err(read_capped(&gz, SMALL));
        assert!(e.contains("more than 1 MiB once gzip-inflated"), "{e}");
    }

    #[test]
    fn corrupt_compressed_data_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.zst");
        std::fs::write(&p, [0x28, 0xb5, 0x2f, 0xfd, 1, 2, 3, 4, 5, 6]).unwrap();
        assert!(err(read_capped(&p, SMALL)).contains("corrupt zstd data"));
    }

    #[test]
    fn dev_zero_stops_at_the_limit() {
        let p = Path::new("/dev/zero");
        if !p.exists() {
            crate::testing::skip("dev_zero_stops_at_the_limit", "no /dev/zero");
            return;
        }
        assert!(err(read_capped(p, SMALL)).contains("more than 1 MiB"));
    }
}
