//! serde helpers shared by the wire types: raw digests and length-checked vectors.

use crate::error::Violation;
use serde::de::{Deserialize, Deserializer, Error as _, SeqAccess, Visitor};
use std::fmt;
use std::marker::PhantomData;

/// serde for [`pollen_oci::Digest`] as its 32 raw bytes (it has no serde impl of its own).
pub(crate) mod digest_bytes {
    use pollen_oci::Digest;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(crate) fn serialize<S: Serializer>(d: &Digest, s: S) -> Result<S::Ok, S::Error> {
        d.as_bytes().serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Digest, D::Error> {
        let bytes = <[u8; 32]>::deserialize(d)?;
        // Digest has no constructor from raw bytes; its hex form always parses.
        Digest::from_hex(&hex::encode(bytes)).map_err(serde::de::Error::custom)
    }
}

/// serde for an optional digest as an optional 32 raw bytes.
pub(crate) mod opt_digest_bytes {
    use pollen_oci::Digest;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(crate) fn serialize<S: Serializer>(d: &Option<Digest>, s: S) -> Result<S::Ok, S::Error> {
        d.map(|d| *d.as_bytes()).serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Digest>, D::Error> {
        match Option::<[u8; 32]>::deserialize(d)? {
            None => Ok(None),
            Some(bytes) => Digest::from_hex(&hex::encode(bytes))
                .map(Some)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// Deserializes a sequence of at most `max` elements, refusing a longer declared length before
/// allocating anything for it. (serde's own `Vec` would preallocate up to 1 MiB on the
/// strength of a length the peer wrote.)
pub(crate) fn bounded_vec<'de, D, T>(d: D, max: usize) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    d.deserialize_seq(BoundedVec {
        max,
        element: PhantomData,
    })
}

struct BoundedVec<T> {
    max: usize,
    element: PhantomData<T>,
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for BoundedVec<T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a sequence of at most {} elements", self.max)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let too_long = |len: usize| {
            A::Error::custom(Violation(format!(
                "sequence of {len} elements exceeds {}",
                self.max
            )))
        };
        let hint = seq.size_hint().unwrap_or(0);
        if hint > self.max {
            return Err(too_long(hint));
        }
        let mut out = Vec::with_capacity(hint);
        while let Some(element) = seq.next_element()? {
            if out.len() == self.max {
                return Err(too_long(self.max + 1));
            }
            out.push(element);
        }
        Ok(out)
    }
}
