//! Stage 7: evaluation plan → WGSL compute shader.
//!
//! In: a validated [`Plan`]. Out: a [`Kernel`]: one WGSL module in which each invocation
//! evaluates every batched step of the plan for one batch item, keeping the item's
//! intermediates in function memory, and the layout of its buffers. Shared steps are not in
//! the shader: the host computes them once per batch and uploads them with the shared inputs.
//!
//! Bindings: 0 `hoisted` (read-only storage: shared inputs and hoisted shared steps, each at a
//! fixed offset), 1 `batched` (read-only storage: the chunk's batched inputs), 2 `out`
//! (read-write storage: the batched outputs), 3 `params` (uniform: the chunk's item count and
//! the row length of the 2-D dispatch), 4 `scratch` (read-write storage: intermediates too
//! large for function memory). Every per-item value in a buffer is stored element-major
//! ("lanes"): element `e` of a value at base `b` for item `t` is at `(b + e)·chunk + t`, so the
//! invocations of a warp read and write consecutive addresses (coalesced). Small
//! intermediates live in function memory ([`PRIVATE_MAX`]); large ones in `scratch`, or
//! directly in `out` when they are an output. Invariants: the text is generated from typed instructions ([`Stmt`], [`Expr`])
//! whose identifiers are made by the generator from step numbers, never from user-chosen
//! names, so no program can inject shader code; every module is validated by naga
//! ([`validate`]) before anything runs it; this module knows nothing of devices.

use std::fmt::{self, Write as _};

use crate::expr::{Func, Node};
use crate::plan::{Plan, Step};

/// Invocations per workgroup (one item each) for kernels with small intermediates.
pub const WORKGROUP_SIZE: u32 = 64;

/// Function-memory floats a workgroup may hold in all: kernels with large per-item
/// intermediates (32×32 matrices) get smaller workgroups, so that drivers that keep private
/// arrays on a stack (lavapipe) or in scarce registers are not overrun.
const WORKGROUP_FLOATS: usize = 16 * 1024;

/// Intermediates up to this many floats live in function memory (registers), up to
/// [`PRIVATE_BUDGET`] floats per item in all; larger ones in the `scratch` buffer. Drivers
/// fail on large private arrays (the NVIDIA Vulkan driver lost the device compiling a kernel
/// with several 32×32 private matrices).
pub const PRIVATE_MAX: usize = 256;
const PRIVATE_BUDGET: usize = 1024;

/// Where a batched step's value lives in the kernel.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Storage {
    Private,
    /// Lanes at this base in `scratch`.
    Scratch(usize),
    /// Lanes at this base in `out` (an output written where it is computed).
    Out(usize),
}

/// The hand-written LU building block, instantiated per matrix size.
const LU_TEMPLATE: &str = include_str!("../shaders/lu.wgsl");
/// The hand-written power function.
const POW_SOURCE: &str = include_str!("../shaders/pow.wgsl");

/// A generated shader and where its data lives.
#[derive(Clone, Debug)]
pub struct Kernel {
    pub source: String,
    /// For each plan step that is shared, its offset in the `shared` buffer.
    pub shared_offsets: Vec<Option<usize>>,
    /// Length of the `shared` buffer in f32 (at least 1: empty bindings are not allowed).
    pub shared_len: usize,
    /// The plan inputs that are batched, in buffer order, with their per-item length.
    pub batched_inputs: Vec<(usize, usize)>,
    /// The batched outputs (plan output positions), in buffer order, with per-item length.
    pub batched_outputs: Vec<(usize, usize)>,
    /// Invocations per workgroup.
    pub workgroup_size: u32,
    /// f32 values per item in the `scratch` buffer.
    pub scratch_len: usize,
}

impl Kernel {
    /// f32 values per item in the `batched` buffer.
    pub fn batched_len(&self) -> usize {
        self.batched_inputs.iter().map(|&(_, len)| len).sum()
    }

    /// f32 values per item in the `out` buffer.
    pub fn out_len(&self) -> usize {
        self.batched_outputs.iter().map(|&(_, len)| len).sum()
    }
}

/// Why a generated module is not valid WGSL: a bug in matgrad, reported with the source.
#[derive(Debug, Clone, thiserror::Error)]
#[error("internal error: generated WGSL does not validate: {message}\n--- WGSL ---\n{wgsl}")]
pub struct InvalidShader {
    pub message: String,
    pub wgsl: String,
}

/// Parses and validates WGSL with naga.
pub fn validate(source: &str) -> Result<(), InvalidShader> {
    let module = naga::front::wgsl::parse_str(source).map_err(|e| InvalidShader {
        message: e.emit_to_string(source),
        wgsl: source.to_string(),
    })?;
    naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::empty(),
    )
    .validate(&module)
    .map_err(|e| InvalidShader {
        message: format!("{e:?}"),
        wgsl: source.to_string(),
    })?;
    Ok(())
}

/// Generates (and validates) the kernel of a plan.
pub fn generate(plan: &Plan) -> Result<Kernel, InvalidShader> {
    let steps = plan.steps();
    let mut shared_offsets = vec![None; steps.len()];
    let mut shared_len = 0;
    for (i, step) in steps.iter().enumerate() {
        if !step.batched {
            shared_offsets[i] = Some(shared_len);
            shared_len += step.len();
        }
    }
    let mut batched_inputs = Vec::new();
    let mut input_base = vec![0usize; plan.inputs().len()];
    let mut running = 0;
    for (k, input) in plan.inputs().iter().enumerate() {
        if input.batched {
            input_base[k] = running;
            running += input.rows * input.cols;
            batched_inputs.push((k, input.rows * input.cols));
        }
    }
    let mut batched_outputs = Vec::new();
    for (position, &o) in plan.outputs().iter().enumerate() {
        if steps[o].batched {
            batched_outputs.push((position, steps[o].len()));
        }
    }
    // Output bases in `out`, and where each computed batched step lives.
    let mut out_bases = Vec::new();
    let mut out_base = 0;
    for &(_, len) in &batched_outputs {
        out_bases.push(out_base);
        out_base += len;
    }
    let mut storage = vec![Storage::Private; steps.len()];
    let (mut private, mut scratch_len) = (0, 0);
    for (i, step) in steps.iter().enumerate() {
        if !step.batched || step.input.is_some() {
            continue;
        }
        let len = step.len();
        // The LU building block writes an inverse through a function-memory pointer.
        let must_be_private = matches!(step.node, Node::Inv(_));
        if must_be_private || (len <= PRIVATE_MAX && private + len <= PRIVATE_BUDGET) {
            private += len;
            continue;
        }
        let positions: Vec<usize> = batched_outputs
            .iter()
            .enumerate()
            .filter(|(_, &(p, _))| plan.outputs()[p] == i)
            .map(|(k, _)| k)
            .collect();
        storage[i] = if positions.len() == 1 {
            Storage::Out(out_bases[positions[0]])
        } else {
            scratch_len += len;
            Storage::Scratch(scratch_len - len)
        };
    }
    let mut gen = Generator {
        steps,
        shared_offsets: &shared_offsets,
        input_base: &input_base,
        storage: &storage,
        loops: 0,
        lu_sizes: Vec::new(),
        uses_pow: false,
    };
    let mut body = vec![
        Stmt::Let(Ident::item(), Expr::raw_item()),
        Stmt::ReturnIf(Expr::bin(
            ">=",
            Expr::id(Ident::item()),
            Expr::Raw("params.chunk"),
        )),
    ];
    for (i, step) in steps.iter().enumerate() {
        if step.batched && step.input.is_none() {
            gen.step(i, step, &mut body);
        }
    }
    for (&(position, len), &base) in batched_outputs.iter().zip(&out_bases) {
        let o = plan.outputs()[position];
        if storage[o] == Storage::Out(base) {
            continue;
        }
        let i = gen.loop_var();
        let target = lanes("out", base, Expr::id(i.clone()));
        let value = gen.value(o, Expr::id(i.clone()));
        body.push(Stmt::For(i, len, vec![Stmt::Assign(target, value)]));
    }
    let mut source = String::new();
    let _ = write!(source, "{}", Header);
    if gen.uses_pow {
        source.push_str(POW_SOURCE);
        source.push('\n');
    }
    let mut sizes = gen.lu_sizes.clone();
    sizes.sort_unstable();
    sizes.dedup();
    for n in sizes {
        source.push_str(&instantiate_lu(n));
        source.push('\n');
    }
    let private: usize = body
        .iter()
        .map(|s| match s {
            Stmt::Array(_, len) | Stmt::IndexArray(_, len) => *len,
            _ => 0,
        })
        .sum();
    let mut workgroup_size = WORKGROUP_SIZE;
    while workgroup_size > 1 && workgroup_size as usize * private > WORKGROUP_FLOATS {
        workgroup_size /= 2;
    }
    let _ = writeln!(
        source,
        "@compute @workgroup_size({workgroup_size})\nfn main(@builtin(global_invocation_id) gid: vec3<u32>) {{"
    );
    for stmt in &body {
        let _ = stmt.write(&mut source, 1);
    }
    source.push_str("}\n");
    validate(&source)?;
    Ok(Kernel {
        source,
        shared_offsets,
        shared_len: shared_len.max(1),
        batched_inputs,
        batched_outputs,
        workgroup_size,
        scratch_len,
    })
}

/// Element `idx` of the lanes at `base` of a buffer, for the current item.
fn lanes(buffer: &'static str, base: usize, idx: Expr) -> Expr {
    Expr::index(
        Expr::Raw(buffer),
        Expr::add(
            Expr::mul(
                Expr::Raw("params.chunk"),
                Expr::add(Expr::U32(base as u32), idx),
            ),
            Expr::id(Ident::item()),
        ),
    )
}

/// The LU building block for n×n matrices: its size tokens become integers.
fn instantiate_lu(n: usize) -> String {
    LU_TEMPLATE
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .map(|l| {
            l.replace("NNU", &format!("{}u", n * n))
                .replace("NU", &format!("{n}u"))
                .replace("NAME", &n.to_string())
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A generated identifier: built from numbers only.
#[derive(Clone, Debug, PartialEq)]
pub struct Ident(String);

impl Ident {
    fn step(i: usize) -> Ident {
        Ident(format!("v{i}"))
    }
    fn scratch(i: usize, what: &str) -> Ident {
        // `what` is one of a fixed set of words chosen by the generator.
        Ident(format!("{what}{i}"))
    }
    fn loop_var(n: usize) -> Ident {
        Ident(format!("idx{n}"))
    }
    fn item() -> Ident {
        Ident("item".into())
    }
}

impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A WGSL expression.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    F32(f32),
    U32(u32),
    Id(Ident),
    /// Fixed WGSL text chosen by the generator (buffer names, builtins).
    Raw(&'static str),
    Index(Box<Expr>, Box<Expr>),
    Binary(&'static str, Box<Expr>, Box<Expr>),
    Unary(&'static str, Box<Expr>),
    Call(&'static str, Vec<Expr>),
    CallN(String, Vec<Expr>),
    AddrOf(Ident),
}

impl Expr {
    fn id(i: Ident) -> Expr {
        Expr::Id(i)
    }
    fn index(base: Expr, i: Expr) -> Expr {
        Expr::Index(Box::new(base), Box::new(i))
    }
    fn bin(op: &'static str, a: Expr, b: Expr) -> Expr {
        Expr::Binary(op, Box::new(a), Box::new(b))
    }
    fn add(a: Expr, b: Expr) -> Expr {
        match (&a, &b) {
            (Expr::U32(0), _) => b,
            (_, Expr::U32(0)) => a,
            _ => Expr::bin("+", a, b),
        }
    }
    fn mul(a: Expr, b: Expr) -> Expr {
        match (&a, &b) {
            (Expr::U32(0), _) | (_, Expr::U32(0)) => Expr::U32(0),
            (Expr::U32(1), _) => b,
            (_, Expr::U32(1)) => a,
            _ => Expr::bin("*", a, b),
        }
    }
    fn raw_item() -> Expr {
        Expr::Raw("gid.x + gid.y * params.row")
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::F32(v) => {
                if v.is_finite() {
                    // `{:?}` prints the shortest digits that round-trip, always with `.` or `e`.
                    write!(f, "f32({v:?})")
                } else {
                    // Non-finite constants are not WGSL; they never reach here (the
                    // simplifier folds only finite constants), but stay well-formed.
                    write!(f, "f32(0.0)")
                }
            }
            Expr::U32(v) => write!(f, "{v}u"),
            Expr::Id(i) => write!(f, "{i}"),
            Expr::Raw(s) => f.write_str(s),
            Expr::Index(b, i) => write!(f, "{b}[{i}]"),
            Expr::Binary(op, a, b) => write!(f, "({a} {op} {b})"),
            Expr::Unary(op, a) => write!(f, "({op}{a})"),
            Expr::Call(name, args) => write_call(f, name, args),
            Expr::CallN(name, args) => write_call(f, name, args),
            Expr::AddrOf(i) => write!(f, "&{i}"),
        }
    }
}

fn write_call(f: &mut fmt::Formatter<'_>, name: &str, args: &[Expr]) -> fmt::Result {
    write!(f, "{name}(")?;
    for (k, a) in args.iter().enumerate() {
        if k > 0 {
            f.write_str(", ")?;
        }
        write!(f, "{a}")?;
    }
    f.write_str(")")
}

/// A WGSL statement.
#[derive(Clone, Debug, PartialEq)]
pub enum Stmt {
    /// `var name: array<f32, len>;`
    Array(Ident, usize),
    /// `var name: array<u32, len>;`
    IndexArray(Ident, usize),
    /// `var name: f32 = value;`
    Var(Ident, Expr),
    Let(Ident, Expr),
    Assign(Expr, Expr),
    /// `for (var i: u32 = 0u; i < count; i = i + 1u) { body }`
    For(Ident, usize, Vec<Stmt>),
    ReturnIf(Expr),
    /// A call whose value is not used.
    Call(Expr),
}

impl Stmt {
    fn write(&self, out: &mut String, depth: usize) -> fmt::Result {
        let pad = "    ".repeat(depth);
        match self {
            Stmt::Array(n, len) => writeln!(out, "{pad}var {n}: array<f32, {len}u>;"),
            Stmt::IndexArray(n, len) => writeln!(out, "{pad}var {n}: array<u32, {len}u>;"),
            Stmt::Var(n, v) => writeln!(out, "{pad}var {n}: f32 = {v};"),
            Stmt::Let(n, v) => writeln!(out, "{pad}let {n} = {v};"),
            Stmt::Assign(t, v) => writeln!(out, "{pad}{t} = {v};"),
            Stmt::For(i, count, body) => {
                writeln!(
                    out,
                    "{pad}for (var {i}: u32 = 0u; {i} < {count}u; {i} = {i} + 1u) {{"
                )?;
                for s in body {
                    s.write(out, depth + 1)?;
                }
                writeln!(out, "{pad}}}")
            }
            Stmt::ReturnIf(c) => writeln!(out, "{pad}if {c} {{\n{pad}    return;\n{pad}}}"),
            Stmt::Call(c) => writeln!(out, "{pad}{c};"),
        }
    }
}

/// The bindings and the parameter block.
struct Header;

impl fmt::Display for Header {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "// Generated by matgrad from an evaluation plan: one invocation per batch item.\n\
             struct Params {\n    chunk: u32,\n    row: u32,\n    pad0: u32,\n    pad1: u32,\n}\n\
             @group(0) @binding(0) var<storage, read> hoisted: array<f32>;\n\
             @group(0) @binding(1) var<storage, read> batched: array<f32>;\n\
             @group(0) @binding(2) var<storage, read_write> out: array<f32>;\n\
             @group(0) @binding(3) var<uniform> params: Params;\n\
             @group(0) @binding(4) var<storage, read_write> scratch: array<f32>;\n\n",
        )
    }
}

struct Generator<'p> {
    steps: &'p [Step],
    shared_offsets: &'p [Option<usize>],
    input_base: &'p [usize],
    storage: &'p [Storage],
    loops: usize,
    lu_sizes: Vec<usize>,
    uses_pow: bool,
}

impl Generator<'_> {
    fn loop_var(&mut self) -> Ident {
        self.loops += 1;
        Ident::loop_var(self.loops)
    }

    /// Entry `idx` of step `s` for the current item.
    fn value(&self, s: usize, idx: Expr) -> Expr {
        let step = &self.steps[s];
        match (step.batched, step.input) {
            (false, _) => {
                let off = self.shared_offsets[s].unwrap_or(0);
                Expr::index(Expr::Raw("hoisted"), Expr::add(Expr::U32(off as u32), idx))
            }
            (true, Some(k)) => lanes("batched", self.input_base[k], idx),
            (true, None) => self.target(s, idx),
        }
    }

    /// Where entry `idx` of computed batched step `s` is stored (read or written).
    fn target(&self, s: usize, idx: Expr) -> Expr {
        match self.storage[s] {
            Storage::Private => Expr::index(Expr::id(Ident::step(s)), idx),
            Storage::Scratch(base) => lanes("scratch", base, idx),
            Storage::Out(base) => lanes("out", base, idx),
        }
    }

    /// The statements that compute batched step `i` into `v{i}`.
    fn step(&mut self, i: usize, step: &Step, body: &mut Vec<Stmt>) {
        let dst = Ident::step(i);
        let len = step.len();
        if self.storage[i] == Storage::Private {
            body.push(Stmt::Array(dst.clone(), len.max(1)));
        }
        let a = step.args.first().copied().unwrap_or(0);
        let b = step.args.get(1).copied().unwrap_or(0);
        let at = |v: &Ident, idx: Expr| Expr::index(Expr::id(v.clone()), idx);
        // Element-wise: dst[k] = f(args at k).
        let elementwise =
            |gen: &mut Self, body: &mut Vec<Stmt>, f: &dyn Fn(&Self, Expr) -> Expr| {
                let k = gen.loop_var();
                let value = f(gen, Expr::id(k.clone()));
                body.push(Stmt::For(
                    k.clone(),
                    len,
                    vec![Stmt::Assign(gen.target(i, Expr::id(k)), value)],
                ));
            };
        match step.node {
            Node::Add(..) => elementwise(self, body, &|g, k| {
                Expr::bin("+", g.value(a, k.clone()), g.value(b, k))
            }),
            Node::Hadamard(..) => elementwise(self, body, &|g, k| {
                Expr::bin("*", g.value(a, k.clone()), g.value(b, k))
            }),
            Node::ElemDiv(..) => elementwise(self, body, &|g, k| {
                Expr::bin("/", g.value(a, k.clone()), g.value(b, k))
            }),
            Node::Neg(_) => elementwise(self, body, &|g, k| {
                Expr::Unary("-", Box::new(g.value(a, k)))
            }),
            Node::Scale(..) => elementwise(self, body, &|g, k| {
                Expr::bin("*", g.value(a, Expr::U32(0)), g.value(b, k))
            }),
            Node::Div(..) => elementwise(self, body, &|g, k| {
                Expr::bin("/", g.value(a, k), g.value(b, Expr::U32(0)))
            }),
            Node::Pow(..) | Node::ElemPow(..) => {
                self.uses_pow = true;
                let scalar_exponent = self.steps[b].len() == 1;
                elementwise(self, body, &|g, k| {
                    let e = if scalar_exponent {
                        g.value(b, Expr::U32(0))
                    } else {
                        g.value(b, k.clone())
                    };
                    Expr::Call("mg_pow", vec![g.value(a, k), e])
                })
            }
            Node::Map(f, _) => elementwise(self, body, &|g, k| map_call(f, g.value(a, k))),
            Node::Transpose(_) => {
                let (r, c) = (self.steps[a].rows, self.steps[a].cols);
                let (p, q) = (self.loop_var(), self.loop_var());
                let src = Expr::add(
                    Expr::mul(Expr::id(p.clone()), Expr::U32(c as u32)),
                    Expr::id(q.clone()),
                );
                let target = Expr::add(
                    Expr::mul(Expr::id(q.clone()), Expr::U32(r as u32)),
                    Expr::id(p.clone()),
                );
                let inner = Stmt::For(
                    q,
                    c,
                    vec![Stmt::Assign(self.target(i, target), self.value(a, src))],
                );
                body.push(Stmt::For(p, r, vec![inner]));
            }
            Node::MatMul(..) => {
                let (m, k, n) = (self.steps[a].rows, self.steps[a].cols, self.steps[b].cols);
                let lhs = |g: &Self, r: Expr, p: Expr| {
                    g.value(a, Expr::add(Expr::mul(r, Expr::U32(k as u32)), p))
                };
                let rhs = |g: &Self, p: Expr, c: Expr| {
                    g.value(b, Expr::add(Expr::mul(p, Expr::U32(n as u32)), c))
                };
                self.product(body, i, m, k, n, &lhs, &rhs);
            }
            Node::MatPow(_, power) => {
                let n = step.rows;
                let tmp = Ident::scratch(i, "pw");
                body.push(Stmt::Array(tmp.clone(), len));
                let k = self.loop_var();
                body.push(Stmt::For(
                    k.clone(),
                    len,
                    vec![Stmt::Assign(
                        self.target(i, Expr::id(k.clone())),
                        self.value(a, Expr::id(k)),
                    )],
                ));
                for _ in 1..power {
                    let k = self.loop_var();
                    body.push(Stmt::For(
                        k.clone(),
                        len,
                        vec![Stmt::Assign(
                            at(&tmp, Expr::id(k.clone())),
                            self.target(i, Expr::id(k)),
                        )],
                    ));
                    let t = tmp.clone();
                    let lhs = move |_: &Self, r: Expr, p: Expr| {
                        Expr::index(
                            Expr::id(t.clone()),
                            Expr::add(Expr::mul(r, Expr::U32(n as u32)), p),
                        )
                    };
                    let rhs = |g: &Self, p: Expr, c: Expr| {
                        g.value(a, Expr::add(Expr::mul(p, Expr::U32(n as u32)), c))
                    };
                    self.product(body, i, n, n, n, &lhs, &rhs);
                }
            }
            Node::Sum(_) | Node::Norm1(_) | Node::Norm2(_) | Node::Trace(_) => {
                let acc = Ident::scratch(i, "acc");
                body.push(Stmt::Var(acc.clone(), Expr::F32(0.0)));
                let k = self.loop_var();
                let (count, term) = match step.node {
                    Node::Trace(_) => {
                        let n = self.steps[a].rows;
                        (
                            n,
                            self.value(a, Expr::mul(Expr::id(k.clone()), Expr::U32(n as u32 + 1))),
                        )
                    }
                    Node::Norm1(_) => (
                        self.steps[a].len(),
                        Expr::Call("abs", vec![self.value(a, Expr::id(k.clone()))]),
                    ),
                    Node::Norm2(_) => {
                        let v = self.value(a, Expr::id(k.clone()));
                        (self.steps[a].len(), Expr::bin("*", v.clone(), v))
                    }
                    _ => (self.steps[a].len(), self.value(a, Expr::id(k.clone()))),
                };
                body.push(Stmt::For(
                    k,
                    count,
                    vec![Stmt::Assign(
                        Expr::id(acc.clone()),
                        Expr::bin("+", Expr::id(acc.clone()), term),
                    )],
                ));
                let result = if matches!(step.node, Node::Norm2(_)) {
                    Expr::Call("sqrt", vec![Expr::id(acc)])
                } else {
                    Expr::id(acc)
                };
                body.push(Stmt::Assign(self.target(i, Expr::U32(0)), result));
            }
            Node::Det(_) | Node::LogDet(_) | Node::Inv(_) => {
                let n = self.steps[a].rows;
                self.lu_sizes.push(n);
                let (lu, perm, sign) = (
                    Ident::scratch(i, "lu"),
                    Ident::scratch(i, "perm"),
                    Ident::scratch(i, "sign"),
                );
                body.push(Stmt::Array(lu.clone(), n * n));
                body.push(Stmt::IndexArray(perm.clone(), n));
                let k = self.loop_var();
                body.push(Stmt::For(
                    k.clone(),
                    n * n,
                    vec![Stmt::Assign(
                        at(&lu, Expr::id(k.clone())),
                        self.value(a, Expr::id(k)),
                    )],
                ));
                body.push(Stmt::Let(
                    sign.clone(),
                    Expr::CallN(
                        format!("mg_lu_{n}"),
                        vec![Expr::AddrOf(lu.clone()), Expr::AddrOf(perm.clone())],
                    ),
                ));
                match step.node {
                    Node::Det(_) => body.push(Stmt::Assign(
                        self.target(i, Expr::U32(0)),
                        Expr::CallN(
                            format!("mg_det_{n}"),
                            vec![Expr::AddrOf(lu), Expr::id(sign)],
                        ),
                    )),
                    Node::LogDet(_) => body.push(Stmt::Assign(
                        self.target(i, Expr::U32(0)),
                        Expr::CallN(
                            format!("mg_logdet_{n}"),
                            vec![Expr::AddrOf(lu), Expr::id(sign)],
                        ),
                    )),
                    _ => body.push(Stmt::Call(Expr::CallN(
                        format!("mg_inv_{n}"),
                        vec![
                            Expr::AddrOf(lu),
                            Expr::AddrOf(perm),
                            Expr::id(sign),
                            Expr::AddrOf(dst.clone()),
                        ],
                    ))),
                }
            }
            Node::Diag(_) => {
                let n = step.rows;
                let k = self.loop_var();
                body.push(Stmt::For(
                    k.clone(),
                    len,
                    vec![Stmt::Assign(
                        self.target(i, Expr::id(k.clone())),
                        Expr::F32(0.0),
                    )],
                ));
                let p = self.loop_var();
                let target = Expr::mul(Expr::id(p.clone()), Expr::U32(n as u32 + 1));
                body.push(Stmt::For(
                    p.clone(),
                    n,
                    vec![Stmt::Assign(
                        self.target(i, target),
                        self.value(a, Expr::id(p)),
                    )],
                ));
            }
            Node::DiagPart(_) => {
                let n = step.rows;
                let p = self.loop_var();
                let src = Expr::mul(Expr::id(p.clone()), Expr::U32(n as u32 + 1));
                body.push(Stmt::For(
                    p.clone(),
                    n,
                    vec![Stmt::Assign(
                        self.target(i, Expr::id(p)),
                        self.value(a, src),
                    )],
                ));
            }
            // Inputs and constants are never batched steps computed in the shader.
            Node::Var(_) | Node::Const(_) | Node::Fill(..) | Node::Eye(_) => {}
        }
    }

    /// Step `dst` = `lhs * rhs` (m×k times k×n) as three loops.
    #[allow(clippy::too_many_arguments)]
    fn product(
        &mut self,
        body: &mut Vec<Stmt>,
        dst: usize,
        m: usize,
        k: usize,
        n: usize,
        lhs: &dyn Fn(&Self, Expr, Expr) -> Expr,
        rhs: &dyn Fn(&Self, Expr, Expr) -> Expr,
    ) {
        let (r, c, p) = (self.loop_var(), self.loop_var(), self.loop_var());
        let acc = Ident(format!("dot{}", self.loops));
        let term = Expr::bin(
            "*",
            lhs(self, Expr::id(r.clone()), Expr::id(p.clone())),
            rhs(self, Expr::id(p.clone()), Expr::id(c.clone())),
        );
        let inner = vec![
            Stmt::Var(acc.clone(), Expr::F32(0.0)),
            Stmt::For(
                p,
                k,
                vec![Stmt::Assign(
                    Expr::id(acc.clone()),
                    Expr::bin("+", Expr::id(acc.clone()), term),
                )],
            ),
            Stmt::Assign(
                self.target(
                    dst,
                    Expr::add(
                        Expr::mul(Expr::id(r.clone()), Expr::U32(n as u32)),
                        Expr::id(c.clone()),
                    ),
                ),
                Expr::id(acc),
            ),
        ];
        body.push(Stmt::For(r, m, vec![Stmt::For(c, n, inner)]));
    }
}

/// An element-wise function as WGSL.
fn map_call(f: Func, x: Expr) -> Expr {
    let name = match f {
        Func::Sin => "sin",
        Func::Cos => "cos",
        Func::Tan => "tan",
        Func::Arcsin => "asin",
        Func::Arccos => "acos",
        Func::Arctan => "atan",
        Func::Exp => "exp",
        Func::Log => "log",
        Func::Tanh => "tanh",
        Func::Abs => "abs",
        Func::Sign => "sign",
        Func::Sqrt => "sqrt",
        Func::Relu => return Expr::Call("max", vec![x, Expr::F32(0.0)]),
    };
    Expr::Call(name, vec![x])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::{differentiate, Layout, Request};
    use crate::types::check_program;

    fn kernel(source: &str, wrt: &str) -> Kernel {
        let p = check_program(source).unwrap();
        let d = differentiate(p, wrt, &Request::Derivative, Layout::Gradient).unwrap();
        let g = &d.program.graph;
        let batched: Vec<bool> = g.vars.iter().map(|v| v.name == wrt).collect();
        let plan = Plan::new(g, &[d.node], &crate::verify::dimension_sizes(g), &batched).unwrap();
        generate(&plan).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_lu_building_block_validates_for_several_sizes() {
        for n in [1, 2, 3, 8] {
            let k = kernel(
                &format!("X: matrix({n},{n}); logdet(X) + det(X) + tr(inv(X))"),
                "X",
            );
            assert!(k.source.contains(&format!("fn mg_lu_{n}(")), "{}", k.source);
        }
    }

    #[test]
    fn user_names_never_reach_the_shader() {
        let k = kernel(
            "secret_name: vector(3); sum(exp(secret_name))",
            "secret_name",
        );
        assert!(!k.source.contains("secret_name"));
    }

    /// exp(x) + x/norm2(x): element-wise steps, a reduction, and the output written back.
    #[test]
    fn large_intermediates_live_in_buffers_not_function_memory() {
        // W5's 32×32 per-item products: too large for function memory on real drivers.
        let k = kernel(
            "A: matrix(32,32); B: matrix(32,32); X: matrix(32,32); tr(A*X*B*X')",
            "X",
        );
        assert!(
            k.scratch_len > 0 && k.source.contains("scratch["),
            "{}",
            k.source
        );
        assert!(!k.source.contains("array<f32, 1024u>"), "{}", k.source);
        // The output is written where it is computed, not copied.
        assert_eq!(k.source.matches("out[").count(), 1, "{}", k.source);
    }

    #[test]
    fn snapshot_of_an_elementwise_kernel() {
        let k = kernel("x: vector(2); sum(exp(x)) + norm2(x)", "x");
        let main = &k.source[k.source.find("@compute").unwrap()..];
        let expected = "@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let item = gid.x + gid.y * params.row;
    if (item >= params.chunk) {
        return;
    }
    var v1: array<f32, 2u>;
    for (var idx1: u32 = 0u; idx1 < 2u; idx1 = idx1 + 1u) {
        v1[idx1] = exp(batched[((params.chunk * idx1) + item)]);
    }
    var v2: array<f32, 1u>;
    var acc2: f32 = f32(0.0);
    for (var idx2: u32 = 0u; idx2 < 2u; idx2 = idx2 + 1u) {
        acc2 = (acc2 + (batched[((params.chunk * idx2) + item)] * batched[((params.chunk * idx2) + item)]));
    }
    v2[0u] = sqrt(acc2);
    var v3: array<f32, 2u>;
    for (var idx3: u32 = 0u; idx3 < 2u; idx3 = idx3 + 1u) {
        v3[idx3] = (batched[((params.chunk * idx3) + item)] / v2[0u]);
    }
    var v4: array<f32, 2u>;
    for (var idx4: u32 = 0u; idx4 < 2u; idx4 = idx4 + 1u) {
        v4[idx4] = (v1[idx4] + v3[idx4]);
    }
    for (var idx5: u32 = 0u; idx5 < 2u; idx5 = idx5 + 1u) {
        out[((params.chunk * idx5) + item)] = v4[idx5];
    }
}
";
        assert_eq!(main, expected);
    }

    /// A snapshot of a small kernel, to keep the generated code readable and stable.
    #[test]
    fn snapshot_of_a_small_kernel() {
        let k = kernel("A: matrix(2,2); x: vector(2); x'*A*x", "x");
        let main = &k.source[k.source.find("@compute").unwrap()..];
        // (A+A')*x: the shared sum is hoisted (offset 8, after A and A'); x is batched.
        let expected = "@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let item = gid.x + gid.y * params.row;
    if (item >= params.chunk) {
        return;
    }
    var v4: array<f32, 2u>;
    for (var idx1: u32 = 0u; idx1 < 2u; idx1 = idx1 + 1u) {
        for (var idx2: u32 = 0u; idx2 < 1u; idx2 = idx2 + 1u) {
            var dot3: f32 = f32(0.0);
            for (var idx3: u32 = 0u; idx3 < 2u; idx3 = idx3 + 1u) {
                dot3 = (dot3 + (hoisted[(8u + ((idx1 * 2u) + idx3))] * batched[((params.chunk * (idx3 + idx2)) + item)]));
            }
            v4[(idx1 + idx2)] = dot3;
        }
    }
    for (var idx4: u32 = 0u; idx4 < 2u; idx4 = idx4 + 1u) {
        out[((params.chunk * idx4) + item)] = v4[idx4];
    }
}
";
        assert_eq!(main, expected);
    }
}
