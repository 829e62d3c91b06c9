//! The JSON form of one [`Event`], shared by the anomaly log's `event` and `evidence`.

use serde_json::{Map, Value, json};
use vmatrace_common::{Event, EventKind, event::flags};

use super::redact::{Redactor, Role};

/// `comm` up to its first NUL, lossily decoded.
pub fn comm(e: &Event) -> String {
    let end = e.comm.iter().position(|b| *b == 0).unwrap_or(e.comm.len());
    String::from_utf8_lossy(&e.comm[..end]).into_owned()
}

pub fn kind_key(e: &Event) -> String {
    match e.kind() {
        Some(k) => k.key().to_string(),
        None => format!("unknown({})", e.kind),
    }
}

/// Flag names in bit order.
fn flag_names(f: u16) -> Vec<&'static str> {
    [
        (flags::VMA_FIELDS, "vma_fields"),
        (flags::MM_SEQ, "mm_seq"),
        (flags::VES, "ves"),
        (flags::RET, "ret"),
        (flags::PAIRED, "paired"),
        (flags::READ_FAILED, "read_failed"),
    ]
    .iter()
    .filter(|(bit, _)| f & bit != 0)
    .map(|(_, n)| *n)
    .collect()
}

/// The event as a JSON object. Kernel pointers go through `r`; user-space addresses
/// (`vm_start`, `vm_end`, a fault address) are not kernel addresses and stay as they are.
/// Fields whose flag says they were not read are omitted rather than shown as 0.
pub fn event_json(e: &Event, r: &Redactor) -> Value {
    let mut m = Map::new();
    m.insert("ts_ns".into(), json!(e.ts_ns));
    m.insert("kind".into(), json!(kind_key(e)));
    m.insert("probe".into(), json!(e.probe().kernel_name()));
    m.insert("pid".into(), json!(e.tgid()));
    m.insert("tid".into(), json!(e.tid()));
    m.insert("comm".into(), json!(comm(e)));
    m.insert("cpu".into(), json!(e.cpu));
    m.insert("flags".into(), json!(flag_names(e.flags)));
    if e.has(flags::VMA_FIELDS) || e.vma != 0 {
        m.insert("vma".into(), r.pointer(e.vma));
    }
    if e.has(flags::VMA_FIELDS) {
        m.insert("vm_start".into(), json!(format!("{:#x}", e.vm_start)));
        m.insert("vm_end".into(), json!(format!("{:#x}", e.vm_end)));
        m.insert("vm_flags".into(), json!(format!("{:#x}", e.vm_flags)));
        m.insert("refcnt".into(), json!(e.refcnt));
        m.insert("refcnt_hex".into(), json!(format!("{:#x}", e.refcnt)));
        m.insert("vm_lock_seq".into(), json!(e.vm_lock_seq));
    }
    let mm_seq = e.mm_seq();
    if mm_seq.is_some() || e.mm != 0 {
        m.insert("mm".into(), r.pointer(e.mm));
    }
    if let Some(seq) = mm_seq {
        m.insert("mm_lock_seq".into(), json!(seq));
    }
    if let Some(v) = e.ves() {
        m.insert(
            "ves".into(),
            json!({
                "state": v.state,
                "detaching": u8::from(v.detaching),
                "detached": u8::from(v.detached),
                "exclusive": u8::from(v.exclusive),
            }),
        );
    }
    let kind = e.kind();
    m.insert("arg".into(), r.arg(e.arg, arg_role(kind)));
    if let Some(ret) = e.returned() {
        m.insert("ret".into(), r.ret(ret, ret_role(kind)));
    }
    if let (Some(wait), Some(entry)) = (e.waited_ns(), e.entry_refcnt_read()) {
        m.insert("wait_ns".into(), json!(wait));
        m.insert("entry_refcnt".into(), json!(entry));
    }
    Value::Object(m)
}

/// What `arg` holds for each kind, as the eBPF programs fill it (`EventKind` docs,
/// `docs/ebpf.md`): the task state or `mm_lock_seq` argument, a fold (entry
/// `vm_lock_seq` << 32 | entry `arg`), the tracepoint's `write`, a faulting or iterated
/// user address, or nothing, except for these two kinds.
pub fn arg_role(kind: Option<EventKind>) -> Role {
    match kind {
        // The mm's `rcuwait *`; `vm_area_alloc`'s mm, `vm_area_dup`'s original VMA.
        Some(EventKind::WriterWake | EventKind::VmaAlloc) => Role::Pointer,
        _ => Role::Value,
    }
}

/// What `ret` holds for each kind that sets `flags::RET`: 0 / -EINTR (6.19's 1), or
/// whether `rcuwait_wake_up` found a task, except for a reader's acquire.
pub fn ret_role(kind: Option<EventKind>) -> Role {
    match kind {
        // `lock_vma_under_rcu`: the VMA or NULL; `lock_next_vma`: also an `ERR_PTR`.
        Some(EventKind::ReaderAcquire) => Role::Pointer,
        _ => Role::Value,
    }
}
