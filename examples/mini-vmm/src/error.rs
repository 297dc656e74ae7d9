//! The mini-VMM's errors.

use std::time::Duration;

use lazy_tscdeadline_kvm::{ExitError, RestoreError, SetupError};

use crate::mode::Mode;

/// Everything that can stop a run (exit status 2), as opposed to a protocol
/// violation, which is a finding (exit status 1).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad command line or workload (the message says what is wrong).
    #[error("{0}")]
    Usage(String),
    /// `/dev/kvm` cannot be opened.
    #[error("cannot open /dev/kvm: {0}")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// `/dev/kvm` lacks a capability the mode needs.
    #[error("/dev/kvm lacks {cap}, needed for {mode} mode")]
    MissingCapability {
        /// The capability.
        cap: &'static str,
        /// The mode.
        mode: Mode,
    },
    /// A KVM ioctl failed.
    #[error("{op}: {source}")]
    Kvm {
        /// The ioctl.
        op: &'static str,
        /// Its error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// `lazy-tscdeadline-kvm` cannot be set up on this KVM.
    #[error("lazy TSC deadline set-up: {0}")]
    Setup(#[from] SetupError),
    /// A vCPU's timer could not be restored from its saved state.
    #[error("lazy TSC deadline restore: {0}")]
    Restore(#[from] RestoreError),
    /// Handling an exit or an expiry failed in `lazy-tscdeadline-kvm`.
    #[error("vCPU {vcpu}: {source}")]
    Exit {
        /// The vCPU.
        vcpu: u32,
        /// What failed.
        #[source]
        source: ExitError,
    },
    /// Guest memory could not be allocated, written or read.
    #[error("guest memory: {0}")]
    Memory(String),
    /// This host cannot run the mini-VMM as it needs (the message says why).
    #[error("{0}")]
    Unsupported(String),
    /// A system call or file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Its error.
        #[source]
        source: std::io::Error,
    },
    /// A vCPU stopped in a way the guest program never does (a fault, an
    /// unexpected exit, a missing boot probe).
    #[error("vCPU {vcpu}: {what}")]
    Vcpu {
        /// The vCPU.
        vcpu: u32,
        /// What happened.
        what: String,
    },
    /// The guest did not finish in time.
    #[error("{mode} mode: the guest did not finish within {limit:?} (hung vCPU)")]
    Hung {
        /// The mode.
        mode: Mode,
        /// The limit.
        limit: Duration,
    },
    /// A run of one mode failed; `detail` is what the guest reported.
    #[error("{mode} mode: {source}{detail}")]
    InMode {
        /// The mode.
        mode: Mode,
        /// The guest's fault report, if any.
        detail: String,
        /// The failure.
        #[source]
        source: Box<Error>,
    },
    /// The guest's results contradict what the VMM set up.
    #[error("{mode} mode: {what}")]
    Results {
        /// The mode.
        mode: Mode,
        /// The contradiction.
        what: String,
    },
    /// A run of the sweep failed.
    #[error("depth {depth}, timeout {timeout_us} us: {source}")]
    AtPoint {
        /// The depth.
        depth: u64,
        /// The timeout.
        timeout_us: u64,
        /// The failure.
        #[source]
        source: Box<Error>,
    },
    /// A thread panicked.
    #[error("the {0} thread panicked")]
    Panicked(&'static str),
    /// Writing the sweep's files or plot.
    #[error("{0}")]
    Output(String),
}

impl Error {
    /// A closure mapping a KVM ioctl's error to [`Error::Kvm`].
    pub fn kvm(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
        move |source| Error::Kvm { op, source }
    }

    /// A closure mapping an I/O error to [`Error::Io`].
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }

    /// A closure mapping a guest memory error to [`Error::Memory`].
    pub fn memory<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> Error {
        move |e| Error::Memory(format!("{what}: {e}"))
    }
}
