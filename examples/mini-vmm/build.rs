//! Builds the freestanding guest program into a flat binary image.
//!
//! Only the host target is installed, so the guest is compiled for
//! `x86_64-unknown-linux-gnu` as `no_std`/`no_main`, statically linked with
//! a linker script at `IMAGE_GPA` and emitted as a flat binary
//! (`--oformat=binary`). The ABI and guest crates of this workspace are
//! compiled from source as rlibs for it, so the guest runs the real
//! `DeadlineSetter`.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Set to lint the guest program with Clippy while building it (`.ci/run`
/// does): it is compiled outside cargo, so `cargo clippy` never sees it.
const LINT_ENV: &str = "MINI_VMM_GUEST_LINT";

/// Lints for the guest program when [`LINT_ENV`] is set.
const GUEST_LINTS: &[&str] = &[
    "-D",
    "warnings",
    "-D",
    "clippy::all",
    "-D",
    "clippy::undocumented_unsafe_blocks",
    "-D",
    "unsafe_op_in_unsafe_fn",
];

/// Runs rustc (or, with `lint`, Clippy's driver, which compiles as rustc
/// does) with the guest's code-generation flags; `out` is the output
/// directory, or `None` when `args` name the output file.
fn rustc(out: Option<&Path>, args: &[&str], lint: bool) {
    let rustc = if lint {
        "clippy-driver".to_string()
    } else {
        env::var("RUSTC").unwrap_or_else(|_| "rustc".into())
    };
    let status = Command::new(&rustc)
        .args([
            "--edition=2021",
            "-C",
            "opt-level=2",
            "-C",
            "debuginfo=0",
            "-C",
            "panic=abort",
            "-C",
            "relocation-model=static",
            "-C",
            "code-model=small",
        ])
        .args(out.map(|dir| format!("--out-dir={}", dir.display())))
        .args(if lint { GUEST_LINTS } else { &[] })
        .args(args)
        // The guest must not pick up flags meant for the VMM build.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .status()
        .unwrap_or_else(|e| panic!("cannot run {rustc}: {e}"));
    assert!(
        status.success(),
        "building the guest failed: {rustc} {args:?}"
    );
}

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let crates = manifest.join("../../crates");
    let guest = manifest.join("guest");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("guest");
    std::fs::create_dir_all(&out).unwrap();

    for dir in [
        guest.clone(),
        crates.join("lazy-tscdeadline-abi/src"),
        crates.join("lazy-tscdeadline-guest/src"),
    ] {
        println!("cargo:rerun-if-changed={}", dir.display());
    }
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed={LINT_ENV}");
    let lint = env::var_os(LINT_ENV).is_some_and(|v| !v.is_empty() && v != "0");

    let abi_rlib = out.join("liblazy_tscdeadline_abi.rlib");
    let guest_rlib = out.join("liblazy_tscdeadline_guest.rlib");
    let extern_abi = format!("lazy_tscdeadline_abi={}", abi_rlib.display());
    let extern_guest = format!("lazy_tscdeadline_guest={}", guest_rlib.display());
    rustc(
        Some(&out),
        &[
            "--crate-type=rlib",
            "--crate-name=lazy_tscdeadline_abi",
            crates
                .join("lazy-tscdeadline-abi/src/lib.rs")
                .to_str()
                .unwrap(),
        ],
        false,
    );
    rustc(
        Some(&out),
        &[
            "--crate-type=rlib",
            "--crate-name=lazy_tscdeadline_guest",
            "--cfg",
            "feature=\"x86_64\"",
            "--extern",
            &extern_abi,
            crates
                .join("lazy-tscdeadline-guest/src/lib.rs")
                .to_str()
                .unwrap(),
        ],
        false,
    );
    let script = format!("link-arg=-Wl,-T,{}", guest.join("link.ld").display());
    let image = out.join("guest.bin");
    let out_arg = format!("{}", image.display());
    rustc(
        None,
        &[
            "--crate-type=bin",
            "--crate-name=mini_vmm_guest",
            "-L",
            out.to_str().unwrap(),
            "--extern",
            &extern_abi,
            "--extern",
            &extern_guest,
            "-C",
            "link-arg=-nostartfiles",
            "-C",
            "link-arg=-nostdlib",
            "-C",
            "link-arg=-static",
            "-C",
            &script,
            "-C",
            "link-arg=-Wl,--build-id=none",
            "-C",
            "link-arg=-Wl,--oformat=binary",
            "-o",
            &out_arg,
            guest.join("main.rs").to_str().unwrap(),
        ],
        lint,
    );
    let len = std::fs::metadata(&image).unwrap().len();
    assert!(
        len > 0 && len < 0xf0_0000,
        "unexpected guest image size {len}"
    );
}
