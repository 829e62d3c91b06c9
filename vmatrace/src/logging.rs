//! Diagnostics on stderr: `vmatrace: warning: …`. Under systemd (stderr connected to the
//! journal, `JOURNAL_STREAM` naming it) each line starts with the syslog priority
//! (`<4>`), which journald turns into the entry's level. The level comes from
//! `VMATRACE_LOG` (`error`, `warn`, `info`, `debug`, `trace`; default `warn`).

use std::io::Write;

use log::{Level, LevelFilter, Log, Metadata, Record};

struct StderrLogger {
    level: LevelFilter,
    journal: bool,
}

impl Log for StderrLogger {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        m.level() <= self.level
    }

    fn log(&self, r: &Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let _ = std::io::stderr()
            .lock()
            .write_all(line(r.level(), &r.args().to_string(), self.journal).as_bytes());
    }

    fn flush(&self) {}
}

/// One diagnostic line, newline-terminated.
fn line(level: Level, msg: &str, journal: bool) -> String {
    let (prio, word) = match level {
        Level::Error => (3, "error"),
        Level::Warn => (4, "warning"),
        Level::Info => (6, "info"),
        Level::Debug | Level::Trace => (7, "debug"),
    };
    let prefix = if journal {
        format!("<{prio}>")
    } else {
        String::new()
    };
    // Keep one message on one line: a journal entry or a log shipper sees one record.
    let msg = msg.replace('\n', " | ");
    format!("{prefix}vmatrace: {word}: {msg}\n")
}

fn level_from_env() -> LevelFilter {
    std::env::var("VMATRACE_LOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(LevelFilter::Warn)
}

/// True when stderr is the journal stream systemd set up for this service.
fn stderr_is_journal() -> bool {
    let Ok(want) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = want.split_once(':') else {
        return false;
    };
    // SAFETY: fstat on fd 2 fills a plain struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fd 2 may be closed; fstat then fails and we say no.
    if unsafe { libc::fstat(2, &mut st) } != 0 {
        return false;
    }
    dev.parse::<u64>().ok() == Some(st.st_dev) && ino.parse::<u64>().ok() == Some(st.st_ino)
}

/// Install the logger once per process (later calls do nothing).
pub fn init() {
    let level = level_from_env();
    let logger = StderrLogger {
        level,
        journal: stderr_is_journal(),
    };
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        log::set_max_level(level);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_carry_the_level_and_stay_one_line() {
        assert_eq!(
            line(Level::Warn, "anomaly log x: No space left on device", false),
            "vmatrace: warning: anomaly log x: No space left on device\n"
        );
        assert_eq!(
            line(Level::Error, "a\nb", true),
            "<3>vmatrace: error: a | b\n"
        );
    }
}
