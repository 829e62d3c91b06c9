//! While the dashboard owns the terminal, anything written to stderr (log records, a
//! library's warning) would land on top of the screen. Redirect fd 2 into a pipe whose
//! lines feed the log pane, and put it back on exit (also from the panic hook, so the
//! panic message reaches the real terminal).

use std::io::{BufRead, BufReader};
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// The saved original stderr, -1 when not redirected. Global so the panic hook can reach it.
static SAVED_STDERR: AtomicI32 = AtomicI32::new(-1);

pub struct StderrCapture {
    reader: Option<JoinHandle<()>>,
}

/// Lines captured so far (the dashboard loop drains them into the log pane).
pub type Captured = Arc<Mutex<Vec<String>>>;

impl StderrCapture {
    /// Redirect fd 2 into a pipe; captured lines are appended to `out`.
    pub fn start(out: Captured) -> std::io::Result<Self> {
        let mut fds = [0i32; 2];
        // SAFETY: `fds` is a valid 2-element array for pipe2 to fill.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both descriptors are open and owned by us only.
        let (read_end, write_end) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: dup of fd 2 has no memory-safety preconditions.
        let saved = unsafe { libc::fcntl(2, libc::F_DUPFD_CLOEXEC, 3) };
        if saved < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: both descriptors are open; dup2 atomically replaces fd 2.
        if unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&write_end), 2) } < 0 {
            let e = std::io::Error::last_os_error();
            // SAFETY: `saved` is our own descriptor.
            unsafe { libc::close(saved) };
            return Err(e);
        }
        // fd 2 now holds the write side; our copy can go, so EOF arrives once fd 2 is restored.
        drop(write_end);
        SAVED_STDERR.store(saved, Ordering::SeqCst);
        let reader = std::thread::Builder::new()
            .name("vmatrace-stderr".into())
            .spawn(move || {
                let r = BufReader::new(std::fs::File::from(read_end));
                for line in r.lines() {
                    let Ok(line) = line else { break };
                    if let Ok(mut v) = out.lock() {
                        v.push(line);
                    }
                }
            })?;
        Ok(Self {
            reader: Some(reader),
        })
    }

    /// Put the original stderr back (idempotent).
    pub fn restore() {
        let saved = SAVED_STDERR.swap(-1, Ordering::SeqCst);
        if saved >= 0 {
            // SAFETY: `saved` is the descriptor we duplicated in `start`; dup2 onto 2 closes
            // the pipe's write side, which ends the reader thread.
            unsafe {
                libc::dup2(saved, 2);
                libc::close(saved);
            }
        }
    }
}

impl Drop for StderrCapture {
    fn drop(&mut self) {
        Self::restore();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Raw writes to fd 2 (what a logger or a C library does) land in the capture, and
    /// fd 2 is the original again afterwards.
    #[test]
    fn fd2_writes_are_captured_then_restored() {
        let before = std::fs::read_link("/proc/self/fd/2").ok();
        let lines: Captured = Arc::default();
        let cap = StderrCapture::start(lines.clone()).expect("capture");
        let msg = b"vmatrace-capture-test line one\nline two\n";
        // SAFETY: writing a valid buffer to fd 2.
        let n = unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
        assert_eq!(n, msg.len() as isize);
        drop(cap);
        let got = lines.lock().unwrap().clone();
        assert_eq!(got, ["vmatrace-capture-test line one", "line two"]);
        assert_eq!(std::fs::read_link("/proc/self/fd/2").ok(), before);
    }
}
