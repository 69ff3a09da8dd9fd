//! The pipeline as named stages, shared by the CLI, the runtime's JIT and the tests:
//! `parse -> resolve -> instantiate -> analyse -> lower -> passes`. Every stage returns
//! data or diagnostics; nothing here prints.

pub mod explain;

use std::path::Path;

use crate::diagnostic::{has_errors, Diagnostic};
use crate::pattern::{self, Schedule};
use crate::select::SelectSpec;
use crate::sema::instantiate::{instantiate, Binding};
use crate::sema::program::Program;
use crate::sema::spec::Spec;
use crate::syntax::ast;
use crate::{ir, passes, select, sema, syntax};

/// Largest source file accepted.
pub const MAX_SOURCE_BYTES: u64 = 4 << 20;

/// A source file held in memory.
#[derive(Clone, Debug)]
pub struct Source {
    pub name: String,
    pub text: String,
}

impl Source {
    pub fn new(name: impl Into<String>, text: impl Into<String>) -> Source {
        Source {
            name: name.into(),
            text: text.into(),
        }
    }

    /// Reads a file; the error is a one-line message for the user.
    pub fn load(path: &Path) -> Result<Source, String> {
        let meta = std::fs::metadata(path)
            .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
        if meta.is_dir() {
            return Err(format!(
                "`{}` is a directory, not a .attn file",
                path.display()
            ));
        }
        if meta.len() > MAX_SOURCE_BYTES {
            return Err(format!(
                "`{}` is {} bytes; at most {MAX_SOURCE_BYTES} are accepted",
                path.display(),
                meta.len()
            ));
        }
        let bytes =
            std::fs::read(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
        let text = String::from_utf8(bytes).map_err(|e| {
            format!(
                "`{}` is not UTF-8 text (invalid byte at offset {})",
                path.display(),
                e.utf8_error().valid_up_to()
            )
        })?;
        Ok(Source {
            name: path.display().to_string(),
            text,
        })
    }

    pub fn render(&self, diags: &[Diagnostic], color: bool) -> String {
        crate::diagnostic::render(&self.name, &self.text, diags, color)
    }
}

/// The stages `--emit` can print.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Ast,
    Spec,
    Schedule,
    Ir,
    /// The kernel IR as a Graphviz graph.
    Dot,
    /// The CPU code generator's Cranelift IR.
    Clif,
    /// The CUDA code generator's optimised LLVM IR.
    Llvm,
    /// The CUDA code generator's PTX.
    Ptx,
    /// A selection kernel's steps with their sizes and bytes.
    Plan,
}

impl Stage {
    pub const ALL: [(&'static str, Stage); 9] = [
        ("ast", Stage::Ast),
        ("spec", Stage::Spec),
        ("schedule", Stage::Schedule),
        ("ir", Stage::Ir),
        ("dot", Stage::Dot),
        ("clif", Stage::Clif),
        ("llvm", Stage::Llvm),
        ("ptx", Stage::Ptx),
        ("plan", Stage::Plan),
    ];
}

/// Parsed and resolved file.
pub struct Frontend {
    pub ast: ast::File,
    pub program: Program,
}

/// Parse and resolve. Warnings come back with the result.
pub fn frontend(src: &Source) -> Result<(Frontend, Vec<Diagnostic>), Vec<Diagnostic>> {
    let ast = syntax::parse(&src.text)?;
    let (program, mut diags) = sema::resolve(&ast);
    diags.extend(select::resolve::check_names(&ast));
    if has_errors(&diags) {
        return Err(diags);
    }
    Ok((Frontend { ast, program }, diags))
}

/// Picks a kernel by name, with a helpful error.
pub fn find_kernel(program: &Program, name: &str) -> Result<usize, Diagnostic> {
    let names: Vec<&str> = program.kernels.iter().map(|k| k.name.as_str()).collect();
    program
        .kernel_by_name(name)
        .ok_or_else(|| unknown_kernel(name, &names))
}

/// An attention kernel (an index into the program) or a selection kernel (by name).
#[derive(Clone, Debug, PartialEq)]
pub enum KernelRef {
    Attention(usize),
    Selection(String),
}

/// Every kernel name of the file: attention kernels, then selection kernels.
pub fn kernel_names(fe: &Frontend) -> Vec<String> {
    fe.program
        .kernels
        .iter()
        .map(|k| k.name.clone())
        .chain(select::resolve::kernels(&fe.ast).map(|k| k.name.name.clone()))
        .collect()
}

/// Picks any kernel by name, or the only one when `name` is `None`.
pub fn find_any(fe: &Frontend, name: Option<&str>) -> Result<KernelRef, Diagnostic> {
    let names = kernel_names(fe);
    let name = match name {
        Some(n) => n,
        None if names.len() == 1 => names[0].as_str(),
        None => {
            return Err(Diagnostic::error(
                "E0503",
                format!("this file has {} kernels: pick one", names.len()),
            )
            .with_note(format!("kernels here: {}", names.join(", ")))
            .with_hint("pass --kernel NAME"))
        }
    };
    if let Some(i) = fe.program.kernel_by_name(name) {
        return Ok(KernelRef::Attention(i));
    }
    if select::resolve::find_kernel(&fe.ast, name).is_some() {
        return Ok(KernelRef::Selection(name.to_string()));
    }
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    Err(unknown_kernel(name, &names))
}

/// Instantiates a selection kernel with `sets`.
pub fn select_spec(
    fe: &Frontend,
    name: &str,
    sets: &[Binding],
) -> Result<(SelectSpec, Vec<Diagnostic>), Vec<Diagnostic>> {
    let names: Vec<String> = kernel_names(fe);
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let k = select::resolve::find_kernel(&fe.ast, name)
        .ok_or_else(|| vec![unknown_kernel(name, &names)])?;
    select::resolve::instantiate(&fe.ast, k, sets)
}

fn unknown_kernel(name: &str, names: &[&str]) -> Diagnostic {
    {
        let mut d = Diagnostic::error("E0501", format!("no kernel named `{name}` in this file"))
            .with_note(format!(
                "kernels here: {}",
                if names.is_empty() {
                    "none".into()
                } else {
                    names.join(", ")
                }
            ));
        if let Some(c) = crate::diagnostic::closest(name, names.iter().copied()) {
            d = d.with_hint(format!("did you mean `{c}`?"));
        }
        d
    }
}

pub fn spec(
    program: &Program,
    kernel: usize,
    sets: &[Binding],
) -> Result<(Spec, Vec<Diagnostic>), Vec<Diagnostic>> {
    let (spec, diags) = instantiate(program, kernel, sets);
    match spec {
        Some(s) if !has_errors(&diags) => Ok((s, diags)),
        _ => Err(diags),
    }
}

/// A kernel through every stage up to the optimised IR.
#[derive(Clone)]
pub struct Compiled {
    pub spec: Spec,
    pub schedule: Schedule,
    pub ir: ir::Kernel,
    pub warnings: Vec<Diagnostic>,
}

pub fn compile_kernel(
    program: &Program,
    kernel: usize,
    sets: &[Binding],
) -> Result<Compiled, Vec<Diagnostic>> {
    compile_kernel_with_budget(program, kernel, sets, pattern::DEFAULT_BUDGET)
}

/// As [`compile_kernel`], with a cap on the analysis work (see [`pattern::Budget`]).
pub fn compile_kernel_with_budget(
    program: &Program,
    kernel: usize,
    sets: &[Binding],
    budget: u64,
) -> Result<Compiled, Vec<Diagnostic>> {
    let (spec, mut warnings) = spec(program, kernel, sets)?;
    let schedule = pattern::analyse_with_budget(&spec, budget)?;
    warnings.extend(pattern_warnings(&spec, &schedule));
    let mut kernel_ir = ir::lower::lower(&spec, &schedule);
    passes::run_default(&mut kernel_ir)
        .map_err(|e| vec![Diagnostic::error("E0601", format!("internal error: {e}"))])?;
    Ok(Compiled {
        spec,
        schedule,
        ir: kernel_ir,
        warnings,
    })
}

/// Warnings that only the analysis can give.
fn pattern_warnings(spec: &Spec, s: &Schedule) -> Vec<Diagnostic> {
    let mut out = vec![];
    use crate::sema::program::Group;
    let dense = spec.rules.iter().any(|(f, t)| {
        matches!(f, Group::All | Group::Canvas) && matches!(t, Group::All | Group::Canvas)
    });
    if dense
        && spec
            .variants
            .iter()
            .any(|v| v.tiles.is_some() || v.tokens.is_some())
    {
        out.push(
            Diagnostic::warning("W0402", format!("a `see` rule lets the whole canvas see itself, so the rules of `{}` change nothing", spec.pattern))
                .with_label(spec.pattern_span, "every canvas pair attends")
                .with_hint("`see all -> all` includes canvas -> canvas; name segments instead, e.g. `see all -> text;`"),
        );
    }
    for v in &s.variants {
        if v.stats.empty_rows > 0 {
            out.push(
                Diagnostic::warning(
                    "W0401",
                    format!(
                        "{} query tile(s) of `{}` attend to no key; their outputs are zeros",
                        v.stats.empty_rows, spec.kernel
                    ),
                )
                .with_label(spec.pattern_span, "in this pattern"),
            );
        }
    }
    out
}

/// `attnc check`: every kernel of the file instantiated with its defaults (and `sets`
/// where a kernel has such a parameter) and analysed. Returns all diagnostics.
pub fn check(src: &Source, sets: &[Binding]) -> Vec<Diagnostic> {
    check_with_budget(src, sets, pattern::DEFAULT_BUDGET)
}

pub fn check_with_budget(src: &Source, sets: &[Binding], budget: u64) -> Vec<Diagnostic> {
    let (fe, mut diags) = match frontend(src) {
        Ok(x) => x,
        Err(d) => return d,
    };
    // --set names must mean something to some kernel.
    let selection: Vec<&ast::SelectKernelDecl> = select::resolve::kernels(&fe.ast).collect();
    let all: Vec<String> = (0..fe.program.kernels.len())
        .flat_map(|k| fe.program.visible_params(k))
        .map(|p| fe.program.param(p).name.clone())
        .chain(
            selection
                .iter()
                .flat_map(|k| select::resolve::visible_params(&fe.ast, k)),
        )
        .collect();
    for b in sets.iter().filter(|b| !all.contains(&b.name)) {
        let mut d = Diagnostic::error(
            "E0302",
            format!("no kernel in this file has a parameter `{}`", b.name),
        );
        if let Some(c) = crate::diagnostic::closest(&b.name, all.iter().map(String::as_str)) {
            d = d.with_hint(format!("did you mean `{c}`?"));
        }
        diags.push(d);
    }
    diags.extend(crate::sema::instantiate::check_defaults(&fe.program));
    for k in 0..fe.program.kernels.len() {
        let visible: Vec<String> = fe
            .program
            .visible_params(k)
            .iter()
            .map(|p| fe.program.param(*p).name.clone())
            .collect();
        let own: Vec<Binding> = sets
            .iter()
            .filter(|b| visible.contains(&b.name))
            .cloned()
            .collect();
        match compile_kernel_with_budget(&fe.program, k, &own, budget) {
            Ok(c) => diags.extend(c.warnings),
            Err(d) => diags.extend(d),
        }
    }
    for k in selection {
        let visible = select::resolve::visible_params(&fe.ast, k);
        let own: Vec<Binding> = sets
            .iter()
            .filter(|b| visible.contains(&b.name))
            .cloned()
            .collect();
        match select::resolve::instantiate(&fe.ast, k, &own) {
            Ok((_, w)) => diags.extend(w),
            Err(d) => diags.extend(d),
        }
    }
    dedup(diags)
}

/// Kernels sharing a pattern report its errors once.
fn dedup(diags: Vec<Diagnostic>) -> Vec<Diagnostic> {
    let mut out: Vec<Diagnostic> = vec![];
    for d in diags {
        if !out.contains(&d) {
            out.push(d);
        }
    }
    out
}

/// The text of one stage for one kernel (or the whole file for `ast`).
pub fn emit(
    src: &Source,
    stage: Stage,
    kernel: Option<&str>,
    sets: &[Binding],
) -> Result<(String, Vec<Diagnostic>), Vec<Diagnostic>> {
    emit_for(src, stage, kernel, sets, crate::codegen::nvptx::Arch::Sm90)
}

/// As [`emit`], with the GPU architecture for `llvm` and `ptx`.
pub fn emit_for(
    src: &Source,
    stage: Stage,
    kernel: Option<&str>,
    sets: &[Binding],
    arch: crate::codegen::nvptx::Arch,
) -> Result<(String, Vec<Diagnostic>), Vec<Diagnostic>> {
    let (fe, warnings) = frontend(src)?;
    if stage == Stage::Ast {
        return Ok((syntax::print::print_file(&fe.ast), warnings));
    }
    let kernels: Vec<KernelRef> = match kernel {
        Some(name) => vec![find_any(&fe, Some(name)).map_err(|d| vec![d])?],
        None => (0..fe.program.kernels.len())
            .map(KernelRef::Attention)
            .chain(
                select::resolve::kernels(&fe.ast)
                    .map(|k| KernelRef::Selection(k.name.name.clone())),
            )
            .collect(),
    };
    if kernels.is_empty() {
        return Err(vec![Diagnostic::error(
            "E0502",
            "this file declares no kernel",
        )
        .with_hint("add `kernel NAME = attention(PATTERN) { ... }`")]);
    }
    let mut out = String::new();
    let mut warns = warnings;
    for k in kernels {
        let k = match k {
            KernelRef::Attention(k) => k,
            KernelRef::Selection(name) => {
                let (s, w) = select_spec(&fe, &name, sets)?;
                warns.extend(w);
                let text = match stage {
                    Stage::Spec => s.print(),
                    Stage::Plan => select::plan::print(&s, &select::plan::plan(&s)),
                    Stage::Llvm | Stage::Ptx => {
                        match crate::codegen::nvptx::decode::compile(&s, arch) {
                            Ok(m) if stage == Stage::Llvm => m.llvm,
                            Ok(m) => m.ptx,
                            // Without --kernel, the GPU stages cover what runs on the GPU.
                            Err(_) if kernel.is_none() => continue,
                            Err(e) => {
                                return Err(vec![Diagnostic::error("E0812", e)
                                    .with_hint("run it with --backend cpu")])
                            }
                        }
                    }
                    // Without --kernel, the other stages cover the attention kernels.
                    _ if kernel.is_none() => continue,
                    _ => {
                        return Err(vec![Diagnostic::error(
                            "E0810",
                            format!(
                                "`{name}` is a selection kernel: it has the stages spec, plan, llvm and ptx"
                            ),
                        )
                        .with_hint("use --emit spec, plan, llvm or ptx")])
                    }
                };
                if !out.is_empty() {
                    out.push('\n');
                }
                out.push_str(&text);
                continue;
            }
        };
        let text = match stage {
            Stage::Plan if kernel.is_none() => continue,
            Stage::Plan => {
                return Err(vec![Diagnostic::error(
                    "E0810",
                    format!(
                        "`{}` is an attention kernel: `plan` is a stage of selection kernels",
                        fe.program.kernels[k].name
                    ),
                )
                .with_hint("use --emit schedule for an attention kernel's tiles")])
            }
            Stage::Spec => {
                let (s, w) = spec(&fe.program, k, sets)?;
                warns.extend(w);
                sema::spec::print_spec(&s)
            }
            _ => {
                let c = compile_kernel(&fe.program, k, sets)?;
                warns.extend(c.warnings.iter().cloned());
                match stage {
                    Stage::Schedule => pattern::print::print_schedule(&c.spec, &c.schedule, None),
                    Stage::Ir => ir::print::print(&c.ir),
                    Stage::Clif => {
                        let m = crate::codegen::cpu::compile(
                            &c.ir,
                            &c.schedule.geom,
                            &c.spec.inputs,
                            true,
                        )
                        .map_err(|e| vec![Diagnostic::error("E0602", e)])?;
                        m.clif.clone().unwrap_or_default()
                    }
                    Stage::Llvm | Stage::Ptx => {
                        let m = crate::codegen::nvptx::compile(
                            &c.ir,
                            &c.schedule.geom,
                            &c.spec.inputs,
                            arch,
                        )
                        .map_err(|e| {
                            vec![Diagnostic::error("E0701", e)
                                .with_label(c.spec.kernel_span, "in this kernel")]
                        })?;
                        if stage == Stage::Llvm {
                            m.llvm
                        } else {
                            m.ptx
                        }
                    }
                    _ => ir::dot::dot(&c.ir),
                }
            }
        };
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&text);
    }
    Ok((out, dedup(warns)))
}
