//! The extension's shared-memory regions (only with `shared_preload_libraries`): the
//! failure counters, the rate limiter and the audit queue each register one [`Region`]
//! from `_PG_init`; one `shmem_request_hook` asks for all of them and one
//! `shmem_startup_hook` creates (zeroed, then `init`) or attaches each, under
//! `AddinShmemInitLock`. [`Guard`] holds one LWLock for a scope.

use pgrx::pg_sys;
use std::ffi::CStr;
use std::sync::Mutex;

/// One named region with its own LWLock tranche.
pub struct Region {
    /// The `ShmemInitStruct` name.
    pub name: &'static CStr,
    /// The named LWLock tranche and how many locks it has (none: `attach` gets null).
    pub tranche: &'static CStr,
    pub locks: i32,
    /// Its size in bytes (from server-start settings only: asked at request time and
    /// again at startup).
    pub size: fn() -> usize,
    /// Fill a freshly created, zeroed region.
    pub init: unsafe fn(*mut u8),
    /// Remember the region and its locks (in the postmaster, inherited by every process).
    pub attach: unsafe fn(*mut u8, *mut pg_sys::LWLockPadded),
}

static REGIONS: Mutex<Vec<Region>> = Mutex::new(Vec::new());
static mut PREV_REQUEST: pg_sys::shmem_request_hook_type = None;
static mut PREV_STARTUP: pg_sys::shmem_startup_hook_type = None;

/// Register a region; a no-op unless the library is being preloaded.
pub fn register(region: Region) {
    if !unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        return;
    }
    let mut regions = REGIONS.lock().unwrap_or_else(|e| e.into_inner());
    if regions.is_empty() {
        unsafe {
            PREV_REQUEST = pg_sys::shmem_request_hook;
            pg_sys::shmem_request_hook = Some(on_request);
            PREV_STARTUP = pg_sys::shmem_startup_hook;
            pg_sys::shmem_startup_hook = Some(on_startup);
        }
    }
    regions.push(region);
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn on_request() {
    unsafe {
        if let Some(prev) = PREV_REQUEST {
            prev();
        }
        for r in REGIONS.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            pg_sys::RequestAddinShmemSpace((r.size)());
            if r.locks > 0 {
                pg_sys::RequestNamedLWLockTranche(r.tranche.as_ptr(), r.locks);
            }
        }
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn on_startup() {
    unsafe {
        if let Some(prev) = PREV_STARTUP {
            prev();
        }
        let init_lock = &raw mut (*pg_sys::MainLWLockArray.add(21)).lock; // AddinShmemInitLock
        pg_sys::LWLockAcquire(init_lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        for r in REGIONS.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let size = (r.size)();
            let mut found = false;
            let p = pg_sys::ShmemInitStruct(r.name.as_ptr(), size, &mut found) as *mut u8;
            if !found {
                std::ptr::write_bytes(p, 0, size);
                (r.init)(p);
            }
            let locks = if r.locks > 0 {
                pg_sys::GetNamedLWLockTranche(r.tranche.as_ptr())
            } else {
                std::ptr::null_mut()
            };
            (r.attach)(p, locks);
        }
        pg_sys::LWLockRelease(init_lock);
    }
}

/// One LWLock held until dropped (also when an ERROR unwinds; Postgres releases every
/// LWLock at abort anyway).
pub struct Guard(*mut pg_sys::LWLock);

impl Guard {
    /// # Safety
    /// `lock` is an initialised LWLock in shared memory.
    pub unsafe fn acquire(lock: *mut pg_sys::LWLock, mode: pg_sys::LWLockMode::Type) -> Guard {
        unsafe { pg_sys::LWLockAcquire(lock, mode) };
        Guard(lock)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        unsafe { pg_sys::LWLockRelease(self.0) };
    }
}
