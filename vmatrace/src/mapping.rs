//! Which mapping a VMA is, named as `/proc/PID/maps` names it: the file's path, `[heap]`,
//! `[stack]`, `[vdso]`, `[anon:NAME]`, or `[anon]` for an unnamed anonymous mapping.
//!
//! Resolved in userspace, by the process's tgid and the VMA's range from the event, while
//! the process lives: only for a live source. A replayed trace may come from another
//! host, where this machine's `/proc` would name the wrong process (or none); there the
//! name is absent.
//!
//! [`MappingNames`] caches both the answers (a bounded table, misses included: a process
//! that exited stays unnamed without another read) and each process's parsed maps for a
//! moment, so a screen of rows from one process costs one read.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One line of `/proc/PID/maps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapsEntry {
    pub start: u64,
    pub end: u64,
    /// The path or pseudo-path; `[anon]` when the line has none.
    pub name: String,
}

/// The name `/proc/PID/maps` gives an anonymous mapping with no name: none. Shown as
/// this so that an empty cell never reads as "not resolved".
pub const ANON: &str = "[anon]";

/// Parse `/proc/PID/maps` text. Lines that do not parse are skipped (the file is read
/// while the process changes its mappings; a torn line is not worth failing for).
pub fn parse_maps(text: &str) -> Vec<MapsEntry> {
    text.lines().filter_map(parse_line).collect()
}

/// `start-end perms offset dev inode [pathname]`; the pathname may contain spaces
/// (everything after the inode's padding) and ends in ` (deleted)` for a removed file.
fn parse_line(line: &str) -> Option<MapsEntry> {
    let mut rest = line;
    let mut field = || {
        rest = rest.trim_start_matches(' ');
        let end = rest.find(' ').unwrap_or(rest.len());
        let (f, r) = rest.split_at(end);
        rest = r;
        (!f.is_empty()).then_some(f)
    };
    let range = field()?;
    for _ in 0..4 {
        field()?; // perms, offset, dev, inode
    }
    let (start, end) = range.split_once('-')?;
    let start = u64::from_str_radix(start, 16).ok()?;
    let end = u64::from_str_radix(end, 16).ok()?;
    let name = rest.trim_start_matches(' ');
    Some(MapsEntry {
        start,
        end,
        name: if name.is_empty() {
            ANON.to_string()
        } else {
            name.to_string()
        },
    })
}

/// The name of the VMA `[start, end)` in `maps`: the entry with that exact range, else
/// the one holding `start` (the VMA was split or merged since the event: still the same
/// mapping).
pub fn name_in(maps: &[MapsEntry], start: u64, end: u64) -> Option<&str> {
    maps.iter()
        .find(|m| m.start == start && m.end == end)
        .or_else(|| maps.iter().find(|m| m.start <= start && start < m.end))
        .map(|m| m.name.as_str())
}

/// Answers kept; when full the table starts again (a re-read costs one `/proc` read per
/// process on screen).
pub const MAX_NAMES: usize = 4096;
/// Processes whose parsed maps are kept at once.
const MAX_PROCESSES: usize = 64;
/// How long a process's parsed maps answer for it: new mappings appear within this.
const MAPS_FRESH: Duration = Duration::from_secs(2);

type Key = (u32, u64, u64);

/// Resolves (tgid, vm_start, vm_end) to a mapping name from `/proc`, cached.
#[derive(Debug)]
pub struct MappingNames {
    proc_root: PathBuf,
    names: HashMap<Key, Option<Arc<str>>>,
    maps: HashMap<u32, (Instant, Option<Vec<MapsEntry>>)>,
}

impl Default for MappingNames {
    fn default() -> Self {
        Self::with_proc_root("/proc")
    }
}

impl MappingNames {
    /// A resolver reading `<root>/PID/maps` (tests point it elsewhere).
    pub fn with_proc_root(root: impl Into<PathBuf>) -> Self {
        Self {
            proc_root: root.into(),
            names: HashMap::new(),
            maps: HashMap::new(),
        }
    }

    /// Cached answer, without reading anything (`None`: not asked yet).
    pub fn cached(&self, tgid: u32, start: u64, end: u64) -> Option<Option<Arc<str>>> {
        self.names.get(&(tgid, start, end)).cloned()
    }

    /// The mapping's name, or `None` when the process is gone, unreadable or no longer
    /// maps that address.
    pub fn resolve(&mut self, tgid: u32, start: u64, end: u64) -> Option<Arc<str>> {
        let key = (tgid, start, end);
        if let Some(hit) = self.names.get(&key) {
            return hit.clone();
        }
        let now = Instant::now();
        let fresh = self
            .maps
            .get(&tgid)
            .is_some_and(|(at, _)| now.duration_since(*at) < MAPS_FRESH);
        if !fresh {
            if self.maps.len() >= MAX_PROCESSES {
                self.maps
                    .retain(|_, (at, _)| now.duration_since(*at) < MAPS_FRESH);
                if self.maps.len() >= MAX_PROCESSES {
                    self.maps.clear();
                }
            }
            let path = self.proc_root.join(tgid.to_string()).join("maps");
            let parsed = std::fs::read_to_string(path).ok().map(|t| parse_maps(&t));
            self.maps.insert(tgid, (now, parsed));
        }
        let name = self
            .maps
            .get(&tgid)
            .and_then(|(_, m)| m.as_deref())
            .and_then(|m| name_in(m, start, end))
            .map(Arc::from);
        if self.names.len() >= MAX_NAMES {
            self.names.clear();
        }
        self.names.insert(key, name.clone());
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c0a00000-55d0c0a21000 r--p 00000000 fd:01 1311234                    /usr/bin/postgres
55d0c2c3e000-55d0c2c5f000 rw-p 00000000 00:00 0                          [heap]
7f3a00000000-7f3a000b0000 rw-s 00000000 00:01 2048                       /dev/shm/PostgreSQL.1 (deleted)
7f3a00200000-7f3a00400000 rw-p 00000000 00:00 0 
7f3a00400000-7f3a00401000 rw-p 00000000 00:00 0                          [anon:jemalloc]
7f3a00500000-7f3a00501000 r--p 00000000 fd:01 42                         /opt/my app/lib one.so
7ffd5a1e0000-7ffd5a201000 rw-p 00000000 00:00 0                          [stack]
not a maps line
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
";

    #[test]
    fn parses_paths_pseudo_paths_and_anonymous_mappings() {
        let m = parse_maps(MAPS);
        assert_eq!(m.len(), 8, "the torn line is skipped");
        assert_eq!(
            m[0],
            MapsEntry {
                start: 0x55d0_c0a0_0000,
                end: 0x55d0_c0a2_1000,
                name: "/usr/bin/postgres".into()
            }
        );
        let names: Vec<&str> = m.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "/usr/bin/postgres",
                "[heap]",
                "/dev/shm/PostgreSQL.1 (deleted)",
                "[anon]",
                "[anon:jemalloc]",
                "/opt/my app/lib one.so",
                "[stack]",
                "[vsyscall]",
            ]
        );
    }

    #[test]
    fn a_vma_is_named_by_its_range_or_the_mapping_holding_its_start() {
        let m = parse_maps(MAPS);
        assert_eq!(
            name_in(&m, 0x7f3a_0020_0000, 0x7f3a_0040_0000),
            Some("[anon]")
        );
        // Split since the event: the start still lies in the heap.
        assert_eq!(
            name_in(&m, 0x55d0_c2c4_0000, 0x55d0_c2c4_1000),
            Some("[heap]")
        );
        assert_eq!(name_in(&m, 0x1000, 0x2000), None);
    }

    /// Against this test process's own maps: its stack, its heap-or-anonymous memory
    /// and its executable, as `/proc/self/maps` names them.
    #[test]
    fn resolves_this_process_mappings() {
        let own = parse_maps(&std::fs::read_to_string("/proc/self/maps").expect("maps"));
        let pid = std::process::id();
        let mut r = MappingNames::default();
        let local = 0u64;
        let on_stack = &local as *const u64 as u64;
        let stack = own
            .iter()
            .find(|e| e.start <= on_stack && on_stack < e.end)
            .expect("the stack is mapped");
        // A test thread's stack is an anonymous mapping; the main thread's is [stack].
        let name = r.resolve(pid, stack.start, stack.end).expect("named");
        assert!(&*name == "[stack]" || &*name == ANON, "{name}");
        let code = parse_maps as *const () as u64;
        let exe = own
            .iter()
            .find(|e| e.start <= code && code < e.end)
            .expect("code is mapped");
        let name = r.resolve(pid, exe.start, exe.end).expect("named");
        let me = std::env::current_exe().expect("exe");
        assert_eq!(&*name, me.to_str().expect("utf-8 path"));
        // Cached, and a process that does not exist stays unnamed.
        assert_eq!(r.cached(pid, exe.start, exe.end), Some(Some(name)));
        assert_eq!(r.resolve(u32::MAX - 1, 0x1000, 0x2000), None);
        assert_eq!(r.cached(u32::MAX - 1, 0x1000, 0x2000), Some(None));
    }

    #[test]
    fn the_answer_table_is_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("7")).expect("dir");
        std::fs::write(dir.path().join("7/maps"), MAPS).expect("maps");
        let mut r = MappingNames::with_proc_root(dir.path());
        for i in 0..(MAX_NAMES as u64 + 5) {
            r.resolve(7, 0x7f3a_0020_0000 + i, 0x7f3a_0030_0000);
        }
        assert!(r.names.len() <= MAX_NAMES);
        assert_eq!(
            r.resolve(7, 0x7f3a_0020_0000, 0x7f3a_0040_0000).as_deref(),
            Some("[anon]")
        );
    }
}
