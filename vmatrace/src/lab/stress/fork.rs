//! Fork paths: `dup_mmap` write-locks every VMA of the parent (killable since 6.19), so
//! forking while readers fault contends with them; and a process killed by SIGKILL in the
//! middle of forking exercises the killable write lock's -EINTR path.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use super::{Shared, ops::Op, rng::Rng, sys};

/// Fork this (multi-threaded) process in a loop; each child exits at once.
pub fn forker(shared: &Shared, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match fork_and_reap() {
            Ok(()) => shared.ops.add(Op::Fork, 1),
            Err(e) => {
                shared.error(Op::Fork, &e);
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn fork_and_reap() -> std::io::Result<()> {
    // SAFETY: the child calls only `_exit`, which is async-signal-safe, so forking a
    // multi-threaded process is sound.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: see above; _exit does not run atexit handlers or flush stdio.
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child; `status` is a valid out pointer.
    if unsafe { libc::waitpid(pid, &mut status, 0) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// What a fork victim prints once it is in its fork loop.
const FORKING: &str = "forking";

/// Start `vmatrace stress --fork-victim` processes and SIGKILL each a few milliseconds
/// after it says it is forking: it then spends nearly all its time in `dup_mmap`, whose
/// killable write locks wait for the victim's own faulting reader, so some kills land
/// inside such a wait (-EINTR).
pub fn killer(shared: &Shared, stop: &AtomicBool, seed: u64, asleep: bool) {
    let mut rng = Rng::new(seed);
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            shared.error(Op::KilledDuringFork, &e);
            return;
        }
    };
    if asleep {
        // The waits it looks for last about as long as one fault (a millisecond when
        // the faults are delayed): at real-time priority a poll runs as soon as its sleep
        // ends, where other busy tasks would otherwise hold the CPU past the wait. Best
        // effort (it needs root); the polls sleep between reads, so this thread cannot
        // hog a CPU. The victims it starts must not inherit the policy (their reader
        // never sleeps): reset on fork.
        let param = libc::sched_param { sched_priority: 1 };
        let policy = libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK;
        // SAFETY: sets this thread's own policy; `param` is a valid sched_param.
        let _ = unsafe { libc::sched_setscheduler(0, policy, &param) };
    }
    while !stop.load(Ordering::Relaxed) {
        // Waited for asleep, a victim is better small: its forks are short, so the
        // waits for its reader are a larger share of its time (and of its events).
        let vmas = if asleep {
            ASLEEP_VICTIM_VMAS
        } else {
            VICTIM_VMAS
        };
        let child = Command::new(&exe)
            .args([
                "stress",
                "--fork-victim",
                "--victim-vmas",
                &vmas.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn();
        let mut child: Child = match child {
            Ok(c) => c,
            Err(e) => {
                shared.error(Op::KilledDuringFork, &e);
                return;
            }
        };
        // Let it map its VMAs and get into its fork loop (it says so; under TCG that
        // takes longer than any fixed head start), then kill it mid-flight.
        if let Some(out) = child.stdout.take() {
            let mut line = String::new();
            let _ = BufReader::new(out).read_line(&mut line);
        }
        let in_wait = if asleep {
            wait_for_sleep(child.id(), Instant::now() + ASLEEP_WITHIN)
        } else {
            std::thread::sleep(Duration::from_millis(1 + rng.below(20) as u64));
            false
        };
        let killed = child.kill().is_ok();
        let _ = child.wait();
        if killed {
            shared.ops.add(Op::KilledDuringFork, 1);
            if in_wait {
                shared.ops.add(Op::KilledInWait, 1);
            }
        }
    }
}

/// Poll the victim's forking thread until it sleeps killably in a VMA write-lock wait
/// (`D` in `/proc/PID/stat`, a VMA-lock function in its `wchan`: `dup_mmap` waiting for
/// a reader to leave a VMA) or `deadline` passes. True when it was seen there: a SIGKILL
/// now lands inside the wait, which the kernel ends with -EINTR. A random instant would
/// rarely: the waits last as long as a reader's fault, the forks between them much
/// longer. A `D` elsewhere (the mmap lock's rwsem, a page allocation) is waited out: a
/// kill there interrupts no VMA wait. Without a readable `wchan`, any `D` counts.
fn wait_for_sleep(pid: u32, deadline: Instant) -> bool {
    let path = format!("/proc/{pid}/task/{pid}/stat");
    let mut buf = [0u8; 512];
    let mut wchan = [0u8; 128];
    let Ok(f) = std::fs::File::open(&path) else {
        return false;
    };
    let w = std::fs::File::open(format!("/proc/{pid}/task/{pid}/wchan")).ok();
    while Instant::now() < deadline {
        match std::os::unix::fs::FileExt::read_at(&f, &mut buf, 0) {
            Ok(n) if stat_state(&buf[..n]) == Some(b'D') => {
                let at = w
                    .as_ref()
                    .and_then(|w| std::os::unix::fs::FileExt::read_at(w, &mut wchan, 0).ok());
                if at.is_none_or(|n| in_vma_wait(&wchan[..n])) {
                    return true;
                }
                std::thread::sleep(POLL);
            }
            Ok(_) => std::thread::sleep(POLL),
            Err(_) => return false,
        }
    }
    false
}

/// Whether a `wchan` (the function a task sleeps in) is a VMA write-lock wait
/// (`__vma_start_exclude_readers` on 7.x, `__vma_enter_locked` on 6.15–6.19, or a caller
/// they were inlined into: every one has `vma` in its name), or unknown (empty, `0`:
/// the kernel hides it).
fn in_vma_wait(wchan: &[u8]) -> bool {
    let w = wchan.trim_ascii();
    w.is_empty() || w == b"0" || w.windows(3).any(|x| x == b"vma")
}

/// Between two reads of the victim's state.
const POLL: Duration = Duration::from_micros(100);

/// The state letter of a `/proc/PID/stat` line: the field after the comm, which is in
/// parentheses and may itself hold spaces and parentheses.
fn stat_state(line: &[u8]) -> Option<u8> {
    let close = line.iter().rposition(|b| *b == b')')?;
    line.get(close + 2).copied()
}

/// VMAs the victim maps: many small ones, so each `dup_mmap` takes a while and a SIGKILL
/// lands inside it more often than not.
pub const VICTIM_VMAS: u64 = 512;
/// The same for victims killed asleep (`--kill-asleep`).
const ASLEEP_VICTIM_VMAS: u64 = 64;
/// How long the killer waits for a victim to sleep before it kills it anyway.
const ASLEEP_WITHIN: Duration = Duration::from_secs(3);
/// The victim exits by itself after this long if nobody kills it.
const VICTIM_LIFETIME: Duration = Duration::from_secs(30);

/// `vmatrace stress --fork-victim`: map `n_vmas` VMAs, fault on them from a second thread,
/// and fork in a loop until killed.
pub fn victim(n_vmas: usize) -> anyhow::Result<()> {
    // SAFETY: prctl with PR_SET_PDEATHSIG only sets a flag on this task.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    let page = sys::page_size();
    let mut vmas = Vec::with_capacity(n_vmas);
    let base = sys::mmap_anon(0, n_vmas * page, sys::RW, libc::MAP_NORESERVE)?;
    for i in 0..n_vmas {
        let addr = base + i * page;
        // Alternate protections so neighbours cannot merge into one VMA.
        if i % 2 == 1 {
            sys::mprotect(addr, page, sys::RWX)?;
        }
        vmas.push(addr);
    }
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let addr = vmas[i % n_vmas];
                // SAFETY: every page of the victim's range stays mapped RW or RWX.
                unsafe { (addr as *mut u8).write_volatile(1) };
                if i.is_multiple_of(n_vmas) {
                    let _ = sys::madvise_dontneed(base, n_vmas * page);
                }
                i += 1;
            }
        });
        // The killer waits for this line (stdout is its pipe; a closed pipe is fine).
        let mut out = std::io::stdout();
        let _ = writeln!(out, "{FORKING}").and_then(|()| out.flush());
        let t0 = Instant::now();
        while t0.elapsed() < VICTIM_LIFETIME {
            if fork_and_reap().is_err() {
                break;
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_follows_the_last_parenthesis() {
        assert_eq!(stat_state(b"42 (stress) D 1 42 42 0"), Some(b'D'));
        assert_eq!(stat_state(b"42 (a) b) (c) S 1 42"), Some(b'S'));
        assert_eq!(stat_state(b"42 (stress"), None);
        assert_eq!(stat_state(b"42 (x)"), None);
    }

    #[test]
    fn only_vma_lock_waits_or_unknown_places_count() {
        for w in [
            &b"__vma_start_exclude_readers"[..],
            b"__vma_enter_locked",
            b"vma_start_write_killable",
            b"",
            b"0\n",
        ] {
            assert!(in_vma_wait(w), "{}", String::from_utf8_lossy(w));
        }
        for w in [&b"rwsem_down_write_slowpath"[..], b"folio_wait_bit_common"] {
            assert!(!in_vma_wait(w), "{}", String::from_utf8_lossy(w));
        }
    }
}
