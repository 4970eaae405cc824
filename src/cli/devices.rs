//! `matgrad devices`: the GPU adapters with the limits that matter (`--measure` is in
//! [`super::bench`]).

use matgrad::gpu::list_adapters;

/// `matgrad devices` without `--measure`.
pub fn list_devices(json: bool) -> u8 {
    let adapters = list_adapters();
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&adapters).unwrap_or_default()
        );
        return 0;
    }
    if adapters.is_empty() {
        outln!("no GPU adapters; for a software Vulkan adapter install Mesa's lavapipe (apt-get install mesa-vulkan-drivers libvulkan1)");
    }
    for (number, a) in adapters.iter().enumerate() {
        outln!("{number}: {} ({}, {})", a.name, a.backend, a.device_type);
        outln!("    driver: {}", a.driver);
        outln!(
            "    max storage binding {} MiB, max buffer {} MiB, {} workgroups per dimension, {} invocations per workgroup, timestamp queries: {}",
            a.max_storage_buffer_binding_size >> 20,
            a.max_buffer_size >> 20,
            a.max_compute_workgroups_per_dimension,
            a.max_compute_invocations_per_workgroup,
            if a.timestamp_queries { "yes" } else { "no" }
        );
    }
    0
}
