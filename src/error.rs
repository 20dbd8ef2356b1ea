//! The library's one error type.
//!
//! Every variant says what was wrong and, where there is one, what to do about it. Errors that can
//! be detected before any byte is written (bad keys, impossible casts, unknown architectures) are
//! raised while planning, so a failed save never leaves a file behind.

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while laying out, planning, writing or loading a checkpoint.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system call failed; `context` says what was being done to which path.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, including the path.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// candle reported an error (device copy, cast, allocation).
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),

    /// A component the architecture needs was not given.
    #[error("missing component `{component}`: {hint}")]
    MissingComponent {
        /// `model`, `clip` or `vae`.
        component: &'static str,
        /// What to pass instead.
        hint: String,
    },

    /// Two different source tensors map to the same key in the checkpoint.
    #[error("duplicate key `{key}` in the checkpoint: produced by both {first} and {second}; rename one of them or choose other prefixes")]
    DuplicateKey {
        /// The clashing checkpoint key.
        key: String,
        /// Where the first tensor came from.
        first: String,
        /// Where the second tensor came from.
        second: String,
    },

    /// A conversion (q/k/v fusion, projection transpose) cannot be applied to the given tensors.
    #[error("cannot convert `{key}`: {reason}")]
    Conversion {
        /// The checkpoint key being produced.
        key: String,
        /// What is missing or mismatched.
        reason: String,
    },

    /// A tensor cannot be cast to the requested dtype.
    #[error("cannot cast `{key}` from {from} to {to}: {reason}")]
    ImpossibleCast {
        /// The checkpoint key.
        key: String,
        /// Source dtype.
        from: String,
        /// Requested dtype.
        to: String,
        /// Why not.
        reason: String,
    },

    /// A dtype name was not recognised or cannot be handled.
    #[error("unsupported dtype {dtype}: {hint}")]
    UnsupportedDtype {
        /// The dtype as written.
        dtype: String,
        /// What is supported.
        hint: String,
    },

    /// A tensor's shape does not fit what the layout expects.
    #[error("tensor `{key}` has shape {shape:?}: {reason}")]
    BadShape {
        /// The tensor key.
        key: String,
        /// Its shape.
        shape: Vec<usize>,
        /// What was expected.
        reason: String,
    },

    /// The input is not a readable model file (safetensors, or a PyTorch checkpoint).
    #[error("{path} cannot be read: {reason}")]
    InvalidCheckpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// The JSON header would exceed (or does exceed) the 100,000,000-byte limit readers enforce.
    #[error("safetensors header of {size} bytes exceeds the {limit}-byte limit that readers enforce; when saving, shorten the prompt/workflow metadata or leave them out (--disable-metadata; MetadataOptions::disable); when loading, the file is corrupt or not a safetensors file")]
    HeaderTooLarge {
        /// Header size in bytes.
        size: u64,
        /// The limit.
        limit: u64,
    },

    /// No known architecture matches the model's keys and shapes.
    #[error("could not detect the architecture: {reason}; known architectures: {known}; pass --arch explicitly or use --arch generic with prefixes")]
    UnknownArchitecture {
        /// What was looked for and not found.
        reason: String,
        /// Comma-separated list of known architectures.
        known: String,
    },

    /// Parts of one job belong to different model families: the keys of two families in one
    /// denoiser, or a text encoder or autoencoder of another family than the denoiser's.
    #[error("{reason}")]
    FamilyMismatch {
        /// What belongs to which family, and what to do.
        reason: String,
    },

    /// The requested output path would leave the output folder.
    #[error("**** ERROR: Saving image outside the output folder is not allowed.\n full_output_folder: {full_output_folder}\n         output_dir: {output_dir}\n         commonpath: {common}\nuse a relative prefix without `..` segments")]
    OutsideOutputFolder {
        /// The folder the prefix resolves to.
        full_output_folder: String,
        /// The output root.
        output_dir: String,
        /// Their common path.
        common: String,
    },

    /// A user-supplied value is invalid (a prefix, a metadata file, an option combination).
    #[error("{0}")]
    InvalidInput(String),

    /// A save was cancelled (Ctrl-C, a dropped checkpointer); the temporary file was removed.
    #[error("save cancelled; the temporary file was removed and no checkpoint was written")]
    Cancelled,

    /// A feature needed for this request was not compiled in.
    #[error("{what} needs the `{feature}` feature; rebuild with `--features {feature}`")]
    FeatureDisabled {
        /// What was asked for.
        what: String,
        /// The cargo feature.
        feature: &'static str,
    },

    /// A checkpoint's tensors do not fit the variables they are loaded into; nothing was loaded.
    #[error("{summary}")]
    StateMismatch {
        /// The whole report: counts and the names of each kind of mismatch.
        summary: String,
        /// Variables the checkpoint does not hold.
        missing: Vec<String>,
        /// Checkpoint tensors no variable takes.
        unexpected: Vec<String>,
        /// Names whose shapes differ: (name, shape in the checkpoint, shape of the variable).
        mismatched: Vec<(String, Vec<usize>, Vec<usize>)>,
    },

    /// Another checkpointer run of the same stem holds the folder (one run per stem and folder).
    #[error("{folder} is in use by another checkpointer run of stem `{stem}` ({holder}); one run per stem and folder: let it finish, or give this run its own folder or stem")]
    FolderInUse {
        /// The checkpoint folder.
        folder: PathBuf,
        /// The stem both runs use.
        stem: String,
        /// Who holds it: pid, host and since when.
        holder: String,
    },

    /// A quantized layer (codes with their scales and description) is malformed, or cannot be
    /// decoded or encoded as asked; nothing was written.
    #[error("quantized layer `{layer}`: {reason}")]
    Quantized {
        /// The layer: the codes' key without `.weight`.
        layer: String,
        /// What is wrong and what to do.
        reason: String,
    },

    /// Tensors hold NaN or Inf values and the caller asked to refuse them.
    #[error("{count} tensor(s) hold NaN/Inf values (first: `{first}`, {first_count} non-finite); nothing was written. Fix the model or save without --check-finite (SaveOptions::check_finite)")]
    NonFinite {
        /// Number of tensors with at least one non-finite value.
        count: usize,
        /// The first such tensor.
        first: String,
        /// Its number of non-finite values.
        first_count: u64,
    },
}

impl Error {
    /// Wraps an I/O error with a description of what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// Adds `.ctx("doing what to which path")` to I/O results.
// Used by the I/O modules; allowed so builds of the skeleton alone stay warning-free.
#[allow(dead_code)]
pub(crate) trait IoContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::io(context(), e))
    }
}
