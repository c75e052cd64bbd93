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

/// A VM with guest memory, the in-kernel irqchip and PIT, and one vCPU at the Linux 64-bit entry.
fn vm_for_state(kvm: &Kvm) -> (VmFd, VcpuFd, GuestMemoryMmap) {
    let (vm, mem) = vm_with_memory(kvm);
    vm.create_pit2(kvm_bindings::kvm_pit_config::default())
        .unwrap();
    let vcpu = new_vcpu(&vm, kvm, 0, 1);
    let entry = BootEntry::Linux64 {
        entry: GuestAddress(0x100_0000),
    };
    setup_vcpu(&mem, &vcpu, &entry).unwrap();
    (vm, vcpu, mem)
}

fn set_lapic_reg(lapic: &mut kvm_bindings::kvm_lapic_state, offset: usize, value: u32) {
    for (i, b) in value.to_le_bytes().into_iter().enumerate() {
        lapic.regs[offset + i] = b as std::os::raw::c_char;
    }
}

fn msr(state: &arch::state::VcpuState, index: u32) -> Option<u64> {
    state.msrs.iter().find(|e| e.index == index).map(|e| e.data)
}

#[test]
fn kvm_vcpu_and_vm_state_restore_into_a_fresh_vm() {
    use arch::msr::{MSR_IA32_TSC, MSR_KERNEL_GS_BASE, MSR_STAR};
    use arch::state::{msrs_to_save, VcpuState, VmState};
    let Some(kvm) = open_kvm() else { return };
    let (vm, vcpu, _mem) = vm_for_state(&kvm);

    // Recognisable state everywhere.
    let mut regs = vcpu.get_regs().unwrap();
    regs.rax = 0x1122_3344_5566_7788;
    regs.r15 = 0x0f0f_0f0f;
    regs.rip = 0x100_0042;
    vcpu.set_regs(&regs).unwrap();
    let mut lapic = vcpu.get_lapic().unwrap();
    set_lapic_reg(&mut lapic, 0x80, 0x20); // TPR
    set_lapic_reg(&mut lapic, 0x320, 0x0001_00ef); // LVT timer: masked, vector 0xef
    vcpu.set_lapic(&lapic).unwrap();
    let set = arch::msr::msrs_from(&[
        (MSR_STAR, 0x0023_0010_0000_0000),
        (MSR_KERNEL_GS_BASE, 0xffff_8880_1234_0000),
        (MSR_IA32_TSC, 1 << 40),
    ])
    .unwrap();
    assert_eq!(vcpu.set_msrs(&set).unwrap(), 3);
    let mut dregs = vcpu.get_debug_regs().unwrap();
    dregs.db[0] = 0x1234_5000;
    dregs.dr7 = 0x0000_0401;
    vcpu.set_debug_regs(&dregs).unwrap();
    // x87 and SSE state through the XSAVE image (KVM_SET_FPU does not set MXCSR on every
    // host): FCW, MXCSR, XMM3, and XSTATE_BV marking x87 and SSE in use.
    let mut xsave = vcpu.get_xsave().unwrap();
    xsave.region[0] = (xsave.region[0] & !0xffff) | 0x27f;
    xsave.region[6] = 0x1fa0;
    xsave.region[52..56].fill(0x5a5a_5a5a);
    xsave.region[128] |= 3;
    // SAFETY: a whole kvm_xsave read from this vCPU, with no larger XSAVE buffer enabled.
    unsafe { vcpu.set_xsave(&xsave).unwrap() };
    let mut events = vcpu.get_vcpu_events().unwrap();
    events.nmi.pending = 1;
    events.flags = kvm_bindings::KVM_VCPUEVENT_VALID_NMI_PENDING;
    vcpu.set_vcpu_events(&events).unwrap();
    let mut mp = vcpu.get_mp_state().unwrap();
    mp.mp_state = kvm_bindings::KVM_MP_STATE_HALTED;
    vcpu.set_mp_state(mp).unwrap();

    let mut pic = kvm_bindings::kvm_irqchip {
        chip_id: kvm_bindings::KVM_IRQCHIP_PIC_MASTER,
        ..Default::default()
    };
    vm.get_irqchip(&mut pic).unwrap();
    // Chip 0 is a PIC: `pic` is the union's active field.
    pic.chip.pic.irq_base = 0x30;
    pic.chip.pic.imr = 0xfa;
    vm.set_irqchip(&pic).unwrap();
    let mut pit = vm.get_pit2().unwrap();
    pit.channels[0].count = 1000;
    pit.channels[0].mode = 2;
    vm.set_pit2(&pit).unwrap();
    let clock = kvm_bindings::kvm_clock_data {
        clock: 1 << 36,
        ..Default::default()
    };
    vm.set_clock(&clock).unwrap();

    // Save, through JSON as a snapshot file would hold it.
    let indices = msrs_to_save(&kvm).unwrap();
    let vm_saved = VmState::save(&vm).unwrap();
    let vcpu_saved = VcpuState::save(&vcpu, &indices).unwrap();
    let vm_saved: VmState =
        serde_json::from_str(&serde_json::to_string(&vm_saved).unwrap()).unwrap();
    let vcpu_saved: VcpuState =
        serde_json::from_str(&serde_json::to_string(&vcpu_saved).unwrap()).unwrap();
    assert!(vm_saved.irqchip.is_some() && vm_saved.pit.is_some());
    assert_eq!(msr(&vcpu_saved, MSR_STAR), Some(0x0023_0010_0000_0000));
    assert_eq!(vcpu_saved.xsave.as_ref().map(|x| x[6]), Some(0x1fa0));
    assert_eq!(vcpu_saved.events.nmi.pending, 1);
    assert!(msr(&vcpu_saved, MSR_IA32_TSC).is_some_and(|t| t >= 1 << 40));

    // Restore into a fresh VM and vCPU, then save again and compare.
    let (vm2, vcpu2, _mem2) = vm_for_state(&kvm);
    vm_saved.restore(&vm2).unwrap();
    vcpu_saved.restore(&vcpu2).unwrap();
    let vm_back = VmState::save(&vm2).unwrap();
    let vcpu_back = VcpuState::save(&vcpu2, &indices).unwrap();

    let json = |v: &dyn erased::Json| v.json();
    assert_eq!(json(&vm_back.irqchip), json(&vm_saved.irqchip), "irqchip");
    let (p1, p2) = (vm_saved.pit.unwrap(), vm_back.pit.unwrap());
    for (c1, c2) in p1.channels.iter().zip(&p2.channels) {
        assert_eq!((c1.count, c1.mode, c1.gate), (c2.count, c2.mode, c2.gate));
    }
    assert!(vm_back.clock.clock >= vm_saved.clock.clock);
    assert!(vm_back.clock.clock < vm_saved.clock.clock + 10_000_000_000);

    assert_eq!(vcpu_back.regs, vcpu_saved.regs, "regs");
    assert_eq!(vcpu_back.sregs, vcpu_saved.sregs, "sregs");
    assert_eq!(vcpu_back.fpu, vcpu_saved.fpu, "fpu");
    assert_eq!(vcpu_back.xsave, vcpu_saved.xsave, "xsave");
    assert_eq!(vcpu_back.xcrs, vcpu_saved.xcrs, "xcrs");
    assert_eq!(vcpu_back.debug_regs, vcpu_saved.debug_regs, "debug regs");
    assert_eq!(vcpu_back.mp_state, vcpu_saved.mp_state, "mp state");
    assert_eq!(vcpu_back.events, vcpu_saved.events, "events");
    assert_eq!(vcpu_back.fpu.xmm[3], [0x5a; 16]);
    assert_eq!(vcpu_back.fpu.fcw, 0x27f);
    assert_eq!(lvt(&vcpu2, 0x80), 0x20);
    assert_eq!(lvt(&vcpu2, 0x320), 0x0001_00ef);
    let lapic_diff: Vec<usize> = (0..1024)
        .filter(|&i| vcpu_back.lapic.regs[i] != vcpu_saved.lapic.regs[i])
        .collect();
    assert!(
        lapic_diff.is_empty(),
        "LAPIC bytes differ at {lapic_diff:x?}"
    );
    let msr_diff: Vec<_> = vcpu_saved
        .msrs
        .iter()
        .filter(|e| e.index != MSR_IA32_TSC && msr(&vcpu_back, e.index) != Some(e.data))
        .map(|e| (e.index, e.data, msr(&vcpu_back, e.index)))
        .collect();
    assert!(msr_diff.is_empty(), "MSRs differ: {msr_diff:x?}");
    let (t1, t2) = (
        msr(&vcpu_saved, MSR_IA32_TSC).unwrap(),
        msr(&vcpu_back, MSR_IA32_TSC).unwrap(),
    );
    assert!(t2 >= t1 && t2 - t1 < 1 << 36, "TSC {t1:#x} -> {t2:#x}");
}

/// Comparing KVM structs without PartialEq through their serde form.
mod erased {
    pub trait Json {
        fn json(&self) -> String;
    }
    impl<T: serde::Serialize> Json for T {
        fn json(&self) -> String {
            serde_json::to_string(self).unwrap()
        }
    }
}

#[test]
fn kvm_state_of_another_version_is_refused() {
    use arch::state::{VcpuState, VmState};
    let Some(kvm) = open_kvm() else { return };
    let (vm, vcpu, _mem) = vm_for_state(&kvm);
    let mut v = VmState::save(&vm).unwrap();
    v.version += 1;
    assert!(matches!(
        v.restore(&vm),
        Err(arch::Error::StateVersion { what: "VM", .. })
    ));
    let mut c = VcpuState::save(&vcpu, &[]).unwrap();
    c.version += 1;
    assert!(matches!(
        c.restore(&vcpu),
        Err(arch::Error::StateVersion { what: "vCPU", .. })
    ));
}

#[test]
fn kvm_split_irqchip_vm_saves_no_irqchip_and_refuses_one() {
    use arch::state::VmState;
    let Some(kvm) = open_kvm() else { return };
    let (full, _vcpu, _mem) = vm_for_state(&kvm);
    let with_chips = VmState::save(&full).unwrap();

    let split = kvm.create_vm().unwrap();
    let mut cap = kvm_bindings::kvm_enable_cap {
        cap: kvm_bindings::KVM_CAP_SPLIT_IRQCHIP,
        ..Default::default()
    };
    cap.args[0] = 24;
    split.enable_cap(&cap).unwrap();
    // KVM answers ENXIO for the irqchip and the PIT a split irqchip does not have.
    let saved = VmState::save(&split).unwrap();
    assert!(saved.irqchip.is_none() && saved.pit.is_none());
    saved.restore(&split).unwrap();
    match with_chips.restore(&split) {
        Err(arch::Error::Vm {
            what: "KVM_SET_IRQCHIP",
            source,
        }) => assert_eq!(source.errno(), libc::ENXIO),
        other => panic!("{other:?}"),
    }
}
