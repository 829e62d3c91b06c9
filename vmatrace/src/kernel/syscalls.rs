//! Where a slow writer was when it waited: inside a syscall (named from the `SlowWait`
//! event's `orig_ax`, x86-64 numbers), a page fault, or a kernel thread.
//!
//! `orig_ax` alone does not say it: it is -1 outside a syscall (a task killed in a page
//! fault exits from the fault's return path), and a kernel thread's register frame is
//! zeroes (syscall 0, `read`). So the number is trusted only when the stack reaches the
//! syscall entry; otherwise the stack says where the writer came from: a page fault, a
//! kernel thread, or a task interrupted in user mode that exits on a fatal signal (its
//! `exit_mmap` write-locks every VMA; seen on 7.3.4 from a timer interrupt's return).

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
    (61, "wait4"),
    (67, "shmdt"),
    (149, "mlock"),
    (150, "munlock"),
    (151, "mlockall"),
    (152, "munlockall"),
    (202, "futex"),
    (216, "remap_file_pages"),
    (231, "exit_group"),
    (237, "mbind"),
    (247, "waitid"),
    (322, "execveat"),
    (325, "mlock2"),
    (329, "pkey_mprotect"),
    (435, "clone3"),
    (440, "process_madvise"),
    (448, "process_mrelease"),
    (462, "mseal"),
];

/// Where the writer was.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Inside this syscall.
    Syscall(String),
    /// In a page fault's path (e.g. exiting on a fatal signal taken at its return).
    PageFault,
    /// A kernel thread (khugepaged, kswapd, ...): no syscall.
    KernelThread,
    /// Exiting on a fatal signal delivered outside a syscall and a page fault (at an
    /// interrupt's return to user mode).
    SignalExit,
    /// Neither the number nor the stack says (no stack kept, `orig_ax` unread).
    Unknown,
}

impl Origin {
    /// Short text for a table cell and the logs.
    pub fn label(&self) -> &str {
        match self {
            Origin::Syscall(s) => s,
            Origin::PageFault => "page fault",
            Origin::KernelThread => "kernel thread",
            Origin::SignalExit => "exit on signal",
            Origin::Unknown => "?",
        }
    }

    /// The syscall's name, when the writer was in one.
    pub fn syscall(&self) -> Option<&str> {
        match self {
            Origin::Syscall(s) => Some(s),
            _ => None,
        }
    }

    /// Stable key (JSON): `syscall`, `page_fault`, `kernel_thread`, `signal_exit`,
    /// `unknown`.
    pub fn key(&self) -> &'static str {
        match self {
            Origin::Syscall(_) => "syscall",
            Origin::PageFault => "page_fault",
            Origin::KernelThread => "kernel_thread",
            Origin::SignalExit => "signal_exit",
            Origin::Unknown => "unknown",
        }
    }
}

fn function(frame: &str) -> &str {
    frame.split('+').next().unwrap_or(frame)
}

/// The syscall named by a `__x64_sys_*`-style frame.
fn syscall_frame(frames: &[String]) -> Option<&str> {
    frames.iter().find_map(|f| {
        let f = function(f);
        ["__x64_sys_", "__ia32_sys_", "__do_sys_", "__se_sys_"]
            .iter()
            .find_map(|p| f.strip_prefix(p))
    })
}

/// Whether the stack reaches the syscall entry.
fn in_syscall(frames: &[String]) -> bool {
    syscall_frame(frames).is_some()
        || frames.iter().any(|f| {
            matches!(
                function(f),
                "do_syscall_64" | "x64_sys_call" | "entry_SYSCALL_64_after_hwframe"
            )
        })
}

/// Where the writer with syscall number `nr` (`u64::MAX`: none or unread) and kernel
/// stack `frames` (innermost first; empty when none was kept) was.
pub fn origin(nr: u64, frames: &[String]) -> Origin {
    let named = || {
        X86_64
            .iter()
            .find(|(k, _)| *k == nr)
            .map(|(_, n)| (*n).to_string())
            .or_else(|| syscall_frame(frames).map(str::to_string))
            .or_else(|| (nr < 1 << 16).then(|| format!("#{nr}")))
    };
    if frames.is_empty() {
        // No stack to check the number against: a number is all there is.
        return match nr {
            u64::MAX => Origin::Unknown,
            _ => named().map_or(Origin::Unknown, Origin::Syscall),
        };
    }
    if in_syscall(frames) {
        return named().map_or(Origin::Unknown, Origin::Syscall);
    }
    let has = |name: &str| frames.iter().any(|f| function(f) == name);
    if has("kthread") || has("ret_from_fork") && !has("syscall_exit_to_user_mode") {
        Origin::KernelThread
    } else if has("asm_exc_page_fault") || has("exc_page_fault") {
        Origin::PageFault
    } else if has("get_signal") || has("do_exit") {
        Origin::SignalExit
    } else {
        Origin::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(f: &[&str]) -> Vec<String> {
        f.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_number_counts_only_when_the_stack_reaches_the_syscall_entry() {
        let mprotect = frames(&["mprotect_fixup+0xca", "__x64_sys_mprotect+0x1f"]);
        assert_eq!(origin(10, &mprotect), Origin::Syscall("mprotect".into()));
        // Unlisted number, named by its frame.
        let uffd = frames(&["__vma_start_write+0x54", "__x64_sys_userfaultfd+0x1c"]);
        assert_eq!(origin(323, &uffd).label(), "userfaultfd");
        let entry = frames(&["do_mmap+0x5b8", "do_syscall_64+0xc2"]);
        assert_eq!(origin(999, &entry).label(), "#999");
        // Seen on 7.3.4: a task killed in a page fault exits from the fault's return.
        let fault = frames(&[
            "__vma_start_write+0x54",
            "exit_mmap+0x1b6",
            "do_exit+0x288",
            "get_signal+0x8da",
            "irqentry_exit+0x2df",
            "asm_exc_page_fault+0x26",
        ]);
        assert_eq!(origin(u64::MAX, &fault), Origin::PageFault);
        // khugepaged: its register frame is zeroes, which is not `read`.
        let kthread = frames(&[
            "collapse_huge_page+0x3c4",
            "khugepaged+0x74c",
            "kthread+0xe5",
            "ret_from_fork+0x2bc",
        ]);
        assert_eq!(origin(0, &kthread), Origin::KernelThread);
        // Seen on 7.3.4 (CI): killed while in user mode, exiting from a timer
        // interrupt's return; no syscall, no page fault.
        let signal = frames(&[
            "__vma_start_write+0x56",
            "free_pgtables+0x132",
            "exit_mmap+0x1b6",
            "mmput+0x4d",
            "do_exit+0x28e",
            "do_group_exit+0x33",
            "get_signal+0x8f5",
            "arch_do_signal_or_restart+0x3e",
            "irqentry_exit+0x2df",
            "asm_sysvec_apic_timer_interrupt+0x1a",
        ]);
        assert_eq!(origin(u64::MAX, &signal), Origin::SignalExit);
        assert_eq!(origin(u64::MAX, &signal[..3]), Origin::Unknown);
        // Without a stack, the number is all there is.
        assert_eq!(origin(231, &[]), Origin::Syscall("exit_group".into()));
        assert_eq!(origin(u64::MAX, &[]), Origin::Unknown);
    }
}
