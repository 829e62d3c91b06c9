fn main() {
    println!("vmatrace: {} byte eBPF object", vmatrace::EBPF_OBJECT.len());
}
