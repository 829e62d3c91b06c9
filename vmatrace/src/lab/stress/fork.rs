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
pub fn killer(shared: &Shared, stop: &AtomicBool, seed: u64) {
    let mut rng = Rng::new(seed);
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            shared.error(Op::KilledDuringFork, &e);
            return;
        }
    };
    while !stop.load(Ordering::Relaxed) {
        let child = Command::new(&exe)
            .args(["stress", "--fork-victim"])
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
        std::thread::sleep(Duration::from_millis(1 + rng.below(20) as u64));
        let killed = child.kill().is_ok();
        let _ = child.wait();
        if killed {
            shared.ops.add(Op::KilledDuringFork, 1);
        }
    }
}

/// VMAs the victim maps: many small ones, so each `dup_mmap` takes a while and a SIGKILL
/// lands inside it more often than not.
const VICTIM_VMAS: usize = 512;
/// The victim exits by itself after this long if nobody kills it.
const VICTIM_LIFETIME: Duration = Duration::from_secs(30);

/// `vmatrace stress --fork-victim`: map many VMAs, fault on them from a second thread, and
/// fork in a loop until killed.
pub fn victim() -> anyhow::Result<()> {
    // SAFETY: prctl with PR_SET_PDEATHSIG only sets a flag on this task.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    let page = sys::page_size();
    let mut vmas = Vec::with_capacity(VICTIM_VMAS);
    let base = sys::mmap_anon(0, VICTIM_VMAS * page, sys::RW, libc::MAP_NORESERVE)?;
    for i in 0..VICTIM_VMAS {
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
                let addr = vmas[i % VICTIM_VMAS];
                // SAFETY: every page of the victim's range stays mapped RW or RWX.
                unsafe { (addr as *mut u8).write_volatile(1) };
                if i.is_multiple_of(VICTIM_VMAS) {
                    let _ = sys::madvise_dontneed(base, VICTIM_VMAS * page);
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
