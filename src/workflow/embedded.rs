//! Workflows embedded in ComfyUI's outputs: a PNG's `prompt` and `workflow` text chunks (PIL
//! writes them as `tEXt`, or `iTXt` for text outside Latin-1), and a `.safetensors` file's
//! metadata keys of the same names.

use std::io::Read;
use std::path::Path;

use crate::error::{IoContext, Result};
use crate::read::SafetensorsFile;

/// The eight bytes every PNG starts with.
pub(super) const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

/// The first bytes of a file (up to 16).
pub(super) fn head(path: &Path) -> Result<Vec<u8>> {
    let ctx = || format!("cannot read the workflow {}", path.display());
    let mut f = std::fs::File::open(path).ctx(ctx)?;
    let mut buf = Vec::with_capacity(16);
    f.by_ref().take(16).read_to_end(&mut buf).ctx(ctx)?;
    Ok(buf)
}

/// Whether a file starting with `head` is a safetensors file: a little-endian header length,
/// then the header's `{`.
pub(super) fn looks_like_safetensors(head: &[u8]) -> bool {
    head.len() > 8 && head[8] == b'{'
}

/// `prompt` and `workflow` of a safetensors file's metadata.
pub(super) fn safetensors_workflow(path: &Path) -> Result<(Option<String>, Option<String>)> {
    let f = SafetensorsFile::open(path)?;
    let m = f.metadata();
    let get = |k: &str| m.get(k).filter(|s| !s.is_empty()).cloned();
    Ok((get("prompt"), get("workflow")))
}

/// `prompt` and `workflow` of a PNG's text chunks.
///
/// # Errors
/// A message for a file whose chunks do not add up, or a compressed text chunk (`zTXt`, or a
/// compressed `iTXt`), which this reader does not inflate.
pub(super) fn png_workflow(
    bytes: &[u8],
) -> std::result::Result<(Option<String>, Option<String>), String> {
    let mut at = PNG_SIGNATURE.len();
    let (mut prompt, mut workflow) = (None, None);
    while at + 8 <= bytes.len() {
        let len =
            u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize;
        let kind = &bytes[at + 4..at + 8];
        let data = bytes
            .get(at + 8..at + 8 + len)
            .ok_or_else(|| format!("a PNG chunk at byte {at} runs past the end of the file"))?;
        let text = match kind {
            b"tEXt" => {
                let (key, value) = split_nul(data)?;
                // tEXt is Latin-1.
                Some((
                    key,
                    value.iter().map(|&b| char::from(b)).collect::<String>(),
                ))
            }
            b"iTXt" => {
                let (key, rest) = split_nul(data)?;
                let (flag, rest) = rest.split_first().ok_or("a truncated iTXt chunk")?;
                let rest = rest.get(1..).ok_or("a truncated iTXt chunk")?;
                let (_, rest) = split_nul(rest)?;
                let (_, value) = split_nul(rest)?;
                if *flag != 0 && (key == "prompt" || key == "workflow") {
                    return Err(format!(
                        "its `{key}` text is compressed, which this tool does not read; \
                         export the workflow as JSON from ComfyUI"
                    ));
                }
                Some((key, String::from_utf8_lossy(value).into_owned()))
            }
            b"zTXt" => {
                let (key, _) = split_nul(data)?;
                if key == "prompt" || key == "workflow" {
                    return Err(format!(
                        "its `{key}` text is compressed (zTXt), which this tool does not read; \
                         export the workflow as JSON from ComfyUI"
                    ));
                }
                None
            }
            b"IEND" => break,
            _ => None,
        };
        match text {
            Some((k, v)) if k == "prompt" => prompt = Some(v),
            Some((k, v)) if k == "workflow" => workflow = Some(v),
            _ => {}
        }
        // Length, type, data and CRC.
        at += 12 + len;
    }
    Ok((prompt, workflow))
}

/// A chunk's keyword (up to its NUL) and the rest.
fn split_nul(data: &[u8]) -> std::result::Result<(String, &[u8]), String> {
    let i = data
        .iter()
        .position(|&b| b == 0)
        .ok_or("a PNG text chunk without its keyword's end")?;
    Ok((
        String::from_utf8_lossy(&data[..i]).into_owned(),
        &data[i + 1..],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(kind: &[u8], data: &[u8]) -> Vec<u8> {
        let mut c = (data.len() as u32).to_be_bytes().to_vec();
        c.extend_from_slice(kind);
        c.extend_from_slice(data);
        // The CRC is not checked by this reader.
        c.extend_from_slice(&[0, 0, 0, 0]);
        c
    }

    #[test]
    fn text_chunks_give_prompt_and_workflow() {
        let mut png = PNG_SIGNATURE.to_vec();
        png.extend(chunk(b"IHDR", &[0; 13]));
        png.extend(chunk(b"tEXt", b"prompt\0{\"1\": {}}"));
        png.extend(chunk(
            b"iTXt",
            "workflow\0\0\0\0\0{\"nodes\": [\"é\"]}".as_bytes(),
        ));
        png.extend(chunk(b"IEND", b""));
        let (p, w) = png_workflow(&png).unwrap();
        assert_eq!(p.as_deref(), Some("{\"1\": {}}"));
        assert_eq!(w.as_deref(), Some("{\"nodes\": [\"é\"]}"));
        let mut z = PNG_SIGNATURE.to_vec();
        z.extend(chunk(b"zTXt", b"workflow\0\0xx"));
        assert!(png_workflow(&z).unwrap_err().contains("compressed"));
        let mut cut = PNG_SIGNATURE.to_vec();
        cut.extend(&chunk(b"tEXt", b"prompt\0abc")[..10]);
        assert!(png_workflow(&cut).unwrap_err().contains("past the end"));
    }
}
