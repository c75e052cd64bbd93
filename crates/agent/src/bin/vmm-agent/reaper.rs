//! The one place that waits for child processes. As PID 1 the agent inherits every orphan of the
//! guest and must reap them; a command's status must still reach the connection that started it.
//!
//! The reaper also takes the ACPI power button: the kernel's tiny power-button driver sends PID 1
//! SIGRTMIN+4 (what vmm presses on SIGTERM), and the agent powers off.
//!
//! SIGCHLD is blocked in every thread and taken with sigwait(2) by the reaper thread, which then
//! reaps everything that exited (`waitpid(-1, WNOHANG)`) under the registry's lock. A command is
//! registered under the same lock, held from before it is spawned: the reaper cannot take a
//! status before the command is known, nor the status of a child that failed to exec, which
//! std's spawn waits for itself.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// exit(code).
    Exited(i32),
    /// Killed by this signal.
    Signaled(i32),
}

#[derive(Default)]
struct Registry {
    /// Commands whose end someone waits for, with their status once reaped.
    waiting: HashMap<u32, Option<Status>>,
}

/// The reaper's shared state.
#[derive(Clone)]
pub struct Reaper(Arc<(Mutex<Registry>, Condvar)>);

/// Held while spawning; [`SpawnGuard::register`] then names the new child.
pub struct SpawnGuard<'a>(MutexGuard<'a, Registry>);

impl SpawnGuard<'_> {
    /// Records `pid` as a command whose status [`Reaper::wait`] will return.
    pub fn register(mut self, pid: u32) {
        self.0.waiting.insert(pid, None);
    }
}

impl Reaper {
    /// Blocks SIGCHLD and the power button's signal in this thread (and so in every thread started after) and starts the reaper.
    pub fn start() -> io::Result<Reaper> {
        let set = sigchld_set();
        // SAFETY: `set` is an initialised sigset; the old mask is not wanted.
        let ret = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if ret != 0 {
            return Err(io::Error::from_raw_os_error(ret));
        }
        let reaper = Reaper(Arc::default());
        let r = reaper.clone();
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || r.run())?;
        Ok(reaper)
    }

    /// Takes the lock for a spawn (see the module's text).
    pub fn lock(&self) -> SpawnGuard<'_> {
        SpawnGuard(self.0 .0.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Waits for the registered `pid` to end.
    pub fn wait(&self, pid: u32) -> Status {
        let (lock, cond) = &*self.0;
        let mut reg = lock.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(Some(status)) = reg.waiting.get(&pid) {
                let status = *status;
                reg.waiting.remove(&pid);
                return status;
            }
            reg = cond.wait(reg).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn run(self) {
        let set = sigchld_set();
        let (lock, cond) = &*self.0;
        loop {
            let mut sig = 0;
            // SAFETY: `set` is an initialised sigset and `sig` a valid out-pointer.
            unsafe { libc::sigwait(&set, &mut sig) };
            if sig == power_button() {
                crate::sys::power_off(false);
            }
            let mut reg = lock.lock().unwrap_or_else(|p| p.into_inner());
            let mut any = false;
            loop {
                let mut status = 0;
                // SAFETY: waitpid with a valid out-pointer; WNOHANG never blocks.
                let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
                if pid <= 0 {
                    break;
                }
                let Ok(pid) = u32::try_from(pid) else {
                    continue;
                };
                if let Some(slot) = reg.waiting.get_mut(&pid) {
                    *slot = Some(if libc::WIFSIGNALED(status) {
                        Status::Signaled(libc::WTERMSIG(status))
                    } else {
                        Status::Exited(libc::WEXITSTATUS(status))
                    });
                    any = true;
                }
            }
            drop(reg);
            if any {
                cond.notify_all();
            }
        }
    }
}

/// The signal the ACPI power button sends init: SIGRTMIN+4, as systemd reads it.
fn power_button() -> libc::c_int {
    libc::SIGRTMIN() + 4
}

fn sigchld_set() -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the zeroed set; sigaddset adds a valid signal.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        libc::sigaddset(&mut set, power_button());
        set
    }
}
