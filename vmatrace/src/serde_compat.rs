//! serde forms of the `no_std` shared types (the common crate has no serde).

pub mod probe_id {
    use serde::{Deserialize, Deserializer, Serializer};
    use vmatrace_common::event::ProbeId;

    pub fn serialize<S: Serializer>(p: &ProbeId, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(p.kernel_name())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ProbeId, D::Error> {
        let name = String::deserialize(d)?;
        (0..=u8::MAX)
            .map(ProbeId::from_u8)
            .find(|p| *p != ProbeId::Unknown && p.kernel_name() == name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown probe {name:?}")))
    }
}

pub mod generation {
    use serde::{Deserialize, Deserializer, Serializer};
    use vmatrace_common::model::Generation;

    pub fn serialize<S: Serializer>(g: &Generation, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(g.key())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Generation, D::Error> {
        let key = String::deserialize(d)?;
        Generation::ALL
            .iter()
            .copied()
            .find(|g| g.key() == key)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown generation {key:?}")))
    }
}

pub mod offsets {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use vmatrace_common::{OFFSET_ABSENT, Offsets};

    /// Offsets as a map of field name → byte offset, `null` when absent.
    #[derive(Serialize, Deserialize)]
    struct Named {
        vma_vm_start: Option<u32>,
        vma_vm_end: Option<u32>,
        vma_vm_mm: Option<u32>,
        vma_vm_flags: Option<u32>,
        vma_vm_lock_seq: Option<u32>,
        vma_vm_refcnt: Option<u32>,
        mm_mm_lock_seq: Option<u32>,
        mm_vma_writer_wait: Option<u32>,
        ves_vma: Option<u32>,
        ves_state: Option<u32>,
        ves_detaching: Option<u32>,
        ves_detached: Option<u32>,
        ves_exclusive: Option<u32>,
        /// Missing in traces written before it existed: absent.
        #[serde(default)]
        task_comm: Option<u32>,
        #[serde(default)]
        pt_regs_syscall: Option<u32>,
    }

    fn opt(v: u32) -> Option<u32> {
        (v != OFFSET_ABSENT).then_some(v)
    }
    fn raw(v: Option<u32>) -> u32 {
        v.unwrap_or(OFFSET_ABSENT)
    }

    pub fn serialize<S: Serializer>(o: &Offsets, s: S) -> Result<S::Ok, S::Error> {
        Named {
            vma_vm_start: opt(o.vma_vm_start),
            vma_vm_end: opt(o.vma_vm_end),
            vma_vm_mm: opt(o.vma_vm_mm),
            vma_vm_flags: opt(o.vma_vm_flags),
            vma_vm_lock_seq: opt(o.vma_vm_lock_seq),
            vma_vm_refcnt: opt(o.vma_vm_refcnt),
            mm_mm_lock_seq: opt(o.mm_mm_lock_seq),
            mm_vma_writer_wait: opt(o.mm_vma_writer_wait),
            ves_vma: opt(o.ves_vma),
            ves_state: opt(o.ves_state),
            ves_detaching: opt(o.ves_detaching),
            ves_detached: opt(o.ves_detached),
            ves_exclusive: opt(o.ves_exclusive),
            task_comm: opt(o.task_comm),
            pt_regs_syscall: opt(o.pt_regs_syscall),
        }
        .serialize(s)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Offsets, D::Error> {
        let n = Named::deserialize(d)?;
        Ok(Offsets {
            vma_vm_start: raw(n.vma_vm_start),
            vma_vm_end: raw(n.vma_vm_end),
            vma_vm_mm: raw(n.vma_vm_mm),
            vma_vm_flags: raw(n.vma_vm_flags),
            vma_vm_lock_seq: raw(n.vma_vm_lock_seq),
            vma_vm_refcnt: raw(n.vma_vm_refcnt),
            mm_mm_lock_seq: raw(n.mm_mm_lock_seq),
            mm_vma_writer_wait: raw(n.mm_vma_writer_wait),
            ves_vma: raw(n.ves_vma),
            ves_state: raw(n.ves_state),
            ves_detaching: raw(n.ves_detaching),
            ves_detached: raw(n.ves_detached),
            ves_exclusive: raw(n.ves_exclusive),
            task_comm: raw(n.task_comm),
            pt_regs_syscall: raw(n.pt_regs_syscall),
        })
    }
}
