//! vCPU setup against the real /dev/kvm. Fails when /dev/kvm is missing unless
//! VMM_SKIP_KVM_TESTS=1.

use arch::layout::{PML4_START, PVH_INFO_START, ZERO_PAGE_START};
use arch::regs::{setup_vcpu, BootEntry};
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// Opens KVM, or returns None when the test may be skipped.
fn open_kvm() -> Option<Kvm> {
    let kvm = Kvm::new()
        .map_err(|e| format!("cannot open /dev/kvm: {e}"))
        .and_then(|kvm| match kvm.get_api_version() {
            12 => Ok(kvm),
            v => Err(format!("/dev/kvm answers API version {v}, not 12")),
        });
    match kvm {
        Ok(kvm) => Some(kvm),
        Err(e) if std::env::var("VMM_SKIP_KVM_TESTS").as_deref() == Ok("1") => {
            eprintln!("skipping: {e} (VMM_SKIP_KVM_TESTS=1)");
            None
        }
        Err(e) => panic!("{e}; this test needs KVM (set VMM_SKIP_KVM_TESTS=1 to skip it)"),
    }
}

fn vm_with_memory(kvm: &Kvm) -> (VmFd, GuestMemoryMmap) {
    let vm = kvm.create_vm().unwrap();
    let mem = GuestMemoryMmap::from_ranges(&arch::ram_regions(64 << 20).unwrap()).unwrap();
    for (slot, region) in mem.iter().enumerate() {
        let host = mem.get_host_address(region.start_addr()).unwrap();
        let region = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the mapping belongs to `mem`, which outlives the VM in this test.
        unsafe { vm.set_user_memory_region(region).unwrap() };
    }
    vm.create_irq_chip().unwrap();
    (vm, mem)
}

fn new_vcpu(vm: &VmFd, kvm: &Kvm, id: u8, num_cpus: u8) -> VcpuFd {
    let vcpu = vm.create_vcpu(u64::from(id)).unwrap();
    let mut cpuid = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .unwrap();
    arch::cpuid::filter_cpuid(&mut cpuid, id, num_cpus).unwrap();
    vcpu.set_cpuid2(&cpuid).unwrap();
    vcpu
}

fn lvt(vcpu: &VcpuFd, offset: usize) -> u32 {
    let lapic = vcpu.get_lapic().unwrap();
    let r = &lapic.regs[offset..offset + 4];
    u32::from_le_bytes([r[0] as u8, r[1] as u8, r[2] as u8, r[3] as u8])
}

#[test]
fn kvm_setup_vcpu_linux64_and_pvh() {
    let Some(kvm) = open_kvm() else { return };
    let (vm, mem) = vm_with_memory(&kvm);

    // Linux 64-bit entry on vCPU 0.
    let vcpu = new_vcpu(&vm, &kvm, 0, 2);
    let entry = BootEntry::Linux64 {
        entry: GuestAddress(0x100_0000),
    };
    setup_vcpu(&mem, &vcpu, &entry).unwrap();
    let s = vcpu.get_sregs().unwrap();
    assert_eq!(s.cr0 & 0x8000_0001, 0x8000_0001, "PE and PG");
    assert_eq!(s.cr3, PML4_START);
    assert_ne!(s.cr4 & 0x20, 0, "PAE");
    assert_eq!(s.efer & 0x500, 0x500, "LME and LMA");
    assert_eq!((s.cs.selector, s.cs.l), (0x10, 1));
    assert_eq!(s.ds.selector, 0x18);
    assert_eq!((s.gdt.base, s.idt.base), (0x500, 0x520));
    let r = vcpu.get_regs().unwrap();
    assert_eq!(r.rip, 0x100_0000);
    assert_eq!(r.rsi, ZERO_PAGE_START);
    assert_eq!((r.rsp, r.rbp), (0x8ff0, 0x8ff0));
    assert_eq!(r.rflags, 2);
    let fpu = vcpu.get_fpu().unwrap();
    assert_eq!(fpu.fcw, 0x37f);
    // MXCSR is not checked: this host's KVM (kvm_pvm) reads it back as 0 whatever was set,
    // even before any KVM_SET_FPU.
    assert_eq!((lvt(&vcpu, 0x350) >> 8) & 7, 7, "LINT0 ExtINT");
    assert_eq!((lvt(&vcpu, 0x360) >> 8) & 7, 4, "LINT1 NMI");
    let mut msrs = arch::msr::msrs_from(&[(arch::msr::MSR_IA32_MISC_ENABLE, 0)]).unwrap();
    assert_eq!(vcpu.get_msrs(&mut msrs).unwrap(), 1);
    assert_eq!(msrs.as_slice()[0].data & 1, 1, "fast strings");
    // Every boot MSR is accepted here (on other hosts setup_msrs only warns).
    let all = arch::msr::boot_msrs().unwrap();
    assert_eq!(vcpu.set_msrs(&all).unwrap(), arch::msr::BOOT_MSRS.len());

    // PVH entry on vCPU 1.
    let vcpu = new_vcpu(&vm, &kvm, 1, 2);
    let entry = BootEntry::Pvh {
        entry: GuestAddress(0x10_0200),
    };
    setup_vcpu(&mem, &vcpu, &entry).unwrap();
    let s = vcpu.get_sregs().unwrap();
    assert_eq!(s.cr0 & 0x8000_0001, 1, "PE, no paging");
    assert_eq!(s.efer & 0x500, 0);
    assert_eq!((s.cs.selector, s.cs.db, s.cs.l), (0x10, 1, 0));
    assert_eq!(s.cs.limit, 0xffff_ffff);
    let r = vcpu.get_regs().unwrap();
    assert_eq!((r.rip, r.rbx, r.rflags), (0x10_0200, PVH_INFO_START, 2));
}

/// Runs `code` at 1 MiB from the given entry until it has written `want.len()` bytes to COM1.
fn run_and_collect(entry: BootEntry, code: &[u8], want: &[u8]) {
    use kvm_ioctls::VcpuExit;
    use vm_memory::Bytes;
    let Some(kvm) = open_kvm() else { return };
    let (vm, mem) = vm_with_memory(&kvm);
    mem.write_slice(code, GuestAddress(0x10_0000)).unwrap();
    mem.write_obj(b'B', GuestAddress(0x300_0000)).unwrap();
    let mut vcpu = new_vcpu(&vm, &kvm, 0, 1);
    setup_vcpu(&mem, &vcpu, &entry).unwrap();
    let mut out = Vec::new();
    while out.len() < want.len() {
        match vcpu.run().unwrap() {
            VcpuExit::IoOut(0x3f8, data) => out.extend_from_slice(data),
            other => panic!("unexpected exit {other:?}"),
        }
    }
    assert_eq!(out, want);
}

#[test]
fn kvm_linux64_entry_runs_with_paging_and_stack() {
    let code = [
        0x8a, 0x04, 0x25, 0x00, 0x00, 0x00, 0x03, // mov al, [0x3000000] (through the PD)
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xee, // out dx, al
        0x50, // push rax (stack at 0x8ff0)
        0x5b, // pop rbx
        0x88, 0xd8, // mov al, bl
        0x04, 0x01, // add al, 1
        0xee, // out dx, al
        0xf4, // hlt (not reached)
    ];
    run_and_collect(
        BootEntry::Linux64 {
            entry: GuestAddress(0x10_0000),
        },
        &code,
        b"BC",
    );
}

#[test]
fn kvm_pvh_entry_runs_in_protected_mode() {
    let code = [
        0x8a, 0x04, 0x25, 0x00, 0x00, 0x00, 0x03, // mov al, [0x3000000]
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xee, // out dx, al
        0x88, 0xd8, // mov al, bl (EBX = 0x6000 → 0x00)
        0x04, 0x60, // add al, 0x60
        0xee, // out dx, al
        0xf4, // hlt (not reached)
    ];
    run_and_collect(
        BootEntry::Pvh {
            entry: GuestAddress(0x10_0000),
        },
        &code,
        b"B`",
    );
}

#[test]
fn kvm_supported_cpuid_filters_per_vcpu() {
    let Some(kvm) = open_kvm() else { return };
    let (vm, _mem) = vm_with_memory(&kvm);
    for id in 0..2u8 {
        let mut cpuid = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .unwrap();
        arch::cpuid::filter_cpuid(&mut cpuid, id, 2).unwrap();
        let leaf = |f: u32, i: u32| {
            *cpuid
                .as_slice()
                .iter()
                .find(|e| e.function == f && e.index == i)
                .unwrap()
        };
        let l1 = leaf(1, 0);
        assert_eq!(l1.ebx >> 24, u32::from(id));
        assert_eq!((l1.ebx >> 16) & 0xff, 2);
        assert_ne!(l1.ecx & (1 << 31), 0, "hypervisor bit");
        let max_basic = leaf(0, 0).eax;
        if max_basic >= 0xb {
            assert_eq!(leaf(0xb, 1).ebx, 2);
            assert_eq!(leaf(0xb, 0).edx, u32::from(id));
        }
        let vcpu = vm.create_vcpu(u64::from(id)).unwrap();
        vcpu.set_cpuid2(&cpuid).unwrap();
        let back = vcpu
            .get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .unwrap();
        let b1 = back.as_slice().iter().find(|e| e.function == 1).unwrap();
        assert_eq!(b1.ebx >> 24, u32::from(id));
        if id > 0 {
            arch::regs::setup_ap_vcpu(&vcpu).unwrap();
        }
    }
}
