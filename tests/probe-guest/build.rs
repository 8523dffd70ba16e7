//! Link settings for the freestanding `probe` binary only: no C runtime, no
//! libc, a static non-PIE image laid out by `link.ld`.

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR is set by cargo");
    for arg in [
        "-nostartfiles",
        "-nostdlib",
        "-static",
        "-no-pie",
        "-Wl,--build-id=none",
        "-Wl,--no-dynamic-linker",
        "-Wl,-z,max-page-size=4096",
        "-Wl,-z,norelro",
    ] {
        println!("cargo:rustc-link-arg-bin=probe={arg}");
    }
    println!("cargo:rustc-link-arg-bin=probe=-Wl,-T,{dir}/link.ld");
    println!("cargo:rerun-if-changed=link.ld");
    println!("cargo:rerun-if-changed=src/guest/entry.S");
    println!("cargo:rerun-if-changed=build.rs");
}
