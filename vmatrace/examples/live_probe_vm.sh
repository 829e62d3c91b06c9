#!/bin/sh
# Manual real-kernel check: boot a Debian 7.x cloud kernel in QEMU with an initramfs that
# runs the static `live_probe` example twice (fentry/fexit plan, then all-kprobe plan).
#
#   sh vmatrace/examples/live_probe_vm.sh <vmlinuz> [cache dir] [live_probe args, e.g. "--gen 6.19"]
#
# Build the example first (static, so the initramfs needs no libraries):
#   RUSTFLAGS="-C target-feature=+crt-static" \
#     cargo build --example live_probe --target x86_64-unknown-linux-gnu
# The kernel comes from a Debian `linux-binary-unsigned-<ver>-cloud-amd64` package
# (usr/lib/modules/<ver>/vmlinuz); `cargo xtask vm-test` automates all of this.
# `noapic`: under a loaded host, TCG can fail the IO-APIC timer check at boot (panic).
set -eu
kernel=$1
cache=${2:-$HOME/.cache/vmatrace/ebpf-manual}
extra=${3:-}
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=$root/target/x86_64-unknown-linux-gnu/debug/examples/live_probe
busybox=$(command -v busybox)
[ -x "$bin" ] || { echo "build the static example first (see the header)" >&2; exit 1; }
rd=$cache/initramfs
rm -rf "$rd" && mkdir -p "$rd/bin" "$rd/proc" "$rd/sys" "$rd/dev" "$rd/tmp"
cp "$busybox" "$rd/bin/busybox"
cp "$bin" "$rd/live_probe"
cat > "$rd/init" <<INIT
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
mount -t bpf bpf /sys/fs/bpf
echo "=== kallsyms"
grep -E " (__vma_start_write|__vma_start_exclude_readers|__vma_exclude_readers_for_detach|__vma_enter_locked|vma_mark_detached|lock_vma_under_rcu|lock_next_vma|vma_refcount_put|rcuwait_wake_up|vm_area_(alloc|dup|free))\$" /proc/kallsyms
echo "=== live_probe: fentry/fexit plan"
/live_probe --seconds 3 --sample 64 $extra
echo "=== live_probe: kprobe plan"
/live_probe --kprobes --seconds 3 --sample 64 $extra
echo "=== done"
poweroff -f
INIT
chmod +x "$rd/init"
(cd "$rd" && find . | cpio -o -H newc 2>/dev/null | gzip -1) > "$cache/initramfs.gz"
exec qemu-system-x86_64 -accel tcg -cpu max -m 1024 -smp 2 -nographic -no-reboot \
  -kernel "$kernel" -initrd "$cache/initramfs.gz" \
  -append "console=ttyS0 quiet panic=-1 noapic"
