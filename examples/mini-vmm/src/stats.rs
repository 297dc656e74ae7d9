//! KVM's binary statistics of a vCPU (`KVM_GET_STATS_FD`): the counters the
//! kernel keeps for exits it handles without returning to userspace.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;

use kvm_bindings::{KVM_STATS_TYPE_CUMULATIVE, KVM_STATS_TYPE_MASK};
use kvm_ioctls::VcpuFd;

use crate::error::Error;

/// `KVM_GET_STATS_FD` = `_IO(KVMIO, 0xce)`.
const KVM_GET_STATS_FD: libc::c_ulong = 0xae << 8 | 0xce;

/// One readable statistic.
#[derive(Debug)]
struct Desc {
    name: String,
    offset: u64,
}

/// An open stats file descriptor of one vCPU.
#[derive(Debug)]
pub struct VcpuStats {
    file: File,
    data_offset: u64,
    descs: Vec<Desc>,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

impl VcpuStats {
    /// Opens the stats of `vcpu` and reads their descriptors.
    pub fn open(vcpu: &VcpuFd) -> Result<Self, Error> {
        // SAFETY: KVM_GET_STATS_FD takes no argument and returns a new file
        // descriptor (or -1); the vCPU fd is valid for the call.
        let fd = unsafe { libc::ioctl(vcpu.as_raw_fd(), KVM_GET_STATS_FD) };
        if fd < 0 {
            return Err(Error::io("KVM_GET_STATS_FD")(
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: `fd` was just returned by the kernel and is owned by no
        // one else.
        let file = unsafe { File::from_raw_fd(fd) };
        let mut header = [0u8; 24];
        file.read_exact_at(&mut header, 0)
            .map_err(Error::io("reading KVM stats header"))?;
        let name_size = u32_at(&header, 4) as usize;
        let num_desc = u32_at(&header, 8) as usize;
        let desc_offset = u64::from(u32_at(&header, 16));
        let data_offset = u64::from(u32_at(&header, 20));
        let desc_size = 16 + name_size;
        let mut raw = vec![0u8; desc_size * num_desc];
        file.read_exact_at(&mut raw, desc_offset)
            .map_err(Error::io("reading KVM stats descriptors"))?;
        let descs = raw
            .chunks_exact(desc_size)
            .filter_map(|d| {
                let flags = u32_at(d, 0);
                let size = u16::from_le_bytes([d[6], d[7]]);
                let offset = u64::from(u32_at(d, 8));
                let name = &d[16..];
                let end = name.iter().position(|&c| c == 0).unwrap_or(name.len());
                let cumulative = flags & KVM_STATS_TYPE_MASK == KVM_STATS_TYPE_CUMULATIVE;
                (cumulative && size == 1).then(|| Desc {
                    name: String::from_utf8_lossy(&name[..end]).into_owned(),
                    offset,
                })
            })
            .collect();
        Ok(VcpuStats {
            file,
            data_offset,
            descs,
        })
    }

    /// Current values of all single-valued cumulative statistics.
    pub fn read(&self) -> Result<BTreeMap<String, u64>, Error> {
        let mut out = BTreeMap::new();
        for d in &self.descs {
            let mut v = [0u8; 8];
            self.file
                .read_exact_at(&mut v, self.data_offset + d.offset)
                .map_err(Error::io(format!("reading KVM stat {}", d.name)))?;
            out.insert(d.name.clone(), u64::from_le_bytes(v));
        }
        Ok(out)
    }
}
