//! SIGBUS-tolerant access to BAR mappings, for threads (the race stress, the benchmark and
//! `mmap-demo`).
//!
//! A revoked BAR mapping (memory disabled, reset, permanent DMABUF revoke) answers an access
//! with SIGBUS. The checks in `mmap.rs` run each such access in a forked child; the stress
//! needs several threads faulting at once, millions of times, so it uses the kernel's own
//! technique instead: an exception table. Every access that may fault is one instruction at
//! a known address in the assembly below; the process-wide SIGBUS handler looks up the
//! faulting instruction pointer, and if it is one of those, resumes at the matching fixup,
//! which makes the function return "faulted". A SIGBUS anywhere else restores the default
//! action and returns, so the instruction faults again and the process dies of SIGBUS as it
//! would without the handler. x86_64 only (the test VM).

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

pub const PAGE: u64 = 4096;
pub const M2: u64 = 2 << 20;
pub const G1: u64 = 1 << 30;

/// The multiplier of the offset-encoded pattern (also in the assembly below).
const PATTERN_MUL: u64 = 0x9e37_79b9_7f4a_7c15;

/// The offset-encoded pattern: the 64-bit word at BAR byte offset `8 * index` holds
/// `pattern(index, seed)`. Distinct for every word, so a page mapped at the wrong offset (a
/// wrong PFN) or a stale mapping (reads of a disabled BAR give all ones or zeroes) shows.
pub fn pattern(index: u64, seed: u64) -> u64 {
    index.wrapping_mul(PATTERN_MUL) ^ seed
}

std::arch::global_asm!(
    ".text",
    // u32 vt_fs_read64(const u64 *addr, u64 *out): 0, or 1 after a SIGBUS.
    ".globl vt_fs_read64",
    ".type vt_fs_read64,@function",
    "vt_fs_read64:",
    ".globl vt_fs_read64_insn",
    "vt_fs_read64_insn:",
    "    mov rax, qword ptr [rdi]",
    "    mov qword ptr [rsi], rax",
    "    xor eax, eax",
    "    ret",
    // u32 vt_fs_write64(u64 *addr, u64 value): 0, or 1 after a SIGBUS.
    ".globl vt_fs_write64",
    ".type vt_fs_write64,@function",
    "vt_fs_write64:",
    ".globl vt_fs_write64_insn",
    "vt_fs_write64_insn:",
    "    mov qword ptr [rdi], rsi",
    "    xor eax, eax",
    "    ret",
    ".globl vt_fs_fixup",
    "vt_fs_fixup:",
    "    mov eax, 1",
    "    ret",
    // u64 vt_fs_fill(u64 *addr, u64 nwords, u64 first_index, u64 seed): stores
    // pattern(first_index + i, seed) at addr[i] for i < nwords; returns how many words were
    // stored (less than nwords after a SIGBUS).
    ".globl vt_fs_fill",
    ".type vt_fs_fill,@function",
    "vt_fs_fill:",
    "    movabs r8, 0x9e3779b97f4a7c15",
    "    xor r9d, r9d",
    "2:",
    "    cmp r9, rsi",
    "    jae 3f",
    "    lea rax, [rdx + r9]",
    "    imul rax, r8",
    "    xor rax, rcx",
    ".globl vt_fs_fill_insn",
    "vt_fs_fill_insn:",
    "    mov qword ptr [rdi + r9*8], rax",
    "    inc r9",
    "    jmp 2b",
    "3:",
    "    mov rax, r9",
    "    ret",
    ".globl vt_fs_count_fixup",
    "vt_fs_count_fixup:",
    "    mov rax, r9",
    "    ret",
    // u64 vt_fs_check(const u64 *addr, u64 nwords, u64 first_index, u64 seed): the index
    // (from 0) of the first word that is not pattern(first_index + i, seed), nwords if all
    // are; after a SIGBUS the index reached with bit 63 set.
    ".globl vt_fs_check",
    ".type vt_fs_check,@function",
    "vt_fs_check:",
    "    movabs r8, 0x9e3779b97f4a7c15",
    "    xor r9d, r9d",
    "2:",
    "    cmp r9, rsi",
    "    jae 3f",
    "    lea rax, [rdx + r9]",
    "    imul rax, r8",
    "    xor rax, rcx",
    ".globl vt_fs_check_insn",
    "vt_fs_check_insn:",
    "    cmp rax, qword ptr [rdi + r9*8]",
    "    jne 3f",
    "    inc r9",
    "    jmp 2b",
    "3:",
    "    mov rax, r9",
    "    ret",
    ".globl vt_fs_check_fixup",
    "vt_fs_check_fixup:",
    "    mov rax, r9",
    "    bts rax, 63",
    "    ret",
);

extern "C" {
    fn vt_fs_read64(addr: *const u64, out: *mut u64) -> u32;
    fn vt_fs_write64(addr: *mut u64, value: u64) -> u32;
    fn vt_fs_fill(addr: *mut u64, nwords: u64, first_index: u64, seed: u64) -> u64;
    fn vt_fs_check(addr: *const u64, nwords: u64, first_index: u64, seed: u64) -> u64;
    // Labels inside the functions above, declared as functions only to take their address;
    // never called.
    fn vt_fs_read64_insn();
    fn vt_fs_write64_insn();
    fn vt_fs_fixup();
    fn vt_fs_fill_insn();
    fn vt_fs_count_fixup();
    fn vt_fs_check_insn();
    fn vt_fs_check_fixup();
}

/// SIGBUS signals the handler turned into a "faulted" return, process-wide.
static SIGBUS_CAUGHT: AtomicU64 = AtomicU64::new(0);

/// The fixup for a faulting instruction pointer, if it is one of ours.
fn fixup_for(rip: usize) -> Option<usize> {
    let addr = |f: unsafe extern "C" fn()| f as *const () as usize;
    let table: [(usize, usize); 4] = [
        (addr(vt_fs_read64_insn), addr(vt_fs_fixup)),
        (addr(vt_fs_write64_insn), addr(vt_fs_fixup)),
        (addr(vt_fs_fill_insn), addr(vt_fs_count_fixup)),
        (addr(vt_fs_check_insn), addr(vt_fs_check_fixup)),
    ];
    table.iter().find(|(insn, _)| *insn == rip).map(|(_, f)| *f)
}

extern "C" fn on_sigbus(_sig: libc::c_int, _info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid ucontext_t for an SA_SIGINFO handler; this thread is
    // the only one looking at it, and it is written back when the handler returns.
    let uc = unsafe { &mut *(ctx as *mut libc::ucontext_t) };
    let rip = uc.uc_mcontext.gregs[libc::REG_RIP as usize] as usize;
    if let Some(fix) = fixup_for(rip) {
        SIGBUS_CAUGHT.fetch_add(1, Ordering::Relaxed);
        uc.uc_mcontext.gregs[libc::REG_RIP as usize] = fix as i64;
        return;
    }
    // Not an access of ours: back to the default action; returning re-executes the
    // instruction, which faults again and kills the process with SIGBUS.
    // SAFETY: sigaction is async-signal-safe; the struct is fully initialized.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut());
    }
}

/// Install the SIGBUS handler (once per process).
pub fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: installs a handler that only reads and writes the signal context and an
        // atomic; every field of the struct is initialized (zeroed, then set).
        let r = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_sigbus as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut())
        };
        assert_eq!(r, 0, "sigaction(SIGBUS)");
    });
}

/// How many SIGBUS the handler absorbed so far.
pub fn sigbus_caught() -> u64 {
    SIGBUS_CAUGHT.load(Ordering::Relaxed)
}

/// Read the 64-bit word at `addr`; `None` if the access got SIGBUS.
///
/// `addr` must be 8-byte aligned and inside a mapping the caller keeps alive for the call
/// (any other fault than SIGBUS is not caught).
pub fn read64(addr: u64) -> Option<u64> {
    install();
    let mut v = 0u64;
    // SAFETY: by the contract above the address is mapped for the call; the access is one
    // instruction whose SIGBUS the handler turns into a return of 1. `v` is a live local.
    match unsafe { vt_fs_read64(addr as *const u64, &mut v) } {
        0 => Some(v),
        _ => None,
    }
}

/// Write the 64-bit word at `addr`; false if the access got SIGBUS. Same contract as
/// [`read64`], and nothing in this process may hold a Rust reference into that memory.
pub fn write64(addr: u64, v: u64) -> bool {
    install();
    // SAFETY: as in read64; the memory is device memory reached only through raw accesses.
    unsafe { vt_fs_write64(addr as *mut u64, v) == 0 }
}

/// Store the pattern for BAR word indexes `first_index..first_index + nwords` at `addr`;
/// the number of words stored (fewer after a SIGBUS).
pub fn fill(addr: u64, nwords: u64, first_index: u64, seed: u64) -> u64 {
    install();
    // SAFETY: as in write64, for the whole range.
    unsafe { vt_fs_fill(addr as *mut u64, nwords, first_index, seed) }
}

/// What [`check`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Check {
    Ok,
    /// The first word (index from `addr`) that differs.
    Mismatch(u64),
    /// SIGBUS at this word.
    Sigbus(u64),
}

/// Compare `nwords` words at `addr` with the pattern from `first_index`.
pub fn check(addr: u64, nwords: u64, first_index: u64, seed: u64) -> Check {
    install();
    // SAFETY: as in read64, for the whole range.
    let r = unsafe { vt_fs_check(addr as *const u64, nwords, first_index, seed) };
    if r & (1 << 63) != 0 {
        Check::Sigbus(r & !(1 << 63))
    } else if r == nwords {
        Check::Ok
    } else {
        Check::Mismatch(r)
    }
}

/// Minor faults of this process so far (all threads), from getrusage.
pub fn minflt() -> i64 {
    // SAFETY: getrusage writes one struct rusage into a zeroed local.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: see above.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    ru.ru_minflt
}

// ------------------------------------------------------------------------------------------
// Mappings
// ------------------------------------------------------------------------------------------

/// An inaccessible anonymous reservation of address space, to place mappings at chosen
/// alignments. Unmapped (with whatever was placed in it) on drop.
pub struct Reserve {
    pub addr: u64,
    pub len: u64,
}

impl Reserve {
    pub fn new(len: u64) -> io::Result<Reserve> {
        // SAFETY: a new anonymous PROT_NONE mapping where the kernel chooses.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Reserve {
            addr: p as u64,
            len,
        })
    }

    /// A reservation with room for `len` bytes at an address `skew` past a multiple of
    /// `align` (a power of two); returns it and that address.
    pub fn placed(len: u64, align: u64, skew: u64) -> io::Result<(Reserve, u64)> {
        let r = Reserve::new(len + align + skew)?;
        let at = r.addr.next_multiple_of(align) + skew;
        Ok((r, at))
    }
}

impl Drop for Reserve {
    fn drop(&mut self) {
        // SAFETY: the reservation (and any mapping placed in it, whose owners are gone or
        // replace themselves with PROT_NONE) belongs to this object.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len as usize) };
    }
}

/// A shared read-write mapping of a file (device fd or DMABUF fd). Unmapped on drop; one
/// placed at a fixed address (inside a [`Reserve`]) is replaced by PROT_NONE instead, so the
/// hole stays reserved.
pub struct Map {
    pub addr: u64,
    pub len: u64,
    fixed: bool,
}

impl Map {
    /// mmap(2) `len` bytes of `fd` at file offset `off`, `MAP_SHARED`, read-write; anywhere,
    /// or at `at`, which must lie inside a [`Reserve`] (or a [`Map`] being replaced) that
    /// the caller owns.
    pub fn new(fd: RawFd, at: Option<u64>, len: u64, off: u64) -> io::Result<Map> {
        let (addr, fixed) = match at {
            Some(a) => (a as *mut libc::c_void, libc::MAP_FIXED),
            None => (std::ptr::null_mut(), 0),
        };
        // SAFETY: a new mapping where the kernel chooses, or over the caller's own
        // reservation (contract above): no Rust object lives there.
        let p = unsafe {
            libc::mmap(
                addr,
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | fixed,
                fd,
                off as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Map {
            addr: p as u64,
            len,
            fixed: at.is_some(),
        })
    }
}

impl Drop for Map {
    fn drop(&mut self) {
        if self.fixed {
            // SAFETY: the range is this object's own mapping inside a reservation that
            // outlives it; an inaccessible anonymous mapping replaces it atomically.
            unsafe {
                libc::mmap(
                    self.addr as *mut libc::c_void,
                    self.len as usize,
                    libc::PROT_NONE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE,
                    -1,
                    0,
                );
            }
        } else {
            // SAFETY: the range is this object's own mapping; accesses to it are raw.
            unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len as usize) };
        }
    }
}

/// The /proc/self/maps line of the mapping that contains `addr`.
pub fn maps_line(addr: u64) -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .find(|l| {
            let range = l.split_whitespace().next().unwrap_or("");
            let Some((a, b)) = range.split_once('-') else {
                return false;
            };
            match (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                (Ok(a), Ok(b)) => (a..b).contains(&addr),
                _ => false,
            }
        })
        .map(str::to_string)
}

/// A small, fast PRNG (splitmix64) for the stress's random choices.
pub struct Rng(pub u64);

impl Rng {
    pub fn seeded(salt: u64) -> Rng {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Rng(t ^ salt.wrapping_mul(PATTERN_MUL) ^ u64::from(std::process::id()))
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(PATTERN_MUL);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform-ish in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An anonymous read-write mapping for the tests.
    fn anon(len: u64) -> u64 {
        // SAFETY: a new anonymous mapping; the tests only access it through the functions
        // under test and unmap it at the end.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        p as u64
    }

    #[test]
    fn fill_check_and_pattern_agree() {
        let a = anon(3 * PAGE);
        assert_eq!(fill(a, 3 * PAGE / 8, 100, 7), 3 * PAGE / 8);
        assert_eq!(read64(a), Some(pattern(100, 7)));
        assert_eq!(read64(a + 8 * 9), Some(pattern(109, 7)));
        assert_eq!(check(a, 3 * PAGE / 8, 100, 7), Check::Ok);
        assert_eq!(check(a, 3 * PAGE / 8, 101, 7), Check::Mismatch(0));
        assert!(write64(a + 8 * 5, 0));
        assert_eq!(check(a, 3 * PAGE / 8, 100, 7), Check::Mismatch(5));
        assert_eq!(check(a, 5, 100, 7), Check::Ok);
        // SAFETY: the test's own mapping.
        unsafe { libc::munmap(a as *mut libc::c_void, 3 * PAGE as usize) };
    }

    #[test]
    fn sigbus_is_caught_past_the_end_of_a_file() {
        // A shared mapping of a one-page file, two pages long: the second page is past EOF,
        // which the kernel answers with SIGBUS, as a revoked BAR mapping does.
        let path = std::env::temp_dir().join(format!("faultsafe-{}", std::process::id()));
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(PAGE).unwrap();
        drop(f);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let m = Map::new(std::os::fd::AsRawFd::as_raw_fd(&f), None, 2 * PAGE, 0).unwrap();
        let before = sigbus_caught();
        assert!(write64(m.addr, 42));
        assert_eq!(read64(m.addr), Some(42));
        assert_eq!(read64(m.addr + PAGE), None);
        assert!(!write64(m.addr + PAGE + 8, 1));
        assert_eq!(fill(m.addr, 2 * PAGE / 8, 0, 1), PAGE / 8);
        assert_eq!(check(m.addr, 2 * PAGE / 8, 0, 1), Check::Sigbus(PAGE / 8));
        assert_eq!(sigbus_caught() - before, 4);
        let line = maps_line(m.addr + 100).unwrap();
        assert!(line.contains("faultsafe-"), "{line}");
        drop(m);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn placed_reservations_are_aligned() {
        let (r, at) = Reserve::placed(4 * PAGE, M2, PAGE).unwrap();
        assert_eq!(at % M2, PAGE);
        assert!(at >= r.addr && at + 4 * PAGE <= r.addr + r.len);
        let mut g = Rng(1);
        assert!((0..100).all(|_| g.below(10) < 10));
    }
}
