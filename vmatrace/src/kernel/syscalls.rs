//! Names of the syscalls a writer of the per-VMA lock is usually inside (x86-64 numbers),
//! for the `SlowWait` event's `orig_ax`. A number not listed here is named from the
//! stack's `__x64_sys_*` / `__ia32_sys_*` frame when there is one, else shown as `#N`.

/// `(number, name)`: the x86-64 syscalls that map, unmap, change or fault memory, fork,
/// exec and exit (every path that takes VMA write locks), plus a few that commonly
/// surround them.
const X86_64: &[(u64, &str)] = &[
    (0, "read"),
    (1, "write"),
    (9, "mmap"),
    (10, "mprotect"),
    (11, "munmap"),
    (12, "brk"),
    (25, "mremap"),
    (26, "msync"),
    (27, "mincore"),
    (28, "madvise"),
    (30, "shmat"),
    (56, "clone"),
    (57, "fork"),
    (58, "vfork"),
    (59, "execve"),
    (60, "exit"),
    (67, "shmdt"),
    (149, "mlock"),
    (150, "munlock"),
    (151, "mlockall"),
    (152, "munlockall"),
    (202, "futex"),
    (216, "remap_file_pages"),
    (231, "exit_group"),
    (237, "mbind"),
    (322, "execveat"),
    (325, "mlock2"),
    (329, "pkey_mprotect"),
    (435, "clone3"),
    (440, "process_madvise"),
    (448, "process_mrelease"),
    (462, "mseal"),
];

/// The syscall's name: from the number, else from the stack's syscall entry frame.
/// `None` when the number could not be read (`u64::MAX`) and no frame names one (a
/// kernel thread such as khugepaged has no syscall).
pub fn name(nr: u64, frames: &[String]) -> Option<String> {
    if let Some((_, n)) = X86_64.iter().find(|(k, _)| *k == nr) {
        return Some((*n).to_string());
    }
    let from_stack = frames.iter().find_map(|f| {
        let f = f.split('+').next().unwrap_or(f);
        ["__x64_sys_", "__ia32_sys_", "__do_sys_", "__se_sys_"]
            .iter()
            .find_map(|p| f.strip_prefix(p))
            .map(str::to_string)
    });
    from_stack.or_else(|| (nr != u64::MAX && nr < 1 << 16).then(|| format!("#{nr}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_by_number_then_by_frame() {
        assert_eq!(name(10, &[]).as_deref(), Some("mprotect"));
        assert_eq!(name(231, &[]).as_deref(), Some("exit_group"));
        let frames = vec![
            "__vma_start_write+0x5a".to_string(),
            "__x64_sys_userfaultfd+0x1c".to_string(),
        ];
        assert_eq!(name(323, &frames).as_deref(), Some("userfaultfd"));
        assert_eq!(name(999, &[]).as_deref(), Some("#999"));
        // Not read, no syscall frame: a kernel thread.
        assert_eq!(name(u64::MAX, &["khugepaged+0x10".to_string()]), None);
    }
}
