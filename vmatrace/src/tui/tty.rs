//! The terminal device under the dashboard, checked with our own poll(2) so that a
//! hang-up (the ssh connection dropped, the terminal window closed, the tmux server
//! killed) ends the dashboard. crossterm 0.29's default reader (mio) reads again forever
//! when a hung-up terminal returns end of file, at 100 % CPU; its `use-dev-tty` reader,
//! which we use, gives up at the end of each wait, but never says why.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};

/// The device crossterm reads: stdin when it is a terminal, `/dev/tty` otherwise.
pub struct Tty {
    fd: RawFd,
    /// Keeps `/dev/tty` open when that is the device.
    _opened: Option<File>,
}

impl Tty {
    pub fn open() -> io::Result<Self> {
        use std::io::IsTerminal;
        if io::stdin().is_terminal() {
            return Ok(Tty {
                fd: 0,
                _opened: None,
            });
        }
        let f = File::options().read(true).write(true).open("/dev/tty")?;
        Ok(Tty {
            fd: f.as_raw_fd(),
            _opened: Some(f),
        })
    }

    /// Whether the terminal has hung up (POLLHUP, or POLLERR/POLLNVAL: gone either way),
    /// without waiting.
    pub fn hung_up(&self) -> bool {
        matches!(revents(self.fd), Ok(r) if r & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0)
    }
}

/// `poll(2)` on one descriptor for no event, without waiting: what it reports anyway
/// (POLLHUP, POLLERR, POLLNVAL), 0 on EINTR.
fn revents(fd: RawFd) -> io::Result<i16> {
    let mut p = libc::pollfd {
        fd,
        events: 0,
        revents: 0,
    };
    // SAFETY: `p` is one valid pollfd for the duration of the call.
    let r = unsafe { libc::poll(&mut p, 1, 0) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(0)
        } else {
            Err(e)
        };
    }
    Ok(if r == 0 { 0 } else { p.revents })
}

/// Point each standard stream (stdin, stdout, stderr) whose terminal hung up at
/// `/dev/null`: what the session prints after a hang-up (the summary, a last warning)
/// has nowhere to go, and writing it to the dead terminal fails with EIO, which Rust's
/// `println!`/`eprintln!` turn into a panic. Streams on files and pipes are left alone
/// (a pipe whose reader left reports POLLERR, not POLLHUP: its EPIPE keeps its meaning,
/// see `cli::exit`). Called by the dashboard and before every final print.
pub fn detach_hung_up_streams() {
    let Ok(null) = File::options().read(true).write(true).open("/dev/null") else {
        return;
    };
    for fd in 0..=2 {
        let hung_up = matches!(revents(fd), Ok(r) if r & libc::POLLHUP != 0);
        if hung_up {
            // SAFETY: both descriptors are open; dup2 atomically replaces `fd`.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::FromRawFd;

    /// A pseudo-terminal pair: (master, slave).
    fn pty() -> (File, File) {
        // SAFETY: plain libc calls on descriptors this test owns.
        unsafe {
            let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
            assert!(m >= 0, "posix_openpt: {}", io::Error::last_os_error());
            assert_eq!(libc::grantpt(m), 0);
            assert_eq!(libc::unlockpt(m), 0);
            let name = std::ffi::CStr::from_ptr(libc::ptsname(m)).to_owned();
            let s = libc::open(name.as_ptr(), libc::O_RDWR | libc::O_NOCTTY);
            assert!(s >= 0, "open {name:?}: {}", io::Error::last_os_error());
            (File::from_raw_fd(m), File::from_raw_fd(s))
        }
    }

    #[test]
    fn input_then_hang_up() {
        use std::io::Write;
        let (mut master, slave) = pty();
        let tty = Tty {
            fd: slave.as_raw_fd(),
            _opened: None,
        };
        assert!(!tty.hung_up());
        master.write_all(b"q\n").unwrap(); // input pending is no hang-up
        assert!(!tty.hung_up());
        drop(master);
        assert!(tty.hung_up());
    }
}
