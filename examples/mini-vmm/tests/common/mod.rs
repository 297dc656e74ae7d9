//! What the real-KVM tests share: the visible skip without /dev/kvm, and
//! running the built `mini-vmm` binary.

use std::ffi::OsStr;
use std::process::Command;

/// Whether /dev/kvm can be opened. If not, prints a visible `SKIPPED:` line
/// naming `test` and what is missing (on stdout and stderr, so it shows
/// with or without `--nocapture`).
pub fn kvm_usable(test: &str) -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => {
            let msg = format!("SKIPPED: /dev/kvm cannot be opened ({e}); {test} did not run");
            println!("{msg}");
            eprintln!("{msg}");
            false
        }
    }
}

/// Runs `mini-vmm` with `args`, asserts it succeeded, and returns stdout.
pub fn mini_vmm<I, S>(args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let out = Command::new(env!("CARGO_BIN_EXE_mini-vmm"))
        .args(args)
        .output()
        .expect("spawning mini-vmm");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Exit status 1 is a failed check, 2 an error.
    assert!(
        out.status.success(),
        "mini-vmm failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    stdout
}
