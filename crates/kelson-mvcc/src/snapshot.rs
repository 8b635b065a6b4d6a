//! The snapshot blob: every record of the MVCC column families, self-describing and checksummed.
//!
//! Layout: `MAGIC` (8 bytes), then per column family a name-tagged section
//! `u8 name_len, name, u64 count, count × (u32 klen, key, u32 vlen, value)`, then a CRC-32 (IEEE)
//! of everything before it. Naming the column family (rather than numbering) keeps old blobs
//! readable if the set of families grows; unknown families are rejected rather than dropped so a
//! restore never silently loses data.
//!
//! Besides the in-memory [`encode`]/[`decode`], the blob can be written and read as a stream
//! ([`StreamWriter`], [`read_stream`]) so a snapshot of a large keyspace never has to be held in
//! memory at once: the Raft layer builds it into a file and restores it from one. The streamed
//! bytes are exactly the same format.

use std::io::{Read, Write};

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

fn io_err(e: std::io::Error) -> MvccError {
    MvccError::Corrupt(format!("snapshot I/O: {e}"))
}

/// Writes the blob format incrementally: `section` then that many `record`s, then `finish`.
/// The section's record count comes first in the format, so the caller must know it up front
/// (a RocksDB snapshot can simply be scanned twice).
pub struct StreamWriter<W: Write> {
    w: W,
    crc: crc32fast::Hasher,
}

impl<W: Write> StreamWriter<W> {
    pub fn new(w: W) -> Result<Self, MvccError> {
        let mut s = StreamWriter {
            w,
            crc: crc32fast::Hasher::new(),
        };
        s.put(MAGIC)?;
        Ok(s)
    }

    fn put(&mut self, b: &[u8]) -> Result<(), MvccError> {
        self.crc.update(b);
        self.w.write_all(b).map_err(io_err)
    }

    pub fn section(&mut self, name: &str, count: u64) -> Result<(), MvccError> {
        let n = u8::try_from(name.len())
            .map_err(|_| MvccError::Corrupt(format!("section name {name} too long")))?;
        self.put(&[n])?;
        self.put(name.as_bytes())?;
        self.put(&count.to_be_bytes())
    }

    pub fn record(&mut self, k: &[u8], v: &[u8]) -> Result<(), MvccError> {
        let len = |b: &[u8]| {
            u32::try_from(b.len()).map_err(|_| MvccError::Corrupt("record too large".into()))
        };
        self.put(&len(k)?.to_be_bytes())?;
        self.put(k)?;
        self.put(&len(v)?.to_be_bytes())?;
        self.put(v)
    }

    /// Appends the checksum and returns the writer (not flushed).
    pub fn finish(mut self) -> Result<W, MvccError> {
        let crc = self.crc.clone().finalize();
        self.w.write_all(&crc.to_be_bytes()).map_err(io_err)?;
        Ok(self.w)
    }
}

/// One item of a streamed blob, in order: a section, then its records.
pub enum Item<'a> {
    Section(&'a str),
    Record(&'a [u8], &'a [u8]),
}

/// Reads a blob of exactly `len` bytes from `r`, handing every section and record to `f` as it
/// goes, with one reused buffer per key and value (memory is bounded by the largest record,
/// and a length field can never make it allocate more than the blob still holds). The checksum
/// is verified at the end: `f` must not make anything irreversible visible before this returns
/// `Ok`.
pub fn read_stream(
    r: &mut dyn Read,
    len: u64,
    mut f: impl FnMut(Item<'_>) -> Result<(), MvccError>,
) -> Result<(), MvccError> {
    if len < (MAGIC.len() + 4) as u64 {
        return Err(MvccError::Corrupt("not an mvcc snapshot".into()));
    }
    let mut r = CrcReader {
        r,
        left: len - 4,
        crc: crc32fast::Hasher::new(),
    };
    let mut magic = [0u8; 8];
    r.exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(MvccError::Corrupt("not an mvcc snapshot".into()));
    }
    let (mut k, mut v, mut name) = (Vec::new(), Vec::new(), Vec::new());
    while r.left > 0 {
        let mut n = [0u8; 1];
        r.exact(&mut n)?;
        r.fill(&mut name, n[0] as u64)?;
        let section = std::str::from_utf8(&name)
            .map_err(|_| MvccError::Corrupt("bad section name".into()))?;
        f(Item::Section(section))?;
        let count = r.u64()?;
        for _ in 0..count {
            let kl = r.u32()?;
            r.fill(&mut k, kl as u64)?;
            let vl = r.u32()?;
            r.fill(&mut v, vl as u64)?;
            f(Item::Record(&k, &v))?;
        }
    }
    let want = r.crc.clone().finalize();
    let mut crc = [0u8; 4];
    r.r.read_exact(&mut crc).map_err(io_err)?;
    if crc != want.to_be_bytes() {
        return Err(MvccError::Corrupt("snapshot checksum mismatch".into()));
    }
    Ok(())
}

/// Reads the body (everything before the checksum) while hashing it.
struct CrcReader<'a> {
    r: &'a mut dyn Read,
    left: u64,
    crc: crc32fast::Hasher,
}

impl CrcReader<'_> {
    fn exact(&mut self, buf: &mut [u8]) -> Result<(), MvccError> {
        if (buf.len() as u64) > self.left {
            return Err(MvccError::Corrupt("snapshot truncated".into()));
        }
        self.r.read_exact(buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => MvccError::Corrupt("snapshot truncated".into()),
            _ => io_err(e),
        })?;
        self.left -= buf.len() as u64;
        self.crc.update(buf);
        Ok(())
    }
    fn fill(&mut self, buf: &mut Vec<u8>, n: u64) -> Result<(), MvccError> {
        if n > self.left {
            return Err(MvccError::Corrupt("snapshot truncated".into()));
        }
        buf.resize(n as usize, 0);
        self.exact(buf)
    }
    fn u32(&mut self) -> Result<u32, MvccError> {
        let mut b = [0u8; 4];
        self.exact(&mut b)?;
        Ok(u32::from_be_bytes(b))
    }
    fn u64(&mut self) -> Result<u64, MvccError> {
        let mut b = [0u8; 8];
        self.exact(&mut b)?;
        Ok(u64::from_be_bytes(b))
    }
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

    fn streamed(blob: &[u8]) -> Result<Vec<Section>, MvccError> {
        let mut out: Vec<Section> = Vec::new();
        read_stream(&mut &blob[..], blob.len() as u64, |item| {
            match item {
                Item::Section(n) => out.push((n.to_string(), Vec::new())),
                Item::Record(k, v) => out
                    .last_mut()
                    .expect("record after a section")
                    .1
                    .push((k.to_vec(), v.to_vec())),
            }
            Ok(())
        })?;
        Ok(out)
    }

    #[test]
    fn stream_matches_the_in_memory_format() {
        let s: Vec<Section> = vec![
            (
                "kv".into(),
                vec![
                    (b"a".to_vec(), b"1".to_vec()),
                    (b"b".to_vec(), vec![7; 3000]),
                ],
            ),
            ("lease".into(), vec![]),
            ("mvcc_meta".into(), vec![(b"x".to_vec(), Vec::new())]),
        ];
        let blob = encode(&s);
        let mut w = StreamWriter::new(Vec::new()).unwrap();
        for (name, recs) in &s {
            w.section(name, recs.len() as u64).unwrap();
            for (k, v) in recs {
                w.record(k, v).unwrap();
            }
        }
        assert_eq!(
            w.finish().unwrap(),
            blob,
            "streamed encoding is byte-identical"
        );
        assert_eq!(streamed(&blob).unwrap(), s);
        for i in [0, 9, 20, blob.len() - 1] {
            let mut bad = blob.clone();
            bad[i] ^= 1;
            assert!(streamed(&bad).is_err(), "flip at {i}");
        }
        assert!(streamed(&blob[..blob.len() - 2]).is_err());
        // A length field claiming more than the blob holds fails without allocating it.
        let mut huge = blob.clone();
        let at = MAGIC.len() + 1 + 2 + 8;
        huge[at..at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(streamed(&huge).is_err());
    }
}
