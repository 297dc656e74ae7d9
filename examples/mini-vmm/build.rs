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
            // No SSE code generation. KVM's instruction emulator runs every
            // guest instruction with `--execution emulated`, and the boot
            // path before the switch to native execution on PVM hosts; it
            // implements the SSE moves but not, for example, the `xorps`
            // LLVM uses to zero memory (KVM_EXIT_INTERNAL_ERROR). rustc warns
            // that disabling SSE2 on this target is being phased out; the
            // guest has no floating point, and `check_emulator_safe` below
            // catches what this flag no longer prevents.
            "-C",
            "target-feature=-sse,-sse2",
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

/// SSE instructions KVM's instruction emulator implements (moves only),
/// plus the FPU/SSE state save and restore of the interrupt entry.
const EMULATED_SSE: &[&str] = &[
    "movaps",
    "movups",
    "movapd",
    "movupd",
    "movdqa",
    "movdqu",
    "movq",
    "movd",
    "movntps",
    "movntdq",
    "fxsave64",
    "fxrstor64",
];

/// Fails the build if code of this repository in the linked guest uses
/// XMM registers in a way KVM's emulator cannot execute (it would stop an
/// emulated guest with KVM_EXIT_INTERNAL_ERROR). The precompiled `core` is
/// not ours to compile without SSE: its SSE code (number and string
/// formatting) is only reached from the panic path, which reports a fault
/// and halts anyway. Needs `objdump` (binutils, which also provides the
/// linker); without it the check is skipped with a warning.
fn check_emulator_safe(elf: &Path) {
    let out = match Command::new("objdump")
        .args(["-d", "-C", "--no-show-raw-insn"])
        .arg(elf)
        .output()
    {
        Ok(o) if o.status.success() => o,
        _ => {
            println!(
                "cargo:warning=objdump not found: guest image not checked for SSE instructions"
            );
            return;
        }
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut function = "";
    let mut bad = Vec::new();
    for line in text.lines() {
        if let Some(name) = line.strip_suffix(">:").and_then(|l| l.split_once(" <")) {
            function = name.1;
            continue;
        }
        let precompiled = ["core::", "<core::", "compiler_builtins::", "<u64 as core::"]
            .iter()
            .any(|p| function.starts_with(p));
        if precompiled || !line.contains("%xmm") {
            continue;
        }
        let mnemonic = line
            .split('\t')
            .nth(1)
            .and_then(|i| i.split_whitespace().next())
            .unwrap_or("");
        if !EMULATED_SSE.contains(&mnemonic) {
            bad.push(format!("{function}: {line}"));
        }
    }
    assert!(
        bad.is_empty(),
        "the guest uses SSE instructions KVM's instruction emulator cannot run:\n{}",
        bad.join("\n")
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
    let elf = out.join("guest.elf");
    let image = out.join("guest.bin");
    let out_arg = format!("{}", elf.display());
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
            "-o",
            &out_arg,
            guest.join("main.rs").to_str().unwrap(),
        ],
        lint,
    );
    check_emulator_safe(&elf);
    let status = Command::new("objcopy")
        .args(["-O", "binary"])
        .arg(&elf)
        .arg(&image)
        .status()
        .unwrap_or_else(|e| panic!("cannot run objcopy (binutils): {e}"));
    assert!(status.success(), "objcopy of the guest image failed");
    let len = std::fs::metadata(&image).unwrap().len();
    assert!(
        len > 0 && len < 0xf0_0000,
        "unexpected guest image size {len}"
    );
}
