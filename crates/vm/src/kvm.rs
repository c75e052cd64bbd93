//! KVM and the irqchip: open /dev/kvm and check what the VMM needs of it, choose the irqchip, create
//! the VM and KVM's part of the irqchip.

use std::sync::Arc;

use arch::layout;
use devices::legacy::{IrqRouter, MsiMessage, IOAPIC_NUM_PINS};
use kvm_bindings::{
    kvm_enable_cap, kvm_irq_routing_entry, kvm_pit_config, KvmIrqRouting, KVM_CAP_SPLIT_IRQCHIP,
    KVM_IRQ_ROUTING_MSI, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, Kvm, VmFd};

use crate::config::IrqChip;
use crate::error::{kvm_err, Error, Result};
use crate::start::step_done;

/// Capabilities the VMM cannot work without, whatever the irqchip.
const REQUIRED_CAPS: [(Cap, &str); 5] = [
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
    (Cap::Irqfd, "KVM_CAP_IRQFD"),
    (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
];
/// What [`IrqChip::Split`] needs.
const SPLIT_CAPS: [(Cap, &str); 2] = [
    (Cap::SplitIrqchip, "KVM_CAP_SPLIT_IRQCHIP"),
    (Cap::IrqRouting, "KVM_CAP_IRQ_ROUTING"),
];
/// What [`IrqChip::Kernel`] needs.
const KERNEL_IRQCHIP_CAPS: [(Cap, &str); 2] = [
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::Pit2, "KVM_CAP_PIT2"),
];

// The MP table (arch) and the I/O APIC model (devices) must agree on the pins.
const _: () = assert!(layout::IOAPIC_NUM_PINS as usize == IOAPIC_NUM_PINS);

/// Opens /dev/kvm and checks its API version and the capabilities every VM needs.
pub(crate) fn open() -> Result<Kvm> {
    let kvm = Kvm::new().map_err(Error::KvmOpen)?;
    let version = kvm.get_api_version();
    if version != kvm_bindings::KVM_API_VERSION as i32 {
        return Err(Error::KvmApiVersion(version));
    }
    for (cap, name) in REQUIRED_CAPS {
        if !kvm.check_extension(cap) {
            return Err(Error::KvmCapability(name));
        }
    }
    step_done("opened /dev/kvm");
    Ok(kvm)
}

/// The most vCPUs a VM may have here: KVM's limit, and the MP table's.
pub(crate) fn max_vcpus(kvm: &Kvm) -> usize {
    kvm.get_max_vcpus().min(usize::from(layout::MAX_VCPUS))
}

/// Resolves `asked` against what KVM offers (`Auto`: split when it can) and checks the
/// capabilities the result needs.
pub(crate) fn choose_irqchip(asked: IrqChip, kvm: &Kvm) -> Result<IrqChip> {
    pick_irqchip(asked, |cap| kvm.check_extension(cap))
}

/// [`choose_irqchip`] over any capability check.
fn pick_irqchip(asked: IrqChip, has: impl Fn(Cap) -> bool) -> Result<IrqChip> {
    let has_all = |caps: &[(Cap, &'static str)]| caps.iter().all(|(c, _)| has(*c));
    let chosen = match asked {
        IrqChip::Auto if has_all(&SPLIT_CAPS) => IrqChip::Split,
        IrqChip::Auto => {
            log::info!("KVM has no split irqchip here; using the in-kernel one");
            IrqChip::Kernel
        }
        other => other,
    };
    let caps: &[(Cap, &'static str)] = match chosen {
        IrqChip::Kernel => &KERNEL_IRQCHIP_CAPS,
        _ => &SPLIT_CAPS,
    };
    match caps.iter().find(|(cap, _)| !has(*cap)) {
        None => Ok(chosen),
        Some((_, name)) if chosen == IrqChip::Kernel => Err(Error::KvmCapability(name)),
        Some((_, name)) => Err(Error::IrqchipUnsupported {
            irqchip: "split",
            cap: name,
        }),
    }
}

/// Creates the VM.
pub(crate) fn create_vm(kvm: &Kvm) -> Result<VmFd> {
    kvm.create_vm().map_err(kvm_err("create the VM"))
}

/// KVM's part of the irqchip, after KVM_SET_TSS_ADDR: all of it (`Kernel`: PICs, I/O APIC, local
/// APICs and the PIT), or the local APICs with one route reserved per user-space I/O APIC pin
/// (`Split`).
///
/// Call it after guest memory is registered: on some hosts the first memory slot added after
/// KVM_CREATE_IRQCHIP waits several milliseconds for an SRCU grace period; added before it, both
/// take microseconds.
pub(crate) fn create_irqchip(vm_fd: &VmFd, irqchip: IrqChip) -> Result<()> {
    vm_fd
        .set_tss_address(layout::KVM_TSS_ADDRESS as usize)
        .map_err(kvm_err("set the TSS address"))?;
    if irqchip == IrqChip::Kernel {
        vm_fd
            .create_irq_chip()
            .map_err(kvm_err("create the in-kernel irqchip"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm_fd
            .create_pit2(pit)
            .map_err(kvm_err("create the in-kernel PIT"))?;
        step_done("created the in-kernel irqchip (LAPICs, I/O APIC, PICs) and PIT");
        return Ok(());
    }
    let mut cap = kvm_enable_cap {
        cap: KVM_CAP_SPLIT_IRQCHIP,
        ..Default::default()
    };
    cap.args[0] = u64::from(layout::IOAPIC_NUM_PINS);
    vm_fd
        .enable_cap(&cap)
        .map_err(kvm_err("create the split irqchip"))?;
    step_done("created the split irqchip (LAPICs in KVM; I/O APIC and PIT here)");
    Ok(())
}

/// The user-space I/O APIC's routes as KVM's GSI routing table: GSI n is pin n.
pub(crate) struct KvmRoutes(pub Arc<VmFd>);

impl IrqRouter for KvmRoutes {
    fn set_routes(
        &mut self,
        routes: &[Option<MsiMessage>; IOAPIC_NUM_PINS],
    ) -> std::io::Result<()> {
        let fam_err = |e| std::io::Error::other(format!("{e:?}"));
        let mut table = KvmIrqRouting::new(0).map_err(fam_err)?;
        for entry in msi_routes(routes) {
            table.push(entry).map_err(fam_err)?;
        }
        self.0.set_gsi_routing(&table).map_err(std::io::Error::from)
    }
}

/// One MSI routing entry per routed pin, on the pin's GSI.
fn msi_routes(
    routes: &[Option<MsiMessage>; IOAPIC_NUM_PINS],
) -> impl Iterator<Item = kvm_irq_routing_entry> + '_ {
    routes.iter().enumerate().filter_map(|(gsi, msi)| {
        let msi = msi.as_ref()?;
        let mut entry = kvm_irq_routing_entry {
            gsi: gsi as u32,
            type_: KVM_IRQ_ROUTING_MSI,
            ..Default::default()
        };
        entry.u.msi.address_lo = msi.address as u32;
        entry.u.msi.address_hi = (msi.address >> 32) as u32;
        entry.u.msi.data = msi.data;
        Some(entry)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_with(caps: &'static [Cap]) -> impl Fn(Cap) -> bool {
        move |cap| caps.contains(&cap)
    }

    const SPLIT: &[Cap] = &[Cap::SplitIrqchip, Cap::IrqRouting];
    const KERNEL: &[Cap] = &[Cap::Irqchip, Cap::Pit2];
    const BOTH: &[Cap] = &[Cap::SplitIrqchip, Cap::IrqRouting, Cap::Irqchip, Cap::Pit2];

    #[test]
    fn auto_prefers_split_and_falls_back_to_kernel() {
        let chosen = pick_irqchip(IrqChip::Auto, host_with(BOTH)).unwrap();
        assert_eq!(chosen, IrqChip::Split);
        let chosen = pick_irqchip(IrqChip::Auto, host_with(KERNEL)).unwrap();
        assert_eq!(chosen, IrqChip::Kernel);
        assert!(matches!(
            pick_irqchip(IrqChip::Auto, host_with(&[])),
            Err(Error::KvmCapability("KVM_CAP_IRQCHIP"))
        ));
    }

    #[test]
    fn an_explicit_irqchip_names_the_missing_capability() {
        assert_eq!(
            pick_irqchip(IrqChip::Kernel, host_with(BOTH)).unwrap(),
            IrqChip::Kernel
        );
        let err = pick_irqchip(IrqChip::Split, host_with(&[Cap::SplitIrqchip])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "split irqchip: KVM on this host lacks KVM_CAP_IRQ_ROUTING"
        );
        assert!(!err.to_string().contains("--"));
        let err = pick_irqchip(IrqChip::Kernel, host_with(SPLIT)).unwrap_err();
        assert!(matches!(err, Error::KvmCapability("KVM_CAP_IRQCHIP")));
    }

    #[test]
    fn routes_become_msi_entries_on_their_pins() {
        let mut routes = [None; IOAPIC_NUM_PINS];
        routes[4] = Some(MsiMessage {
            address: 0x1_fee0_1000,
            data: 0x31,
        });
        routes[23] = Some(MsiMessage {
            address: 0xfee0_0000,
            data: 0x40,
        });
        let entries: Vec<_> = msi_routes(&routes).collect();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].gsi, 4);
        assert_eq!(entries[0].type_, KVM_IRQ_ROUTING_MSI);
        // SAFETY: the entries were built as MSI routes, so `msi` is the union's live member.
        let (lo, hi, data) = unsafe {
            (
                entries[0].u.msi.address_lo,
                entries[0].u.msi.address_hi,
                entries[0].u.msi.data,
            )
        };
        assert_eq!((lo, hi, data), (0xfee0_1000, 1, 0x31));
        assert_eq!(entries[1].gsi, 23);
    }
}
