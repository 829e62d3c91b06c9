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
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serializer, ser::SerializeMap};
    use vmatrace_common::{OFFSET_ABSENT, Offsets};

    /// Offsets as a map of field name → byte offset, `null` when absent, in
    /// [`Offsets::FIELDS`] order. A field missing from the map (a trace written before
    /// it existed) is absent; an unknown name is ignored.
    pub fn serialize<S: Serializer>(o: &Offsets, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(Offsets::FIELDS.len()))?;
        for (name, _) in Offsets::FIELDS {
            let v = o.get(name).filter(|v| *v != OFFSET_ABSENT);
            m.serialize_entry(name, &v)?;
        }
        m.end()
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Offsets, D::Error> {
        let named = BTreeMap::<String, Option<u32>>::deserialize(d)?;
        let mut o = Offsets::ABSENT;
        for (name, v) in named {
            o.set(&name, v.unwrap_or(OFFSET_ABSENT));
        }
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use vmatrace_common::{OFFSET_ABSENT, Offsets};

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Holder(#[serde(with = "super::offsets")] Offsets);

    /// One list names the fields (`Offsets::FIELDS`): every field round-trips under its
    /// name, absent ones as `null`, and a trace from before a field existed reads it as
    /// absent.
    #[test]
    fn offsets_round_trip_by_name() {
        let mut o = Offsets::ABSENT;
        for (i, (name, _)) in Offsets::FIELDS.iter().enumerate() {
            if i % 3 != 0 {
                assert!(o.set(name, i as u32 * 8), "{name}");
            }
        }
        assert!(!o.set("no_such_field", 1));
        let json = serde_json::to_value(Holder(o)).unwrap();
        let map = json.as_object().unwrap();
        assert_eq!(map.len(), Offsets::FIELDS.len());
        assert!(map["vma_vm_start"].is_null());
        assert_eq!(map["vma_vm_end"], 8);
        let back: Holder = serde_json::from_value(json).unwrap();
        assert_eq!(back.0, o);
        let old: Holder =
            serde_json::from_str(r#"{"vma_vm_start": 0, "vma_vm_refcnt": 128}"#).unwrap();
        assert_eq!(old.0.vma_vm_refcnt, 128);
        assert_eq!(old.0.pt_regs_syscall, OFFSET_ABSENT);
        // Names are unique.
        let mut names: Vec<_> = Offsets::FIELDS.iter().map(|(n, _)| *n).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Offsets::FIELDS.len());
    }
}
