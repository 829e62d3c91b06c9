//! A small reader for the kernel's BTF (`/sys/kernel/btf/vmlinux`, format in the kernel's
//! `Documentation/bpf/btf.rst`).
//!
//! aya's `Btf` keeps struct members private and the maintained BTF crates are either
//! LGPL (btf-rs) or bring more than we need, and what the planner needs is narrow: FUNC
//! entries with their prototypes, and byte offsets of struct members, including members
//! nested in anonymous unions/structs (`vm_start` sits in one). So this module parses the
//! type section itself. Every length and index is checked: a corrupt or truncated blob is
//! an [`BtfError`], never a panic.

use std::collections::HashMap;
use std::fmt;

/// `BTF_MAGIC`
const MAGIC: u16 = 0xeb9f;
/// Size of `struct btf_header` up to and including `str_len`.
const HEADER_MIN: usize = 24;
/// Nesting limit when following type references (typedef chains, anonymous members):
/// the kernel's own limit is 32 (`MAX_RESOLVE_DEPTH`); a loop in corrupt data stops here.
const MAX_DEPTH: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BtfError {
    /// The blob does not start with the BTF magic in either byte order.
    BadMagic,
    Truncated {
        what: &'static str,
        at: usize,
    },
    UnsupportedVersion(u8),
    /// A kind this reader does not know: its record size is unknown, so parsing stops.
    UnknownKind {
        kind: u32,
        type_id: u32,
    },
    BadStringOffset(u32),
    BadTypeId(u32),
}

impl fmt::Display for BtfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BtfError::BadMagic => write!(f, "not BTF data (bad magic)"),
            BtfError::Truncated { what, at } => write!(f, "BTF truncated: {what} at byte {at}"),
            BtfError::UnsupportedVersion(v) => write!(f, "unsupported BTF version {v}"),
            BtfError::UnknownKind { kind, type_id } => {
                write!(f, "unknown BTF kind {kind} (type id {type_id})")
            }
            BtfError::BadStringOffset(o) => write!(f, "BTF string offset {o} out of range"),
            BtfError::BadTypeId(id) => write!(f, "BTF type id {id} out of range"),
        }
    }
}

impl std::error::Error for BtfError {}

/// BTF kinds (`BTF_KIND_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Void,
    Int,
    Ptr,
    Array,
    Struct,
    Union,
    Enum,
    Fwd,
    Typedef,
    Volatile,
    Const,
    Restrict,
    Func,
    FuncProto,
    Var,
    Datasec,
    Float,
    DeclTag,
    TypeTag,
    Enum64,
}

/// A struct/union member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Empty for anonymous members.
    pub name: String,
    pub type_id: u32,
    /// Offset from the start of the enclosing struct, in bits.
    pub bit_offset: u32,
    /// Width for bitfields (kind_flag structs), else 0.
    pub bitfield_size: u32,
}

/// A function prototype parameter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Param {
    pub name: String,
    pub type_id: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Type {
    pub kind: Kind,
    pub name: String,
    /// `size` for Int/Struct/Union/Enum/Float/Datasec, else the referenced type id.
    pub size_or_type: u32,
    pub members: Vec<Member>,
    pub params: Vec<Param>,
    /// Array element type / count.
    pub array: Option<(u32, u32)>,
    /// The `vlen` field: member/param count, or for a FUNC its linkage
    /// (`BTF_FUNC_STATIC` 0, `GLOBAL` 1, `EXTERN` 2).
    pub vlen: u32,
}

/// A function as BTF describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Function {
    pub name: String,
    pub type_id: u32,
    /// The return type, None for `void`.
    pub ret: Option<u32>,
    pub params: Vec<Param>,
}

/// A resolved member location.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberLoc {
    /// Byte offset from the start of the outer struct.
    pub offset: u32,
    pub type_id: u32,
}

/// Parsed BTF: types (id 0 is `void`) and a name index.
#[derive(Clone)]
pub struct Btf {
    types: Vec<Type>,
    by_name: HashMap<String, Vec<u32>>,
}

impl fmt::Debug for Btf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Btf {{ {} types }}", self.types.len())
    }
}

struct Reader<'a> {
    data: &'a [u8],
    big_endian: bool,
}

impl Reader<'_> {
    fn u32(&self, at: usize, what: &'static str) -> Result<u32, BtfError> {
        let b = at
            .checked_add(4)
            .and_then(|end| self.data.get(at..end))
            .ok_or(BtfError::Truncated { what, at })?;
        let a = [b[0], b[1], b[2], b[3]];
        Ok(if self.big_endian {
            u32::from_be_bytes(a)
        } else {
            u32::from_le_bytes(a)
        })
    }
}

fn string_at(strings: &[u8], off: u32) -> Result<String, BtfError> {
    let start = off as usize;
    let rest = strings.get(start..).ok_or(BtfError::BadStringOffset(off))?;
    let end = rest
        .iter()
        .position(|&b| b == 0)
        .ok_or(BtfError::BadStringOffset(off))?;
    Ok(String::from_utf8_lossy(&rest[..end]).into_owned())
}

impl Btf {
    /// Parse a raw BTF blob (either byte order).
    pub fn parse(data: &[u8]) -> Result<Btf, BtfError> {
        let magic = data.get(0..2).ok_or(BtfError::Truncated {
            what: "header",
            at: 0,
        })?;
        let big_endian = if u16::from_le_bytes([magic[0], magic[1]]) == MAGIC {
            false
        } else if u16::from_be_bytes([magic[0], magic[1]]) == MAGIC {
            true
        } else {
            return Err(BtfError::BadMagic);
        };
        let r = Reader { data, big_endian };
        let version = *data.get(2).ok_or(BtfError::Truncated {
            what: "header",
            at: 2,
        })?;
        if version != 1 {
            return Err(BtfError::UnsupportedVersion(version));
        }
        let hdr_len = r.u32(4, "header")? as usize;
        if hdr_len < HEADER_MIN {
            return Err(BtfError::Truncated {
                what: "header",
                at: 4,
            });
        }
        let type_off = r.u32(8, "header")? as usize;
        let type_len = r.u32(12, "header")? as usize;
        let str_off = r.u32(16, "header")? as usize;
        let str_len = r.u32(20, "header")? as usize;
        let section = |off: usize, len: usize, what: &'static str| {
            hdr_len
                .checked_add(off)
                .and_then(|s| s.checked_add(len).map(|e| (s, e)))
                .and_then(|(s, e)| data.get(s..e))
                .ok_or(BtfError::Truncated { what, at: hdr_len })
        };
        let tsec = section(type_off, type_len, "type section")?;
        let strings = section(str_off, str_len, "string section")?;
        let tr = Reader {
            data: tsec,
            big_endian,
        };

        let mut types = vec![Type {
            kind: Kind::Void,
            name: String::new(),
            size_or_type: 0,
            members: Vec::new(),
            params: Vec::new(),
            array: None,
            vlen: 0,
        }];
        let mut pos = 0usize;
        while pos < tsec.len() {
            let type_id = types.len() as u32;
            let name_off = tr.u32(pos, "type")?;
            let info = tr.u32(pos + 4, "type")?;
            let size_or_type = tr.u32(pos + 8, "type")?;
            pos += 12;
            let vlen = info & 0xffff;
            let kind_raw = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let name = string_at(strings, name_off)?;
            let mut t = Type {
                kind: Kind::Void,
                name,
                size_or_type,
                members: Vec::new(),
                params: Vec::new(),
                array: None,
                vlen,
            };
            let n = vlen as usize;
            t.kind = match kind_raw {
                1 => {
                    pos += 4;
                    Kind::Int
                }
                2 => Kind::Ptr,
                3 => {
                    let elem = tr.u32(pos, "array")?;
                    let nelems = tr.u32(pos + 8, "array")?;
                    t.array = Some((elem, nelems));
                    pos += 12;
                    Kind::Array
                }
                4 | 5 => {
                    // Refuse absurd counts before allocating (vlen is at most 0xffff).
                    if pos + n * 12 > tsec.len() {
                        return Err(BtfError::Truncated {
                            what: "members",
                            at: pos,
                        });
                    }
                    for _ in 0..n {
                        let mname = string_at(strings, tr.u32(pos, "member")?)?;
                        let mtype = tr.u32(pos + 4, "member")?;
                        let off = tr.u32(pos + 8, "member")?;
                        // With kind_flag set, the offset word packs the bitfield size in
                        // its top 8 bits and the bit offset in the low 24.
                        let (bit_offset, bitfield_size) = if kind_flag {
                            (off & 0x00ff_ffff, off >> 24)
                        } else {
                            (off, 0)
                        };
                        t.members.push(Member {
                            name: mname,
                            type_id: mtype,
                            bit_offset,
                            bitfield_size,
                        });
                        pos += 12;
                    }
                    if kind_raw == 4 {
                        Kind::Struct
                    } else {
                        Kind::Union
                    }
                }
                6 => {
                    pos = skip(pos, n, 8, tsec.len())?;
                    Kind::Enum
                }
                7 => Kind::Fwd,
                8 => Kind::Typedef,
                9 => Kind::Volatile,
                10 => Kind::Const,
                11 => Kind::Restrict,
                12 => Kind::Func,
                13 => {
                    if pos + n * 8 > tsec.len() {
                        return Err(BtfError::Truncated {
                            what: "params",
                            at: pos,
                        });
                    }
                    for _ in 0..n {
                        let pname = string_at(strings, tr.u32(pos, "param")?)?;
                        let ptype = tr.u32(pos + 4, "param")?;
                        t.params.push(Param {
                            name: pname,
                            type_id: ptype,
                        });
                        pos += 8;
                    }
                    Kind::FuncProto
                }
                14 => {
                    pos += 4;
                    Kind::Var
                }
                15 => {
                    pos = skip(pos, n, 12, tsec.len())?;
                    Kind::Datasec
                }
                16 => Kind::Float,
                17 => {
                    pos += 4;
                    Kind::DeclTag
                }
                18 => Kind::TypeTag,
                19 => {
                    pos = skip(pos, n, 12, tsec.len())?;
                    Kind::Enum64
                }
                kind => return Err(BtfError::UnknownKind { kind, type_id }),
            };
            if pos > tsec.len() {
                return Err(BtfError::Truncated {
                    what: "type",
                    at: pos,
                });
            }
            types.push(t);
        }

        let mut by_name: HashMap<String, Vec<u32>> = HashMap::new();
        for (id, t) in types.iter().enumerate().skip(1) {
            if !t.name.is_empty() {
                by_name.entry(t.name.clone()).or_default().push(id as u32);
            }
        }
        Ok(Btf { types, by_name })
    }

    pub fn type_count(&self) -> usize {
        self.types.len()
    }

    pub fn get(&self, id: u32) -> Result<&Type, BtfError> {
        self.types.get(id as usize).ok_or(BtfError::BadTypeId(id))
    }

    /// Ids of the types named `name` with kind `kind`.
    pub fn ids_by_name(&self, name: &str, kind: Kind) -> Vec<u32> {
        self.by_name
            .get(name)
            .map(|ids| {
                ids.iter()
                    .copied()
                    .filter(|&id| self.types.get(id as usize).is_some_and(|t| t.kind == kind))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The FUNC entries named `name` (pahole emits one per distinct prototype; more than
    /// one means the name is ambiguous for fentry, which attaches by BTF id).
    pub fn functions(&self, name: &str) -> Result<Vec<Function>, BtfError> {
        self.ids_by_name(name, Kind::Func)
            .into_iter()
            .map(|id| {
                let func = self.get(id)?;
                let proto = self.get(func.size_or_type)?;
                if proto.kind != Kind::FuncProto {
                    return Err(BtfError::BadTypeId(func.size_or_type));
                }
                Ok(Function {
                    name: func.name.clone(),
                    type_id: id,
                    ret: (proto.size_or_type != 0).then_some(proto.size_or_type),
                    params: proto.params.clone(),
                })
            })
            .collect()
    }

    /// Whether a struct (or union) named `name` is defined (not just forward-declared).
    pub fn has_struct(&self, name: &str) -> bool {
        !self.ids_by_name(name, Kind::Struct).is_empty()
    }

    /// Follow typedef/const/volatile/restrict/type_tag to the underlying type.
    pub fn skip_mods(&self, mut id: u32) -> Result<u32, BtfError> {
        for _ in 0..MAX_DEPTH {
            let t = self.get(id)?;
            match t.kind {
                Kind::Typedef | Kind::Const | Kind::Volatile | Kind::Restrict | Kind::TypeTag => {
                    id = t.size_or_type
                }
                _ => return Ok(id),
            }
        }
        Err(BtfError::BadTypeId(id))
    }

    /// Find member `name` of struct/union `id`, descending into anonymous members. The
    /// offset is in bytes from the start of `id`. Bitfield members have no byte offset:
    /// `None`.
    pub fn find_member(&self, id: u32, name: &str) -> Result<Option<MemberLoc>, BtfError> {
        self.find_member_depth(id, name, 0)
    }

    fn find_member_depth(
        &self,
        id: u32,
        name: &str,
        depth: usize,
    ) -> Result<Option<MemberLoc>, BtfError> {
        if depth > MAX_DEPTH {
            return Err(BtfError::BadTypeId(id));
        }
        let t = self.get(self.skip_mods(id)?)?;
        if !matches!(t.kind, Kind::Struct | Kind::Union) {
            return Ok(None);
        }
        for m in &t.members {
            if m.name == name {
                // A bitfield has no byte address the programs could read.
                if m.bit_offset % 8 != 0 || m.bitfield_size != 0 {
                    return Ok(None);
                }
                return Ok(Some(MemberLoc {
                    offset: m.bit_offset / 8,
                    type_id: m.type_id,
                }));
            }
            if m.name.is_empty()
                && let Some(inner) = self.find_member_depth(m.type_id, name, depth + 1)?
            {
                return Ok(Some(MemberLoc {
                    offset: inner.offset + m.bit_offset / 8,
                    type_id: inner.type_id,
                }));
            }
        }
        Ok(None)
    }

    /// Resolve a dotted member path (`"vm_refcnt.refs.counter"`) in struct `struct_name`.
    /// `Ok(None)` when the struct or a member is missing.
    pub fn member_offset(
        &self,
        struct_name: &str,
        path: &str,
    ) -> Result<Option<MemberLoc>, BtfError> {
        Ok(self.member_in(struct_name, path)?.map(|(loc, _)| loc))
    }

    /// [`Btf::member_offset`], with the size of the struct the path was found in.
    pub fn member_in(
        &self,
        struct_name: &str,
        path: &str,
    ) -> Result<Option<(MemberLoc, u32)>, BtfError> {
        // Several structs can share a name (e.g. from different headers); the first that
        // has the whole path wins.
        'outer: for sid in self.ids_by_name(struct_name, Kind::Struct) {
            let mut cur = sid;
            let mut offset = 0u32;
            for part in path.split('.') {
                match self.find_member(cur, part)? {
                    Some(loc) => {
                        offset = offset.saturating_add(loc.offset);
                        cur = loc.type_id;
                    }
                    None => continue 'outer,
                }
            }
            let loc = MemberLoc {
                offset,
                type_id: cur,
            };
            return Ok(Some((loc, self.get(sid)?.size_or_type)));
        }
        Ok(None)
    }

    /// Size in bytes of a type (after modifiers), if it has one.
    pub fn size_of(&self, id: u32) -> Result<Option<u32>, BtfError> {
        let t = self.get(self.skip_mods(id)?)?;
        Ok(match t.kind {
            Kind::Int | Kind::Struct | Kind::Union | Kind::Enum | Kind::Enum64 | Kind::Float => {
                Some(t.size_or_type)
            }
            Kind::Ptr => Some(8),
            // Element size × count (one level: the arrays read here hold scalars).
            Kind::Array => match t.array {
                Some((elem, n)) => {
                    let e = self.get(self.skip_mods(elem)?)?;
                    match e.kind {
                        Kind::Int | Kind::Enum | Kind::Float | Kind::Ptr => {
                            let size = if e.kind == Kind::Ptr {
                                8
                            } else {
                                e.size_or_type
                            };
                            size.checked_mul(n)
                        }
                        _ => None,
                    }
                }
                None => None,
            },
            _ => None,
        })
    }

    /// C-like spelling of a type, for display (`struct vm_area_struct *`, `int`).
    pub fn type_name(&self, id: u32) -> String {
        self.type_name_depth(id, 0)
    }

    fn type_name_depth(&self, id: u32, depth: usize) -> String {
        if depth > MAX_DEPTH {
            return "?".into();
        }
        let Ok(t) = self.get(id) else {
            return "?".into();
        };
        match t.kind {
            Kind::Void => "void".into(),
            Kind::Int | Kind::Float | Kind::Typedef => t.name.clone(),
            Kind::Struct => format!("struct {}", or_anon(&t.name)),
            Kind::Union => format!("union {}", or_anon(&t.name)),
            Kind::Enum | Kind::Enum64 => format!("enum {}", or_anon(&t.name)),
            Kind::Fwd => format!("struct {}", t.name),
            Kind::Ptr => format!("{} *", self.type_name_depth(t.size_or_type, depth + 1)),
            Kind::Const => format!("const {}", self.type_name_depth(t.size_or_type, depth + 1)),
            Kind::Volatile => format!(
                "volatile {}",
                self.type_name_depth(t.size_or_type, depth + 1)
            ),
            Kind::Restrict | Kind::TypeTag => self.type_name_depth(t.size_or_type, depth + 1),
            Kind::Array => match t.array {
                Some((elem, n)) => format!("{}[{n}]", self.type_name_depth(elem, depth + 1)),
                None => "?[]".into(),
            },
            Kind::FuncProto => "fn".into(),
            Kind::Func | Kind::Var | Kind::Datasec | Kind::DeclTag => t.name.clone(),
        }
    }
}

fn or_anon(name: &str) -> &str {
    if name.is_empty() { "(anon)" } else { name }
}

fn skip(pos: usize, n: usize, each: usize, len: usize) -> Result<usize, BtfError> {
    let end = n
        .checked_mul(each)
        .and_then(|b| pos.checked_add(b))
        .ok_or(BtfError::Truncated {
            what: "type",
            at: pos,
        })?;
    if end > len {
        return Err(BtfError::Truncated {
            what: "type",
            at: pos,
        });
    }
    Ok(end)
}

/// Build BTF blobs in tests (little-endian), so parser tests need no kernel.
#[cfg(test)]
pub(crate) mod builder {
    #[derive(Default)]
    pub struct Builder {
        types: Vec<u8>,
        strings: Vec<u8>,
        next_id: u32,
    }

    impl Builder {
        pub fn new() -> Self {
            Builder {
                types: Vec::new(),
                strings: vec![0],
                next_id: 1,
            }
        }

        pub fn str(&mut self, s: &str) -> u32 {
            if s.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            off
        }

        fn head(&mut self, name: &str, kind: u32, vlen: u32, kflag: bool, st: u32) -> u32 {
            let n = self.str(name);
            let info = (u32::from(kflag) << 31) | (kind << 24) | vlen;
            for w in [n, info, st] {
                self.types.extend_from_slice(&w.to_le_bytes());
            }
            let id = self.next_id;
            self.next_id += 1;
            id
        }

        fn word(&mut self, w: u32) {
            self.types.extend_from_slice(&w.to_le_bytes());
        }

        pub fn int(&mut self, name: &str, size: u32) -> u32 {
            let id = self.head(name, 1, 0, false, size);
            self.word(size * 8);
            id
        }

        pub fn ptr(&mut self, to: u32) -> u32 {
            self.head("", 2, 0, false, to)
        }

        pub fn typedef(&mut self, name: &str, to: u32) -> u32 {
            self.head(name, 8, 0, false, to)
        }

        /// members: (name, type, bit offset, bitfield size)
        pub fn composite(
            &mut self,
            union: bool,
            name: &str,
            size: u32,
            members: &[(&str, u32, u32, u32)],
        ) -> u32 {
            let kflag = members.iter().any(|m| m.3 != 0);
            let kind = if union { 5 } else { 4 };
            let id = self.head(name, kind, members.len() as u32, kflag, size);
            for &(mname, ty, off, bits) in members {
                let n = self.str(mname);
                self.word(n);
                self.word(ty);
                self.word(if kflag { (bits << 24) | off } else { off });
            }
            id
        }

        pub fn func(&mut self, name: &str, ret: u32, params: &[(&str, u32)]) -> u32 {
            let proto = self.head("", 13, params.len() as u32, false, ret);
            for &(pname, ty) in params {
                let n = self.str(pname);
                self.word(n);
                self.word(ty);
            }
            let _ = proto;
            self.head(name, 12, 1, false, proto)
        }

        pub fn build(&self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&0xeb9fu16.to_le_bytes());
            out.push(1);
            out.push(0);
            for w in [
                24u32,
                0,
                self.types.len() as u32,
                self.types.len() as u32,
                self.strings.len() as u32,
            ] {
                out.extend_from_slice(&w.to_le_bytes());
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::builder::Builder;
    use super::*;
    use proptest::prelude::*;

    /// A miniature `vm_area_struct` in the shape of the 6.18 one: `vm_start`/`vm_end`
    /// inside an anonymous struct inside an anonymous union, `vm_refcnt` a `refcount_t`.
    fn mini() -> Vec<u8> {
        let mut b = Builder::new();
        let ulong = b.int("long unsigned int", 8);
        let int = b.int("int", 4);
        let uint = b.int("unsigned int", 4);
        let atomic = b.composite(false, "", 4, &[("counter", int, 0, 0)]);
        let atomic_t = b.typedef("atomic_t", atomic);
        let refcount = b.composite(false, "refcount_struct", 4, &[("refs", atomic_t, 0, 0)]);
        let refcount_t = b.typedef("refcount_t", refcount);
        let inner = b.composite(
            false,
            "",
            16,
            &[("vm_start", ulong, 0, 0), ("vm_end", ulong, 64, 0)],
        );
        let freeptr = b.typedef("freeptr_t", ulong);
        let un = b.composite(
            true,
            "",
            16,
            &[("", inner, 0, 0), ("vm_freeptr", freeptr, 0, 0)],
        );
        let mm = b.composite(false, "mm_struct", 8, &[("x", ulong, 0, 0)]);
        let mmp = b.ptr(mm);
        let vma = b.composite(
            false,
            "vm_area_struct",
            192,
            &[
                ("", un, 0, 0),
                ("vm_mm", mmp, 128, 0),
                ("bits_a", uint, 320, 3),
                ("bits_b", uint, 323, 5),
                ("vm_lock_seq", uint, 352, 0),
                ("vm_refcnt", refcount_t, 1024, 0),
            ],
        );
        let vmap = b.ptr(vma);
        b.func("__vma_start_write", int, &[("vma", vmap), ("state", int)]);
        b.func("vma_mark_detached", 0, &[("vma", vmap)]);
        b.build()
    }

    #[test]
    fn anonymous_members_and_nested_paths() {
        let btf = Btf::parse(&mini()).unwrap();
        let off = |p| {
            btf.member_offset("vm_area_struct", p)
                .unwrap()
                .map(|l| l.offset)
        };
        assert_eq!(off("vm_start"), Some(0));
        assert_eq!(off("vm_end"), Some(8));
        assert_eq!(off("vm_mm"), Some(16));
        assert_eq!(off("vm_lock_seq"), Some(44));
        assert_eq!(off("vm_refcnt"), Some(128));
        assert_eq!(off("vm_refcnt.refs.counter"), Some(128));
        assert_eq!(off("vm_refcnt.nope"), None);
        assert_eq!(off("vm_flags"), None);
        // Bitfields have no byte offset, aligned or not.
        assert_eq!(off("bits_a"), None);
        assert_eq!(off("bits_b"), None);
        assert_eq!(btf.member_offset("no_such_struct", "x").unwrap(), None);
    }

    #[test]
    fn kind_flag_bitfields_decode() {
        let btf = Btf::parse(&mini()).unwrap();
        let id = btf.ids_by_name("vm_area_struct", Kind::Struct)[0];
        let t = btf.get(id).unwrap();
        let b = t.members.iter().find(|m| m.name == "bits_b").unwrap();
        assert_eq!((b.bit_offset, b.bitfield_size), (323, 5));
        let seq = t.members.iter().find(|m| m.name == "vm_lock_seq").unwrap();
        assert_eq!((seq.bit_offset, seq.bitfield_size), (352, 0));
    }

    #[test]
    fn functions_and_prototypes() {
        let btf = Btf::parse(&mini()).unwrap();
        let f = btf.functions("__vma_start_write").unwrap();
        assert_eq!(f.len(), 1);
        let names: Vec<_> = f[0].params.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["vma", "state"]);
        assert_eq!(
            btf.type_name(f[0].params[0].type_id),
            "struct vm_area_struct *"
        );
        assert_eq!(btf.type_name(f[0].ret.unwrap()), "int");
        let d = btf.functions("vma_mark_detached").unwrap();
        assert_eq!(d[0].ret, None);
        assert!(btf.functions("vma_refcount_put").unwrap().is_empty());
    }

    #[test]
    fn truncation_is_an_error_at_every_length() {
        let blob = mini();
        for n in 0..blob.len() {
            assert!(
                Btf::parse(&blob[..n]).is_err(),
                "prefix of {n} bytes parsed"
            );
        }
        assert!(Btf::parse(&blob).is_ok());
    }

    #[test]
    fn big_endian_blob_parses_the_same() {
        // Every field of the header (after magic/version/flags) and of the type section
        // is a u32: swapping each word gives the big-endian encoding of the same BTF.
        let le = mini();
        let mut be = le.clone();
        be.swap(0, 1);
        let type_len = u32::from_le_bytes([le[12], le[13], le[14], le[15]]) as usize;
        for w in be[4..24 + type_len].chunks_exact_mut(4) {
            w.reverse();
        }
        let a = Btf::parse(&le).unwrap();
        let b = Btf::parse(&be).unwrap();
        assert_eq!(a.type_count(), b.type_count());
        assert_eq!(
            b.member_offset("vm_area_struct", "vm_refcnt.refs.counter")
                .unwrap()
                .map(|l| l.offset),
            Some(128)
        );
        assert_eq!(b.functions("__vma_start_write").unwrap().len(), 1);
    }

    #[test]
    fn bad_magic_and_version() {
        let mut blob = mini();
        blob[0] = 0;
        assert_eq!(Btf::parse(&blob).unwrap_err(), BtfError::BadMagic);
        let mut blob = mini();
        blob[2] = 2;
        assert_eq!(
            Btf::parse(&blob).unwrap_err(),
            BtfError::UnsupportedVersion(2)
        );
    }

    #[test]
    fn self_referencing_typedef_does_not_loop() {
        let mut b = Builder::new();
        // id 1 = typedef pointing at itself.
        b.typedef("loop_t", 1);
        let s = b.composite(false, "s", 4, &[("", 1, 0, 0)]);
        let _ = s;
        let btf = Btf::parse(&b.build()).unwrap();
        assert!(btf.member_offset("s", "x").is_err());
        assert_eq!(btf.type_name(1), "loop_t");
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Btf::parse(&data);
        }

        #[test]
        fn corrupted_valid_blob_never_panics(
            flips in proptest::collection::vec((0usize..4096, any::<u8>()), 1..16)
        ) {
            let mut blob = mini();
            for (at, v) in flips {
                let n = blob.len();
                blob[at % n] = v;
            }
            if let Ok(btf) = Btf::parse(&blob) {
                // Queries on whatever parsed must not panic either.
                let _ = btf.member_offset("vm_area_struct", "vm_refcnt.refs.counter");
                let _ = btf.functions("__vma_start_write");
                for id in 0..btf.type_count() as u32 {
                    let _ = btf.type_name(id);
                    let _ = btf.size_of(id);
                }
            }
        }
    }
}
