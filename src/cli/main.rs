//! `checkpoint-save`: the command-line front end of the `checkpoint_save` library.
//!
//! Subcommands: `save` (components from .safetensors files or a synthetic model → one checkpoint),
//! `split` (a checkpoint → one file per component, readable by `save`), `inspect` and `bench`.
//!
//! The binary only parses arguments, reads inputs and prints results; every rule about keys,
//! dtypes, names and files lives in the library. Errors are printed as one line with their
//! context chain, and the exit code says what kind of failure it was (see `args::EXIT_CODES`).

mod args;
mod bench;
mod commands;
mod extract;
mod gguf_text;
mod merge;
mod method;
mod report;
mod run;
mod weights;

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;

use args::{Cli, Command};
use checkpoint_save::Error;

/// Exit code of a successful run.
const EXIT_OK: u8 = 0;
/// Exit code of a failed run (bad input, I/O error, refused save).
const EXIT_ERROR: u8 = 1;
/// Exit code of a run interrupted by Ctrl-C (128 + SIGINT, as shells report it), SIGTERM or
/// SIGHUP: the handler cannot tell them apart, and all three mean "cancelled, nothing written".
const EXIT_INTERRUPTED: u8 = 130;

fn main() -> ExitCode {
    checkpoint_save::ignore_file_size_signal();
    let cli = Cli::parse();
    let cancel = Arc::new(AtomicBool::new(false));
    if let Err(e) = install_ctrlc(&cancel) {
        // Saving still works without the handler; Ctrl-C then just kills the process.
        eprintln!("warning: {e:#}");
    }
    match run(cli, &cancel) {
        Ok(()) => ExitCode::from(EXIT_OK),
        Err(e) => {
            eprintln!("error: {}", one_line(&message(&e)));
            let cancelled = matches!(e.downcast_ref::<Error>(), Some(Error::Cancelled))
                || cancel.load(Ordering::Relaxed);
            ExitCode::from(if cancelled {
                EXIT_INTERRUPTED
            } else {
                EXIT_ERROR
            })
        }
    }
}

/// Ctrl-C, SIGTERM and SIGHUP (ctrlc's `termination` feature) set `cancel`; the writer sees it,
/// removes its temporary file and returns an error. A SIGHUP that was ignored at start (`nohup`)
/// stays ignored.
fn install_ctrlc(cancel: &Arc<AtomicBool>) -> Result<()> {
    let hangup_ignored = checkpoint_save::hangup_ignored();
    let flag = Arc::clone(cancel);
    let installed = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            // A second signal: the save did not stop (it may wait on a folder another process
            // holds). A killed save leaves at most its temporary file, never a final one.
            eprintln!(
                "interrupted again: exiting now; a temporary file left behind is removed by \
                 the next save into its folder"
            );
            std::process::exit(i32::from(EXIT_INTERRUPTED));
        }
        // Said once the flag is set: from here on no checkpoint is published.
        eprintln!("interrupted: stopping; the temporary file will be removed");
    })
    .context("cannot install the Ctrl-C/SIGTERM/SIGHUP handler");
    if hangup_ignored {
        checkpoint_save::ignore_hangup();
    }
    installed
}

/// The error and its causes, like `{:#}`, without repeating a cause whose text the error before it
/// already includes (library I/O errors print their source themselves).
fn message(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// Writes to stdout; a closed pipe (`… | head`) is not an error worth reporting.
pub(crate) fn print_stdout(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        // A line (a written file's path) is said on stderr instead, so it is not lost.
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).with_context(|| match text.contains('\n') {
                false => format!("cannot write to stdout: {text}"),
                true => "cannot write to stdout".to_string(),
            })
        }
        _ => Ok(()),
    }
}

/// Joins a multi-line message (the reference's sandbox error has four lines) into one line,
/// with any other control character escaped: messages quote names read from files, and an
/// ESC or a lone `\r` in one would reach the terminal.
fn one_line(msg: &str) -> String {
    msg.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(checkpoint_save::escape_controls)
        .collect::<Vec<_>>()
        .join("; ")
}

fn run(cli: Cli, cancel: &Arc<AtomicBool>) -> Result<()> {
    // `--quiet` promises no warnings: the library's own (reading inputs) included.
    let quiet = match &cli.command {
        Command::Save(a) => a.out.quiet,
        Command::Convert(a) => a.out.quiet,
        Command::Merge(a) => a.out.quiet,
        Command::Split(a) => a.quiet,
        Command::Run(a) => a.quiet,
        Command::ExtractLora(a) => a.quiet,
        Command::Inspect(_) | Command::Bench(_) => false,
    };
    checkpoint_save::input::set_quiet(quiet);
    match cli.command {
        Command::Save(args) => commands::save(&args, cancel),
        Command::Convert(args) => commands::convert(&args, cancel),
        Command::Merge(args) => merge::merge(&args, cancel),
        Command::Run(args) => run::run(&args, cancel),
        Command::Split(args) => commands::split(&args, cancel),
        Command::Inspect(args) => commands::inspect(&args),
        Command::ExtractLora(args) => extract::extract(&args, cancel),
        Command::Bench(args) => bench::bench(&args),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_line_joins_lines_and_escapes_other_controls() {
        assert_eq!(
            super::one_line("a `\x1b]0;x\x07`\n  SECOND\r\x1b[2K\n\n"),
            "a `\\u{1b}]0;x\\u{7}`; SECOND\\r\\u{1b}[2K"
        );
    }
}
