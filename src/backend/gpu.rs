//! Stage 8: run generated kernels over batches with wgpu.
//!
//! In: a validated [`Plan`], its inputs as float32 batches, a [`GpuContext`]. Out: the same
//! outputs as the CPU executors. Method: the host computes the shared steps once (exactly as
//! the CPU path does) and uploads them with the shared inputs once per [`GpuSession`]; each
//! chunk of items uploads its batched inputs (transposed on the host, in parallel, into the
//! kernel's element-major layout, see [`crate::wgsl`]), runs the plan's dispatches in order
//! (per-item kernels folded into two dimensions past 65 535 workgroups, tiled GEMMs), each in
//! its own compute pass so that wgpu orders their buffer accesses, and reads its outputs back
//! (transposed back to item-major). Chunks alternate between two sets of buffers made once
//! per session, so the host prepares one chunk and reads another back while the device
//! computes. A [`ResidentPlan`] instead keeps one set of a plan's buffers on the device
//! between runs, for the batch optimizer (`src/minimize/gpu.rs`), whose own kernels read the
//! outputs and write the next inputs in place. Invariants: a batch too large for one binding, one dispatch or one pipelined
//! chunk is split into chunks whose results are identical to an unchunked run (items are
//! independent and computed by the same code); compiled pipelines are cached per shader
//! source; a set of buffers is reused only after its chunk's read-back finished; no adapter,
//! a failed device request, device loss and out-of-memory are [`GpuError`]s, never panics.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use wgpu::util::DeviceExt;

mod ceilings;
pub use ceilings::measure as measure_ceilings;

use super::layout::{hoisted_values, items_to_lanes, lanes_to_items};
use crate::batch::Batch;
use crate::plan::Plan;
use crate::wgsl::{
    generate_within, Access, Binding, Budget, GenerateError, InvalidShader, Kernel, StageKind,
};

/// How to choose the adapter and size the work.
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// A case-insensitive part of the adapter's name (else `WGPU_ADAPTER_NAME`, else the
    /// adapter that `WGPU_POWER_PREF` prefers, high performance by default).
    pub adapter: Option<String>,
    /// The adapter at this position of [`list_adapters`] (two identical cards have the same
    /// name); takes precedence over `adapter`.
    pub adapter_index: Option<usize>,
    /// At most this many items per dispatch (tests use it to force chunking).
    pub max_chunk_items: Option<usize>,
    /// At most this many workgroups per dispatch dimension, below the adapter's limit
    /// (tests use it to force the two-dimensional fold of the dispatch).
    pub max_workgroups_per_dimension: Option<u32>,
    /// The kernels' budget instead of the adapter's (tests run the hardware budget's
    /// unrolled building blocks on the software adapter).
    pub kernel_budget: Option<Budget>,
}

/// Why the GPU could not run.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GpuError {
    #[error("no GPU adapter found{0}; for a software Vulkan adapter install Mesa's lavapipe (Debian/Ubuntu: apt-get install mesa-vulkan-drivers libvulkan1)")]
    NoAdapter(String),
    #[error("no adapter's name contains `{wanted}`; the adapters are: {available}")]
    NoMatchingAdapter { wanted: String, available: String },
    #[error(
        "there is no adapter number {index}: `matgrad devices` lists {count}, numbered from 0"
    )]
    NoAdapterAtIndex { index: usize, count: usize },
    #[error("the adapter `{adapter}` refused a device: {why}")]
    RequestDevice { adapter: String, why: String },
    #[error(transparent)]
    Shader(#[from] InvalidShader),
    #[error(transparent)]
    Generate(#[from] GenerateError),
    #[error("the GPU reported an error while {during}: {why}")]
    Device { during: String, why: String },
    #[error("the GPU device was lost while {during}: {why}")]
    Lost { during: String, why: String },
    #[error(
        "the software adapter `{adapter}` stops a shader's loops after {SOFTWARE_LOOP_LIMIT} \
         iterations in all, without an error, and this plan's kernels may run {needs} per item \
         (the sizes are too large for it); use the CPU path (`--device cpu`) or a hardware GPU"
    )]
    LoopLimit { adapter: String, needs: u64 },
}

/// Mesa's llvmpipe (lavapipe) counts the iterations of all of a shader invocation's loops
/// together and leaves every loop once they reach this (`LP_MAX_TGSI_LOOP_ITERATIONS`): a
/// per-item kernel over vectors of 70 000 floats wrote zeros past entry 65 535. A kernel that
/// may need more is refused on such an adapter rather than run to a wrong answer.
pub const SOFTWARE_LOOP_LIMIT: u64 = 65_535;

/// What `matgrad devices` shows of an adapter.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AdapterSummary {
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub max_storage_buffer_binding_size: u64,
    pub max_buffer_size: u64,
    pub max_compute_workgroups_per_dimension: u32,
    pub max_compute_invocations_per_workgroup: u32,
    pub timestamp_queries: bool,
}

/// Runs `f` on a thread with a large stack: software drivers (lavapipe) compile shaders with
/// LLVM on the calling thread, and a large kernel can need more stack than a test thread's
/// default 2 MiB.
fn with_stack<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .stack_size(256 * 1024 * 1024)
            .spawn_scoped(scope, f)
            .expect("a thread for the GPU driver")
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

fn summary(adapter: &wgpu::Adapter) -> AdapterSummary {
    let info = adapter.get_info();
    let limits = adapter.limits();
    AdapterSummary {
        name: info.name,
        backend: format!("{:?}", info.backend),
        device_type: format!("{:?}", info.device_type),
        driver: format!("{} {}", info.driver, info.driver_info)
            .trim()
            .to_string(),
        max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size as u64,
        max_buffer_size: limits.max_buffer_size,
        max_compute_workgroups_per_dimension: limits.max_compute_workgroups_per_dimension,
        max_compute_invocations_per_workgroup: limits.max_compute_invocations_per_workgroup,
        timestamp_queries: adapter.features().contains(wgpu::Features::TIMESTAMP_QUERY),
    }
}

/// The backends to look at: `WGPU_BACKEND`, else the primary ones (Vulkan, Metal, DX12),
/// which leaves out OpenGL and its display probing on headless machines.
fn backends() -> wgpu::Backends {
    wgpu::Backends::from_env().unwrap_or(wgpu::Backends::PRIMARY)
}

fn instance() -> wgpu::Instance {
    let mut descriptor = wgpu::InstanceDescriptor::from_env_or_default();
    descriptor.backends = backends();
    wgpu::Instance::new(&descriptor)
}

/// Every adapter the instance sees.
pub fn list_adapters() -> Vec<AdapterSummary> {
    instance()
        .enumerate_adapters(backends())
        .iter()
        .map(summary)
        .collect()
}

/// A device, its queue and the pipelines compiled on it. Cloning shares them (sessions hold
/// a clone, so that a session can outlive the variable it was made from).
#[derive(Clone)]
pub struct GpuContext {
    inner: Arc<ContextInner>,
}

impl std::ops::Deref for GpuContext {
    type Target = ContextInner;

    fn deref(&self) -> &ContextInner {
        &self.inner
    }
}

/// What a [`GpuContext`] shares among its clones.
pub struct ContextInner {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    adapter: AdapterSummary,
    pub(crate) limits: wgpu::Limits,
    max_chunk_items: Option<usize>,
    /// [`GpuOptions::kernel_budget`].
    kernel_budget: Option<Budget>,
    /// Workgroups per dispatch dimension.
    pub(crate) workgroups_per_dimension: u32,
    /// Whether the device times kernels with timestamp queries.
    timestamps: bool,
    /// The one binding layout every kernel uses (see `wgsl`).
    layout: wgpu::BindGroupLayout,
    pipeline_layout: wgpu::PipelineLayout,
    pipelines: Mutex<HashMap<String, Arc<wgpu::ComputePipeline>>>,
    lost: Arc<Mutex<Option<String>>>,
    lost_flag: Arc<AtomicBool>,
}

impl GpuContext {
    /// Chooses an adapter and requests a device with the best limits it offers.
    pub fn new(options: &GpuOptions) -> Result<GpuContext, GpuError> {
        let adapters = instance().enumerate_adapters(backends());
        if adapters.is_empty() {
            let why = match std::env::var("WGPU_BACKEND") {
                Ok(b) => format!(" for WGPU_BACKEND={b}"),
                Err(_) => String::new(),
            };
            return Err(GpuError::NoAdapter(why));
        }
        let wanted = options
            .adapter
            .clone()
            .or_else(|| std::env::var("WGPU_ADAPTER_NAME").ok())
            .map(|w| w.to_lowercase());
        let adapter = match (options.adapter_index, &wanted) {
            (Some(index), _) => {
                let count = adapters.len();
                adapters
                    .into_iter()
                    .nth(index)
                    .ok_or(GpuError::NoAdapterAtIndex { index, count })?
            }
            (None, Some(w)) => {
                let names: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
                adapters
                    .into_iter()
                    .find(|a| a.get_info().name.to_lowercase().contains(w.as_str()))
                    .ok_or_else(|| GpuError::NoMatchingAdapter {
                        wanted: w.clone(),
                        available: names.join(", "),
                    })?
            }
            (None, None) => {
                let low_power =
                    wgpu::PowerPreference::from_env() == Some(wgpu::PowerPreference::LowPower);
                let rank = |a: &wgpu::Adapter| match (a.get_info().device_type, low_power) {
                    (wgpu::DeviceType::DiscreteGpu, false)
                    | (wgpu::DeviceType::IntegratedGpu, true) => 0,
                    (wgpu::DeviceType::IntegratedGpu, false)
                    | (wgpu::DeviceType::DiscreteGpu, true) => 1,
                    (wgpu::DeviceType::VirtualGpu, _) => 2,
                    (wgpu::DeviceType::Other, _) => 3,
                    (wgpu::DeviceType::Cpu, _) => 4,
                };
                adapters
                    .into_iter()
                    .min_by_key(rank)
                    .ok_or(GpuError::NoAdapter(String::new()))?
            }
        };
        let info = summary(&adapter);
        let limits = adapter.limits();
        let timestamps = adapter.features().contains(wgpu::Features::TIMESTAMP_QUERY);
        let workgroups_per_dimension = options
            .max_workgroups_per_dimension
            .unwrap_or(u32::MAX)
            .min(limits.max_compute_workgroups_per_dimension)
            .max(1);
        let features = if timestamps {
            wgpu::Features::TIMESTAMP_QUERY
        } else {
            wgpu::Features::empty()
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("matgrad"),
            required_features: features,
            required_limits: limits.clone(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| GpuError::RequestDevice {
            adapter: info.name.clone(),
            why: e.to_string(),
        })?;
        // One entry per binding of the kernels' table (`wgsl::Binding`).
        let entries: Vec<wgpu::BindGroupLayoutEntry> = Binding::ALL
            .iter()
            .map(|b| wgpu::BindGroupLayoutEntry {
                binding: b.index(),
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: match b.access() {
                        Access::Read => wgpu::BufferBindingType::Storage { read_only: true },
                        Access::ReadWrite => wgpu::BufferBindingType::Storage { read_only: false },
                        Access::Uniform => wgpu::BufferBindingType::Uniform,
                    },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            })
            .collect();
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("matgrad bindings"),
            entries: &entries,
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("matgrad"),
            bind_group_layouts: &[&layout],
            push_constant_ranges: &[],
        });
        let lost = Arc::new(Mutex::new(None));
        let lost_flag = Arc::new(AtomicBool::new(false));
        {
            let (lost, flag) = (lost.clone(), lost_flag.clone());
            device.set_device_lost_callback(move |reason, message| {
                if let Ok(mut slot) = lost.lock() {
                    *slot = Some(format!("{reason:?}: {message}"));
                }
                flag.store(true, Ordering::SeqCst);
            });
        }
        let inner = ContextInner {
            device,
            queue,
            adapter: info,
            limits,
            max_chunk_items: options.max_chunk_items,
            kernel_budget: options.kernel_budget,
            workgroups_per_dimension,
            timestamps,
            layout,
            pipeline_layout,
            pipelines: Mutex::new(HashMap::new()),
            lost,
            lost_flag,
        };
        Ok(GpuContext {
            inner: Arc::new(inner),
        })
    }

    /// Whether the adapter is Mesa's llvmpipe, which caps loops (see [`SOFTWARE_LOOP_LIMIT`]).
    pub fn caps_loops(&self) -> bool {
        let name = self.adapter.name.to_lowercase();
        name.contains("llvmpipe") || self.adapter.driver.to_lowercase().contains("llvmpipe")
    }

    pub fn adapter(&self) -> &AdapterSummary {
        &self.adapter
    }

    /// What this device's kernels may hold in private arrays and unrolled code: the options'
    /// budget if they set one, else the software budget on a CPU adapter (llvmpipe's compile
    /// time grows steeply with both), else the hardware one.
    pub fn kernel_budget(&self) -> Budget {
        if let Some(budget) = self.kernel_budget {
            budget
        } else if self.adapter.device_type == format!("{:?}", wgpu::DeviceType::Cpu) {
            Budget::SOFTWARE
        } else {
            Budget::HARDWARE
        }
    }

    pub(crate) fn check_lost(&self, during: &str) -> Result<(), GpuError> {
        if self.lost_flag.load(Ordering::SeqCst) {
            let why = self
                .lost
                .lock()
                .ok()
                .and_then(|s| s.clone())
                .unwrap_or_default();
            return Err(GpuError::Lost {
                during: during.into(),
                why,
            });
        }
        Ok(())
    }

    /// Runs `f` inside validation and out-of-memory error scopes.
    pub(crate) fn scoped<T>(&self, during: &str, f: impl FnOnce() -> T) -> Result<T, GpuError> {
        self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let value = f();
        let validation = pollster::block_on(self.device.pop_error_scope());
        let memory = pollster::block_on(self.device.pop_error_scope());
        if let Some(e) = validation.or(memory) {
            return Err(GpuError::Device {
                during: during.into(),
                why: e.to_string(),
            });
        }
        self.check_lost(during)?;
        Ok(value)
    }

    fn pipeline(&self, source: &str) -> Result<Arc<wgpu::ComputePipeline>, GpuError> {
        if let Some(p) = self
            .pipelines
            .lock()
            .ok()
            .and_then(|m| m.get(source).cloned())
        {
            return Ok(p);
        }
        let pipeline = Arc::new(self.compile(source, "main", Some(&self.pipeline_layout))?);
        if let Ok(mut m) = self.pipelines.lock() {
            m.insert(source.to_string(), pipeline.clone());
        }
        Ok(pipeline)
    }

    /// The pipeline of `entry` in `source` with the layout its bindings imply, compiled once
    /// per context (kernels written by hand, such as the batch optimizer's).
    pub(crate) fn entry_pipeline(
        &self,
        source: &str,
        entry: &str,
    ) -> Result<Arc<wgpu::ComputePipeline>, GpuError> {
        let key = format!("{entry}\0{source}");
        if let Some(p) = self
            .pipelines
            .lock()
            .ok()
            .and_then(|m| m.get(&key).cloned())
        {
            return Ok(p);
        }
        let pipeline = Arc::new(with_stack(|| self.compile(source, entry, None))?);
        if let Ok(mut m) = self.pipelines.lock() {
            m.insert(key, pipeline.clone());
        }
        Ok(pipeline)
    }

    /// Compiles a module's entry point `entry` into a pipeline with `layout` (or the layout
    /// the entry's bindings imply), reporting validation and memory errors.
    pub(crate) fn compile(
        &self,
        source: &str,
        entry: &str,
        layout: Option<&wgpu::PipelineLayout>,
    ) -> Result<wgpu::ComputePipeline, GpuError> {
        self.scoped("compiling a kernel", || {
            let module = self
                .device
                .create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some("matgrad kernel"),
                    source: wgpu::ShaderSource::Wgsl(source.into()),
                });
            self.device
                .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some("matgrad kernel"),
                    layout,
                    module: &module,
                    entry_point: Some(entry),
                    compilation_options: wgpu::PipelineCompilationOptions::default(),
                    cache: None,
                })
        })
    }

    /// A pair of timestamp queries for one submission, where the device has them.
    fn timestamp_queries(&self) -> Option<TimestampQueries> {
        self.timestamps.then(|| TimestampQueries {
            set: self.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("matgrad timing"),
                ty: wgpu::QueryType::Timestamp,
                count: 2,
            }),
            resolve: self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("matgrad timing resolve"),
                size: 16,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            }),
            read: self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("matgrad timing readback"),
                size: 16,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
        })
    }

    /// Prepares `plan` with its shared inputs resident: the kernel compiled, the hoisted
    /// values uploaded. `inputs` are all the plan's inputs (the batched ones are not read).
    pub fn session<I: AsRef<[f32]>>(
        &self,
        plan: &Plan,
        inputs: &[I],
    ) -> Result<GpuSession, GpuError> {
        let kernel = generate_within(plan, self.kernel_budget())?;
        let needs = (kernel.stages.iter().map(|s| s.loop_iterations))
            .max()
            .unwrap_or(0);
        if self.caps_loops() && needs > SOFTWARE_LOOP_LIMIT {
            return Err(GpuError::LoopLimit {
                adapter: self.adapter.name.clone(),
                needs,
            });
        }
        let pipelines = kernel
            .stages
            .iter()
            .map(|stage| with_stack(|| self.pipeline(&stage.source)))
            .collect::<Result<Vec<_>, _>>()?;
        let hoisted = hoisted_values(plan, inputs);
        let mut shared_data = vec![0f32; kernel.shared_len];
        for (i, offset) in kernel.shared_offsets.iter().enumerate() {
            if let Some(o) = offset {
                shared_data[*o..*o + hoisted[i].len()].copy_from_slice(&hoisted[i]);
            }
        }
        let shared = self.scoped("uploading shared inputs", || {
            self.device
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("matgrad hoisted"),
                    contents: bytemuck::cast_slice(&shared_data),
                    usage: wgpu::BufferUsages::STORAGE,
                })
        })?;
        let shared_outputs = plan
            .outputs()
            .iter()
            .map(|&o| (!plan.steps()[o].batched).then(|| hoisted[o].to_vec()))
            .collect();
        Ok(GpuSession {
            ctx: self.clone(),
            plan: plan.clone(),
            kernel,
            pipelines,
            shared,
            shared_outputs,
            buffers: Mutex::new(Vec::new()),
        })
    }

    /// Items per chunk: what fits one binding of the inputs and of the outputs, one 2-D
    /// dispatch, and about [`PIPELINE_CHUNK_BYTES`] of transfers.
    fn chunk_items(&self, kernel: &Kernel, batch: usize) -> usize {
        let binding =
            (self.limits.max_storage_buffer_binding_size as u64).min(self.limits.max_buffer_size);
        let per_item = 4 * kernel
            .batched_len()
            .max(kernel.out_len())
            .max(kernel.scratch_len)
            .max(1) as u64;
        let per_dim = self.workgroups_per_dimension as u64;
        let by_dispatch = per_dim * per_dim * kernel.workgroup_size() as u64;
        let by_gemm = kernel.max_gemm_items(per_dim as usize) as u64;
        let transfers = 4 * (kernel.batched_len() + kernel.out_len()).max(1) as u64;
        let by_pipeline = (PIPELINE_CHUNK_BYTES / transfers).max(1);
        let mut items = (binding / per_item)
            .min(by_dispatch)
            .min(by_gemm)
            .min(by_pipeline)
            .max(1) as usize;
        if let Some(m) = self.max_chunk_items {
            items = items.min(m.max(1));
        }
        items.min(batch.max(1))
    }
}

/// A batch whose inputs and outputs take more bytes than this runs in chunks of about this
/// size, so that the host lays out one chunk's inputs and reads another's outputs back while
/// the device computes (a large batch in one chunk would serialize the three). Large enough
/// that a chunk fills the device (131 072 items of 8×8 in and out).
const PIPELINE_CHUNK_BYTES: u64 = 64 << 20;

/// A plan ready to run repeatedly: the pipeline and the shared inputs stay on the device;
/// each [`GpuSession::run`] streams only the batched inputs.
pub struct GpuSession {
    ctx: GpuContext,
    plan: Plan,
    kernel: Kernel,
    /// One per stage of the kernel.
    pipelines: Vec<Arc<wgpu::ComputePipeline>>,
    shared: wgpu::Buffer,
    /// The value of each plan output that reads no batched input.
    shared_outputs: Vec<Option<Vec<f32>>>,
    /// The chunks' buffers, made by the first run and kept while chunks fit them.
    buffers: Mutex<Vec<ChunkBuffers>>,
}

impl GpuSession {
    /// Runs the batch; `inputs` are all the plan's inputs (the shared ones are not read).
    pub fn run<I: AsRef<[f32]>>(
        &self,
        inputs: &[I],
        batch: usize,
    ) -> Result<Vec<Batch<f32>>, GpuError> {
        self.run_timed(inputs, batch).map(|(outputs, _)| outputs)
    }

    /// Runs the batch and times it: the kernels by timestamp queries where the adapter has
    /// them, else by the host around each submission (which then includes the transfers).
    pub fn run_timed<I: AsRef<[f32]>>(
        &self,
        inputs: &[I],
        batch: usize,
    ) -> Result<(Vec<Batch<f32>>, GpuTiming), GpuError> {
        let inputs: Vec<&[f32]> = inputs.iter().map(AsRef::as_ref).collect();
        let started = std::time::Instant::now();
        let mut kernel_seconds = 0.0;
        let plan = &self.plan;
        let steps = plan.steps();
        let out_len = self.kernel.out_len();
        let mut batched_results: Vec<Vec<f32>> = self
            .kernel
            .batched_outputs
            .iter()
            .map(|&(_, len)| vec![0.0; batch * len])
            .collect();
        if plan.is_batched() && out_len > 0 {
            let chunk = self.ctx.chunk_items(&self.kernel, batch);
            kernel_seconds =
                with_stack(|| self.run_chunks(&inputs, batch, chunk, &mut batched_results))?;
        }
        let mut outputs = Vec::new();
        for (position, &o) in plan.outputs().iter().enumerate() {
            let step = &steps[o];
            let data = match self
                .kernel
                .batched_outputs
                .iter()
                .position(|&(p, _)| p == position)
            {
                Some(k) => std::mem::take(&mut batched_results[k]),
                None => {
                    let value = self.shared_outputs[position].clone().unwrap_or_default();
                    if plan.is_batched() {
                        value.repeat(batch)
                    } else {
                        value
                    }
                }
            };
            outputs.push(Batch {
                batch: plan.is_batched().then_some(batch),
                rows: step.rows,
                cols: step.cols,
                data,
            });
        }
        let timing = GpuTiming {
            kernel_seconds,
            end_to_end_seconds: started.elapsed().as_secs_f64(),
            timestamps: self.ctx.timestamps,
        };
        Ok((outputs, timing))
    }

    /// Each stage's parameter block and workgroup counts for `count` items.
    fn stage_dispatches(&self, count: usize) -> Vec<([u32; 16], [u32; 3])> {
        let per_dim = self.ctx.workgroups_per_dimension as u64;
        (self.kernel.stages.iter())
            .map(|stage| match stage.kind {
                StageKind::PerItem { workgroup_size } => {
                    let workgroup = workgroup_size as u64;
                    let groups = (count as u64).div_ceil(workgroup);
                    let groups_x = groups.min(per_dim);
                    let groups_y = groups.div_ceil(groups_x);
                    let mut params = [0u32; 16];
                    params[0] = count as u32;
                    params[1] = (groups_x * workgroup) as u32;
                    (params, [groups_x as u32, groups_y as u32, 1])
                }
                StageKind::Gemm(g) => g.params(count),
            })
            .collect()
    }

    /// Records the plan's dispatches over `count` items in `set` (whose parameter blocks
    /// already hold [`Self::stage_dispatches`]), one compute pass per stage: wgpu orders the
    /// passes' storage accesses. The timestamps, where there are any, bracket them all.
    fn encode_stages(&self, encoder: &mut wgpu::CommandEncoder, set: &ChunkBuffers, count: usize) {
        let last = self.kernel.stages.len().saturating_sub(1);
        for (k, (_, groups)) in self.stage_dispatches(count).iter().enumerate() {
            let timestamp_writes = set
                .queries
                .as_ref()
                .and_then(|q| q.writes(k == 0, k == last));
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("matgrad"),
                timestamp_writes,
            });
            pass.set_pipeline(&self.pipelines[k]);
            pass.set_bind_group(0, &set.bind_groups[k], &[]);
            pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        }
    }

    /// Runs the chunks of `batch` items, `chunk` at a time, into `results` (item-major, one
    /// vector per batched output); returns the kernels' seconds. Two sets of buffers take
    /// turns: while the device runs one chunk, the host lays out the next chunk's inputs and
    /// submits them, then reads the first chunk's outputs back.
    fn run_chunks(
        &self,
        inputs: &[&[f32]],
        batch: usize,
        chunk: usize,
        results: &mut [Vec<f32>],
    ) -> Result<f64, GpuError> {
        let mut sets = self.buffers.lock().unwrap_or_else(|p| p.into_inner());
        let wanted = if chunk < batch { 2 } else { 1 };
        if sets.len() < wanted || sets.iter().any(|b| b.capacity < chunk) {
            *sets = (0..wanted)
                .map(|_| ChunkBuffers::new(self, chunk, true))
                .collect::<Result<_, _>>()?;
        }
        let mut pipeline = || -> Result<f64, GpuError> {
            let (mut seconds, mut first, mut turn) = (0.0, 0, 0);
            let mut in_flight: Option<InFlight> = None;
            while first < batch {
                // A set is reused only once its chunk is read back (with one set, at once).
                if let Some(done) = in_flight.take_if(|f| f.set == turn) {
                    seconds += self.finish_chunk(&sets[done.set], &done, results)?;
                }
                let count = chunk.min(batch - first);
                let submitted = self.submit_chunk(&mut sets[turn], turn, inputs, first, count)?;
                // The previous chunk is read back while the device runs this one.
                if let Some(done) = in_flight.replace(submitted) {
                    seconds += self.finish_chunk(&sets[done.set], &done, results)?;
                }
                first += count;
                turn = (turn + 1) % sets.len();
            }
            if let Some(done) = in_flight.take() {
                seconds += self.finish_chunk(&sets[done.set], &done, results)?;
            }
            Ok(seconds)
        };
        let seconds = pipeline();
        if seconds.is_err() {
            // A chunk left in flight may hold its buffers mapped: the next run makes new ones.
            sets.clear();
        }
        seconds
    }

    /// Lays out the items `first..first+count` in lanes, uploads them into `set` and submits
    /// the chunk's dispatches and the copy of its outputs to the read-back buffer.
    fn submit_chunk(
        &self,
        set: &mut ChunkBuffers,
        index: usize,
        inputs: &[&[f32]],
        first: usize,
        count: usize,
    ) -> Result<InFlight, GpuError> {
        let ctx = &self.ctx;
        let mut base = 0;
        for &(k, len) in &self.kernel.batched_inputs {
            let items = &inputs[k][first * len..(first + count) * len];
            items_to_lanes(items, count, len, &mut set.lanes[base..base + count * len]);
            base += count * len;
        }
        let out_bytes = (4 * count * self.kernel.out_len()).max(4) as u64;
        let submitted_at = std::time::Instant::now();
        let submission = ctx.scoped("running a chunk", || {
            if base > 0 {
                ctx.queue
                    .write_buffer(&set.input, 0, bytemuck::cast_slice(&set.lanes[..base]));
            }
            let mut encoder = ctx
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("matgrad"),
                });
            for (k, (params, _)) in self.stage_dispatches(count).iter().enumerate() {
                ctx.queue
                    .write_buffer(&set.uniforms[k], 0, bytemuck::cast_slice(params));
            }
            self.encode_stages(&mut encoder, set, count);
            encoder.copy_buffer_to_buffer(&set.output, 0, &set.readback, 0, out_bytes);
            if let Some(q) = &set.queries {
                q.resolve(&mut encoder);
            }
            ctx.queue.submit(Some(encoder.finish()))
        })?;
        let (sender, mapped) = mpsc::channel();
        set.readback
            .slice(..out_bytes)
            .map_async(wgpu::MapMode::Read, move |result| {
                let _ = sender.send(result);
            });
        Ok(InFlight {
            set: index,
            first,
            count,
            submission,
            mapped,
            submitted_at,
        })
    }

    /// Waits for a submitted chunk, copies its outputs (transposed back to item-major) into
    /// `results` and returns the kernels' seconds.
    fn finish_chunk(
        &self,
        set: &ChunkBuffers,
        chunk: &InFlight,
        results: &mut [Vec<f32>],
    ) -> Result<f64, GpuError> {
        let ctx = &self.ctx;
        ctx.device
            .poll(wgpu::PollType::WaitForSubmissionIndex(
                chunk.submission.clone(),
            ))
            .map_err(|e| GpuError::Device {
                during: "waiting for a chunk".into(),
                why: e.to_string(),
            })?;
        ctx.check_lost("reading results back")?;
        let reading = |why: String| GpuError::Device {
            during: "reading results back".into(),
            why,
        };
        match chunk.mapped.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(reading(e.to_string())),
            Err(_) => return Err(reading("the map callback never ran".into())),
        }
        let host_seconds = chunk.submitted_at.elapsed().as_secs_f64();
        let (first, count) = (chunk.first, chunk.count);
        let out_bytes = (4 * count * self.kernel.out_len()).max(4) as u64;
        {
            let view = set.readback.slice(..out_bytes).get_mapped_range();
            let data: &[f32] = bytemuck::cast_slice(&view);
            // The chunk's outputs come back in lanes, output after output.
            let mut base = 0;
            for (k, &(_, len)) in self.kernel.batched_outputs.iter().enumerate() {
                let target = &mut results[k][first * len..(first + count) * len];
                lanes_to_items(&data[base..base + count * len], len, count, target);
                base += count * len;
            }
        }
        set.readback.unmap();
        Ok(set
            .queries
            .as_ref()
            .and_then(|q| read_timestamps(ctx, &q.read, chunk.submission.clone()))
            .unwrap_or(host_seconds))
    }
}

/// A plan's buffers for up to `capacity` items kept on the device between runs (batch
/// optimization): the caller's own kernels read the outputs and write the inputs in place,
/// so nothing crosses to the host per run. Layouts as in [`crate::wgsl`] (lanes of `count`).
pub(crate) struct ResidentPlan {
    set: ChunkBuffers,
    /// The item count the parameter blocks hold (they are written only when it changes).
    written_for: Option<usize>,
}

impl ResidentPlan {
    /// The batched inputs, in lanes, in the order of [`Kernel::batched_inputs`].
    pub(crate) fn input(&self) -> &wgpu::Buffer {
        &self.set.input
    }

    /// The batched outputs, in lanes, in the order of [`Kernel::batched_outputs`].
    pub(crate) fn output(&self) -> &wgpu::Buffer {
        &self.set.output
    }

    /// The plan's dispatches (one parameter block each).
    pub(crate) fn stages(&self) -> usize {
        self.set.uniforms.len()
    }
}

impl GpuSession {
    pub(crate) fn kernel(&self) -> &Kernel {
        &self.kernel
    }

    pub(crate) fn context(&self) -> &GpuContext {
        &self.ctx
    }

    /// The value of plan output `position` when it reads no batched input.
    pub(crate) fn shared_output(&self, position: usize) -> Option<&[f32]> {
        self.shared_outputs.get(position)?.as_deref()
    }

    /// The most items one [`ResidentPlan`] may hold when each item also takes
    /// `extra_floats` in some other buffer of the caller's: what fits one binding (of the
    /// plan's buffers and of that one) and one dispatch.
    pub(crate) fn resident_capacity(&self, extra_floats: usize) -> usize {
        let ctx = &self.ctx;
        let kernel = &self.kernel;
        let binding =
            (ctx.limits.max_storage_buffer_binding_size as u64).min(ctx.limits.max_buffer_size);
        let per_item = 4
            * (kernel.batched_len())
                .max(kernel.out_len())
                .max(kernel.scratch_len)
                .max(extra_floats)
                .max(1) as u64;
        let per_dim = ctx.workgroups_per_dimension as u64;
        let by_dispatch = per_dim * per_dim * kernel.workgroup_size() as u64;
        let by_gemm = kernel.max_gemm_items(per_dim as usize) as u64;
        let mut items = (binding / per_item).min(by_dispatch).min(by_gemm).max(1) as usize;
        if let Some(m) = ctx.max_chunk_items {
            items = items.min(m.max(1));
        }
        items
    }

    /// The plan's device buffers for up to `capacity` items.
    pub(crate) fn resident(&self, capacity: usize) -> Result<ResidentPlan, GpuError> {
        Ok(ResidentPlan {
            set: ChunkBuffers::new(self, capacity, false)?,
            written_for: None,
        })
    }

    /// Records the plan's dispatches over the first `count` items of `plan` (lanes of
    /// `count`), writing the parameter blocks first when `count` changed.
    pub(crate) fn encode_resident(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        plan: &mut ResidentPlan,
        count: usize,
    ) {
        if plan.written_for != Some(count) {
            for (k, (params, _)) in self.stage_dispatches(count).iter().enumerate() {
                (self.ctx.queue).write_buffer(
                    &plan.set.uniforms[k],
                    0,
                    bytemuck::cast_slice(params),
                );
            }
            plan.written_for = Some(count);
        }
        self.encode_stages(encoder, &plan.set, count);
    }
}

/// The device buffers of chunks of up to `capacity` items and the bindings of every stage
/// to them, made once per session and reused by every chunk and run.
struct ChunkBuffers {
    capacity: usize,
    /// The chunk's batched inputs in lanes on the host, before the upload.
    lanes: Vec<f32>,
    input: wgpu::Buffer,
    output: wgpu::Buffer,
    readback: wgpu::Buffer,
    /// One parameter block per stage.
    uniforms: Vec<wgpu::Buffer>,
    bind_groups: Vec<wgpu::BindGroup>,
    queries: Option<TimestampQueries>,
}

impl ChunkBuffers {
    /// `read_back`: whether the outputs are read back (else the read-back buffer and the
    /// host's lanes are left out: a resident plan's outputs stay on the device).
    fn new(
        session: &GpuSession,
        capacity: usize,
        read_back: bool,
    ) -> Result<ChunkBuffers, GpuError> {
        let ctx = &session.ctx;
        let kernel = &session.kernel;
        let bytes = |floats: usize| (4 * capacity * floats).max(4) as u64;
        ctx.scoped("allocating chunk buffers", || {
            let device = &ctx.device;
            let buffer = |label: &str, size: u64, usage: wgpu::BufferUsages| {
                device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(label),
                    size,
                    usage,
                    mapped_at_creation: false,
                })
            };
            use wgpu::BufferUsages as U;
            let input = buffer(
                "matgrad batched inputs",
                bytes(kernel.batched_len()),
                U::STORAGE | U::COPY_DST | U::COPY_SRC,
            );
            let output = buffer(
                "matgrad outputs",
                bytes(kernel.out_len()),
                U::STORAGE | U::COPY_SRC,
            );
            let readback = buffer(
                "matgrad readback",
                if read_back {
                    bytes(kernel.out_len())
                } else {
                    4
                },
                U::MAP_READ | U::COPY_DST,
            );
            let scratch = buffer("matgrad scratch", bytes(kernel.scratch_len), U::STORAGE);
            let uniforms: Vec<wgpu::Buffer> = kernel
                .stages
                .iter()
                .map(|_| buffer("matgrad params", 64, U::UNIFORM | U::COPY_DST))
                .collect();
            let bind_groups = uniforms
                .iter()
                .map(|uniform| {
                    let entries: Vec<wgpu::BindGroupEntry> = Binding::ALL
                        .iter()
                        .map(|b| wgpu::BindGroupEntry {
                            binding: b.index(),
                            resource: match b {
                                Binding::Hoisted => &session.shared,
                                Binding::Batched => &input,
                                Binding::Out => &output,
                                Binding::Params => uniform,
                                Binding::Scratch => &scratch,
                            }
                            .as_entire_binding(),
                        })
                        .collect();
                    device.create_bind_group(&wgpu::BindGroupDescriptor {
                        label: Some("matgrad bindings"),
                        layout: &ctx.layout,
                        entries: &entries,
                    })
                })
                .collect();
            ChunkBuffers {
                capacity,
                lanes: if read_back {
                    vec![0.0; capacity * kernel.batched_len()]
                } else {
                    Vec::new()
                },
                input,
                output,
                readback,
                uniforms,
                bind_groups,
                queries: ctx.timestamp_queries(),
            }
        })
    }
}

/// A submitted chunk: which buffers it runs in, its items, and the read-back's mapping.
struct InFlight {
    set: usize,
    first: usize,
    count: usize,
    submission: wgpu::SubmissionIndex,
    mapped: mpsc::Receiver<Result<(), wgpu::BufferAsyncError>>,
    submitted_at: std::time::Instant,
}

/// Two timestamps (the start of the first pass, the end of the last) and the buffers they
/// are resolved into and read back from ([`read_timestamps`]).
struct TimestampQueries {
    set: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    read: wgpu::Buffer,
}

impl TimestampQueries {
    /// What a pass writes: the first timestamp if it begins the timed span, the second if it
    /// ends it, nothing for a pass in the middle (wgpu refuses a write with neither).
    fn writes(&self, begins: bool, ends: bool) -> Option<wgpu::ComputePassTimestampWrites<'_>> {
        (begins || ends).then(|| wgpu::ComputePassTimestampWrites {
            query_set: &self.set,
            beginning_of_pass_write_index: begins.then_some(0),
            end_of_pass_write_index: ends.then_some(1),
        })
    }

    /// Resolves both timestamps and copies them where the host can map them.
    fn resolve(&self, encoder: &mut wgpu::CommandEncoder) {
        encoder.resolve_query_set(&self.set, 0..2, &self.resolve, 0);
        encoder.copy_buffer_to_buffer(&self.resolve, 0, &self.read, 0, 16);
    }
}

/// How long a run took.
#[derive(Clone, Copy, Debug)]
pub struct GpuTiming {
    /// The kernels alone (timestamp queries) or each submission seen from the host.
    pub kernel_seconds: f64,
    /// Upload, kernels and read-back.
    pub end_to_end_seconds: f64,
    /// Whether `kernel_seconds` comes from timestamp queries.
    pub timestamps: bool,
}

/// The seconds between the two timestamps written into `read` by `submission`.
fn read_timestamps(
    ctx: &GpuContext,
    read: &wgpu::Buffer,
    submission: wgpu::SubmissionIndex,
) -> Option<f64> {
    let (sender, receiver) = mpsc::channel();
    read.slice(..).map_async(wgpu::MapMode::Read, move |r| {
        let _ = sender.send(r);
    });
    ctx.device
        .poll(wgpu::PollType::WaitForSubmissionIndex(submission))
        .ok()?;
    receiver.recv().ok()?.ok()?;
    let ticks = {
        let view = read.slice(..).get_mapped_range();
        let t: &[u64] = bytemuck::cast_slice(&view);
        t[1].saturating_sub(t[0])
    };
    read.unmap();
    Some(ticks as f64 * ctx.queue.get_timestamp_period() as f64 * 1e-9)
}

/// Runs `plan` once on the GPU.
pub fn run_gpu<I: AsRef<[f32]>>(
    ctx: &GpuContext,
    plan: &Plan,
    inputs: &[I],
    batch: usize,
) -> Result<Vec<Batch<f32>>, GpuError> {
    ctx.session(plan, inputs)?.run(inputs, batch)
}
