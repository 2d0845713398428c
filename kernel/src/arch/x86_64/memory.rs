//! Physical frames, page tables and the kernel heap.
//!
//! Virtual layout of the upper half (the bootloader is told to stay in its range):
//! - `0xffff_8000_0000_0000..0xffff_c000_0000_0000`: the bootloader's mappings: kernel image,
//!   boot stack (with a guard page below it), boot info, and all of physical memory at a dynamic
//!   offset (write-back: MMIO gets its own uncached mapping, see `mmio.rs`);
//! - `HEAP_START`: the kernel heap, `HEAP_SIZE` bytes, mapped at boot;
//! - `MMIO_WINDOW_START`: uncached device mappings, handed out by `mmio::map`.
//!
//! Frames below 1 MiB are never handed out: the SMP trampoline needs a page there.

use bootloader_api::BootInfo;
use bootloader_api::info::{MemoryRegionKind, MemoryRegions};
use core::sync::atomic::{AtomicU64, Ordering};
use spin::Mutex;
use x86_64::registers::control::Cr3;
use x86_64::structures::paging::mapper::MapToError;
use x86_64::structures::paging::{
    FrameAllocator, Mapper, OffsetPageTable, Page, PageTable, PageTableFlags, PhysFrame, Size4KiB,
};
use x86_64::{PhysAddr, VirtAddr};

pub const BOOTLOADER_RANGE_START: u64 = 0xffff_8000_0000_0000;
pub const BOOTLOADER_RANGE_END: u64 = 0xffff_bfff_ffff_ffff;
pub const HEAP_START: u64 = 0xffff_c000_0000_0000;
/// The heap mapped at boot; it grows by [`extend_heap`] (per CPU brought online).
pub const HEAP_SIZE: u64 = 16 * 1024 * 1024;
/// How far the heap may grow: up to the MMIO window.
const HEAP_LIMIT: u64 = MMIO_WINDOW_START - HEAP_START;
pub const MMIO_WINDOW_START: u64 = 0xffff_d000_0000_0000;
pub const MMIO_WINDOW_SIZE: u64 = 1 << 30;
/// Application processors' kernel stacks, one slot per CPU (see `smp`).
pub const AP_STACK_WINDOW_START: u64 = 0xffff_e000_0000_0000;
/// Frames below this stay free for real-mode code (the AP start-up trampoline).
const LOW_MEMORY_LIMIT: u64 = 0x10_0000;

/// Offset of the bootloader's map of all physical memory; 0 until `init`.
static PHYS_OFFSET: AtomicU64 = AtomicU64::new(0);
static MAPPER: Mutex<Option<OffsetPageTable<'static>>> = Mutex::new(None);
static FRAMES: Mutex<Option<BootFrameAllocator>> = Mutex::new(None);
static USABLE: spin::Once<&'static MemoryRegions> = spin::Once::new();

#[cfg(target_os = "none")]
#[global_allocator]
static ALLOCATOR: IrqSafeHeap = IrqSafeHeap(talc::TalcLock::new(talc::source::Manual));

/// The heap: `talc`, a binned allocator (free gaps in 191 size classes, a bitmap of the
/// non-empty ones). An allocation (alignment up to 32 bytes) takes the first gap of the first
/// class whose gaps all fit it, and a free merges with its neighbours, in constant time however
/// fragmented the heap is (a first-fit list walks past every gap too small; docs/benchmark.md);
/// only when no such class has a gap does it search the class just below, so an allocation
/// fails only when no gap fits it. `Manual`: the heap is the region `init` claims,
/// grown by hand ([`extend_heap`]) before more CPUs come online.
///
/// Interrupts are disabled while its lock is held: an interrupt handler that allocates (a
/// timer callback arming the next timer) must not spin on a lock that the code it interrupted
/// holds on the same CPU.
#[cfg(target_os = "none")]
struct IrqSafeHeap(talc::TalcLock<spin::Mutex<()>, talc::source::Manual>);

/// Counts a heap allocation or free made inside an interrupt handler on this CPU (the report's
/// `interrupt_allocations` / `interrupt_frees`: what the timer path promises not to do).
#[cfg(target_os = "none")]
#[inline]
fn count_in_interrupt(counter: fn(&super::smp::percpu::PerCpu) -> &core::sync::atomic::AtomicU64) {
    use super::smp::percpu;
    if percpu::ready() {
        let cpu = percpu::this_cpu();
        if cpu.in_interrupt() && !cpu.in_call.load(Ordering::Relaxed) {
            let c = counter(cpu);
            // Only this CPU writes it, and an interrupt on it finishes before this resumes.
            c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        }
    }
}

#[cfg(target_os = "none")]
// SAFETY: `alloc` and `dealloc` forward to `TalcLock`'s `GlobalAlloc`, which is sound;
// `realloc` resizes in place through the same lock or falls back to `alloc`, copy and
// `dealloc`, as `GlobalAlloc`'s default does. Disabling interrupts around them changes nothing
// the allocator relies on.
unsafe impl core::alloc::GlobalAlloc for IrqSafeHeap {
    unsafe fn alloc(&self, layout: core::alloc::Layout) -> *mut u8 {
        count_in_interrupt(|c| &c.irq_heap_allocs);
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, passed on unchanged.
        x86_64::instructions::interrupts::without_interrupts(|| unsafe { self.0.alloc(layout) })
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: core::alloc::Layout) {
        count_in_interrupt(|c| &c.irq_heap_frees);
        // SAFETY: as for `alloc`: `ptr` and `layout` come from this allocator.
        x86_64::instructions::interrupts::without_interrupts(|| unsafe { self.0.dealloc(ptr, layout) })
    }
    /// In place where the neighbouring gap allows (interrupts off for that only); otherwise a
    /// new block, with the copy done as interrupts were (a large `Vec` growing must not hold
    /// interrupts off for its copy).
    unsafe fn realloc(&self, ptr: *mut u8, layout: core::alloc::Layout, new_size: usize) -> *mut u8 {
        use x86_64::instructions::interrupts::without_interrupts;
        count_in_interrupt(|c| &c.irq_heap_allocs);
        // SAFETY: the caller guarantees `ptr` was allocated here with `layout` and that
        // `new_size` is nonzero, which is what `try_realloc_in_place` asks.
        if without_interrupts(|| unsafe { self.0.lock().try_realloc_in_place(ptr, layout, new_size) }) {
            return ptr;
        }
        // SAFETY: the caller guarantees `new_size`, rounded up to `layout.align()`, does not
        // overflow `isize`, and the alignment comes from a valid `Layout`.
        let new_layout = unsafe { core::alloc::Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: `new_layout` has a nonzero size (the caller's `new_size`).
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both blocks are live, distinct, and at least the smaller size long;
            // `ptr` was allocated here with `layout`, so it may be freed with it.
            unsafe {
                core::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        new
    }
}

/// Bytes of heap mapped so far (the boot heap plus every extension).
static HEAP_MAPPED: AtomicU64 = AtomicU64::new(0);

/// The heap's size now.
pub fn heap_size() -> u64 {
    HEAP_MAPPED.load(Ordering::Relaxed)
}

/// Where the allocator's heap ends (as `talc` returned it from `claim` or `extend`).
#[cfg(target_os = "none")]
static HEAP_END: Mutex<Option<u64>> = Mutex::new(None);

/// Grows the heap by `bytes` (rounded up to pages) of fresh frames mapped right after it;
/// `Err` with how much it could not map (frames or the window ran out; what was mapped is
/// kept and handed to the allocator).
pub fn extend_heap(bytes: u64) -> Result<(), u64> {
    let pages = bytes.div_ceil(4096);
    let flags = PageTableFlags::PRESENT | PageTableFlags::WRITABLE | PageTableFlags::NO_EXECUTE;
    let start = HEAP_MAPPED.load(Ordering::Relaxed);
    let mut mapped = 0;
    while mapped < pages {
        let end = start + mapped * 4096;
        if end + 4096 > HEAP_LIMIT {
            break;
        }
        let page = Page::containing_address(VirtAddr::new(HEAP_START + end));
        if map_range(page, 1, None, flags).is_err() {
            break;
        }
        mapped += 1;
    }
    let new_end = start + mapped * 4096;
    HEAP_MAPPED.store(new_end, Ordering::Relaxed);
    #[cfg(target_os = "none")]
    x86_64::instructions::interrupts::without_interrupts(|| {
        let mut end = HEAP_END.lock();
        if let Some(heap_end) = end.and_then(|e| core::ptr::NonNull::new(e as *mut u8)) {
            // SAFETY: HEAP_START + start .. + new_end was just mapped to fresh frames right
            // after the heap and is used for nothing else; `Manual` allows extending by hand,
            // and `heap_end` is what the allocator last returned for this heap.
            let grown = unsafe { ALLOCATOR.0.lock().extend(heap_end, (HEAP_START + new_end) as *mut u8) };
            *end = Some(grown.as_ptr() as u64);
        }
    });
    if mapped == pages { Ok(()) } else { Err((pages - mapped) * 4096) }
}

/// Bytes of the kernel heap in use now.
pub fn heap_used() -> u64 {
    #[cfg(target_os = "none")]
    {
        x86_64::instructions::interrupts::without_interrupts(|| {
            ALLOCATOR.0.lock().counters().allocated_bytes as u64
        })
    }
    #[cfg(not(target_os = "none"))]
    {
        0
    }
}

/// Frames handed out since boot (page tables, mappings, AP stacks), in bytes.
pub fn frames_allocated() -> u64 {
    FRAMES_HANDED_OUT.load(Ordering::Relaxed) * 4096
}

static FRAMES_HANDED_OUT: AtomicU64 = AtomicU64::new(0);

/// Hands out the usable frames of the boot memory map, lowest first, never twice. Frames are not
/// returned: nothing the kernel maps at boot is ever unmapped.
struct BootFrameAllocator {
    regions: &'static MemoryRegions,
    region: usize,
    next: u64,
}

// SAFETY: `allocate_frame` returns only frames the memory map marks usable, each at most once
// (the cursor only moves forward), and none that the bootloader or the kernel uses otherwise.
unsafe impl FrameAllocator<Size4KiB> for BootFrameAllocator {
    fn allocate_frame(&mut self) -> Option<PhysFrame> {
        while let Some(r) = self.regions.get(self.region) {
            let start = self.next.max(r.start).max(LOW_MEMORY_LIMIT).next_multiple_of(4096);
            if r.kind == MemoryRegionKind::Usable && start + 4096 <= r.end {
                self.next = start + 4096;
                FRAMES_HANDED_OUT.fetch_add(1, Ordering::Relaxed);
                return Some(PhysFrame::containing_address(PhysAddr::new(start)));
            }
            self.region += 1;
        }
        None
    }
}

pub fn phys_to_virt(phys: u64) -> VirtAddr {
    let offset = PHYS_OFFSET.load(Ordering::Relaxed);
    assert!(offset != 0, "memory::phys_to_virt before memory::init");
    VirtAddr::new(offset + phys)
}

/// The memory map's usable RAM ranges as `(start, end)`, end exclusive.
pub fn usable_ram() -> impl Iterator<Item = (u64, u64)> {
    USABLE
        .get()
        .into_iter()
        .flat_map(|r| r.iter())
        .filter(|r| r.kind == MemoryRegionKind::Usable)
        .map(|r| (r.start, r.end))
}

/// Whether a memory map region is RAM, whatever it holds now: usable, the bootloader's (kernel
/// image, page tables, boot info, stacks), or the firmware's ACPI tables (E820 types 3 and 4,
/// UEFI types 9 and 10). Other firmware regions may cover device registers and do not count.
pub fn is_ram(kind: MemoryRegionKind) -> bool {
    matches!(
        kind,
        MemoryRegionKind::Usable
            | MemoryRegionKind::Bootloader
            | MemoryRegionKind::UnknownBios(3 | 4)
            | MemoryRegionKind::UnknownUefi(9 | 10)
    )
}

/// The memory map's RAM ranges (see [`is_ram`]) as `(start, end)`, end exclusive: no device
/// registers may be mapped there.
pub fn ram() -> impl Iterator<Item = (u64, u64)> {
    USABLE.get().into_iter().flat_map(|r| r.iter()).filter(|r| is_ram(r.kind)).map(|r| (r.start, r.end))
}

/// Takes a usable page below 1 MiB (but not page 0) for real-mode code, once: the frame
/// allocator never hands these out.
pub fn low_free_page() -> Option<u64> {
    static TAKEN: AtomicU64 = AtomicU64::new(0);
    if let Some(taken) = core::num::NonZeroU64::new(TAKEN.load(Ordering::Relaxed)) {
        return Some(taken.get());
    }
    let page = usable_ram().filter(|&(s, _)| s < LOW_MEMORY_LIMIT).find_map(|(s, e)| {
        let first = s.max(0x1000).next_multiple_of(4096);
        (first + 4096 <= e.min(LOW_MEMORY_LIMIT)).then_some(first)
    })?;
    TAKEN.store(page, Ordering::Relaxed);
    Some(page)
}

/// A second free page below 1 MiB, right above [`low_free_page`]'s in the same usable range (the
/// ACPI waking vector's own copy of the start-up code), reserved on the first call like it.
pub fn second_low_free_page() -> Option<u64> {
    static TAKEN: AtomicU64 = AtomicU64::new(0);
    if let Some(taken) = core::num::NonZeroU64::new(TAKEN.load(Ordering::Relaxed)) {
        return Some(taken.get());
    }
    let first = low_free_page()?;
    let page = first + 4096;
    usable_ram().any(|(s, e)| s <= first && page + 4096 <= e.min(LOW_MEMORY_LIMIT)).then_some(())?;
    TAKEN.store(page, Ordering::Relaxed);
    Some(page)
}

/// Maps `pages` to fresh frames (when `phys` is `None`) or to the frames from `phys` on.
pub fn map_range(
    first: Page<Size4KiB>,
    count: u64,
    phys: Option<PhysAddr>,
    flags: PageTableFlags,
) -> Result<(), MapToError<Size4KiB>> {
    let mut mapper = MAPPER.lock();
    let mapper = mapper.as_mut().expect("memory::map_range before memory::init");
    let mut frames = FRAMES.lock();
    let frames = frames.as_mut().expect("memory::map_range before memory::init");
    for i in 0..count {
        let page = first + i;
        let frame = match phys {
            Some(p) => PhysFrame::containing_address(p + i * 4096),
            None => frames.allocate_frame().ok_or(MapToError::FrameAllocationFailed)?,
        };
        // SAFETY: the pages lie in a window of the address space that only this module hands
        // out (heap, MMIO), each page once; the frames are fresh usable RAM or device memory
        // that the caller (mmio.rs) checked is not RAM.
        unsafe { mapper.map_to(page, frame, flags, frames)? }.flush();
    }
    Ok(())
}

/// Reads the u64 at `addr` if the current page tables map it, else `None`: for the fault
/// handlers, which must not fault again while printing a stack.
pub fn read_u64_if_mapped(addr: u64) -> Option<u64> {
    let offset = PHYS_OFFSET.load(Ordering::Relaxed);
    if offset == 0 || addr % 8 != 0 || VirtAddr::try_new(addr).is_err() {
        return None;
    }
    let mut table = Cr3::read().0.start_address().as_u64();
    for level in (1..=4u32).rev() {
        let index = (addr >> (12 + 9 * (level - 1))) & 0x1ff;
        // SAFETY: `table` is the physical address of a page table reached from CR3, and the
        // bootloader maps all physical memory at `offset`; the entry is 8-aligned inside it.
        let entry = unsafe { core::ptr::read_volatile((offset + table + index * 8) as *const u64) };
        let flags = PageTableFlags::from_bits_truncate(entry);
        if !flags.contains(PageTableFlags::PRESENT) {
            return None;
        }
        if level == 1 || (level <= 3 && flags.contains(PageTableFlags::HUGE_PAGE)) {
            // SAFETY: the walk just showed `addr` is mapped, and it is 8-aligned, so the read
            // stays within one present page.
            return Some(unsafe { core::ptr::read_volatile(addr as *const u64) });
        }
        table = entry & 0x000f_ffff_ffff_f000;
    }
    None
}

/// Sets up paging access, the frame allocator and the heap.
pub fn init(boot_info: &'static BootInfo) {
    let offset = boot_info
        .physical_memory_offset
        .into_option()
        .expect("BOOTLOADER_CONFIG asks for the physical memory mapping");
    PHYS_OFFSET.store(offset, Ordering::Relaxed);
    USABLE.call_once(|| &boot_info.memory_regions);
    let (l4_frame, _) = Cr3::read();
    let l4_ptr = (offset + l4_frame.start_address().as_u64()) as *mut PageTable;
    // SAFETY: CR3 holds the active level-4 table, reachable through the physical-memory map;
    // this is the only `&mut` to it, kept behind `MAPPER`'s lock from here on.
    let mapper = unsafe { OffsetPageTable::new(&mut *l4_ptr, VirtAddr::new(offset)) };
    *MAPPER.lock() = Some(mapper);
    *FRAMES.lock() = Some(BootFrameAllocator { regions: &boot_info.memory_regions, region: 0, next: 0 });

    let usable: u64 = usable_ram().map(|(s, e)| e - s).sum();
    log::info!(
        "{} MiB usable in {} regions; physical memory mapped at {offset:#x}",
        usable >> 20,
        boot_info.memory_regions.iter().filter(|r| r.kind == MemoryRegionKind::Usable).count()
    );

    let heap_first = Page::containing_address(VirtAddr::new(HEAP_START));
    let flags = PageTableFlags::PRESENT | PageTableFlags::WRITABLE | PageTableFlags::NO_EXECUTE;
    map_range(heap_first, HEAP_SIZE / 4096, None, flags).expect("mapping the kernel heap");
    #[cfg(target_os = "none")]
    {
        // SAFETY: HEAP_START..+HEAP_SIZE was just mapped to fresh frames and is used for nothing
        // else, from now on only through the allocator; `Manual` allows claiming it by hand.
        let claimed = x86_64::instructions::interrupts::without_interrupts(|| unsafe {
            ALLOCATOR.0.lock().claim(HEAP_START as *mut u8, HEAP_SIZE as usize)
        });
        let end = claimed.expect("the heap holds talc's metadata");
        *HEAP_END.lock() = Some(end.as_ptr() as u64);
    }
    HEAP_MAPPED.store(HEAP_SIZE, Ordering::Relaxed);
    log::info!("kernel heap: {} MiB at {HEAP_START:#x}", HEAP_SIZE >> 20);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_in_use_counts_as_ram_but_reserved_firmware_ranges_do_not() {
        for kind in [
            MemoryRegionKind::Usable,
            MemoryRegionKind::Bootloader,
            MemoryRegionKind::UnknownBios(3),
            MemoryRegionKind::UnknownUefi(10),
        ] {
            assert!(is_ram(kind), "{kind:?}");
        }
        // E820 reserved and UEFI MMIO ranges hold device registers (PCIe ECAM, BIOS ROM, ...).
        for kind in [MemoryRegionKind::UnknownBios(2), MemoryRegionKind::UnknownUefi(11)] {
            assert!(!is_ram(kind), "{kind:?}");
        }
    }
}
