//! A small bounded zip reader: the end of central directory (and its zip64 form, which
//! PyTorch's writer always adds), the central directory, and the local header of the one
//! entry read. Only stored (uncompressed) entries are read, as `torch.export.save` writes
//! them. No offset or size in the file is trusted: each is checked against the file's
//! length and the caps below before anything is read or allocated.

use std::io::{Read, Seek, SeekFrom};

/// The most entries a central directory may list.
pub const MAX_ENTRIES: u64 = 1 << 16;
/// The largest central directory read.
pub const MAX_CENTRAL_DIR_BYTES: u64 = 16 << 20;
/// The largest entry read into memory (the exported program's JSON).
pub const MAX_ENTRY_BYTES: u64 = 64 << 20;

const EOCD_SIG: u32 = 0x0605_4b50;
const ZIP64_LOCATOR_SIG: u32 = 0x0706_4b50;
const ZIP64_EOCD_SIG: u32 = 0x0606_4b50;
const CENTRAL_SIG: u32 = 0x0201_4b50;
const LOCAL_SIG: u32 = 0x0403_4b50;

/// One file in the archive, as the central directory lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    /// 0: stored; anything else is compressed.
    pub method: u16,
    pub compressed_size: u64,
    pub size: u64,
    pub local_header_offset: u64,
}

/// An archive whose central directory has been read.
pub struct Archive<R> {
    src: R,
    len: u64,
    pub entries: Vec<Entry>,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

fn short(what: &str) -> String {
    format!("truncated {what}")
}

impl<R: Read + Seek> Archive<R> {
    /// Reads the central directory of `src`.
    pub fn open(mut src: R) -> Result<Self, String> {
        let len = src.seek(SeekFrom::End(0)).map_err(|e| e.to_string())?;
        // The end of central directory record: 22 bytes and a comment of up to 64 KiB.
        let tail_len = len.min(22 + 0xFFFF);
        let tail = read_at(&mut src, len, len - tail_len, tail_len)?;
        let eocd = (0..tail.len().saturating_sub(21))
            .rev()
            .find(|&i| u32_at(&tail, i) == Some(EOCD_SIG))
            .ok_or("not a zip archive (no end of central directory record)")?;
        let eocd_pos = len - tail_len + eocd as u64;
        let e = &tail[eocd..];
        let field = |v: Option<u16>| v.map(u64::from).ok_or_else(|| short("end record"));
        let field32 = |v: Option<u32>| v.map(u64::from).ok_or_else(|| short("end record"));
        let mut count = field(u16_at(e, 10))?;
        let mut cd_size = field32(u32_at(e, 12))?;
        let mut cd_offset = field32(u32_at(e, 16))?;
        if count == 0xFFFF || cd_size == 0xFFFF_FFFF || cd_offset == 0xFFFF_FFFF {
            // zip64: the locator is the 20 bytes before the end record.
            let loc_pos = eocd_pos
                .checked_sub(20)
                .ok_or("zip64 archive without a zip64 locator")?;
            let loc = read_at(&mut src, len, loc_pos, 20)?;
            if u32_at(&loc, 0) != Some(ZIP64_LOCATOR_SIG) {
                return Err("zip64 archive without a zip64 locator".into());
            }
            let rec_pos = u64_at(&loc, 8).ok_or_else(|| short("zip64 locator"))?;
            let rec = read_at(&mut src, len, rec_pos, 56)?;
            if u32_at(&rec, 0) != Some(ZIP64_EOCD_SIG) {
                return Err(format!(
                    "the zip64 locator points at offset {rec_pos}, which holds no zip64 end record"
                ));
            }
            count = u64_at(&rec, 32).ok_or_else(|| short("zip64 end record"))?;
            cd_size = u64_at(&rec, 40).ok_or_else(|| short("zip64 end record"))?;
            cd_offset = u64_at(&rec, 48).ok_or_else(|| short("zip64 end record"))?;
        }
        if count > MAX_ENTRIES {
            return Err(format!(
                "the archive lists {count} entries, more than the {MAX_ENTRIES} read"
            ));
        }
        if cd_size > MAX_CENTRAL_DIR_BYTES {
            return Err(format!(
                "central directory of {cd_size} bytes, more than the {MAX_CENTRAL_DIR_BYTES} read"
            ));
        }
        let cd = read_at(&mut src, len, cd_offset, cd_size)?;
        let mut entries = Vec::new();
        let mut at = 0usize;
        for i in 0..count {
            let bad = || format!("central directory entry {i} is truncated or corrupt");
            if u32_at(&cd, at) != Some(CENTRAL_SIG) {
                return Err(bad());
            }
            let method = u16_at(&cd, at + 10).ok_or_else(bad)?;
            let mut csize = u64::from(u32_at(&cd, at + 20).ok_or_else(bad)?);
            let mut size = u64::from(u32_at(&cd, at + 24).ok_or_else(bad)?);
            let name_len = usize::from(u16_at(&cd, at + 28).ok_or_else(bad)?);
            let extra_len = usize::from(u16_at(&cd, at + 30).ok_or_else(bad)?);
            let comment_len = usize::from(u16_at(&cd, at + 32).ok_or_else(bad)?);
            let mut offset = u64::from(u32_at(&cd, at + 42).ok_or_else(bad)?);
            let name_at = at + 46;
            let name = cd.get(name_at..name_at + name_len).ok_or_else(bad)?;
            let name = String::from_utf8_lossy(name).into_owned();
            let extra_at = name_at + name_len;
            let extra = cd.get(extra_at..extra_at + extra_len).ok_or_else(bad)?;
            // The zip64 extra field holds, in order, whichever of the three is saturated.
            let mut k = 0usize;
            while k + 4 <= extra.len() {
                let id = u16_at(extra, k).ok_or_else(bad)?;
                let n = usize::from(u16_at(extra, k + 2).ok_or_else(bad)?);
                let body = extra.get(k + 4..k + 4 + n).ok_or_else(bad)?;
                if id == 1 {
                    let mut p = 0usize;
                    for v in [&mut size, &mut csize, &mut offset] {
                        if *v == 0xFFFF_FFFF {
                            *v = u64_at(body, p).ok_or_else(bad)?;
                            p += 8;
                        }
                    }
                }
                k += 4 + n;
            }
            entries.push(Entry {
                name,
                method,
                compressed_size: csize,
                size,
                local_header_offset: offset,
            });
            at = extra_at + extra_len + comment_len;
        }
        Ok(Archive { src, len, entries })
    }

    /// The bytes of a stored entry.
    pub fn read(&mut self, e: &Entry) -> Result<Vec<u8>, String> {
        if e.method != 0 {
            return Err(format!(
                "entry `{}` is compressed (method {}); only stored entries are read, as \
                 torch.export.save writes them",
                e.name, e.method
            ));
        }
        if e.size != e.compressed_size {
            return Err(format!(
                "entry `{}` is stored but its sizes differ ({} and {})",
                e.name, e.size, e.compressed_size
            ));
        }
        if e.size > MAX_ENTRY_BYTES {
            return Err(format!(
                "entry `{}` has {} bytes, more than the {MAX_ENTRY_BYTES} read",
                e.name, e.size
            ));
        }
        let h = read_at(&mut self.src, self.len, e.local_header_offset, 30)?;
        if u32_at(&h, 0) != Some(LOCAL_SIG) {
            return Err(format!(
                "entry `{}`: no local header at offset {}",
                e.name, e.local_header_offset
            ));
        }
        let name_len = u64::from(u16_at(&h, 26).ok_or_else(|| short("local header"))?);
        let extra_len = u64::from(u16_at(&h, 28).ok_or_else(|| short("local header"))?);
        let data = e
            .local_header_offset
            .checked_add(30 + name_len + extra_len)
            .ok_or_else(|| format!("entry `{}`: offset out of range", e.name))?;
        read_at(&mut self.src, self.len, data, e.size)
            .map_err(|m| format!("entry `{}`: {m}", e.name))
    }
}

/// `n` bytes at `pos`, refused unless they lie inside the `len` bytes of `src`.
fn read_at<R: Read + Seek>(src: &mut R, len: u64, pos: u64, n: u64) -> Result<Vec<u8>, String> {
    let end = pos.checked_add(n).filter(|&e| e <= len).ok_or_else(|| {
        format!("{n} bytes at offset {pos} lie past the end of the file ({len} bytes)")
    })?;
    let _ = end;
    let n = usize::try_from(n).map_err(|_| "size out of range".to_string())?;
    src.seek(SeekFrom::Start(pos)).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; n];
    src.read_exact(&mut buf).map_err(|e| e.to_string())?;
    Ok(buf)
}
