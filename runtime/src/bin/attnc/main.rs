//! The `attnc` command line: argument parsing and printing only; the work is in the
//! compiler's `driver` and in this crate's runtime.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use attnc::codegen::nvptx::attention::Tuning;
use attnc::diagnostic::{has_errors, Diagnostic};
use attnc::driver::{self, explain, Source, Stage};
use attnc::select::SelectSpec;
use attnc::sema::instantiate::Binding;
use attnc_runtime::cuda::{CudaKernel, Gpu};
use attnc_runtime::files::{run_npy, run_npy_cuda, NpyArgs};
use attnc_runtime::{CpuKernel, Error, Tensor};
use clap::{Parser, Subcommand};

mod selection;

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

/// What every command that compiles one kernel takes.
#[derive(clap::Args)]
struct KernelArgs {
    file: PathBuf,
    /// The kernel (may be omitted when the file has one).
    #[arg(long)]
    kernel: Option<String>,
    /// Binds a parameter: NAME=VALUE (lists as 1,2,3; a list for a scalar makes it per-head).
    #[arg(long = "set", value_name = "NAME=VALUE")]
    sets: Vec<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Checks a .attn file: every kernel instantiated with its defaults and analysed.
    /// Exit status 1 on any error.
    Check {
        file: PathBuf,
        /// Binds a parameter (NAME=VALUE) in every kernel that has it.
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
        /// The stage to print: ast, spec, schedule, ir, dot (the IR as Graphviz), clif (the
        /// CPU code generator's Cranelift IR), llvm or ptx (the CUDA code generator's); for
        /// selection kernels spec and plan (the steps with their sizes and bytes).
        #[arg(long, default_value = "ir", value_parser = ["ast", "spec", "schedule", "ir", "dot", "clif", "llvm", "ptx", "plan"])]
        emit: String,
        /// The GPU architecture for llvm and ptx.
        #[arg(long, default_value = "sm_90", value_parser = ["sm_80", "sm_90"])]
        target: String,
        /// The llvm or ptx of an attention kernel for this launch shape (as `bench
        /// --block`; a `-wgmma` shape is emitted for sm_90a).
        #[arg(long, value_name = "SHAPE")]
        block: Option<String>,
        /// Write to this file instead of standard output.
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
        /// Write the GPU artefact (KERNEL.ptx and KERNEL.json, for the runtime to load)
        /// of every compiled kernel into this folder.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
    /// Density, FLOPs, key tiles per query tile, an ASCII view and optionally a PNG.
    Explain {
        #[command(flatten)]
        k: KernelArgs,
        /// Write the tile mask (query tiles down, key tiles across) to this PNG file.
        #[arg(long)]
        png: Option<PathBuf>,
        /// The query tile to draw (a tile id; default: the centre of the canvas).
        #[arg(long)]
        tile: Option<u32>,
    },
    /// Runs a kernel on .npy tensors [batch, heads, tokens, dim] (float32 or float16) in the
    /// layout's token order, and writes the float32 output. Selection kernels take the
    /// cache as --k/--v [batch, kv_heads, tokens, dim], the inputs lens [batch], scores or
    /// acc [batch, lists, tokens], and write the output (decode) or the int32 index lists
    /// (select).
    Run {
        #[command(flatten)]
        k: KernelArgs,
        #[arg(long)]
        q: PathBuf,
        #[arg(long)]
        k_file: Option<PathBuf>,
        #[arg(long)]
        v: Option<PathBuf>,
        /// A score-modifier input, or for selection kernels lens, scores, acc or steps
        /// (`keyformer`: the decode steps each sequence has taken, `[batch]`; 0 unless
        /// given): NAME=FILE.npy.
        #[arg(long = "input", value_name = "NAME=FILE")]
        inputs: Vec<String>,
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
        /// Decode kernels: also write the selected index lists (int32) here.
        #[arg(long)]
        indices: Option<PathBuf>,
        /// `accumulated` (H2O) kernels: write the state after the step here
        /// (`[batch, lists, CONTEXT]` f32), to pass to the next step as `--input acc=FILE`.
        #[arg(long, value_name = "FILE")]
        acc_out: Option<PathBuf>,
        /// Attention kernels with `outputs lse;`: also write each query row's log-sum-exp
        /// here (`[batch, heads, tokens]` float32, natural log, -inf for a row that sees no
        /// key): a `window_lse(W)` selection's `--input lse` is its last W rows.
        #[arg(long, value_name = "FILE")]
        lse_out: Option<PathBuf>,
        /// Select kernels with `output compacted;`: write the selected keys and values
        /// (`k.npy`, `v.npy`: [batch, KV heads, capacity tokens, head dim]) and their
        /// lengths (`lens.npy`) into this folder.
        #[arg(long, value_name = "DIR")]
        compacted: Option<PathBuf>,
        #[arg(long, default_value = "cpu", value_parser = ["cpu", "cuda"])]
        backend: String,
        /// CUDA attention kernels: this launch shape instead of the default (as `bench
        /// --block`), e.g. to compare two shapes' outputs on the same inputs.
        #[arg(long, value_name = "SHAPE")]
        block: Option<String>,
    },
    /// Times a kernel on random inputs: median of many runs after warm-up, in ms and
    /// GFLOP/s on active pairs.
    Bench {
        #[command(flatten)]
        k: KernelArgs,
        #[arg(long, default_value = "cpu", value_parser = ["cpu", "cuda"])]
        backend: String,
        /// Timed runs (after warm-up runs).
        #[arg(long, default_value_t = 10)]
        runs: usize,
        /// CUDA attention kernels: time as `triton.testing.do_bench` times the peers in
        /// bench/gpu/side_by_side.py instead of `--runs`: warm-up runs for MS/4 ms, then as
        /// many runs as fill MS ms, each after an L2 flush (the harness passes 100).
        #[arg(long, value_name = "MS", conflicts_with = "runs")]
        rep_ms: Option<f64>,
        /// CUDA: try every block shape and keep the fastest (cached per GPU).
        #[arg(long)]
        tune: bool,
        /// CUDA: this launch shape instead of the default: query rows x keys per chunk,
        /// then `-wgmma` (sm_90a), `-tma` (tensor copies), `-ovl` (overlapped loop) or
        /// `-ws` (warp-specialised; `-ws-pp` with ping-pong, `-ws-ovl` overlapped), `-pers`
        /// (persistent, warp-specialised), `-lpt` (query tiles launched longest first; on
        /// `-ws-ovl-pers`, work lists dealt longest first), `-c4` (row reductions in four
        /// chains), `-xN` (N blocks an SM), e.g. 128x64, 64x64-wgmma-tma,
        /// 128x128-wgmma-tma-ws-ovl-pers-lpt.
        #[arg(long, value_name = "SHAPE", conflicts_with = "tune")]
        block: Option<String>,
        /// Print one JSON object instead of a sentence.
        #[arg(long)]
        json: bool,
    },
    /// The GPU test suite: every shipped kernel on the GPU against the CPU backend.
    Suite {
        /// Where the shipped .attn files are.
        #[arg(long, default_value = "kernels")]
        kernels: PathBuf,
        /// One small case per kernel (for compute-sanitizer).
        #[arg(long)]
        small: bool,
        /// Only the cases of this kernel.
        #[arg(long)]
        kernel: Option<String>,
    },
}

/// How `attnc bench` times a GPU attention kernel.
#[derive(Clone, Copy)]
enum Timing {
    /// Five warm-up runs, then this many timed back to back.
    Runs(usize),
    /// triton.testing.do_bench's protocol over this many milliseconds.
    DoBench(f64),
}

/// Exit status for errors in the user's .attn input.
const EXIT_DIAGNOSTICS: u8 = 1;
/// Exit status for usage, file and tensor errors.
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    // `--k` reads better than `--k-file` on the command line: accept both.
    let args: Vec<String> = std::env::args()
        .map(|a| {
            if a == "--k" {
                "--k-file".to_string()
            } else {
                a
            }
        })
        .collect();
    let cli = Cli::parse_from(args);
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

fn usage(msg: impl std::fmt::Display) -> u8 {
    eprintln!("error: {msg}");
    EXIT_USAGE
}

fn bindings(sets: &[String]) -> Result<Vec<Binding>, u8> {
    sets.iter()
        .map(|s| Binding::parse(s).map_err(|m| usage(format!("--set {m}"))))
        .collect()
}

fn load(path: &Path) -> Result<Source, u8> {
    Source::load(path).map_err(usage)
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
        Some(p) => std::fs::write(p, text)
            .map_err(|e| usage(format!("cannot write `{}`: {e}", p.display()))),
        None => {
            out(text);
            Ok(())
        }
    }
}

/// Prints to stdout; a closed pipe (`attnc ... | head`) ends the output quietly.
fn out(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

/// When the kernel is a selection kernel: its source and instantiated spec (warnings
/// printed). `None` for attention kernels.
fn selection(a: &KernelArgs, color: bool) -> Result<Option<(Source, SelectSpec)>, u8> {
    let sets = bindings(&a.sets)?;
    let src = load(&a.file)?;
    let (fe, warnings) = match driver::frontend(&src) {
        Ok(x) => x,
        Err(d) => return Err(report(&src, &d, color).err().unwrap_or(EXIT_DIAGNOSTICS)),
    };
    let names = driver::kernel_names(&fe);
    if a.kernel.is_none() && names.len() > 1 {
        return Err(usage(format!(
            "{} has {} kernels; pick one with --kernel ({})",
            src.name,
            names.len(),
            names.join(", ")
        )));
    }
    let name = match driver::find_any(&fe, a.kernel.as_deref()) {
        Ok(driver::KernelRef::Selection(name)) => name,
        Ok(driver::KernelRef::Attention(_)) => return Ok(None),
        Err(d) => return Err(report(&src, &[d], color).err().unwrap_or(EXIT_DIAGNOSTICS)),
    };
    report(&src, &warnings, color)?;
    let (spec, w) = driver::select_spec(&fe, &name, &sets)
        .map_err(|d| report(&src, &d, color).err().unwrap_or(EXIT_DIAGNOSTICS))?;
    report(&src, &w, color)?;
    Ok(Some((src, spec)))
}

/// Source, kernel and bindings -> the compiled kernel (warnings printed).
fn compile(a: &KernelArgs, color: bool) -> Result<(Source, driver::Compiled), u8> {
    let sets = bindings(&a.sets)?;
    let src = load(&a.file)?;
    let (fe, warnings) = match driver::frontend(&src) {
        Ok(x) => x,
        Err(d) => return Err(report(&src, &d, color).err().unwrap_or(EXIT_DIAGNOSTICS)),
    };
    report(&src, &warnings, color)?;
    let k = match &a.kernel {
        Some(name) => driver::find_kernel(&fe.program, name)
            .map_err(|d| report(&src, &[d], color).err().unwrap_or(EXIT_DIAGNOSTICS))?,
        None if fe.program.kernels.len() == 1 => 0,
        None => {
            let names: Vec<&str> = fe.program.kernels.iter().map(|k| k.name.as_str()).collect();
            return Err(usage(format!(
                "{} has {} kernels; pick one with --kernel ({})",
                src.name,
                names.len(),
                names.join(", ")
            )));
        }
    };
    let c = driver::compile_kernel(&fe.program, k, &sets)
        .map_err(|d| report(&src, &d, color).err().unwrap_or(EXIT_DIAGNOSTICS))?;
    report(&src, &c.warnings, color)?;
    Ok((src, c))
}

/// ", lse [shape] to FILE" when a run wrote its log-sum-exps; a reminder when the kernel
/// computed them (`outputs lse;`) but no file was named.
fn lse_note(
    r: &attnc_runtime::files::RunReport,
    m: &attnc_runtime::Manifest,
    lse_out: Option<&std::path::Path>,
) -> String {
    match (&r.lse_shape, lse_out) {
        (Some(shape), Some(p)) => format!(", lse {shape:?} to {}", p.display()),
        _ if m.lse_shape().is_some() => ", lse not written (--lse-out FILE.npy)".to_string(),
        _ => String::new(),
    }
}

fn runtime_error(e: Error) -> u8 {
    match e {
        Error::Compile(m) => {
            eprint!("{m}");
            EXIT_DIAGNOSTICS
        }
        other => usage(other),
    }
}

fn open_gpu() -> Result<Gpu, u8> {
    match Gpu::open() {
        Ok(Some(g)) => Ok(g),
        Ok(None) => Err(usage("no CUDA driver on this machine (use --backend cpu)")),
        Err(e) => Err(runtime_error(e)),
    }
}

fn write_artefacts(
    src: &Source,
    kernel: Option<&str>,
    sets: &[Binding],
    arch: attnc::codegen::nvptx::Arch,
    dir: &Path,
    color: bool,
) -> Result<(), u8> {
    let (fe, warnings) = driver::frontend(src)
        .map_err(|d| report(src, &d, color).err().unwrap_or(EXIT_DIAGNOSTICS))?;
    report(src, &warnings, color)?;
    let names: Vec<String> = match kernel {
        Some(k) => vec![k.to_string()],
        None => fe.program.kernels.iter().map(|k| k.name.clone()).collect(),
    };
    for name in names {
        let ki = driver::find_kernel(&fe.program, &name)
            .map_err(|d| report(src, &[d], color).err().unwrap_or(EXIT_DIAGNOSTICS))?;
        let c = driver::compile_kernel(&fe.program, ki, sets)
            .map_err(|d| report(src, &d, color).err().unwrap_or(EXIT_DIAGNOSTICS))?;
        let a = attnc_runtime::artefact::build(&c, arch).map_err(runtime_error)?;
        a.save(dir, &name).map_err(runtime_error)?;
        eprintln!(
            "{name}: {}/{name}.ptx and {name}.json ({})",
            dir.display(),
            arch.name()
        );
    }
    Ok(())
}

/// A `--block` shape (`Tuning::name`'s form).
fn parse_block(block: &str) -> Result<Tuning, u8> {
    Tuning::parse(block).ok_or_else(|| {
        usage(format!(
            "--block {block}: expected ROWSxKEYS[-wgmma[-tma[-ovl|-ws[-pp|-ovl]][-pers]]][-lpt][-c4][-xBLOCKS], e.g. 128x64, 64x64-wgmma-tma-x3 or 128x128-wgmma-tma-ws-ovl-pers"
        ))
    })
}

/// `compile --block`: the llvm or ptx of one attention kernel for a block shape.
fn emit_block(
    k: &KernelArgs,
    block: &str,
    stage: Stage,
    arch: attnc::codegen::nvptx::Arch,
    output: &Option<PathBuf>,
    color: bool,
) -> Result<(), u8> {
    let t = parse_block(block)?;
    if !matches!(stage, Stage::Llvm | Stage::Ptx) {
        return Err(usage("--block is for --emit llvm or ptx"));
    }
    let (_, c) = compile(k, color)?;
    let m = attnc::codegen::nvptx::compile_tuned(&c.ir, &c.schedule.geom, &c.spec.inputs, arch, t)
        .map_err(|e| usage(format!("--block {block}: {e}")))?;
    write_out(
        output,
        if stage == Stage::Llvm {
            &m.llvm
        } else {
            &m.ptx
        },
    )
}

fn bench_cuda(
    c: driver::Compiled,
    flops: f64,
    timing: Timing,
    tune: Option<(Source, String, Vec<Binding>)>,
    block: Option<Tuning>,
    json: bool,
) -> Result<(), u8> {
    let gpu = open_gpu()?;
    // One set of random inputs for the tuner and the timing (not part of compile_ms).
    let (q, k, v, ins) = attnc_runtime::Manifest::from_compiled(&c).random_args();
    let t = Instant::now();
    let (art, trials) = match (&tune, block) {
        (Some((src, name, sets)), _) => {
            let key = attnc_runtime::artefact::cache_key(src, name, sets, gpu.arch());
            attnc_runtime::tune::tune(&gpu, &c, Some(&key), (&q, &k, &v, &ins))
                .map_err(runtime_error)?
        }
        (None, Some(b)) => (
            attnc_runtime::artefact::build_tuned(&c, gpu.arch(), b).map_err(runtime_error)?,
            vec![],
        ),
        (None, None) => (
            attnc_runtime::artefact::build_for(&c, &gpu).map_err(runtime_error)?,
            vec![],
        ),
    };
    let compile_ms = t.elapsed().as_secs_f64() * 1e3;
    let kernel = CudaKernel::load(&gpu, art).map_err(runtime_error)?;
    let m = kernel.manifest().clone();
    let views: Vec<_> = ins.iter().map(Tensor::view).collect();
    let mut args = kernel
        .upload(q.view(), k.view(), v.view(), &views)
        .map_err(runtime_error)?;
    let (ms, runs) = match timing {
        Timing::Runs(runs) => (
            kernel
                .time(&mut args, 5, runs.max(1))
                .map_err(runtime_error)?,
            runs.max(1),
        ),
        Timing::DoBench(rep_ms) => kernel
            .time_do_bench(&mut args, rep_ms)
            .map_err(runtime_error)?,
    };
    let Tuning { bm, bn, .. } = kernel.shape();
    let shape = kernel.shape().name();
    if json {
        let tried: Vec<String> = trials
            .iter()
            .map(|t| format!("{{\"block\":\"{}\",\"ms\":{:.5}}}", t.block, t.ms))
            .collect();
        out(&format!(
            "{{\"kernel\":\"{}\",\"tokens\":{},\"ms\":{ms:.5},\"runs\":{runs},\"tflops\":{:.2},\"bm\":{bm},\"bn\":{bn},\"block\":\"{shape}\",\"compile_ms\":{compile_ms:.1},\"trials\":[{}]}}\n",
            m.kernel,
            m.tokens,
            flops / ms / 1e9,
            tried.join(",")
        ));
        return Ok(());
    }
    for t in &trials {
        out(&format!("  block {}: {:.4} ms\n", t.block, t.ms));
    }
    out(&format!(
        "{} on {}: median {ms:.4} ms over {} runs, {:.1} TFLOP/s on active pairs (block {shape}, compile {compile_ms:.0} ms)\n",
        m.kernel,
        gpu.name(),
        runs,
        flops / ms / 1e9
    ));
    Ok(())
}

fn run(cmd: Command, color: bool) -> Result<(), u8> {
    match cmd {
        Command::Check { file, sets } => {
            let sets = bindings(&sets)?;
            let src = load(&file)?;
            let diags = driver::check(&src, &sets);
            report(&src, &diags, color)?;
            let kernels = driver::frontend(&src)
                .map(|(f, _)| driver::kernel_names(&f).len())
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
            target,
            block,
            output,
            out_dir,
        } => {
            let stage = Stage::ALL
                .iter()
                .find(|(n, _)| *n == emit)
                .map(|(_, s)| *s)
                .unwrap_or(Stage::Ir);
            let arch = attnc::codegen::nvptx::Arch::from_name(&target)
                .unwrap_or(attnc::codegen::nvptx::Arch::Sm90);
            if let Some(b) = block {
                let k = KernelArgs { file, kernel, sets };
                return emit_block(&k, &b, stage, arch, &output, color);
            }
            let sets = bindings(&sets)?;
            let src = load(&file)?;

            if let Some(dir) = out_dir {
                return write_artefacts(&src, kernel.as_deref(), &sets, arch, &dir, color);
            }
            match driver::emit_for(&src, stage, kernel.as_deref(), &sets, arch) {
                Ok((text, warnings)) => {
                    report(&src, &warnings, color)?;
                    write_out(&output, &text)
                }
                Err(diags) => report(&src, &diags, color),
            }
        }
        Command::Explain { k, png, tile } => {
            if let Some((_, spec)) = selection(&k, color)? {
                if png.is_some() || tile.is_some() {
                    return Err(usage(format!(
                        "`{}` is a selection kernel: it has no tile mask (--png, --tile)",
                        spec.kernel
                    )));
                }
                out(&attnc::select::plan::explain(&spec));
                return Ok(());
            }
            let (src, c) = compile(&k, color)?;
            out(&explain::report(&c.spec, &c.schedule, &src.name, tile));
            if let Some(p) = png {
                explain::write_png(&c.schedule, 0, &p).map_err(usage)?;
                out(&format!("tile mask written to {}\n", p.display()));
            }
            Ok(())
        }
        Command::Run {
            k,
            q,
            k_file,
            v,
            inputs,
            output,
            indices,
            acc_out,
            lse_out,
            compacted,
            backend,
            block,
        } => {
            let block = block.as_deref().map(parse_block).transpose()?;
            if block.is_some() && backend != "cuda" {
                return Err(usage(
                    "--block picks a GPU launch shape; it needs --backend cuda",
                ));
            }
            let Some(k_path) = k_file else {
                return Err(usage("missing --k FILE.npy"));
            };
            let mut named = vec![];
            for i in &inputs {
                let (n, p) = i
                    .split_once('=')
                    .ok_or_else(|| usage(format!("--input `{i}` is not NAME=FILE")))?;
                named.push((n.to_string(), PathBuf::from(p)));
            }
            if let Some((_, spec)) = selection(&k, color)? {
                if block.is_some() {
                    return Err(usage(format!(
                        "`{}`: --block is for attention kernels",
                        spec.kernel
                    )));
                }
                if lse_out.is_some() {
                    return Err(usage(format!(
                        "`{}`: --lse-out is for attention kernels with `outputs lse;`",
                        spec.kernel
                    )));
                }
                let gpu = if backend == "cuda" {
                    attnc::codegen::nvptx::decode::gpu_support(&spec).map_err(usage)?;
                    Some(open_gpu()?)
                } else {
                    None
                };
                let files = selection::RunFiles {
                    q,
                    k: k_path,
                    v,
                    inputs: named,
                    output,
                    indices,
                    acc_out,
                    compacted,
                };
                eprintln!(
                    "{}",
                    selection::run(spec, &files, gpu.as_ref()).map_err(runtime_error)?
                );
                return Ok(());
            }
            if indices.is_some() {
                return Err(usage("--indices is for decode kernels"));
            }
            if acc_out.is_some() {
                return Err(usage(
                    "--acc-out is for decode kernels with an accumulated state",
                ));
            }
            if compacted.is_some() {
                return Err(usage(
                    "--compacted is for select kernels with `output compacted;`",
                ));
            }
            let Some(v) = v else {
                return Err(usage("missing --v FILE.npy"));
            };
            let (_, c) = compile(&k, color)?;
            if let (Some(p), None) = (&lse_out, c.spec.outputs.lse) {
                return Err(usage(format!(
                    "--lse-out {}: `{}` writes no log-sum-exps; add `outputs lse;` to its body",
                    p.display(),
                    c.spec.kernel
                )));
            }
            let args = NpyArgs {
                q,
                k: k_path,
                v,
                inputs: named,
            };
            if backend == "cuda" {
                let gpu = open_gpu()?;
                let art = match block {
                    Some(b) => attnc_runtime::artefact::build_tuned(&c, gpu.arch(), b),
                    None => attnc_runtime::artefact::build_for(&c, &gpu),
                }
                .map_err(runtime_error)?;
                let kernel = CudaKernel::load(&gpu, art).map_err(runtime_error)?;
                let r = run_npy_cuda(&kernel, &args, &output, lse_out.as_deref())
                    .map_err(runtime_error)?;
                eprintln!(
                    "{}: output {:?} written to {}{} ({:.1} ms on {})",
                    kernel.manifest().kernel,
                    r.shape,
                    output.display(),
                    lse_note(&r, kernel.manifest(), lse_out.as_deref()),
                    r.millis,
                    gpu.name()
                );
                return Ok(());
            }
            let kernel = CpuKernel::new(c, false).map_err(runtime_error)?;
            let r = run_npy(&kernel, &args, &output, lse_out.as_deref()).map_err(runtime_error)?;
            let lse = lse_note(&r, kernel.manifest(), lse_out.as_deref());
            eprintln!(
                "{}: output {:?} written to {}{lse} ({:.1} ms on the CPU)",
                kernel.manifest().kernel,
                r.shape,
                output.display(),
                r.millis
            );
            Ok(())
        }
        Command::Suite {
            kernels,
            small,
            kernel,
        } => match attnc_runtime::suite::run(&kernels, small, kernel.as_deref()) {
            Ok(0) => Ok(()),
            Ok(_) => Err(EXIT_DIAGNOSTICS),
            Err(e) => Err(runtime_error(e)),
        },
        Command::Bench {
            k,
            backend,
            runs,
            rep_ms,
            tune,
            block,
            json,
        } => {
            let block = block.as_deref().map(parse_block).transpose()?;
            let timing = match rep_ms {
                None => Timing::Runs(runs),
                Some(ms) if ms.is_finite() && ms > 0.0 => Timing::DoBench(ms),
                Some(ms) => {
                    return Err(usage(format!(
                        "--rep-ms {ms}: give a positive number of milliseconds"
                    )))
                }
            };
            let for_attention_on_cuda = |what: &str| match timing {
                Timing::Runs(_) => Ok(()),
                Timing::DoBench(_) => Err(usage(format!(
                    "--rep-ms times attention kernels on the GPU; {what}: use --runs"
                ))),
            };
            if let Some((_, spec)) = selection(&k, color)? {
                if block.is_some() {
                    return Err(usage(format!(
                        "`{}`: --block is for attention kernels (selection kernels: --tune)",
                        spec.kernel
                    )));
                }
                for_attention_on_cuda(&format!("`{}` is a selection kernel", spec.kernel))?;
                if backend == "cuda" {
                    attnc::codegen::nvptx::decode::gpu_support(&spec).map_err(usage)?;
                    let gpu = open_gpu()?;
                    out(&selection::bench_cuda(&gpu, spec, runs, json, tune)
                        .map_err(runtime_error)?);
                    return Ok(());
                }
                if tune {
                    return Err(usage(format!(
                        "`{}`: --tune picks GPU launch shapes; it needs --backend cuda",
                        spec.kernel
                    )));
                }
                out(&selection::bench(spec, runs, json).map_err(runtime_error)?);
                return Ok(());
            }
            let (src, c) = compile(&k, color)?;
            let flops = explain::figures(&c.spec, &c.schedule).flops;
            if backend == "cuda" {
                let key = tune.then(|| {
                    let sets: Vec<Binding> = k
                        .sets
                        .iter()
                        .filter_map(|s| Binding::parse(s).ok())
                        .collect();
                    let name = c.spec.kernel.clone();
                    (src, name, sets)
                });
                return bench_cuda(c, flops, timing, key, block, json);
            }
            for_attention_on_cuda("the CPU backend")?;
            if block.is_some() || tune {
                return Err(usage(
                    "--block and --tune pick GPU launch shapes; they need --backend cuda",
                ));
            }
            let kernel = CpuKernel::new(c, false).map_err(runtime_error)?;
            let m = kernel.manifest().clone();
            let (q, kk, v, ins) = m.random_args();
            let views: Vec<_> = ins.iter().map(Tensor::view).collect();
            let mut o = vec![0f32; m.o_shape().iter().product()];
            // A kernel with `outputs lse;` is timed writing them.
            let mut lse = m.lse_shape().map(|s| vec![0f32; s.iter().product()]);
            let mut times = vec![];
            for i in 0..runs.max(1) + 2 {
                let t = Instant::now();
                kernel
                    .run_with_lse(
                        q.view(),
                        kk.view(),
                        v.view(),
                        &views,
                        &mut o,
                        lse.as_deref_mut(),
                    )
                    .map_err(runtime_error)?;
                if i >= 2 {
                    times.push(t.elapsed().as_secs_f64() * 1e3);
                }
            }
            times.sort_by(f64::total_cmp);
            let median = times[times.len() / 2];
            out(&format!(
                "{} on the CPU ({} threads): median {median:.3} ms over {} runs, {:.1} GFLOP/s on active pairs\n",
                m.kernel,
                std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
                times.len(),
                flops / median / 1e6
            ));
            Ok(())
        }
    }
}
