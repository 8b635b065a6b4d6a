//! The snapshot blob: every record of the MVCC column families, self-describing and checksummed.
//!
//! Layout: `MAGIC` (8 bytes), then per column family a name-tagged section
//! `u8 name_len, name, u64 count, count × (u32 klen, key, u32 vlen, value)`, then a CRC-32 (IEEE)
//! of everything before it. Naming the column family (rather than numbering) keeps old blobs
//! readable if the set of families grows; unknown families are rejected rather than dropped so a
//! restore never silently loses data.

use crate::MvccError;

const MAGIC: &[u8; 8] = b"KLSNMVC1";

/// One column family's records in key order.
pub type Section = (String, Vec<(Vec<u8>, Vec<u8>)>);

pub fn encode(sections: &[Section]) -> Vec<u8> {
    let size: usize = sections
        .iter()
        .map(|(n, recs)| {
            9 + n.len()
                + recs
                    .iter()
                    .map(|(k, v)| 8 + k.len() + v.len())
                    .sum::<usize>()
        })
        .sum();
    let mut out = Vec::with_capacity(MAGIC.len() + size + 4);
    out.extend_from_slice(MAGIC);
    for (name, recs) in sections {
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(recs.len() as u64).to_be_bytes());
        for (k, v) in recs {
            out.extend_from_slice(&(k.len() as u32).to_be_bytes());
            out.extend_from_slice(k);
            out.extend_from_slice(&(v.len() as u32).to_be_bytes());
            out.extend_from_slice(v);
        }
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], MvccError> {
        if self.buf.len() < n {
            return Err(MvccError::Corrupt("snapshot truncated".into()));
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
    fn u32(&mut self) -> Result<u32, MvccError> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, MvccError> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
}

pub fn decode(data: &[u8]) -> Result<Vec<Section>, MvccError> {
    if data.len() < MAGIC.len() + 4 || &data[..MAGIC.len()] != MAGIC {
        return Err(MvccError::Corrupt("not an mvcc snapshot".into()));
    }
    let (body, crc) = data.split_at(data.len() - 4);
    if crc32fast::hash(body).to_be_bytes() != crc {
        return Err(MvccError::Corrupt("snapshot checksum mismatch".into()));
    }
    let mut r = Reader {
        buf: &body[MAGIC.len()..],
    };
    let mut sections = Vec::new();
    while !r.buf.is_empty() {
        let n = r.take(1)?[0] as usize;
        let name = std::str::from_utf8(r.take(n)?)
            .map_err(|_| MvccError::Corrupt("bad section name".into()))?
            .to_string();
        let count = r.u64()?;
        // Each record takes at least 8 bytes: bound the allocation by what the blob can hold.
        let mut recs = Vec::with_capacity((count as usize).min(r.buf.len() / 8));
        for _ in 0..count {
            let kl = r.u32()? as usize;
            let k = r.take(kl)?.to_vec();
            let vl = r.u32()? as usize;
            let v = r.take(vl)?.to_vec();
            recs.push((k, v));
        }
        sections.push((name, recs));
    }
    Ok(sections)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_corruption() {
        let s: Vec<Section> = vec![
            ("kv".into(), vec![(b"a".to_vec(), b"1".to_vec())]),
            ("lease".into(), vec![]),
        ];
        let blob = encode(&s);
        assert_eq!(decode(&blob).unwrap(), s);
        for i in [0, 9, blob.len() - 1] {
            let mut bad = blob.clone();
            bad[i] ^= 1;
            assert!(decode(&bad).is_err(), "flip at {i}");
        }
        assert!(decode(&blob[..blob.len() - 2]).is_err());
        assert!(decode(b"").is_err());
    }
}
