#!/bin/sh
# Capture a probe-plan fixture from a real kernel, as that kernel shows itself when running.
#
#   tests/data/kernels/capture.sh host             # this machine's running kernel
#   tests/data/kernels/capture.sh deb PACKAGE NAME # a Debian kernel package, booted in QEMU
#   tests/data/kernels/capture.sh excerpt NAME     # re-cut NAME from its cached raw dump
#
# e.g. capture.sh deb linux-binary-unsigned-7.2.13+deb14-cloud-amd64 debian-7.2.13-cloud
#
# Debian kernels come from the suites sid, experimental, trixie-backports and trixie next to the
# mirror already configured in /etc/apt/sources.list.d/debian.sources, with a private apt
# state under ~/.cache/vmatrace/plan-fixtures (the host's apt state is not touched). The
# kernel is booted under QEMU TCG with a busybox-static initramfs whose init dumps
# /proc/kallsyms, /sys/kernel/btf/vmlinux, <tracefs>/available_filter_functions, the kprobe
# blacklist and the mmap_lock tracepoint directory as a base64 tar on the second serial
# port. The fixture directory then holds:
#   release                     uname -r
#   btf.zst                     raw /sys/kernel/btf/vmlinux, zstd -19
#   kallsyms                    excerpt of /proc/kallsyms (every line naming a function the
#                               planner looks up, incl. clones and duplicates; addresses kept)
#   available_filter_functions  excerpt, same names (absent when unreadable)
#   kprobe_blacklist            excerpt, same names (absent when not present)
#   tracepoints                 ls of <tracefs>/events/mmap_lock (absent when none)
# Requires: apt-get, dpkg-deb, qemu-system-x86_64, busybox (busybox-static), cpio, gzip, zstd.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
cache=${VMATRACE_FIXTURE_CACHE:-$HOME/.cache/vmatrace/plan-fixtures}

# The names the planner looks up (kernel/planner.rs). Excerpts keep every line that names
# one of these exactly or as a compiler clone (name.isra.N, name.constprop.N, name.part.N, ...).
NAMES='__vma_start_write __vma_start_exclude_readers __vma_end_exclude_readers __vma_enter_locked __vma_exit_locked vma_mark_detached __vma_exclude_readers_for_detach lock_vma_under_rcu lock_next_vma vma_refcount_put rcuwait_wake_up vm_area_alloc vm_area_dup vm_area_free handle_mm_fault vma_complete vms_gather_munmap_vmas tear_down_vmas exit_mmap'

excerpt() { # $1 = input, $2 = field holding the name (awk); prints the kept lines
	awk -v names="$NAMES" -v f="$2" 'BEGIN { n = split(names, a, " "); for (i = 1; i <= n; i++) want[a[i]] = 1 }
		{ s = $f; sub(/\..*$/, "", s); if (s in want) print }' "$1"
}

finish() { # $1 = raw dump dir, $2 = fixture name
	raw=$1 out=$here/$2
	mkdir -p "$out"
	cp "$raw/release" "$out/release"
	zstd -q -19 -f "$raw/btf" -o "$out/btf.zst"
	excerpt "$raw/kallsyms" 3 >"$out/kallsyms"
	if [ -s "$raw/available_filter_functions" ]; then
		excerpt "$raw/available_filter_functions" 1 >"$out/available_filter_functions"
	else
		rm -f "$out/available_filter_functions"
	fi
	if [ -s "$raw/kprobe_blacklist" ]; then
		# The first lines too, so the parser sees the real format even when none of
		# the planner's functions is blacklisted.
		{ head -n 5 "$raw/kprobe_blacklist"; excerpt "$raw/kprobe_blacklist" 2; } >"$out/kprobe_blacklist"
	else
		rm -f "$out/kprobe_blacklist"
	fi
	if [ -s "$raw/tracepoints" ]; then cp "$raw/tracepoints" "$out/tracepoints"; else rm -f "$out/tracepoints"; fi
	echo "fixture written to $out ($(wc -l <"$raw/kallsyms") kallsyms lines, $(wc -l <"$out/kallsyms") kept)"
}

case ${1:-} in
host)
	name=${2:-host-$(uname -r)}
	raw=$cache/raw/$name
	mkdir -p "$raw"
	uname -r >"$raw/release"
	cat /proc/kallsyms >"$raw/kallsyms"
	cat /sys/kernel/btf/vmlinux >"$raw/btf"
	cat /sys/kernel/tracing/available_filter_functions >"$raw/available_filter_functions" 2>/dev/null || : >"$raw/available_filter_functions"
	cat /sys/kernel/debug/kprobes/blacklist >"$raw/kprobe_blacklist" 2>/dev/null || : >"$raw/kprobe_blacklist"
	ls /sys/kernel/tracing/events/mmap_lock >"$raw/tracepoints" 2>/dev/null || : >"$raw/tracepoints"
	finish "$raw" "$name"
	;;
deb)
	pkg=$2 name=$3
	apt=$cache/apt
	mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/etc" "$cache/debs"
	mirror=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources)
	key=/usr/share/keyrings/debian-archive-keyring.gpg
	for s in sid experimental trixie-backports trixie; do echo "deb [signed-by=$key] $mirror $s main"; done >"$apt/etc/sources.list"
	set -- -o Dir::State::Lists="$apt/lists" -o Dir::Etc::sourcelist="$apt/etc/sources.list" \
		-o Dir::Etc::sourceparts=/nonexistent -o Dir::State::status=/dev/null -o Dir::Cache="$apt/cache"
	[ -n "$(ls "$apt/lists" | grep -v partial)" ] || apt-get "$@" update
	(cd "$cache/debs" && ls "${pkg}"_*.deb >/dev/null 2>&1 || apt-get "$@" download "$pkg")
	x=$cache/x/$pkg
	[ -d "$x" ] || dpkg-deb -x "$(ls "$cache/debs/${pkg}"_*.deb | head -1)" "$x"
	vmlinuz=$(find "$x" -name 'vmlinuz*' | head -1)

	# initramfs: busybox-static and an init that dumps what the running kernel shows.
	ird=$cache/initramfs
	rm -rf "$ird" && mkdir -p "$ird/bin"
	cp "$(command -v busybox)" "$ird/bin/busybox"
	cat >"$ird/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /tmp /d
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs dev /dev
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
echo 0 > /proc/sys/kernel/kptr_restrict
uname -r > /d/release
cat /proc/kallsyms > /d/kallsyms
cat /sys/kernel/btf/vmlinux > /d/btf
cat /sys/kernel/tracing/available_filter_functions > /d/available_filter_functions 2>/dev/null
cat /sys/kernel/debug/kprobes/blacklist > /d/kprobe_blacklist 2>/dev/null
ls /sys/kernel/tracing/events/mmap_lock > /d/tracepoints 2>/dev/null
stty -F /dev/ttyS1 raw -echo 2>/dev/null
(cd /d && tar cf - . | base64) > /dev/ttyS1
echo VMATRACE-DUMP-DONE
sync
poweroff -f
EOF
	chmod +x "$ird/init"
	(cd "$ird" && find . | cpio -o -H newc 2>/dev/null | gzip -1) >"$cache/initramfs.gz"

	raw=$cache/raw/$name
	rm -rf "$raw" && mkdir -p "$raw"
	# no_timer_check: on a busy host, TCG is slow enough that the kernel's IO-APIC timer
	# check fails and it panics ("IO-APIC + timer doesn't work").
	timeout 900 qemu-system-x86_64 -accel tcg -cpu max -m 1024 -smp 2 -nographic -no-reboot \
		-kernel "$vmlinuz" -initrd "$cache/initramfs.gz" \
		-append "console=ttyS0 quiet panic=-1 no_timer_check" \
		-serial mon:stdio -serial file:"$raw/dump.b64" >"$raw/console.log" 2>&1 || :
	grep -q VMATRACE-DUMP-DONE "$raw/console.log" || { echo "guest did not finish; see $raw/console.log" >&2; exit 1; }
	tr -d '\r' <"$raw/dump.b64" | base64 -d | tar xf - -C "$raw"
	finish "$raw" "$name"
	;;
excerpt)
	# Re-cut a fixture from its cached raw dump (after changing NAMES), without booting.
	finish "$cache/raw/$2" "$2"
	;;
*)
	echo "usage: $0 host [NAME] | deb PACKAGE NAME | excerpt NAME" >&2
	exit 2
	;;
esac
