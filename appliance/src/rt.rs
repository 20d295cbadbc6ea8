//! Real-time setup: lock memory and raise the capture thread's priority.
//! Without the privileges for it the appliance runs on, with a warning.

/// Locks current and future memory and makes the calling thread
/// SCHED_FIFO; logs what could not be done.
pub fn enter_realtime() {
    use nix::sys::mman::{MlockAllFlags, mlockall};
    if let Err(e) = mlockall(MlockAllFlags::MCL_CURRENT | MlockAllFlags::MCL_FUTURE) {
        tracing::warn!(error = %e, "mlockall failed; page faults may add latency (needs CAP_IPC_LOCK)");
    }
    let param = libc::sched_param { sched_priority: 50 };
    // SAFETY: `param` is a valid sched_param for the duration of the call; pid 0 is this thread.
    let scheduled = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
    if scheduled != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "SCHED_FIFO refused; capture runs at normal priority (needs CAP_SYS_NICE)");
    }
}

/// Nice value of the admin API's threads: the data plane wins any
/// contention for the CPU.
pub const ADMIN_NICE: i32 = 10;

/// Lowers the calling thread's scheduling priority to `nice` (Linux nice
/// values are per thread). Failing is harmless and only logged.
pub fn lower_priority(nice: i32) {
    let tid = nix::unistd::gettid().as_raw();
    // SAFETY: setpriority takes plain integers; the target is this thread
    // (nix has no wrapper for it).
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, u32::try_from(tid).unwrap_or(0), nice) };
    if r != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "thread priority not lowered");
    }
}
