//! The KVM ioctl request numbers the VMM needs by value: the seccomp filters admit them, and the
//! PIT helper issues KVM_REINJECT_CONTROL, which kvm-ioctls does not wrap (kvm-ioctls keeps its
//! own numbers private).

use devices::seccomp::{SyscallRule, Syscalls};
use kvm_bindings::{
    kvm_clock_data, kvm_debugregs, kvm_fpu, kvm_irq_routing, kvm_irqchip, kvm_lapic_state,
    kvm_mp_state, kvm_msrs, kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs,
    kvm_xsave,
};
use vmm_sys_util::ioctl::{ioctl_expr, _IOC_WRITE};
use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iowr_nr};

/// The KVM ioctl type.
const KVMIO: u32 = 0xAE;
ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_regs);
ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_sregs);
// What a parked vCPU reads of itself for a snapshot (arch::state::VcpuState::save).
ioctl_ior_nr!(KVM_GET_FPU, KVMIO, 0x8c, kvm_fpu);
ioctl_iowr_nr!(KVM_GET_MSRS, KVMIO, 0x88, kvm_msrs);
ioctl_ior_nr!(KVM_GET_LAPIC, KVMIO, 0x8e, kvm_lapic_state);
ioctl_ior_nr!(KVM_GET_MP_STATE, KVMIO, 0x98, kvm_mp_state);
ioctl_ior_nr!(KVM_GET_VCPU_EVENTS, KVMIO, 0x9f, kvm_vcpu_events);
ioctl_ior_nr!(KVM_GET_DEBUGREGS, KVMIO, 0xa1, kvm_debugregs);
ioctl_ior_nr!(KVM_GET_XSAVE, KVMIO, 0xa4, kvm_xsave);
ioctl_ior_nr!(KVM_GET_XCRS, KVMIO, 0xa6, kvm_xcrs);
// What the snapshot thread reads of the VM (arch::state::VmState::save).
ioctl_iowr_nr!(KVM_GET_IRQCHIP, KVMIO, 0x62, kvm_irqchip);
ioctl_ior_nr!(KVM_GET_CLOCK, KVMIO, 0x7c, kvm_clock_data);
ioctl_ior_nr!(KVM_GET_PIT2, KVMIO, 0x9f, kvm_pit_state2);
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
        // The values of the kernel's uapi headers.
        assert_eq!(KVM_GET_FPU(), 0x81a0_ae8c);
        assert_eq!(KVM_GET_MSRS(), 0xc008_ae88);
        assert_eq!(KVM_GET_LAPIC(), 0x8400_ae8e);
        assert_eq!(KVM_GET_MP_STATE(), 0x8004_ae98);
        assert_eq!(KVM_GET_VCPU_EVENTS(), 0x8040_ae9f);
        assert_eq!(KVM_GET_DEBUGREGS(), 0x8080_aea1);
        assert_eq!(KVM_GET_XSAVE(), 0x9000_aea4);
        assert_eq!(KVM_GET_XCRS(), 0x8188_aea6);
        assert_eq!(KVM_GET_IRQCHIP(), 0xc208_ae62);
        assert_eq!(KVM_GET_CLOCK(), 0x8030_ae7c);
        assert_eq!(KVM_GET_PIT2(), 0x8070_ae9f);
        vmm_sys_util::ioctl_iow_nr!(SET_GSI_ROUTING, KVMIO, 0x6a, kvm_irq_routing);
        assert_eq!(KVM_SET_GSI_ROUTING, SET_GSI_ROUTING());
        assert_eq!(KVM_SET_GSI_ROUTING, 0x4008_ae6a);
    }
}
