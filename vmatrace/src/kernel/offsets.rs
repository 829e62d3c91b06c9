//! Field offsets for the eBPF programs, from BTF.
//!
//! Rust eBPF has no CO-RE, so the offsets are resolved here and handed to the programs
//! as load-time globals. Layouts move between versions and configs (`mm_struct` alone
//! moved `mm_lock_seq` from 0xf8 to 0x1d0 between 6.18 and 6.19 on Debian), so nothing is
//! hard-coded.

use std::fmt;

use vmatrace_common::model::Generation;
use vmatrace_common::{OFFSET_ABSENT, Offsets};

use super::btf::{Btf, BtfError};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OffsetError {
    /// A field every generation needs is missing (or is not where its type says).
    Missing {
        structure: &'static str,
        path: &'static str,
    },
    /// The field exists but has a size the programs do not read that way.
    BadSize {
        structure: &'static str,
        path: &'static str,
        size: Option<u32>,
        want: u32,
    },
    /// The field is not where the programs can read it: past the end of its struct, or
    /// not aligned for its size (a corrupt or hand-made BTF).
    BadPlace {
        structure: &'static str,
        path: &'static str,
        offset: u32,
        size: u32,
        struct_size: u32,
    },
    Btf(BtfError),
}

impl fmt::Display for OffsetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OffsetError::Missing { structure, path } => {
                write!(f, "BTF has no {structure}.{path}")
            }
            OffsetError::BadSize {
                structure,
                path,
                size,
                want,
            } => write!(
                f,
                "{structure}.{path} is {} bytes, expected {want}",
                size.map_or("?".to_string(), |s| s.to_string())
            ),
            OffsetError::BadPlace {
                structure,
                path,
                offset,
                size,
                struct_size,
            } => {
                let why = if offset
                    .checked_add(*size)
                    .is_none_or(|end| end > *struct_size)
                {
                    format!("lies past the end of the {struct_size}-byte struct")
                } else {
                    format!("is not aligned for a {size}-byte field")
                };
                write!(
                    f,
                    "{structure}.{path} at offset {offset:#x} ({size} bytes) {why}"
                )
            }
            OffsetError::Btf(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for OffsetError {}

impl From<BtfError> for OffsetError {
    fn from(e: BtfError) -> Self {
        OffsetError::Btf(e)
    }
}

/// One field to resolve: alternatives are tried in order (older layouts).
struct Field {
    structure: &'static str,
    paths: &'static [&'static str],
    size: Option<u32>,
}

fn resolve_one(btf: &Btf, f: &Field) -> Result<Option<u32>, OffsetError> {
    for path in f.paths {
        if let Some((loc, struct_size)) = btf.member_in(f.structure, path)? {
            let size = btf.size_of(loc.type_id)?;
            if let Some(want) = f.size
                && size != Some(want)
            {
                return Err(OffsetError::BadSize {
                    structure: f.structure,
                    path,
                    size,
                    want,
                });
            }
            let size = size.unwrap_or(0);
            if !well_placed(loc.offset, size, struct_size) {
                return Err(OffsetError::BadPlace {
                    structure: f.structure,
                    path,
                    offset: loc.offset,
                    size,
                    struct_size,
                });
            }
            return Ok(Some(loc.offset));
        }
    }
    Ok(None)
}

/// Inside its struct and naturally aligned (scalars of 2, 4, 8 bytes; a `char[16]` such
/// as `comm` needs no alignment). The programs load fields at these offsets as given: a
/// field past the end reads the next object, a misaligned one a torn value.
fn well_placed(offset: u32, size: u32, struct_size: u32) -> bool {
    let inside = offset
        .checked_add(size)
        .is_some_and(|end| end <= struct_size);
    let align = if matches!(size, 2 | 4 | 8) { size } else { 1 };
    inside && offset.is_multiple_of(align)
}

fn required(btf: &Btf, f: &Field) -> Result<u32, OffsetError> {
    resolve_one(btf, f)?.ok_or(OffsetError::Missing {
        structure: f.structure,
        path: f.paths[0],
    })
}

const VMA: &str = "vm_area_struct";
const MM: &str = "mm_struct";
const VES: &str = "vma_exclude_readers_state";
const TASK: &str = "task_struct";
const PT_REGS: &str = "pt_regs";

/// Resolve every offset the programs read. Fields of `vm_area_struct` and `mm_struct` are
/// required on every generation; the `vma_exclude_readers_state` ones on 7.0+ only (and
/// `OFFSET_ABSENT` before).
pub fn resolve(btf: &Btf, generation: Generation) -> Result<Offsets, OffsetError> {
    let f = |structure, paths, size| Field {
        structure,
        paths,
        size,
    };
    let mut o = Offsets::ABSENT;
    o.vma_vm_start = required(btf, &f(VMA, &["vm_start"], Some(8)))?;
    o.vma_vm_end = required(btf, &f(VMA, &["vm_end"], Some(8)))?;
    o.vma_vm_mm = required(btf, &f(VMA, &["vm_mm"], Some(8)))?;
    o.vma_vm_flags = required(btf, &f(VMA, &["vm_flags"], Some(8)))?;
    o.vma_vm_lock_seq = required(btf, &f(VMA, &["vm_lock_seq"], Some(4)))?;
    // refcount_t → struct refcount_struct { atomic_t refs; } → atomic_t { int counter; }
    o.vma_vm_refcnt = required(btf, &f(VMA, &["vm_refcnt.refs.counter"], Some(4)))?;
    // seqcount_t → struct seqcount { unsigned sequence; ... }
    o.mm_mm_lock_seq = required(btf, &f(MM, &["mm_lock_seq.sequence"], Some(4)))?;
    // struct rcuwait { struct task_struct *task; }
    o.mm_vma_writer_wait = required(btf, &f(MM, &["vma_writer_wait.task"], Some(8)))?;
    // Optional: without it the programs use the `bpf_get_current_comm` helper.
    o.task_comm = required(btf, &f(TASK, &["comm"], Some(16))).unwrap_or(OFFSET_ABSENT);
    // Optional: without it a slow wait's syscall is not read (its stack still is).
    // x86-64's `orig_ax` (the programs read 8 bytes; other layouts are not read).
    o.pt_regs_syscall = required(btf, &f(PT_REGS, &["orig_ax"], Some(8))).unwrap_or(OFFSET_ABSENT);
    if generation.profile().exclude_state_struct {
        o.ves_vma = required(btf, &f(VES, &["vma"], Some(8)))?;
        o.ves_state = required(btf, &f(VES, &["state"], Some(4)))?;
        o.ves_detaching = required(btf, &f(VES, &["detaching"], Some(1)))?;
        o.ves_detached = required(btf, &f(VES, &["detached"], Some(1)))?;
        o.ves_exclusive = required(btf, &f(VES, &["exclusive"], Some(1)))?;
    }
    Ok(o)
}

/// `(struct.field, offset)` pairs in declaration order, for display.
pub fn named(o: &Offsets) -> Vec<(&'static str, Option<u32>)> {
    Offsets::FIELDS
        .iter()
        .map(|(name, kernel)| (*kernel, o.get(name).filter(|v| *v != OFFSET_ABSENT)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::btf::builder::Builder;
    use super::*;

    fn base(b: &mut Builder, with_ves: bool, refcnt_size: u32) -> Vec<u8> {
        base_at(b, with_ves, refcnt_size, 0x80, 192)
    }

    /// [`base`] with `vm_refcnt` at `refcnt_at` in a `vma_size`-byte `vm_area_struct`.
    fn base_at(
        b: &mut Builder,
        with_ves: bool,
        refcnt_size: u32,
        refcnt_at: u32,
        vma_size: u32,
    ) -> Vec<u8> {
        let ulong = b.int("long unsigned int", 8);
        let uint = b.int("unsigned int", 4);
        let int = b.int(if refcnt_size == 4 { "int" } else { "long" }, refcnt_size);
        let boolean = b.int("_Bool", 1);
        let atomic = b.composite(false, "", refcnt_size, &[("counter", int, 0, 0)]);
        let atomic_t = b.typedef("atomic_t", atomic);
        let rc = b.composite(false, "refcount_struct", 4, &[("refs", atomic_t, 0, 0)]);
        let rc_t = b.typedef("refcount_t", rc);
        let seq = b.composite(false, "seqcount", 4, &[("sequence", uint, 0, 0)]);
        let seq_t = b.typedef("seqcount_t", seq);
        let task = b.composite(false, "task_struct", 8, &[]);
        let taskp = b.ptr(task);
        let rcuwait = b.composite(false, "rcuwait", 8, &[("task", taskp, 0, 0)]);
        let mm = b.composite(
            false,
            "mm_struct",
            1024,
            &[
                ("vma_writer_wait", rcuwait, 0x1c8 * 8, 0),
                ("mm_lock_seq", seq_t, 0x1d0 * 8, 0),
            ],
        );
        let mmp = b.ptr(mm);
        let vmflags = b.typedef("vm_flags_t", ulong);
        let inner = b.composite(
            false,
            "",
            16,
            &[("vm_start", ulong, 0, 0), ("vm_end", ulong, 64, 0)],
        );
        let un = b.composite(true, "", 16, &[("", inner, 0, 0)]);
        let flags_un = b.composite(true, "", 8, &[("vm_flags", vmflags, 0, 0)]);
        let vma = b.composite(
            false,
            "vm_area_struct",
            vma_size,
            &[
                ("", un, 0, 0),
                ("vm_mm", mmp, 0x10 * 8, 0),
                ("", flags_un, 0x20 * 8, 0),
                ("vm_lock_seq", uint, 0x28 * 8, 0),
                ("vm_refcnt", rc_t, refcnt_at * 8, 0),
            ],
        );
        let vmap = b.ptr(vma);
        if with_ves {
            b.composite(
                false,
                "vma_exclude_readers_state",
                16,
                &[
                    ("vma", vmap, 0, 0),
                    ("state", int, 64, 0),
                    ("detaching", boolean, 96, 0),
                    ("detached", boolean, 104, 0),
                    ("exclusive", boolean, 112, 0),
                ],
            );
        }
        b.build()
    }

    #[test]
    fn resolves_through_anonymous_unions_and_typedefs() {
        let btf = Btf::parse(&base(&mut Builder::new(), true, 4)).unwrap();
        let o = resolve(&btf, Generation::V7_0).unwrap();
        assert_eq!(
            (o.vma_vm_start, o.vma_vm_end, o.vma_vm_mm, o.vma_vm_flags),
            (0, 8, 0x10, 0x20)
        );
        assert_eq!((o.vma_vm_lock_seq, o.vma_vm_refcnt), (0x28, 0x80));
        assert_eq!((o.mm_mm_lock_seq, o.mm_vma_writer_wait), (0x1d0, 0x1c8));
        assert_eq!(
            (
                o.ves_vma,
                o.ves_state,
                o.ves_detaching,
                o.ves_detached,
                o.ves_exclusive
            ),
            (0, 8, 12, 13, 14)
        );
    }

    #[test]
    fn ves_absent_before_7_0() {
        let btf = Btf::parse(&base(&mut Builder::new(), false, 4)).unwrap();
        let o = resolve(&btf, Generation::V6_15).unwrap();
        assert_eq!(o.ves_exclusive, OFFSET_ABSENT);
        assert_eq!(o.vma_vm_refcnt, 0x80);
        // Asking for 7.0 offsets on a kernel without the struct is a clear error.
        assert_eq!(
            resolve(&btf, Generation::V7_0).unwrap_err(),
            OffsetError::Missing {
                structure: VES,
                path: "vma"
            }
        );
    }

    #[test]
    fn wrong_size_is_rejected() {
        let btf = Btf::parse(&base(&mut Builder::new(), false, 8)).unwrap();
        assert!(matches!(
            resolve(&btf, Generation::V6_15).unwrap_err(),
            OffsetError::BadSize {
                path: "vm_refcnt.refs.counter",
                size: Some(8),
                ..
            }
        ));
    }

    /// `vm_refcnt` past the end of `vm_area_struct`, or at an odd offset: the BTF cannot
    /// be right, and the programs would read some other memory.
    #[test]
    fn misplaced_fields_are_rejected() {
        let place = |at, size| {
            let btf = Btf::parse(&base_at(&mut Builder::new(), false, 4, at, size)).unwrap();
            resolve(&btf, Generation::V6_15).map(|o| o.vma_vm_refcnt)
        };
        assert_eq!(place(0x80, 192), Ok(0x80));
        assert_eq!(place(188, 192), Ok(188));
        let past = place(0x200, 192).unwrap_err();
        assert!(
            matches!(
                past,
                OffsetError::BadPlace {
                    path: "vm_refcnt.refs.counter",
                    offset: 0x200,
                    size: 4,
                    struct_size: 192,
                    ..
                }
            ),
            "{past:?}"
        );
        assert_eq!(
            past.to_string(),
            "vm_area_struct.vm_refcnt.refs.counter at offset 0x200 (4 bytes) lies past the \
             end of the 192-byte struct"
        );
        // The last 4 bytes straddle the end.
        assert!(matches!(place(190, 192), Err(OffsetError::BadPlace { .. })));
        let odd = place(0x81, 192).unwrap_err();
        assert_eq!(
            odd.to_string(),
            "vm_area_struct.vm_refcnt.refs.counter at offset 0x81 (4 bytes) is not aligned \
             for a 4-byte field"
        );
    }

    #[test]
    fn missing_type_is_an_error() {
        let mut b = Builder::new();
        let ulong = b.int("long unsigned int", 8);
        b.composite(false, "vm_area_struct", 8, &[("vm_start", ulong, 0, 0)]);
        let btf = Btf::parse(&b.build()).unwrap();
        assert_eq!(
            resolve(&btf, Generation::V6_15).unwrap_err(),
            OffsetError::Missing {
                structure: VMA,
                path: "vm_end"
            }
        );
    }
}
