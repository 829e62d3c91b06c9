//! The JSON form of one [`Event`], shared by the anomaly log's `event` and `evidence`.

use serde_json::{Map, Value, json};
use vmatrace_common::{Event, EventKind, event::flags};

use super::redact::Redactor;

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
    if e.has(flags::MM_SEQ) || e.mm != 0 {
        m.insert("mm".into(), r.pointer(e.mm));
    }
    if e.has(flags::MM_SEQ) {
        m.insert("mm_lock_seq".into(), json!(e.mm_lock_seq));
    }
    if e.has(flags::VES) {
        m.insert(
            "ves".into(),
            json!({
                "state": e.ves_state,
                "detaching": e.ves_detaching,
                "detached": e.ves_detached,
                "exclusive": e.ves_exclusive,
            }),
        );
    }
    // `arg` is a user address for reader acquires and an `rcuwait *` for wakeups: the
    // pointer test redacts the latter whatever the kind.
    let arg = match e.kind() {
        Some(EventKind::WriterWake) => r.pointer(e.arg),
        _ => r.maybe_pointer(e.arg),
    };
    m.insert("arg".into(), arg);
    if e.has(flags::RET) {
        m.insert("ret".into(), r.ret(e.ret));
    }
    if e.has(flags::PAIRED) {
        m.insert("wait_ns".into(), json!(e.wait_ns));
        m.insert("entry_refcnt".into(), json!(e.entry_refcnt));
    }
    Value::Object(m)
}
