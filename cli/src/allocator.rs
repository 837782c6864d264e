//! The allocator of the `shoal` and `shoal-bench` binaries: mimalloc instead of glibc's
//! malloc. A busy cluster clones and drops JSON values and API objects all the time; under
//! glibc `malloc`, `free` and their consolidation were about a third of all CPU while a lost
//! node's 1,000 pods were replaced (docs/performance.md, "The allocator"). Linking this
//! module is all it takes: the allocator and its options need no call.

use libmimalloc_sys::mi_option_set;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_arena_eager_commit` in mimalloc.h (v3, the `mi_option_e` enum); the Rust
/// bindings name no constant for it.
const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;

/// Sets mimalloc's options before the first allocation. By default mimalloc commits its
/// arenas eagerly on Linux, and memory freed in such an arena is never given back to the
/// kernel: an idle `shoal dev` held 28 MiB more than under glibc (94 against 66 MiB), memory
/// its start-up had used once. Committed on demand, freed memory is returned again, at no
/// cost to speed that `shoal-bench` could see. The first arena is made at the first
/// allocation, before `main`, so this runs as an ELF constructor, which the loader calls
/// before Rust's runtime allocates anything. (`MIMALLOC_ARENA_EAGER_COMMIT` in the
/// environment still decides when it is set.)
extern "C" fn configure() {
    // `getenv`, not `std::env`: nothing may allocate here.
    // SAFETY: a NUL-terminated name; no other thread runs yet to change the environment.
    let set = unsafe { !libc_getenv(c"MIMALLOC_ARENA_EAGER_COMMIT".as_ptr()).is_null() };
    if !set {
        // SAFETY: sets one of mimalloc's option values, a plain store; any value is valid.
        unsafe { mi_option_set(ARENA_EAGER_COMMIT, 0) };
    }
}

extern "C" {
    #[link_name = "getenv"]
    fn libc_getenv(name: *const std::ffi::c_char) -> *const std::ffi::c_char;
}

#[used]
#[link_section = ".init_array"]
static CONFIGURE: extern "C" fn() = configure;

#[cfg(test)]
mod tests {
    use super::ARENA_EAGER_COMMIT;

    /// What links this module gets both: Rust's allocations come from mimalloc, and the
    /// constructor ran before them (the linker keeps `.init_array` entries only when it
    /// keeps their object, so this would catch a build that dropped it).
    #[test]
    fn mimalloc_allocates_and_commits_its_arenas_on_demand() {
        let boxed = Box::new(7u64);
        let address = std::ptr::from_ref::<u64>(&boxed).cast::<std::ffi::c_void>();
        // SAFETY: asks mimalloc whether an address is in its heap; reads nothing at it.
        assert!(unsafe { libmimalloc_sys::mi_is_in_heap_region(address) });
        if std::env::var_os("MIMALLOC_ARENA_EAGER_COMMIT").is_none() {
            // SAFETY: reads one of mimalloc's option values.
            assert_eq!(
                unsafe { libmimalloc_sys::mi_option_get(ARENA_EAGER_COMMIT) },
                0
            );
        }
    }
}
