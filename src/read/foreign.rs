//! Files of formats this tool does not read, told apart by their first bytes so the message
//! says what the file is (a safetensors header length would otherwise be read from them).

use std::fs::File;
use std::os::unix::fs::FileExt;

/// Why a file of another format than those read cannot be opened, if it is one: PyTorch's
/// legacy (pre-1.6) pickle and tar formats, and bare pickles.
pub(super) fn foreign_format(file: &File, head: &[u8], file_len: u64) -> Option<String> {
    if let Some(why) = pickle_format(head) {
        return Some(why);
    }
    let mut magic = [0u8; 5];
    if file_len > 262 && file.read_exact_at(&mut magic, 257).is_ok() && &magic == b"ustar" {
        return Some(
            "a tar archive (PyTorch's legacy tar format, or not a model file), which is not \
             read: load and re-save it with a current torch.save"
                .into(),
        );
    }
    None
}

/// What a file that starts with a pickle's `PROTO` opcode (`0x80`, then protocol 2 to 5) is: a
/// legacy `torch.save` (a pickle of its magic number, after a `FRAME` from protocol 4 on) or
/// some other bare pickle. A safetensors file whose 8-byte header length happens to start with
/// the same two bytes is told apart by its JSON's `{` at byte 8.
fn pickle_format(head: &[u8]) -> Option<String> {
    // LONG1 of 10 bytes: the magic number 0x1950a86a20f9469cfc6c.
    const LEGACY_MAGIC: [u8; 12] = [
        0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19,
    ];
    let [0x80, proto @ 2..=5, rest @ ..] = head else {
        return None;
    };
    if head.get(8) == Some(&b'{') {
        return None;
    }
    // Protocol 4 and 5 pickles open with a FRAME: its opcode and 8-byte length.
    let body = match rest {
        [0x95, _, _, _, _, _, _, _, _, body @ ..] => body,
        body => body,
    };
    Some(if body.starts_with(&LEGACY_MAGIC) {
        format!(
            "a PyTorch checkpoint in the legacy (pre-1.6) pickle format (protocol {proto}), \
             which is not read: load and re-save it with a current torch.save"
        )
    } else {
        format!(
            "a bare Python pickle (protocol {proto}), not a PyTorch zip checkpoint, which is not \
             read: if you trust it, load it in Python and save its state dict with torch.save \
             or safetensors"
        )
    })
}
