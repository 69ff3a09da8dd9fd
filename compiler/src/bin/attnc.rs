//! The `attnc` command line: argument parsing and printing only; the work is in `driver`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use attnc::diagnostic::{has_errors, Diagnostic};
use attnc::driver::{self, explain, Source, Stage};
use attnc::sema::instantiate::Binding;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "attnc",
    version,
    about = "A compiler for tile-grouped sparse attention kernels"
)]
struct Cli {
    /// Colour diagnostics: auto, always or never.
    #[arg(long, global = true, default_value = "auto", value_parser = ["auto", "always", "never"])]
    color: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Checks a .attn file: every kernel instantiated with its defaults and analysed.
    /// Exit status 1 on any error.
    Check {
        file: PathBuf,
        /// Binds a parameter (NAME=VALUE; lists as 1,2,3) in every kernel that has it.
        #[arg(long = "set", value_name = "NAME=VALUE")]
        sets: Vec<String>,
    },
    /// Compiles kernels and prints (or writes) one stage.
    Compile {
        file: PathBuf,
        /// The kernel; every kernel of the file when omitted.
        #[arg(long)]
        kernel: Option<String>,
        #[arg(long = "set", value_name = "NAME=VALUE")]
        sets: Vec<String>,
        /// The stage to print: ast, spec, schedule, ir or dot (the IR as Graphviz).
        #[arg(long, default_value = "ir", value_parser = ["ast", "spec", "schedule", "ir", "dot"])]
        emit: String,
        /// Write to this file instead of standard output.
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
    },
    /// Density, FLOPs, key tiles per query tile, an ASCII view and optionally a PNG.
    Explain {
        file: PathBuf,
        #[arg(long)]
        kernel: Option<String>,
        #[arg(long = "set", value_name = "NAME=VALUE")]
        sets: Vec<String>,
        /// Write the tile mask (query tiles down, key tiles across) to this PNG file.
        #[arg(long)]
        png: Option<PathBuf>,
        /// The query tile to draw (a tile id; default: the centre of the canvas).
        #[arg(long)]
        tile: Option<u32>,
    },
}

/// Exit status for errors in the user's .attn input.
const EXIT_DIAGNOSTICS: u8 = 1;
/// Exit status for usage and I/O errors.
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let color = match cli.color.as_str() {
        "always" => true,
        "never" => false,
        _ => std::io::stderr().is_terminal(),
    };
    match run(cli.command, color) {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => ExitCode::from(code),
    }
}

fn bindings(sets: &[String]) -> Result<Vec<Binding>, u8> {
    sets.iter()
        .map(|s| {
            Binding::parse(s).map_err(|m| {
                eprintln!("error: --set {m}");
                EXIT_USAGE
            })
        })
        .collect()
}

fn load(path: &Path) -> Result<Source, u8> {
    Source::load(path).map_err(|m| {
        eprintln!("error: {m}");
        EXIT_USAGE
    })
}

/// Prints diagnostics to stderr; Err(1) when any is an error.
fn report(src: &Source, diags: &[Diagnostic], color: bool) -> Result<(), u8> {
    if !diags.is_empty() {
        eprint!("{}", src.render(diags, color));
    }
    if has_errors(diags) {
        let n = diags.iter().filter(|d| d.is_error()).count();
        eprintln!(
            "error: {n} error{} in {}",
            if n == 1 { "" } else { "s" },
            src.name
        );
        Err(EXIT_DIAGNOSTICS)
    } else {
        Ok(())
    }
}

fn write_out(output: &Option<PathBuf>, text: &str) -> Result<(), u8> {
    match output {
        Some(p) => std::fs::write(p, text).map_err(|e| {
            eprintln!("error: cannot write `{}`: {e}", p.display());
            EXIT_USAGE
        }),
        None => {
            print!("{text}");
            Ok(())
        }
    }
}

fn run(cmd: Command, color: bool) -> Result<(), u8> {
    match cmd {
        Command::Check { file, sets } => {
            let sets = bindings(&sets)?;
            let src = load(&file)?;
            let diags = driver::check(&src, &sets);
            report(&src, &diags, color)?;
            let kernels = driver::frontend(&src)
                .map(|(f, _)| f.program.kernels.len())
                .unwrap_or(0);
            eprintln!(
                "ok: {} ({kernels} kernel{})",
                src.name,
                if kernels == 1 { "" } else { "s" }
            );
            Ok(())
        }
        Command::Compile {
            file,
            kernel,
            sets,
            emit,
            output,
        } => {
            let sets = bindings(&sets)?;
            let src = load(&file)?;
            let stage = Stage::ALL
                .iter()
                .find(|(n, _)| *n == emit)
                .map(|(_, s)| *s)
                .unwrap_or(Stage::Ir);
            match driver::emit(&src, stage, kernel.as_deref(), &sets) {
                Ok((text, warnings)) => {
                    report(&src, &warnings, color)?;
                    write_out(&output, &text)
                }
                Err(diags) => report(&src, &diags, color),
            }
        }
        Command::Explain {
            file,
            kernel,
            sets,
            png,
            tile,
        } => {
            let sets = bindings(&sets)?;
            let src = load(&file)?;
            let (fe, warnings) = match driver::frontend(&src) {
                Ok(x) => x,
                Err(d) => return report(&src, &d, color),
            };
            report(&src, &warnings, color)?;
            let k = match kernel {
                Some(name) => match driver::find_kernel(&fe.program, &name) {
                    Ok(k) => k,
                    Err(d) => return report(&src, &[d], color),
                },
                None if fe.program.kernels.len() == 1 => 0,
                None => {
                    let names: Vec<&str> =
                        fe.program.kernels.iter().map(|k| k.name.as_str()).collect();
                    eprintln!(
                        "error: {} has {} kernels; pick one with --kernel ({})",
                        src.name,
                        names.len(),
                        names.join(", ")
                    );
                    return Err(EXIT_USAGE);
                }
            };
            let c = match driver::compile_kernel(&fe.program, k, &sets) {
                Ok(c) => c,
                Err(d) => return report(&src, &d, color),
            };
            report(&src, &c.warnings, color)?;
            print!("{}", explain::report(&c.spec, &c.schedule, &src.name, tile));
            if let Some(p) = png {
                explain::write_png(&c.schedule, 0, &p).map_err(|m| {
                    eprintln!("error: {m}");
                    EXIT_USAGE
                })?;
                println!("tile mask written to {}", p.display());
            }
            Ok(())
        }
    }
}
