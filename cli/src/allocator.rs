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
