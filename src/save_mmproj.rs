//! Writing a `qwen2vl` text encoder and its vision tower's mmproj file as one job: the mmproj
//! is named after the text encoder's file (`<stem>-mmproj-F16.gguf`), checked against what
//! ComfyUI-GGUF's loader would pair in that folder, both files are written before either is
//! published, and a failure in either leaves neither.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::gguf_text::mmproj::{candidates, file_for, match_stem, pairs, VISUAL};
use crate::model::InputMap;
use crate::plan::Plan;
use crate::publish::{reserve_at, Reservation};
use crate::save::{write_method, write_unpublished};
use crate::write::Method;
use crate::SaveOptions;

/// Takes the vision tower (`visual.*`) out of a `qwen25_7b` encoder's `tensors` (transformers
/// names) and plans its mmproj file; `None` without one.
///
/// # Errors
/// Planning errors of [`Plan::gguf_mmproj`].
pub(crate) fn plan_vision(tensors: &mut InputMap) -> Result<Option<Plan>> {
    let visual: InputMap = tensors
        .iter()
        .filter(|(k, _)| k.starts_with(VISUAL))
        .map(|(k, t)| (k.clone(), t.clone()))
        .collect();
    if visual.is_empty() {
        return Ok(None);
    }
    tensors.retain(|k, _| !k.starts_with(VISUAL));
    Plan::gguf_mmproj(&visual).map(Some)
}

/// A published file and the tensors holding NaN/Inf values.
pub(crate) type Written = (PathBuf, Vec<(String, u64)>);

/// Writes `text` into its `reservation` and `vision` into the mmproj file beside it, then
/// publishes both: the text encoder's first, the mmproj's after (a failed second publish
/// removes the first).
///
/// # Errors
/// [`Error::InvalidInput`] when the loader would pair another mmproj of the folder with the
/// text encoder, or the new mmproj with another `qwen2vl` file of the folder; the reservation,
/// write and publish errors of either file. Nothing is left under a final name on error.
pub(crate) fn write_pair(
    text: &Plan,
    reservation: Reservation,
    method: Method,
    vision: &Plan,
    opts: &SaveOptions,
) -> Result<[Written; 2]> {
    let text_path = reservation.final_path().to_path_buf();
    let mm_path = file_for(&text_path);
    check_pairing(&text_path, &mm_path)?;
    let mm_reservation = reserve_at(&mm_path)?;
    let folder = mm_path.parent().unwrap_or(Path::new("."));
    let mm_method = write_method(vision, opts, folder);
    let text_nf = write_unpublished(text, &reservation, method, opts)?;
    let mm_nf = write_unpublished(vision, &mm_reservation, mm_method, opts)?;
    let text_path = reservation.commit()?;
    match mm_reservation.commit() {
        Ok(mm_path) => Ok([(text_path, text_nf), (mm_path, mm_nf)]),
        Err(e) => {
            // Best effort: the error says what failed; the text encoder must not stay alone.
            let _ = std::fs::remove_file(&text_path);
            Err(e)
        }
    }
}

/// Refuses a pairing ComfyUI-GGUF's loader would get wrong in the folder: another mmproj it
/// would take for the text encoder at `text`, or a `qwen2vl` file it would pair with the new
/// mmproj `mm`.
fn check_pairing(text: &Path, mm: &Path) -> Result<()> {
    let name = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    if let Some(other) = candidates(text)?.first() {
        return Err(Error::InvalidInput(format!(
            "{} already holds {}, which ComfyUI-GGUF's loader would pair with the text encoder \
             {} (an mmproj whose name holds `{}`) instead of, or as well as, the new {}; \
             write into another folder or give another --prefix",
            other.parent().unwrap_or(Path::new(".")).display(),
            name(other),
            name(text),
            match_stem(text),
            name(mm)
        )));
    }
    let dir = mm.parent().unwrap_or(Path::new("."));
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    let mm_name = name(mm);
    for e in entries.flatten() {
        let path = e.path();
        let other = name(&path);
        let lower = other.to_lowercase();
        if path == text || !lower.ends_with(".gguf") || lower.contains("mmproj") {
            continue;
        }
        if !pairs(&mm_name, &match_stem(&path)) {
            continue;
        }
        let qwen2vl = crate::read::gguf::GgufFile::open(&path)
            .is_ok_and(|g| g.architecture() == Some("qwen2vl"));
        if qwen2vl {
            return Err(Error::InvalidInput(format!(
                "ComfyUI-GGUF's loader would pair the new {mm_name} with the `qwen2vl` text \
                 encoder {other} already in {} too (its name holds `{}`); write into another \
                 folder or give another --prefix",
                dir.display(),
                match_stem(&path)
            )));
        }
    }
    Ok(())
}
