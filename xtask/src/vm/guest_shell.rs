//! Shell snippets the guests' `/init` scripts share (scenario, `run --vm`, the metrics
//! relay).

/// Guest shell that sets `$var` to the device node of the virtio port called `name` when
/// the guest has it (no udev in the guest: the port is found by its name in sysfs); `$var`
/// keeps its value otherwise.
pub fn find_port_sh(var: &str, name: &str) -> String {
    format!(
        "for p in /sys/class/virtio-ports/*; do [ \"$(cat $p/name 2>/dev/null)\" = {name} ] && {var}=/dev/${{p##*/}}; done\n"
    )
}
