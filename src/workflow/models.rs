//! Model names as ComfyUI resolves them (`folder_paths.py`): each kind of model has folders
//! under the models folder (`checkpoints/`, `loras/`, `vae/`, `text_encoders/` and `clip/`,
//! `diffusion_models/` and `unet/`), plus those an `extra_model_paths.yaml` adds
//! (`utils/extra_config.py`); a name is a path relative to one of them, looked up in order.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::yaml;
use crate::error::{Error, IoContext, Result};
use crate::naming::normpath;

/// The folders each kind of model is looked up in, in order.
#[derive(Debug, Clone, Default)]
pub struct ModelFolders {
    folders: BTreeMap<String, Vec<PathBuf>>,
}

/// ComfyUI's old folder names and the ones they stand for.
fn map_legacy(name: &str) -> &str {
    match name {
        "unet" => "diffusion_models",
        "clip" => "text_encoders",
        other => other,
    }
}

impl ModelFolders {
    /// ComfyUI's folders under `models_dir` (its `models/` folder).
    pub fn new(models_dir: &Path) -> ModelFolders {
        let d = |n: &str| models_dir.join(n);
        let mut folders = BTreeMap::new();
        folders.insert("checkpoints".into(), vec![d("checkpoints")]);
        folders.insert("loras".into(), vec![d("loras")]);
        folders.insert("vae".into(), vec![d("vae")]);
        folders.insert("text_encoders".into(), vec![d("text_encoders"), d("clip")]);
        folders.insert(
            "diffusion_models".into(),
            vec![d("unet"), d("diffusion_models")],
        );
        ModelFolders { folders }
    }

    /// The folders of one kind (`checkpoints`, `loras`, `vae`, `text_encoders` or `clip`,
    /// `diffusion_models` or `unet`), in lookup order.
    pub fn folders(&self, kind: &str) -> &[PathBuf] {
        self.folders
            .get(map_legacy(kind))
            .map_or(&[][..], Vec::as_slice)
    }

    /// Adds the folders of an `extra_model_paths.yaml`, as ComfyUI's `load_extra_path_config`
    /// does: per section, `base_path` (`~` and `$VARS` expanded, relative to the file's folder),
    /// `is_default` (its folders go first), and per kind one folder or several, one a line;
    /// relative folders are taken under `base_path`, or the file's folder without one.
    ///
    /// # Errors
    /// [`Error::Io`] when the file cannot be read; [`Error::InvalidInput`] naming the line for
    /// YAML this reader does not take (see the `yaml` module) or values that are not text.
    pub fn add_extra_config(&mut self, path: &Path) -> Result<()> {
        let text = std::fs::read_to_string(path)
            .ctx(|| format!("cannot read the extra model paths file {}", path.display()))?;
        let dir = absolute(path.parent().unwrap_or(Path::new(".")))?;
        let sections = yaml::parse(&text)
            .map_err(|e| Error::InvalidInput(format!("{}: {e}", path.display())))?;
        for (_, entries) in sections {
            let mut base = None;
            let mut is_default = false;
            let mut kinds = Vec::new();
            for (k, v) in entries {
                match k.as_str() {
                    "base_path" => {
                        let b = PathBuf::from(expand(&v));
                        base = Some(if b.is_absolute() { b } else { dir.join(b) });
                    }
                    "is_default" => is_default = matches!(v.as_str(), "true" | "True" | "yes"),
                    _ => kinds.push((k, v)),
                }
            }
            for (kind, value) in kinds {
                for line in value.split('\n').filter(|l| !l.is_empty()) {
                    let p = match &base {
                        Some(b) => b.join(line),
                        None if Path::new(line).is_absolute() => PathBuf::from(line),
                        None => dir.join(line),
                    };
                    let p = PathBuf::from(normpath(&p.to_string_lossy()));
                    let list = self
                        .folders
                        .entry(map_legacy(&kind).to_string())
                        .or_default();
                    list.retain(|q| *q != p || !is_default);
                    if is_default {
                        list.insert(0, p);
                    } else if !list.contains(&p) {
                        list.push(p);
                    }
                }
            }
        }
        Ok(())
    }

    /// The file `name` of kind `kind`: the first folder holding it, as `get_full_path` looks
    /// (the name cannot leave its folder: `..` is resolved against the folder's root). A name
    /// with Windows separators (`SDXL\\model.safetensors`, from a workflow saved on Windows) is
    /// also looked up with `/`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the folders searched when no folder holds it.
    pub fn resolve(&self, kind: &str, name: &str) -> Result<PathBuf> {
        let folders = self.folders(kind);
        let mut candidates = vec![name.to_string()];
        if name.contains('\\') {
            candidates.push(name.replace('\\', "/"));
        }
        for n in &candidates {
            // `os.path.relpath(os.path.join("/", filename), "/")`.
            let rel = normpath(&format!("/{n}"));
            let rel = rel.trim_start_matches('/');
            if rel.is_empty() {
                continue;
            }
            for f in folders {
                let p = f.join(rel);
                if p.is_file() || p.is_dir() {
                    return Ok(p);
                }
            }
        }
        let searched: Vec<String> = folders.iter().map(|f| f.display().to_string()).collect();
        Err(Error::InvalidInput(format!(
            "{kind} `{name}` not found; searched {}: put the file there, or give --models-dir \
             (ComfyUI's models folder) or --extra-model-paths-config",
            if searched.is_empty() {
                "no folder".to_string()
            } else {
                searched.join(", ")
            }
        )))
    }
}

/// `path` made absolute against the current directory.
fn absolute(path: &Path) -> Result<PathBuf> {
    if path.is_absolute() {
        return Ok(path.to_path_buf());
    }
    let cwd = std::env::current_dir().ctx(|| "cannot read the current directory".to_string())?;
    Ok(PathBuf::from(normpath(&cwd.join(path).to_string_lossy())))
}

/// Python's `os.path.expandvars(os.path.expanduser(s))`: a leading `~` is the home folder;
/// `$NAME` and `${NAME}` are the variable's value (unset ones stay as written).
fn expand(s: &str) -> String {
    let home = std::env::var("HOME").ok();
    let s = match (s.strip_prefix('~'), &home) {
        (Some(rest), Some(h)) if rest.is_empty() || rest.starts_with('/') => format!("{h}{rest}"),
        _ => s.to_string(),
    };
    let mut out = String::new();
    let mut rest = s.as_str();
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (name, len) = match after.strip_prefix('{') {
            Some(b) => match b.find('}') {
                Some(e) => (&b[..e], e + 2),
                None => ("", 0),
            },
            None => {
                let e = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                (&after[..e], e)
            }
        };
        match std::env::var(name) {
            Ok(v) if !name.is_empty() => out.push_str(&v),
            _ => out.push_str(&rest[i..i + 1 + len]),
        }
        rest = &rest[i + 1 + len..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_in_comfyuis_folders_and_never_leave_them() {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path();
        for f in [
            "unet/u.safetensors",
            "diffusion_models/d.safetensors",
            "clip/c.safetensors",
            "checkpoints/sdxl/x.safetensors",
        ] {
            std::fs::create_dir_all(m.join(f).parent().unwrap()).unwrap();
            std::fs::write(m.join(f), b"").unwrap();
        }
        let f = ModelFolders::new(m);
        assert_eq!(
            f.resolve("unet", "u.safetensors").unwrap(),
            m.join("unet/u.safetensors")
        );
        assert_eq!(
            f.resolve("diffusion_models", "d.safetensors").unwrap(),
            m.join("diffusion_models/d.safetensors")
        );
        assert_eq!(
            f.resolve("text_encoders", "c.safetensors").unwrap(),
            m.join("clip/c.safetensors")
        );
        assert_eq!(
            f.resolve("checkpoints", "sdxl\\x.safetensors").unwrap(),
            m.join("checkpoints/sdxl/x.safetensors")
        );
        // `..` cannot climb out of the folder.
        assert!(f
            .resolve("checkpoints", "../checkpoints/sdxl/x.safetensors")
            .unwrap_err()
            .to_string()
            .contains("not found"));
        let e = f
            .resolve("loras", "missing.safetensors")
            .unwrap_err()
            .to_string();
        assert!(e.contains(&m.join("loras").display().to_string()), "{e}");
    }

    #[test]
    fn extra_model_paths_add_folders_as_comfyui_reads_them() {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path();
        std::fs::create_dir_all(m.join("a1111/models/Lora")).unwrap();
        std::fs::create_dir_all(m.join("a1111/models/LyCORIS")).unwrap();
        std::fs::write(m.join("a1111/models/LyCORIS/l.safetensors"), b"").unwrap();
        std::fs::write(m.join("first.safetensors"), b"").unwrap();
        let yaml = "\
# comment
a111:
    base_path: a1111/   # trailing comment

    checkpoints: models/Stable-diffusion
    loras: |
         models/Lora
         models/LyCORIS
other:
    is_default: true
    loras: .
";
        std::fs::write(m.join("extra.yaml"), yaml).unwrap();
        let mut f = ModelFolders::new(&m.join("models"));
        f.add_extra_config(&m.join("extra.yaml")).unwrap();
        let loras = f.folders("loras");
        assert_eq!(loras[0], m.to_path_buf(), "is_default goes first");
        assert_eq!(loras[1], m.join("models/loras"));
        assert_eq!(loras[2], m.join("a1111/models/Lora"));
        assert_eq!(loras[3], m.join("a1111/models/LyCORIS"));
        assert_eq!(
            f.resolve("loras", "l.safetensors").unwrap(),
            m.join("a1111/models/LyCORIS/l.safetensors")
        );
        assert_eq!(
            f.resolve("loras", "first.safetensors").unwrap(),
            m.join("first.safetensors")
        );
        std::fs::write(m.join("bad.yaml"), "a:\n  - x\n").unwrap();
        let e = f
            .add_extra_config(&m.join("bad.yaml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn home_and_variables_expand() {
        std::env::set_var("CHECKPOINT_SAVE_TEST_VAR", "v");
        assert_eq!(expand("$CHECKPOINT_SAVE_TEST_VAR/x"), "v/x");
        assert_eq!(expand("${CHECKPOINT_SAVE_TEST_VAR}y"), "vy");
        assert_eq!(
            expand("$CHECKPOINT_SAVE_UNSET_VAR_X/x"),
            "$CHECKPOINT_SAVE_UNSET_VAR_X/x"
        );
    }
}
