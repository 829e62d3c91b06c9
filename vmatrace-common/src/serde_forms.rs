//! serde forms of the shared types (feature `serde`, userspace only): what the trace
//! header and the probe plan store. Names, not numbers, so a file stays readable and
//! survives a reordering of the enums.

use std::{collections::BTreeMap, format, string::String};

use serde::{Deserialize, Deserializer, Serialize, Serializer, de::Error, ser::SerializeMap};

use crate::{OFFSET_ABSENT, Offsets, event::ProbeId, model::Generation};

/// A probe by the kernel function it hooks.
impl Serialize for ProbeId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.kernel_name())
    }
}

impl<'de> Deserialize<'de> for ProbeId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        (0..=u8::MAX)
            .map(ProbeId::from_u8)
            .find(|p| *p != ProbeId::Unknown && p.kernel_name() == name)
            .ok_or_else(|| D::Error::custom(format!("unknown probe {name:?}")))
    }
}

/// A generation by its key (`6.15`, `6.19`, `7.0`).
impl Serialize for Generation {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.key())
    }
}

impl<'de> Deserialize<'de> for Generation {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let key = String::deserialize(d)?;
        Generation::ALL
            .iter()
            .copied()
            .find(|g| g.key() == key)
            .ok_or_else(|| D::Error::custom(format!("unknown generation {key:?}")))
    }
}

/// Offsets as a map of field name → byte offset, `null` when absent, in
/// [`Offsets::FIELDS`] order. A field missing from the map (a trace written before it
/// existed) is absent; an unknown name is ignored.
impl Serialize for Offsets {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(Offsets::FIELDS.len()))?;
        for (name, _) in Offsets::FIELDS {
            let v = self.get(name).filter(|v| *v != OFFSET_ABSENT);
            m.serialize_entry(name, &v)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for Offsets {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let named = BTreeMap::<String, Option<u32>>::deserialize(d)?;
        let mut o = Offsets::ABSENT;
        for (name, v) in named {
            o.set(&name, v.unwrap_or(OFFSET_ABSENT));
        }
        Ok(o)
    }
}
