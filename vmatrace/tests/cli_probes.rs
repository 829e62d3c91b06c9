//! `vmatrace probes` end to end: offline on the real-kernel fixtures, and on this machine.

use std::process::Command;

fn fixture(name: &str, file: &str) -> String {
    format!(
        "{}/../tests/data/kernels/{name}/{file}",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn probes(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vmatrace"))
        .arg("probes")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn offline_debian_7_2() {
    let n = "debian-7.2.13-cloud";
    let (code, out, err) = probes(&[
        "--btf",
        &fixture(n, "btf.zst"),
        "--kallsyms",
        &fixture(n, "kallsyms"),
        "--filter-functions",
        &fixture(n, "available_filter_functions"),
        "--blacklist",
        &fixture(n, "kprobe_blacklist"),
        "--release",
        "7.2.13+deb14-cloud-amd64",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("offline plan"), "{out}");
    assert!(
        out.contains("kernel 7.2.13+deb14-cloud-amd64: generation 7.0+"),
        "{out}"
    );
    assert!(
        out.contains("coverage: 13 of 13 logical events observable, 4 via proxy"),
        "{out}"
    );
    // Debian does not set CONFIG_KPROBE_EVENTS_ON_NOTRACE: the notrace vma_refcount_put
    // cannot be kprobed, and the output says why.
    assert!(!out.contains("kprobe      vma_refcount_put"), "{out}");
    assert!(
        out.contains(
            "vma_refcount_put: notrace: out-of-line copy of an inline function; kprobe events \
             refuse notrace functions without CONFIG_KPROBE_EVENTS_ON_NOTRACE"
        ),
        "{out}"
    );
    assert!(out.contains("kernel config unknown"), "{out}");

    // The same kernel with a config that allows kprobes on notrace functions.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::write(
        &config,
        "CONFIG_KPROBES=y\nCONFIG_KPROBE_EVENTS_ON_NOTRACE=y\nCONFIG_DEBUG_INFO_BTF=y\n",
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let (code, out, err) = probes(&[
        "--btf",
        &fixture(n, "btf.zst"),
        "--kallsyms",
        &fixture(n, "kallsyms"),
        "--filter-functions",
        &fixture(n, "available_filter_functions"),
        "--config",
        config,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("kprobe      vma_refcount_put"), "{out}");
    assert!(
        out.contains("KPROBE_EVENTS_ON_NOTRACE=y, KPROBES=y"),
        "{out}"
    );

    // Something that is not a config is a clear error.
    let (code, _, err) = probes(&[
        "--btf",
        &fixture(n, "btf.zst"),
        "--kallsyms",
        &fixture(n, "kallsyms"),
        "--config",
        &fixture(n, "kallsyms"),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("bad kernel config"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn offline_json_is_the_plan() {
    let n = "debian-6.19.14-cloud";
    let (code, out, err) = probes(&[
        "--json",
        "--btf",
        &fixture(n, "btf.zst"),
        "--kallsyms",
        &fixture(n, "kallsyms"),
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["plan"]["generation"], "6.19");
    assert_eq!(v["plan"]["kernel"]["release"], "offline");
    assert!(v["capabilities"].is_null());
    let plan: vmatrace::kernel::plan::ProbePlan =
        serde_json::from_value(v["plan"].clone()).unwrap();
    // No config given: Debian's default, so the notrace __vma_enter_locked is not kprobed.
    assert!(plan.points.iter().all(|p| !p.program.starts_with("vel_")));
    let entry = &v["plan"]["coverage"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["event"] == "start_exclude_entry")
        .unwrap()["status"];
    assert!(
        entry
            .to_string()
            .contains("CONFIG_KPROBE_EVENTS_ON_NOTRACE"),
        "{entry}"
    );
}

#[test]
fn unsupported_and_bad_input_are_clear_errors() {
    let n = "debian-6.12.117-cloud";
    let (code, _, err) = probes(&[
        "--btf",
        &fixture(n, "btf.zst"),
        "--kallsyms",
        &fixture(n, "kallsyms"),
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("unsupported kernel: pre-6.15 per-VMA lock"),
        "{err}"
    );

    // kallsyms passed as BTF.
    let (code, _, err) = probes(&[
        "--btf",
        &fixture(n, "kallsyms"),
        "--kallsyms",
        &fixture(n, "kallsyms"),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("bad BTF: not BTF data (bad magic)"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn running_kernel_explains_what_can_attach() {
    if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        vmatrace::testing::skip(
            "running_kernel_explains_what_can_attach",
            "no /sys/kernel/btf/vmlinux",
        );
        return;
    }
    let (code, out, err) = probes(&[]);
    if code != 0 && err.contains("unsupported kernel") {
        vmatrace::testing::skip("running_kernel_explains_what_can_attach", err.trim());
        return;
    }
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("plan for the running kernel\nkprobes: "),
        "{out}"
    );
    assert!(out.contains("\nfentry/fexit: "), "{out}");
    assert!(out.contains("logical events observable"), "{out}");
    let kprobe_pmu = std::path::Path::new("/sys/bus/event_source/devices/kprobe/type").exists();
    assert_eq!(
        out.contains("kprobes: CANNOT attach here (no kprobe PMU"),
        !kprobe_pmu,
        "{out}"
    );
    // When something cannot attach, the ideal plan for the same kernel follows.
    if !kprobe_pmu {
        assert!(
            out.contains("with kprobes and tracing programs available, this kernel would give: "),
            "{out}"
        );
    }
}

/// A BTF file far over any real one's size: a sparse file, and a zstd bomb (a few KB
/// that inflate to 100 MiB). Both are refused by size, naming the file and the limit,
/// before anything is parsed.
#[test]
fn oversized_inputs_are_refused_by_size() {
    let n = "debian-7.2.13-cloud";
    let dir = tempfile::tempdir().unwrap();
    let sparse = dir.path().join("sparse-btf");
    std::fs::File::create(&sparse)
        .unwrap()
        .set_len(100 << 20)
        .unwrap();
    let bomb = dir.path().join("bomb.zst");
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..100 {
        std::io::Write::write_all(&mut enc, &zeros).unwrap();
    }
    std::fs::write(&bomb, enc.finish().unwrap()).unwrap();
    assert!(std::fs::metadata(&bomb).unwrap().len() < 64 << 10);
    for (btf, inflated) in [(&sparse, ""), (&bomb, " once zstd-inflated")] {
        let btf = btf.to_str().unwrap();
        let (code, _, err) = probes(&["--btf", btf, "--kallsyms", &fixture(n, "kallsyms")]);
        assert_eq!(code, 1, "{err}");
        assert!(
            err.contains(&format!(
                "{btf}: more than 64 MiB{inflated}, the limit for a vmlinux BTF"
            )),
            "{err}"
        );
    }
    // The same for the other inputs, by their own limits.
    let bomb = bomb.to_str().unwrap();
    let (code, _, err) = probes(&[
        "--btf",
        &fixture(n, "btf.zst"),
        "--kallsyms",
        &fixture(n, "kallsyms"),
        "--config",
        bomb,
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("more than 16 MiB once zstd-inflated, the limit for a kernel config"),
        "{err}"
    );
    let (code, _, err) = probes(&[
        "--btf",
        &fixture(n, "btf.zst"),
        "--kallsyms",
        &fixture(n, "kallsyms"),
        "--filter-functions",
        bomb,
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("the limit for an ftrace function list"),
        "{err}"
    );
}

/// `/dev/zero` never ends: the read stops at the limit instead of filling memory.
#[test]
fn dev_zero_as_btf_is_refused_by_size() {
    if !std::path::Path::new("/dev/zero").exists() {
        vmatrace::testing::skip("dev_zero_as_btf_is_refused_by_size", "no /dev/zero");
        return;
    }
    let n = "debian-7.2.13-cloud";
    let (code, _, err) = probes(&["--btf", "/dev/zero", "--kallsyms", &fixture(n, "kallsyms")]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("/dev/zero: more than 64 MiB, the limit for a vmlinux BTF"),
        "{err}"
    );
}

/// `probes --btf B --kallsyms K`: the exit status and stderr.
fn pair(btf: &str, kallsyms: &str, extra: &[&str]) -> (i32, String) {
    let mut args = vec!["--btf", btf, "--kallsyms", kallsyms];
    args.extend_from_slice(extra);
    let (code, _, err) = probes(&args);
    (code, err)
}

/// Inputs that cannot be one kernel's are refused with the reason, instead of a plan
/// that calls every missing function "inlined".
#[test]
fn mismatched_or_empty_planner_inputs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "").unwrap();
    let stray = dir.path().join("stray");
    std::fs::write(&stray, "ffffffff81000000 T do_exit\n").unwrap();
    let b72 = fixture("debian-7.2.13-cloud", "btf.zst");
    let (code, err) = pair(&b72, empty.to_str().unwrap(), &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("the kallsyms dump has no text symbols"),
        "{err}"
    );
    let (code, err) = pair(&b72, stray.to_str().unwrap(), &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("the BTF and the kallsyms dump are from different kernels"),
        "{err}"
    );

    // 7.3.4's BTF with 6.19's symbols, and 6.19's BTF with 7.2's.
    let (code, err) = pair(
        &fixture("debian-7.3.4-cloud", "btf.zst"),
        &fixture("debian-6.19.14-cloud", "kallsyms"),
        &[],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(
            "the BTF and the kallsyms dump are from different kernels: the BTF is a 7.0+ \
             kernel's (struct vma_exclude_readers_state), the kallsyms has none of its \
             __vma_start_exclude_readers, __vma_exclude_readers_for_detach but 6.19's \
             __vma_enter_locked"
        ),
        "{err}"
    );
    for k in ["debian-7.2.13-cloud", "debian-7.3.4-cloud"] {
        let (code, err) = pair(
            &fixture("debian-6.19.14-cloud", "btf.zst"),
            &fixture(k, "kallsyms"),
            &[],
        );
        assert_eq!(code, 1, "{err}");
        assert!(
            err.contains(
                "from different kernels: the BTF is a kernel's from before 7.0 (no struct \
                 vma_exclude_readers_state), the kallsyms has 7.0's __vma_start_exclude_readers"
            ),
            "{err}"
        );
        assert!(!err.contains("cannot resolve field offsets"), "{err}");
    }

    // A 7.x release string with a 6.19 BTF (and its own kallsyms).
    let (code, err) = pair(
        &fixture("debian-6.19.14-cloud", "btf.zst"),
        &fixture("debian-6.19.14-cloud", "kallsyms"),
        &["--release", "7.3.4+deb13-cloud-amd64"],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("the release is 7.3.4+deb13-cloud-amd64 (7.3): they are from different"),
        "{err}"
    );
}

/// Every fixture's own BTF, kallsyms and release go together; a BTF with another
/// fixture's kallsyms is refused whenever the two sit on different sides of 7.0, and
/// any refusal says the files are from different kernels.
#[test]
fn every_fixture_pair_is_consistent_and_cross_era_pairs_are_not() {
    let names = [
        "debian-6.16.12-cloud",
        "debian-6.18.15-cloud",
        "debian-6.19.14-cloud",
        "debian-7.2.13-cloud",
        "debian-7.3.4-cloud",
        "host-6.18",
    ];
    let release = |n: &str| {
        std::fs::read_to_string(fixture(n, "release"))
            .unwrap()
            .trim()
            .to_string()
    };
    for b in names {
        for k in names {
            let r = release(b);
            let (code, err) = pair(
                &fixture(b, "btf.zst"),
                &fixture(k, "kallsyms"),
                &["--release", &r],
            );
            // Within an era a pair may still be told apart (6.18's BTF declares
            // lock_next_vma, which 6.16 does not have): refused, then for that reason.
            let cross = b.contains("-7.") != k.contains("-7.");
            match (b == k, cross) {
                (true, _) => assert_eq!(code, 0, "{b}: {err}"),
                (false, true) => assert_eq!(code, 1, "{b} with {k}: {err}"),
                (false, false) => assert!(code == 0 || code == 1, "{b} with {k}: {err}"),
            }
            if code != 0 {
                assert!(
                    err.contains("from different kernels"),
                    "{b} with {k}: {err}"
                );
            }
        }
    }
}

/// `capture-kernel` saves this kernel's planner inputs; `probes --bundle` plans from them
/// exactly what this machine's own plan would be with every capability (the same hooks,
/// coverage and offsets), with no kernel address in the bundle unless asked, and never
/// into a directory that holds anything.
#[test]
fn a_captured_bundle_plans_like_the_running_kernel() {
    const NAME: &str = "a_captured_bundle_plans_like_the_running_kernel";
    if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        vmatrace::testing::skip(NAME, "no /sys/kernel/btf/vmlinux");
        return;
    }
    let (code, here, err) = probes(&["--json"]);
    if code != 0 && err.contains("unsupported kernel") {
        vmatrace::testing::skip(NAME, err.trim());
        return;
    }
    assert_eq!(code, 0, "{err}");
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = dir.path().join("bundle");
    let capture = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_vmatrace"))
            .args(["capture-kernel", "-o"])
            .arg(&bundle)
            .args(extra)
            .output()
            .expect("runs")
    };
    let out = capture(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let kallsyms = std::fs::read_to_string(bundle.join("kallsyms")).expect("kallsyms");
    assert!(kallsyms.lines().count() > 1000);
    assert!(
        kallsyms.lines().all(|l| l
            .split_whitespace()
            .next()
            .is_some_and(|a| a.bytes().all(|b| b == b'0'))),
        "an address was kept"
    );
    let (code, offline, err) = probes(&["--bundle", bundle.to_str().expect("utf-8"), "--json"]);
    assert_eq!(code, 0, "{err}");
    let here: serde_json::Value = serde_json::from_str(&here).expect("json");
    let offline: serde_json::Value = serde_json::from_str(&offline).expect("json");
    let ideal = if here["with_all_capabilities"].is_null() {
        &here["plan"]
    } else {
        &here["with_all_capabilities"]
    };
    for k in ["kernel", "generation", "offsets", "points", "coverage"] {
        assert_eq!(offline["plan"][k], ideal[k], "{k}");
    }
    assert!(offline["capabilities"].is_null(), "an offline plan");
    // The bundle is not touched again: a second capture is refused (exit 2).
    let before = std::fs::read(bundle.join("bundle.json")).expect("manifest");
    let again = capture(&[]);
    assert_eq!(again.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("is not empty"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(
        std::fs::read(bundle.join("bundle.json")).expect("manifest"),
        before
    );
    // --bundle with a single-file option is a usage error.
    let (code, _, err) = probes(&[
        "--bundle",
        bundle.to_str().expect("utf-8"),
        "--release",
        "x",
    ]);
    assert_eq!(code, 2, "{err}");
}
