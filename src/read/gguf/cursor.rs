//! A forward reader over a GGUF file's header: buffered `pread`s, a position, and the bound past
//! which nothing is read (the file's end or the header limit), so that no claimed length makes it
//! read or allocate more than the file holds.

use std::fs::File;
use std::os::unix::fs::FileExt;

/// Where the bytes come from: a file, or memory (tests, the fuzz target).
pub(crate) trait Source {
    /// Fills `buf` with the bytes at `at`.
    fn read_at(&self, buf: &mut [u8], at: u64) -> std::io::Result<()>;
}

impl Source for File {
    fn read_at(&self, buf: &mut [u8], at: u64) -> std::io::Result<()> {
        self.read_exact_at(buf, at)
    }
}

impl Source for &[u8] {
    fn read_at(&self, buf: &mut [u8], at: u64) -> std::io::Result<()> {
        let end = usize::try_from(at)
            .ok()
            .and_then(|at| at.checked_add(buf.len()).map(|end| (at, end)))
            .filter(|&(_, end)| end <= self.len());
        match end {
            Some((at, end)) => {
                buf.copy_from_slice(&self[at..end]);
                Ok(())
            }
            None => Err(std::io::ErrorKind::UnexpectedEof.into()),
        }
    }
}

const CHUNK: usize = 64 << 10;

/// The header reader.
pub(crate) struct Cursor<'a> {
    src: &'a dyn Source,
    /// The file's length.
    len: u64,
    /// Nothing at or past this is header (the smaller of the file's end and the header limit).
    limit: u64,
    pos: u64,
    buf: Vec<u8>,
    /// File offset of `buf[0]`.
    buf_at: u64,
    /// Whether lengths and counts are u64 (version 2 and 3) or u32 (version 1).
    long: bool,
}

impl<'a> Cursor<'a> {
    /// A reader of `src` (`len` bytes) that reads nothing at or past `limit`.
    pub(crate) fn new(src: &'a dyn Source, len: u64, limit: u64) -> Self {
        Cursor {
            src,
            len,
            limit: limit.min(len),
            pos: 0,
            buf: Vec::new(),
            buf_at: 0,
            long: true,
        }
    }

    /// Reads lengths and counts as u32 (GGUF version 1) instead of u64.
    pub(crate) fn set_short_lengths(&mut self) {
        self.long = false;
    }

    /// Bytes of a length or count field.
    pub(crate) fn length_size(&self) -> u64 {
        if self.long {
            8
        } else {
            4
        }
    }

    /// The offset of the next byte.
    pub(crate) fn pos(&self) -> u64 {
        self.pos
    }

    /// Bytes that may still be read.
    pub(crate) fn remaining(&self) -> u64 {
        self.limit - self.pos
    }

    fn short(&self, n: u64) -> String {
        if self.limit < self.len {
            format!(
                "its header runs past {} bytes, more than any GGUF writer makes (a corrupt \
                 count or length?)",
                self.limit
            )
        } else {
            format!(
                "it ends at byte {} where {n} more bytes of its header were expected: the file \
                 is truncated (an interrupted download or copy?) or corrupt",
                self.len
            )
        }
    }

    /// Fills `out` with the next bytes.
    fn read(&mut self, out: &mut [u8]) -> Result<(), String> {
        let n = out.len() as u64;
        if n > self.remaining() {
            return Err(self.short(n));
        }
        let buf_end = self.buf_at + self.buf.len() as u64;
        if self.pos < self.buf_at || self.pos + n > buf_end {
            if out.len() >= CHUNK {
                self.src
                    .read_at(out, self.pos)
                    .map_err(|e| format!("it cannot be read at byte {} ({e})", self.pos))?;
                self.pos += n;
                return Ok(());
            }
            let fill = (CHUNK as u64).min(self.limit - self.pos) as usize;
            self.buf.resize(fill, 0);
            self.src
                .read_at(&mut self.buf, self.pos)
                .map_err(|e| format!("it cannot be read at byte {} ({e})", self.pos))?;
            self.buf_at = self.pos;
        }
        let at = (self.pos - self.buf_at) as usize;
        out.copy_from_slice(&self.buf[at..at + out.len()]);
        self.pos += n;
        Ok(())
    }

    /// The next `B` bytes.
    pub(crate) fn array<const B: usize>(&mut self) -> Result<[u8; B], String> {
        let mut out = [0u8; B];
        self.read(&mut out)?;
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, String> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A length or count field (u64, or u32 in version 1).
    pub(crate) fn length(&mut self) -> Result<u64, String> {
        if self.long {
            self.u64()
        } else {
            self.u32().map(u64::from)
        }
    }

    /// The next `n` bytes, `n` at most what is left (checked here, before allocating).
    pub(crate) fn bytes(&mut self, n: usize) -> Result<Vec<u8>, String> {
        if n as u64 > self.remaining() {
            return Err(self.short(n as u64));
        }
        let mut out = vec![0u8; n];
        self.read(&mut out)?;
        Ok(out)
    }

    /// A string: its length, then that many bytes of UTF-8; `what` names it in errors.
    pub(crate) fn string(&mut self, what: &str) -> Result<String, String> {
        let n = self.length()?;
        if n > self.remaining() {
            return Err(format!(
                "{what} claims a string of {n} bytes, more than the {} bytes left in its header: \
                 the file is truncated or corrupt",
                self.remaining()
            ));
        }
        let bytes = self.bytes(n as usize)?;
        String::from_utf8(bytes).map_err(|e| {
            format!("{what} holds a string that is not UTF-8 ({e}); GGUF strings are UTF-8")
        })
    }
}
