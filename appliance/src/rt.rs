//! Real-time setup: lock memory and raise the capture thread's priority.
//! Without the privileges for it the appliance runs on, with a warning.

/// Locks current and future memory and makes the calling thread
/// SCHED_FIFO; logs what could not be done.
pub fn enter_realtime() {
    // SAFETY: mlockall takes flags only and has no memory-safety preconditions.
    let locked = unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE) };
    if locked != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "mlockall failed; page faults may add latency (needs CAP_IPC_LOCK)");
    }
    let param = libc::sched_param { sched_priority: 50 };
    // SAFETY: `param` is a valid sched_param for the duration of the call; pid 0 is this thread.
    let scheduled = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
    if scheduled != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "SCHED_FIFO refused; capture runs at normal priority (needs CAP_SYS_NICE)");
    }
}
