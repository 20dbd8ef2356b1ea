//! The central directory of a zip archive: what PyTorch's `torch.save` writes since 1.6 (`.ckpt`,
//! `.pt`, `.pth`, `.bin`). Only the directory is parsed; every entry a reader uses must be stored
//! uncompressed (PyTorch never compresses), so its bytes are read where they lie in the archive,
//! like a safetensors tensor's.
//!
//! Every number read from the file is checked against the file's real size before it sizes a
//! buffer or an offset: a directory that claims more entries or bytes than the file holds is an
//! error, not an allocation.

use std::fs::File;
use std::os::unix::fs::FileExt;

/// One member of the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ZipEntry {
    /// Its path inside the archive.
    pub name: String,
    /// The compression method (0: stored).
    pub method: u16,
    /// Whether the entry is encrypted.
    pub encrypted: bool,
    /// Offset of its first data byte in the file.
    pub data_start: u64,
    /// Bytes of data as stored.
    pub stored_len: u64,
    /// Bytes of data once extracted.
    pub len: u64,
}

const EOCD_SIG: u32 = 0x0605_4b50;
const ZIP64_LOCATOR_SIG: u32 = 0x0706_4b50;
const ZIP64_EOCD_SIG: u32 = 0x0606_4b50;
const CENTRAL_SIG: u32 = 0x0201_4b50;
const LOCAL_SIG: u32 = 0x0403_4b50;
/// The end record's fixed part; a comment of up to 65,535 bytes may follow it.
const EOCD_LEN: u64 = 22;
/// A directory larger than this is not PyTorch's (it lists a few entries per tensor).
const MAX_DIRECTORY: u64 = 256 << 20;

/// Whether `prefix` (the first bytes of a file) starts like a zip archive.
pub(crate) fn is_zip(prefix: &[u8]) -> bool {
    prefix.starts_with(b"PK\x03\x04") || prefix.starts_with(b"PK\x05\x06")
}

/// Reads the directory of the archive `file` of `file_len` bytes.
///
/// # Errors
/// A message saying what is wrong: no end record, a directory outside the file, a split
/// (multi-disk) archive, a truncated or inconsistent entry.
pub(crate) fn entries(file: &File, file_len: u64) -> Result<Vec<ZipEntry>, String> {
    let (dir_start, dir_len, count) = end_record(file, file_len)?;
    if dir_len > MAX_DIRECTORY || dir_start.checked_add(dir_len).is_none_or(|e| e > file_len) {
        return Err(format!(
            "its zip directory ({dir_len} bytes at {dir_start}) lies outside the file's \
             {file_len} bytes: the file is truncated or corrupt"
        ));
    }
    // Every directory record takes at least 46 bytes: a count the directory cannot hold is a lie.
    if count > dir_len / 46 {
        return Err(format!(
            "its zip directory claims {count} entries in {dir_len} bytes: the file is corrupt"
        ));
    }
    let mut dir = vec![0u8; dir_len as usize];
    read(file, &mut dir, dir_start)?;
    let mut out = Vec::with_capacity(count as usize);
    let mut at = 0usize;
    for _ in 0..count {
        let (entry, next) = central_record(&dir, at, file, file_len)?;
        out.push(entry);
        at = next;
    }
    Ok(out)
}

/// Where the directory starts, its length and its entry count, from the end record (or its
/// zip64 form).
fn end_record(file: &File, file_len: u64) -> Result<(u64, u64, u64), String> {
    if file_len < EOCD_LEN {
        return Err("it is too short to be a zip archive: the file is truncated".into());
    }
    let tail_len = file_len.min(EOCD_LEN + u16::MAX as u64);
    let tail_start = file_len - tail_len;
    let mut tail = vec![0u8; tail_len as usize];
    read(file, &mut tail, tail_start)?;
    let at = (0..=tail.len() - EOCD_LEN as usize)
        .rev()
        .find(|&i| u32_at(&tail, i) == Some(EOCD_SIG))
        .ok_or("it has no zip end-of-directory record: the file is truncated or not a zip")?;
    let eocd = &tail[at..];
    let field16 = |o: usize| u16_at(eocd, o).map_or(0, u64::from);
    if field16(4) != 0 || field16(6) != 0 {
        return Err("it is a split (multi-disk) zip archive, which PyTorch never writes".into());
    }
    let mut count = field16(10);
    let mut dir_len = u32_at(eocd, 12).map_or(0, u64::from);
    let mut dir_start = u32_at(eocd, 16).map_or(0, u64::from);
    if count == 0xFFFF || dir_len == 0xFFFF_FFFF || dir_start == 0xFFFF_FFFF {
        // zip64: a locator right before the end record points at the zip64 end record.
        let loc_at = (tail_start + at as u64)
            .checked_sub(20)
            .ok_or("its zip64 locator is missing: the file is corrupt")?;
        let mut loc = [0u8; 20];
        read(file, &mut loc, loc_at)?;
        if u32_at(&loc, 0) != Some(ZIP64_LOCATOR_SIG) {
            return Err("its zip64 locator is missing: the file is corrupt".into());
        }
        let rec_at = u64_at(&loc, 8).unwrap_or(u64::MAX);
        if rec_at.checked_add(56).is_none_or(|e| e > file_len) {
            return Err("its zip64 end record lies outside the file: the file is corrupt".into());
        }
        let mut rec = [0u8; 56];
        read(file, &mut rec, rec_at)?;
        if u32_at(&rec, 0) != Some(ZIP64_EOCD_SIG) {
            return Err("its zip64 end record is missing: the file is corrupt".into());
        }
        count = u64_at(&rec, 32).unwrap_or(u64::MAX);
        dir_len = u64_at(&rec, 40).unwrap_or(u64::MAX);
        dir_start = u64_at(&rec, 48).unwrap_or(u64::MAX);
    }
    Ok((dir_start, dir_len, count))
}

/// The directory record at `at`, and where the next one starts.
fn central_record(
    dir: &[u8],
    at: usize,
    file: &File,
    file_len: u64,
) -> Result<(ZipEntry, usize), String> {
    let bad = || "a zip directory record is truncated: the file is corrupt".to_string();
    if u32_at(dir, at) != Some(CENTRAL_SIG) {
        return Err("a zip directory record has the wrong signature: the file is corrupt".into());
    }
    let f16 = |o: usize| u16_at(dir, at + o).ok_or_else(bad);
    let f32 = |o: usize| u32_at(dir, at + o).map(u64::from).ok_or_else(bad);
    let flags = f16(8)?;
    let method = f16(10)?;
    let mut stored_len = f32(20)?;
    let mut len = f32(24)?;
    let name_len = f16(28)? as usize;
    let extra_len = f16(30)? as usize;
    let comment_len = f16(32)? as usize;
    let mut local = f32(42)?;
    let name_at = at + 46;
    let extra_at = name_at + name_len;
    let next = extra_at + extra_len + comment_len;
    if next > dir.len() {
        return Err(bad());
    }
    let name = String::from_utf8_lossy(&dir[name_at..extra_at]).into_owned();
    // zip64 sizes and offset: in the extra field 0x0001, each present only where the 32-bit
    // field is saturated, in this order.
    let mut extra = &dir[extra_at..extra_at + extra_len];
    while extra.len() >= 4 {
        let id = u16_at(extra, 0).unwrap_or(0);
        let size = u16_at(extra, 2).unwrap_or(0) as usize;
        let body = extra.get(4..4 + size).ok_or_else(bad)?;
        if id == 1 {
            let mut fields = body.chunks_exact(8).map(|c| u64_at(c, 0).unwrap_or(0));
            for v in [&mut len, &mut stored_len, &mut local] {
                if *v == 0xFFFF_FFFF {
                    *v = fields.next().ok_or_else(bad)?;
                }
            }
        }
        extra = &extra[4 + size..];
    }
    // The data starts after the local header, whose name and extra lengths may differ from the
    // directory's (PyTorch pads the local extra field so data is 64-byte aligned).
    let mut head = [0u8; 30];
    if local.checked_add(30).is_none_or(|e| e > file_len) {
        return Err(format!(
            "the zip entry `{name}` starts outside the file: the file is truncated or corrupt"
        ));
    }
    read(file, &mut head, local)?;
    if u32_at(&head, 0) != Some(LOCAL_SIG) {
        return Err(format!(
            "the zip entry `{name}` has no local header where the directory says: the file is corrupt"
        ));
    }
    let skip =
        30 + u64::from(u16_at(&head, 26).unwrap_or(0)) + u64::from(u16_at(&head, 28).unwrap_or(0));
    let data_start = local + skip;
    if data_start
        .checked_add(stored_len)
        .is_none_or(|e| e > file_len)
    {
        return Err(format!(
            "the zip entry `{name}` ({stored_len} bytes at {data_start}) runs past the end of the \
             file's {file_len} bytes: the file is truncated"
        ));
    }
    let entry = ZipEntry {
        name,
        method,
        encrypted: flags & 1 != 0,
        data_start,
        stored_len,
        len,
    };
    Ok((entry, next))
}

fn read(file: &File, buf: &mut [u8], at: u64) -> Result<(), String> {
    file.read_exact_at(buf, at)
        .map_err(|e| format!("it cannot be read at byte {at} ({e}): the file is truncated"))
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}
