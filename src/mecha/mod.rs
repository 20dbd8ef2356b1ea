//! sd-mecha recipes: the `.mecha` text format sd-mecha serializes merge recipes to
//! (`sd_mecha/serialization.py`, format `version 0.1.0`), read into a [`Recipe`] and translated
//! into a merge [`Graph`], so that `checkpoint-save run RECIPE.mecha` writes what
//! `sd_mecha.merge(recipe, output=…)` writes, in one streamed pass.
//!
//! The methods translated are listed by [`methods`] (one table, `translate::METHODS`); any
//! other is refused naming it. Model paths are resolved as sd-mecha resolves them
//! ([`resolve_model`]).
//!
//! ```no_run
//! use checkpoint_save::mecha::{Recipe, TranslateOptions};
//! use checkpoint_save::merge::graph::{run, RunOptions, Target};
//!
//! # fn main() -> checkpoint_save::Result<()> {
//! let recipe = Recipe::open("merge.mecha".as_ref())?;
//! let opts = TranslateOptions {
//!     models_dirs: vec!["models".into()],
//!     target: Target::File("merged.safetensors".into()),
//! };
//! let translated = recipe.to_graph(&opts)?;
//! run(&translated.graph, &RunOptions::new("."))?;
//! # Ok(())
//! # }
//! ```

mod parse;
#[cfg(test)]
mod tests;
mod translate;

use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::merge::graph::{Graph, Target};
pub use translate::methods;

/// The recipe format version this build reads (sd-mecha's `MECHA_FORMAT_VERSION`).
pub const FORMAT_VERSION: &str = "0.1.0";

/// A parsed recipe: its instructions in order (the last is the result) and its text.
#[derive(Debug, Clone, PartialEq)]
pub struct Recipe {
    instructions: Vec<Instruction>,
    text: String,
    /// The file it was read from ([`Recipe::open`]), named in translation errors.
    path: Option<PathBuf>,
}

/// One instruction line.
#[derive(Debug, Clone, PartialEq)]
pub struct Instruction {
    /// Its line number in the file (from 1).
    pub line: usize,
    /// What it makes.
    pub command: Command,
    /// Its arguments in order (`merge`'s first is the method's name, `model`'s the path).
    pub args: Vec<Arg>,
}

/// What an instruction makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// `dict key=value …`: a mapping (a literal's values).
    Dict,
    /// `literal VALUE model_config=… merge_space=…`: a constant (a number for every key).
    Literal,
    /// `model "PATH" model_config=… merge_space=…`: a model file.
    Model,
    /// `merge "METHOD" ARGS… KEY=VALUE…`: a merge method applied to earlier instructions.
    Merge,
}

/// One argument: positional (`key` is `None`) or `key=value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Arg {
    /// The keyword, for `key=value`.
    pub key: Option<String>,
    /// The value.
    pub value: Value,
}

/// An argument's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `null`.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A number with `.` or an exponent.
    Float(f64),
    /// A quoted string, escapes resolved.
    Str(String),
    /// `&N`: the result of instruction N (from 0).
    Ref(usize),
}

impl std::fmt::Display for Value {
    /// The value as a recipe writes it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Null => f.write_str("null"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(x) => write!(f, "{x}"),
            Value::Float(x) => write!(f, "{x:?}"),
            Value::Str(s) => write!(f, "{s:?}"),
            Value::Ref(r) => write!(f, "&{r}"),
        }
    }
}

impl Instruction {
    /// The positional arguments' values.
    pub fn positional(&self) -> impl Iterator<Item = &Value> {
        self.args
            .iter()
            .filter(|a| a.key.is_none())
            .map(|a| &a.value)
    }

    /// The value of keyword `key`, if given.
    pub fn keyword(&self, key: &str) -> Option<&Value> {
        self.args
            .iter()
            .find(|a| a.key.as_deref() == Some(key))
            .map(|a| &a.value)
    }
}

impl Recipe {
    /// Parses a recipe's text.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the line (from 1) and what is wrong: a first line that is
    /// not `version 0.1.0` (naming the version found and the one read), a line that does not
    /// tokenize (an unclosed quote), an unknown command, a value that is none of sd-mecha's
    /// forms, a reference `&N` to a later or missing instruction, a `model` without a path, a
    /// `merge` without a method name, a keyword given twice; a recipe without instructions.
    pub fn parse(text: &str) -> Result<Recipe> {
        parse::parse(text)
    }

    /// Reads and parses a `.mecha` file.
    ///
    /// # Errors
    /// [`Error::Io`] when it cannot be read; [`Error::InvalidInput`] as [`Recipe::parse`], the
    /// message starting with the file's path.
    pub fn open(path: &Path) -> Result<Recipe> {
        let text = std::fs::read_to_string(path)
            .ctx(|| format!("cannot read the recipe {}", path.display()))?;
        let mut recipe = Recipe::parse(&text).map_err(|e| in_file(path, e))?;
        recipe.path = Some(path.to_path_buf());
        Ok(recipe)
    }

    /// The instructions, in order; the last is the result.
    pub fn instructions(&self) -> &[Instruction] {
        &self.instructions
    }

    /// The recipe's text as read (written as the output's `mecha_recipe` metadata, as
    /// sd-mecha does).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The recipe as a merge graph whose one save writes the result to `opts.target`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the line: a method this build does not run (listing
    /// those it runs), an argument missing, unknown or of the wrong kind (a model where a
    /// number is taken, a difference where a model is), per-key parameters, a model in a merge
    /// space other than `weight`, a model file not found (naming the places searched); a result
    /// that is not a model.
    pub fn to_graph(&self, opts: &TranslateOptions) -> Result<Translated> {
        crate::merge::graph::with_deep_stack(|| translate::translate(self, opts)).map_err(|e| {
            match &self.path {
                Some(p) => in_file(p, e),
                None => e,
            }
        })
    }
}

/// `e` with the recipe's path before its message, as its lines are named relative to it.
fn in_file(path: &Path, e: Error) -> Error {
    match e {
        Error::InvalidInput(m) => Error::InvalidInput(format!("{}: {m}", path.display())),
        e => e,
    }
}

/// How a recipe becomes a graph.
#[derive(Debug, Clone)]
pub struct TranslateOptions {
    /// Folders relative model paths are looked up in, in order (sd-mecha's `model_dirs`).
    pub models_dirs: Vec<PathBuf>,
    /// Where the result is written.
    pub target: Target,
}

/// A recipe as a graph.
#[derive(Debug, Clone)]
pub struct Translated {
    /// One checkpoint save of the recipe's result.
    pub graph: Graph,
    /// What differs from sd-mecha's output, for the user (the autoencoder kept from a model).
    pub notes: Vec<String>,
}

/// Whether a file is a recipe: its name ends in `.mecha`, or its text starts with `version `.
pub fn is_recipe(path: &Path) -> bool {
    if path.extension().is_some_and(|e| e == "mecha") {
        return true;
    }
    let mut head = [0u8; 8];
    std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
        .is_ok_and(|()| &head == b"version ")
}

/// Resolves a recipe's model path as sd-mecha does (`model_dirs.normalize_path`): an absolute
/// path as it is; a relative one under the first of `dirs` where it exists, else relative to
/// the working directory. As sd-mecha before 1.0 did, `.safetensors` is appended to a path
/// without that extension when the path as written is not found.
///
/// # Errors
/// [`Error::InvalidInput`] when no file is found, naming the path and the places searched.
pub fn resolve_model(path: &str, dirs: &[PathBuf]) -> Result<PathBuf> {
    let mut tried = Vec::new();
    let mut candidates = vec![PathBuf::from(path)];
    if !path.ends_with(".safetensors") {
        candidates.push(PathBuf::from(format!("{path}.safetensors")));
    }
    for p in &candidates {
        if p.is_absolute() {
            tried.push(p.clone());
            if p.is_file() {
                return Ok(p.clone());
            }
            continue;
        }
        for d in dirs {
            let under = d.join(p);
            tried.push(under.clone());
            if under.is_file() {
                return Ok(under);
            }
        }
        tried.push(p.clone());
        if p.is_file() {
            return Ok(p.clone());
        }
    }
    let tried: Vec<String> = tried.iter().map(|p| p.display().to_string()).collect();
    Err(Error::InvalidInput(format!(
        "model `{path}` not found (looked for {}); give an absolute path, or the folder it is \
         in as --models-dir",
        tried.join(", ")
    )))
}
