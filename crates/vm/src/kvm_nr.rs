//! The KVM ioctl request numbers the VMM needs by value: the seccomp filters admit them, and the
//! PIT helper issues KVM_REINJECT_CONTROL, which kvm-ioctls does not wrap (kvm-ioctls keeps its
//! own numbers private).

use devices::seccomp::{SyscallRule, Syscalls};
use kvm_bindings::{kvm_irq_routing, kvm_regs, kvm_sregs};
use vmm_sys_util::ioctl::{ioctl_expr, _IOC_WRITE};
use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr};

/// The KVM ioctl type.
const KVMIO: u32 = 0xAE;
ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_regs);
ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_sregs);
// Takes a `kvm_reinject_control` although it is declared without a direction.
ioctl_io_nr!(KVM_REINJECT_CONTROL, KVMIO, 0x71);

/// KVM_SET_GSI_ROUTING, `_IOW(KVMIO, 0x6a, struct kvm_irq_routing)`, as a constant for
/// [`GSI_ROUTER_SYSCALLS`].
pub(crate) const KVM_SET_GSI_ROUTING: u64 = ioctl_expr(
    _IOC_WRITE,
    KVMIO,
    0x6a,
    std::mem::size_of::<kvm_irq_routing>() as u32,
);

/// The system calls of the split irqchip's interrupt router (the [`devices::legacy::IrqRouter`]
/// the VM hands the I/O APIC): when the guest programs a redirection entry, on a vCPU thread, the
/// new MSI routes go to KVM with KVM_SET_GSI_ROUTING; changes beyond the I/O APIC's burst are
/// pushed by its pacing timer, on the event loop.
pub(crate) const GSI_ROUTER_SYSCALLS: Syscalls = Syscalls {
    name: "I/O APIC router (KVM)",
    vcpu: &[SyscallRule::Ioctl(KVM_SET_GSI_ROUTING)],
    event_loop: &[SyscallRule::Ioctl(KVM_SET_GSI_ROUTING)],
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_ioctl_numbers() {
        assert_eq!(KVM_RUN(), 0xae80);
        assert_eq!(KVM_GET_REGS(), 0x8090_ae81);
        assert_eq!(KVM_GET_SREGS(), 0x8138_ae83);
        assert_eq!(KVM_REINJECT_CONTROL(), 0xae71);
        vmm_sys_util::ioctl_iow_nr!(SET_GSI_ROUTING, KVMIO, 0x6a, kvm_irq_routing);
        assert_eq!(KVM_SET_GSI_ROUTING, SET_GSI_ROUTING());
        assert_eq!(KVM_SET_GSI_ROUTING, 0x4008_ae6a);
    }
}
