//! Field offsets of the `mmap_lock` tracepoint records, read from tracefs at load time.
//!
//! Classic tracepoint programs get the raw record; its layout is printed by the kernel in
//! `events/<category>/<name>/format`. Reading it (instead of assuming 8/24/25) keeps the
//! programs right if a kernel adds or reorders fields.

use std::path::{Path, PathBuf};

use vmatrace_common::globals::MmapLockTpOffsets;

/// One `field:` line of a tracepoint format: name, offset, size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FormatField {
    pub name: String,
    pub offset: u32,
    pub size: u32,
}

/// Parse a tracefs `format` file. Lines that do not look like fields are ignored.
pub fn parse_format(text: &str) -> Vec<FormatField> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("field:") else {
            continue;
        };
        let mut decl = None;
        let mut offset = None;
        let mut size = None;
        for (i, part) in rest.split(';').enumerate() {
            let part = part.trim();
            if i == 0 {
                decl = Some(part);
            } else if let Some(v) = part.strip_prefix("offset:") {
                offset = v.trim().parse().ok();
            } else if let Some(v) = part.strip_prefix("size:") {
                size = v.trim().parse().ok();
            }
        }
        // The declaration's last word is the name, possibly with `[N]` (arrays).
        let name = decl
            .and_then(|d| d.split_whitespace().last())
            .map(|n| n.split('[').next().unwrap_or(n).trim_start_matches('*'));
        if let (Some(name), Some(offset), Some(size)) = (name, offset, size) {
            out.push(FormatField {
                name: name.to_string(),
                offset,
                size,
            });
        }
    }
    out
}

fn find(fields: &[FormatField], name: &str, size: u32) -> Result<u32, String> {
    match fields.iter().find(|f| f.name == name) {
        Some(f) if f.size == size => Ok(f.offset),
        Some(f) => Err(format!(
            "field `{name}` has size {} (expected {size})",
            f.size
        )),
        None => Err(format!("no field `{name}`")),
    }
}

/// Offsets from the two formats (`mmap_lock_released`, `mmap_lock_acquire_returned`).
pub fn mmap_lock_offsets(released: &str, acquired: &str) -> Result<MmapLockTpOffsets, String> {
    let rel = parse_format(released);
    let acq = parse_format(acquired);
    let mm = find(&rel, "mm", 8)?;
    let write = find(&rel, "write", 1)?;
    if find(&acq, "mm", 8)? != mm || find(&acq, "write", 1)? != write {
        return Err("mm/write differ between the two mmap_lock tracepoints".into());
    }
    let success = find(&acq, "success", 1)?;
    Ok(MmapLockTpOffsets {
        mm,
        write,
        success,
        reserved: 0,
    })
}

/// The tracefs mount point, if any (`/sys/kernel/tracing`, or debugfs's `tracing`).
pub fn tracefs_dir() -> Option<PathBuf> {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.join("events").is_dir())
}

/// Read the offsets of this kernel; `Err` says why they could not be read.
pub fn read_mmap_lock_offsets(tracefs: &Path) -> Result<MmapLockTpOffsets, String> {
    let read = |name: &str| {
        let p = tracefs.join("events/mmap_lock").join(name).join("format");
        std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))
    };
    mmap_lock_offsets(
        &read("mmap_lock_released")?,
        &read("mmap_lock_acquire_returned")?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const RELEASED: &str = "name: mmap_lock_released\nID: 676\nformat:\n\
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\
\tfield:struct mm_struct * mm;\toffset:8;\tsize:8;\tsigned:0;\n\
\tfield:u64 memcg_id;\toffset:16;\tsize:8;\tsigned:0;\n\
\tfield:bool write;\toffset:24;\tsize:1;\tsigned:0;\n\n\
print fmt: \"mm=%p\", REC->mm\n";

    const ACQUIRED: &str = "format:\n\
\tfield:struct mm_struct * mm;\toffset:8;\tsize:8;\tsigned:0;\n\
\tfield:__data_loc char[] memcg_path;\toffset:16;\tsize:4;\tsigned:0;\n\
\tfield:bool write;\toffset:24;\tsize:1;\tsigned:0;\n\
\tfield:bool success;\toffset:25;\tsize:1;\tsigned:0;\n";

    #[test]
    fn parses_fields() {
        let f = parse_format(RELEASED);
        assert_eq!(f.len(), 5);
        assert_eq!(
            f[2],
            FormatField {
                name: "mm".into(),
                offset: 8,
                size: 8
            }
        );
        let a = parse_format(ACQUIRED);
        assert_eq!(a[1].name, "memcg_path");
    }

    #[test]
    fn offsets_from_formats() {
        let o = mmap_lock_offsets(RELEASED, ACQUIRED).unwrap();
        assert_eq!(o, MmapLockTpOffsets::DEFAULT);
        let moved = ACQUIRED.replace("offset:25", "offset:26");
        assert_eq!(mmap_lock_offsets(RELEASED, &moved).unwrap().success, 26);
    }

    #[test]
    fn missing_or_wrong_fields_are_errors() {
        let no_success = ACQUIRED.replace("success", "other");
        assert!(mmap_lock_offsets(RELEASED, &no_success).is_err());
        let wide_write = RELEASED.replace("offset:24;\tsize:1", "offset:24;\tsize:4");
        assert!(mmap_lock_offsets(&wide_write, ACQUIRED).is_err());
        assert!(mmap_lock_offsets("", "").is_err());
    }
}
