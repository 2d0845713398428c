//! Global descriptor table and task-state segment: flat 64-bit code and data segments, and an
//! interrupt stack table whose first entry gives double faults a stack of their own, so that a
//! kernel stack overflow ends in a report instead of a triple fault.

use alloc::boxed::Box;
use core::cell::UnsafeCell;
use x86_64::VirtAddr;
use x86_64::instructions::segmentation::{CS, DS, ES, SS, Segment};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;

/// IST slot (0-based, as the TSS field) used by the double-fault handler.
pub const DOUBLE_FAULT_IST_INDEX: u16 = 0;
/// Size of each IST stack.
pub const IST_STACK_SIZE: usize = 32 * 1024;

/// One CPU's descriptor tables.
pub struct CpuTables {
    /// Written when built, and again by [`renew`](Self::renew) while its CPU is parked;
    /// otherwise only read (by [`load`](Self::load), and by the CPU through its GDTR).
    gdt: UnsafeCell<GlobalDescriptorTable>,
    code: SegmentSelector,
    data: SegmentSelector,
    tss: SegmentSelector,
    /// The task-state segment the `tss` descriptor points to.
    tss_segment: &'static TaskStateSegment,
}

// SAFETY: the GDT in the cell is written only by `renew`, whose caller guarantees that no CPU
// has the tables loaded or is loading them; every other access is a read.
unsafe impl Sync for CpuTables {}

/// A GDT with flat 64-bit code and data segments and `tss`'s descriptor (marked available).
fn table(tss: &'static TaskStateSegment) -> (GlobalDescriptorTable, [SegmentSelector; 3]) {
    let mut gdt = GlobalDescriptorTable::new();
    let code = gdt.append(Descriptor::kernel_code_segment());
    let data = gdt.append(Descriptor::kernel_data_segment());
    let tss = gdt.append(Descriptor::tss_segment(tss));
    (gdt, [code, data, tss])
}

impl CpuTables {
    /// Builds the tables around `tss`, which must already hold the CPU's IST stack tops.
    pub fn new(tss: &'static TaskStateSegment) -> CpuTables {
        let (gdt, [code, data, selector]) = table(tss);
        CpuTables { gdt: UnsafeCell::new(gdt), code, data, tss: selector, tss_segment: tss }
    }

    /// Tables for an application processor, built (and leaked: a CPU keeps them across
    /// offline/online cycles, see [`renew`](Self::renew)) by the boot CPU before it starts the
    /// AP: a TSS whose double-fault IST entry is a fresh heap stack.
    pub fn for_ap() -> &'static CpuTables {
        let ist = Box::leak(alloc::vec![0u8; IST_STACK_SIZE].into_boxed_slice());
        let mut tss = TaskStateSegment::new();
        tss.interrupt_stack_table[usize::from(DOUBLE_FAULT_IST_INDEX)] =
            VirtAddr::from_ptr(ist.as_ptr_range().end);
        let tss: &'static TaskStateSegment = Box::leak(Box::new(tss));
        Box::leak(Box::new(CpuTables::new(tss)))
    }

    /// Makes the tables loadable again for their CPU coming back online, in place: the TSS
    /// descriptor, which the CPU marked busy when it loaded it (`ltr` faults on a busy one), is
    /// written again as available, with the same selectors; the TSS and its IST stack are
    /// kept (a parked CPU is on none of them). Nothing is allocated.
    ///
    /// # Safety
    ///
    /// No CPU has these tables loaded in use or is loading them, until this returns: their CPU
    /// is parked (interrupts off, halted, taking no NMI) or stopped by INIT.
    pub unsafe fn renew(&self) {
        let (gdt, _) = table(self.tss_segment);
        // SAFETY: the caller guarantees that no CPU reads the tables meanwhile, and no
        // reference into the cell outlives `load`'s call.
        unsafe { *self.gdt.get() = gdt };
    }

    /// The CPU's task-state segment (its IST stack tops).
    pub fn tss(&self) -> &'static TaskStateSegment {
        self.tss_segment
    }

    /// Loads the tables on the calling CPU.
    pub fn load(&'static self) {
        // SAFETY: the tables are 'static and are written again (`renew`) only once this CPU
        // has stopped using them (parked), before it loads them anew.
        unsafe { (*self.gdt.get()).load_unsafe() };
        // SAFETY: the selectors index the GDT just loaded, whose code segment is a 64-bit ring-0
        // segment and whose data segment is writable; the TSS descriptor is valid and not busy
        // (each CPU loads its own TSS once per time it comes online, `renew` marking it
        // available again in between).
        unsafe {
            CS::set_reg(self.code);
            DS::set_reg(self.data);
            ES::set_reg(self.data);
            SS::set_reg(self.data);
            load_tss(self.tss);
        }
    }
}

#[repr(align(16))]
struct Stack([u8; IST_STACK_SIZE]);

/// The boot CPU's double-fault stack. Application processors get heap-allocated ones.
static BSP_DOUBLE_FAULT_STACK: spin::Mutex<Stack> = spin::Mutex::new(Stack([0; IST_STACK_SIZE]));
static BSP_TSS: spin::Once<TaskStateSegment> = spin::Once::new();
static BSP_TABLES: spin::Once<CpuTables> = spin::Once::new();

/// Loads the boot CPU's GDT and TSS.
pub fn init_bsp() {
    let tss = BSP_TSS.call_once(|| {
        // The stack is only ever touched by the CPU through the IST; the lock is never taken
        // again, it only gives us the address without a `static mut`.
        let stack = BSP_DOUBLE_FAULT_STACK.lock();
        let top = VirtAddr::from_ptr(stack.0.as_ptr_range().end);
        let mut tss = TaskStateSegment::new();
        tss.interrupt_stack_table[usize::from(DOUBLE_FAULT_IST_INDEX)] = top;
        tss
    });
    BSP_TABLES.call_once(|| CpuTables::new(tss)).load();
}

/// The boot CPU's tables. Panics before `init_bsp` (the first step of bring-up).
pub fn bsp_tables() -> &'static CpuTables {
    BSP_TABLES.get().expect("gdt::init_bsp runs first in bring-up")
}
