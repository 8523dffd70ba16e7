// SPDX-License-Identifier: Apache-2.0
//! vCPU threads: the `KVM_RUN` loop, exit dispatch, and the pause/resume/reset protocol.
//!
//! The main loop never touches a `VcpuFd`: each vCPU thread owns its fd. To pause, the main
//! loop sets the requested state and kicks the thread with [`kick_signal`]; the signal handler
//! sets `immediate_exit` in the thread's `kvm_run` page, so the kick cannot be lost between the
//! thread's last check and its next `KVM_RUN`. Parked threads wait on a condition variable and
//! apply a pending reset (fresh registers) before reporting that they are parked again.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use devices::GuestMemoryMmap;
use devices::{take_lifecycle_request, Bus, ResetCause, VmEvent, VmEventSink};
use kvm_bindings::{
    kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_sregs, kvm_vcpu_events, CpuId, Msrs,
    KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_UNINITIALIZED,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::Killable;

use crate::arch::regs::{setup_boot_registers, BootEntry, RegsError};
use crate::arch::{cpuid, lapic, msr};
use crate::error::chain;
pub use crate::migration::state::VcpuState;
use crate::signals::{kick_signal, set_kick_target};

/// Errors while creating or configuring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// A KVM vCPU ioctl failed.
    #[error("Cannot {0} for vCPU {1}")]
    Kvm(&'static str, u8, #[source] kvm_ioctls::Error),
    /// The boot registers could not be set.
    #[error("Cannot set the boot registers of vCPU {0}")]
    Regs(u8, #[source] RegsError),
    /// KVM accepted fewer boot MSRs than offered.
    #[error("KVM accepted {set} of {wanted} boot MSRs for vCPU {id}")]
    Msrs {
        /// vCPU index.
        id: u8,
        /// MSRs accepted.
        set: usize,
        /// MSRs offered.
        wanted: usize,
    },
    /// The thread could not be started.
    #[error("Cannot start the thread of vCPU {0}")]
    Spawn(u8, #[source] std::io::Error),
    /// The vCPU's thread ended before it did what was asked.
    #[error("The vCPU's thread has ended")]
    Gone,
    /// A saved state has MSRs KVM does not take back.
    #[error("KVM took {set} of {wanted} saved MSRs for vCPU {id}")]
    RestoreMsrs {
        /// vCPU index.
        id: u8,
        /// MSRs taken.
        set: usize,
        /// MSRs in the state.
        wanted: usize,
    },
}

/// What the main loop wants a vCPU thread to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Request {
    Run,
    Pause,
    Exit,
}

/// Work a parked vCPU thread does for the main loop on its own fd.
#[derive(Debug)]
enum Job {
    /// Read the vCPU's complete state.
    Save,
    /// Load a complete state.
    Restore(Box<VcpuState>),
}

#[derive(Debug)]
struct ControlState {
    request: Request,
    parked: bool,
    /// A job for the parked thread, and its result.
    job: Option<Job>,
    job_done: Option<Result<Option<Box<VcpuState>>, VcpuError>>,
    /// A boot entry to apply while parked (a reset), with the generation it belongs to.
    reset: Option<(u64, Option<BootEntry>)>,
    reset_done: u64,
    /// The thread id, known once the thread has started.
    tid: Option<i32>,
}

#[derive(Debug)]
struct Control {
    state: Mutex<ControlState>,
    changed: Condvar,
}

impl Control {
    fn lock(&self) -> MutexGuard<'_, ControlState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Everything a vCPU thread needs besides its fd.
pub struct VcpuContext {
    /// vCPU index (also its APIC id).
    pub id: u8,
    /// Guest memory, for writing boot tables on reset.
    pub mem: GuestMemoryMmap,
    /// Port I/O bus.
    pub pio: Bus,
    /// MMIO bus.
    pub mmio: Bus,
    /// Where to report reset/poweroff/fatal errors.
    pub events: VmEventSink,
}

/// The configured, not yet running, vCPU.
pub struct Vcpu {
    fd: VcpuFd,
    ctx: VcpuContext,
    initial_sregs: kvm_sregs,
    initial_lapic: kvm_lapic_state,
    msrs: Msrs,
    /// The MSRs KVM lists (saved with the state).
    msr_list: Vec<u32>,
}

impl Vcpu {
    /// Configures a freshly created vCPU: CPUID, MSRs, LAPIC LINT pins, and (for vCPU 0) the
    /// boot registers for `entry`.
    ///
    /// # Errors
    /// Fails when KVM rejects part of the configuration.
    pub fn configure(
        fd: VcpuFd,
        ctx: VcpuContext,
        supported_cpuid: &CpuId,
        msr_index_list: &[u32],
        count: u8,
        entry: &BootEntry,
    ) -> Result<Self, VcpuError> {
        let id = ctx.id;
        let mut cpuid = supported_cpuid.clone();
        cpuid::patch_cpuid(&mut cpuid, id, count);
        fd.set_cpuid2(&cpuid)
            .map_err(|e| VcpuError::Kvm("set CPUID", id, e))?;
        let initial_sregs = fd
            .get_sregs()
            .map_err(|e| VcpuError::Kvm("read special registers", id, e))?;
        let mut initial_lapic = fd
            .get_lapic()
            .map_err(|e| VcpuError::Kvm("read the local APIC", id, e))?;
        lapic::set_lint(&mut initial_lapic);
        let msrs = msr::boot_msrs(msr_index_list);
        let vcpu = Self {
            fd,
            ctx,
            initial_sregs,
            initial_lapic,
            msrs,
            msr_list: msr_index_list.to_vec(),
        };
        vcpu.reset_state(Some(entry).filter(|_| id == 0))?;
        Ok(vcpu)
    }

    /// Puts the vCPU in its power-on state; the boot vCPU gets `entry`'s registers, the others
    /// wait for INIT/SIPI.
    fn reset_state(&self, entry: Option<&BootEntry>) -> Result<(), VcpuError> {
        let id = self.ctx.id;
        let wanted = self.msrs.as_slice().len();
        let set = self
            .fd
            .set_msrs(&self.msrs)
            .map_err(|e| VcpuError::Kvm("set MSRs", id, e))?;
        if set != wanted {
            return Err(VcpuError::Msrs { id, set, wanted });
        }
        // Drop whatever exception, interrupt or NMI was pending when the vCPU was stopped:
        // it belongs to the previous boot.
        self.fd
            .set_vcpu_events(&kvm_vcpu_events::default())
            .map_err(|e| VcpuError::Kvm("clear pending events", id, e))?;
        self.fd
            .set_lapic(&self.initial_lapic)
            .map_err(|e| VcpuError::Kvm("set the local APIC", id, e))?;
        self.fd
            .set_sregs(&self.initial_sregs)
            .map_err(|e| VcpuError::Kvm("reset special registers", id, e))?;
        let mp_state = match entry {
            Some(entry) => {
                setup_boot_registers(&self.fd, &self.ctx.mem, entry)
                    .map_err(|e| VcpuError::Regs(id, e))?;
                KVM_MP_STATE_RUNNABLE
            }
            None => KVM_MP_STATE_UNINITIALIZED,
        };
        self.fd
            .set_mp_state(kvm_mp_state { mp_state })
            .map_err(|e| VcpuError::Kvm("set the run state", id, e))?;
        Ok(())
    }

    /// Reads the complete state (the thread is parked: nothing runs on this fd meanwhile).
    fn save_state(&self) -> Result<VcpuState, VcpuError> {
        let id = self.ctx.id;
        let kvm = |what: &'static str| move |e| VcpuError::Kvm(what, id, e);
        Ok(VcpuState {
            regs: self.fd.get_regs().map_err(kvm("read registers"))?,
            sregs: self.fd.get_sregs().map_err(kvm("read special registers"))?,
            xsave: self
                .fd
                .get_xsave()
                .map_err(kvm("read the extended state"))?,
            xcrs: self.fd.get_xcrs().map_err(kvm("read the XCRs"))?,
            lapic: self.fd.get_lapic().map_err(kvm("read the local APIC"))?,
            msrs: self.read_msrs()?,
            mp_state: self.fd.get_mp_state().map_err(kvm("read the run state"))?,
            events: self
                .fd
                .get_vcpu_events()
                .map_err(kvm("read pending events"))?,
            debugregs: self
                .fd
                .get_debug_regs()
                .map_err(kvm("read debug registers"))?,
        })
    }

    /// Every listed MSR KVM can read: `KVM_GET_MSRS` stops at the first it cannot, so the
    /// rest is asked again past that one.
    fn read_msrs(&self) -> Result<Vec<(u32, u64)>, VcpuError> {
        let id = self.ctx.id;
        let mut out = Vec::new();
        let mut rest: &[u32] = &self.msr_list;
        while !rest.is_empty() {
            let entries: Vec<kvm_msr_entry> = rest
                .iter()
                .take(256)
                .map(|&index| kvm_msr_entry {
                    index,
                    ..Default::default()
                })
                .collect();
            let mut msrs = Msrs::from_entries(&entries).map_err(|_| VcpuError::Msrs {
                id,
                set: 0,
                wanted: entries.len(),
            })?;
            let n = self
                .fd
                .get_msrs(&mut msrs)
                .map_err(|e| VcpuError::Kvm("read MSRs", id, e))?;
            out.extend(msrs.as_slice()[..n].iter().map(|e| (e.index, e.data)));
            // Skip the one KVM could not read (if any) and go on.
            rest = &rest[(n + usize::from(n < entries.len())).min(rest.len())..];
        }
        Ok(out)
    }

    /// Loads a complete state, in the order KVM needs (MSRs and special registers before the
    /// extended state and the APIC; the run state and general registers last).
    fn restore_state(&self, s: &VcpuState) -> Result<(), VcpuError> {
        let id = self.ctx.id;
        let kvm = |what: &'static str| move |e| VcpuError::Kvm(what, id, e);
        let entries: Vec<kvm_msr_entry> = s
            .msrs
            .iter()
            .map(|&(index, data)| kvm_msr_entry {
                index,
                data,
                ..Default::default()
            })
            .collect();
        let msrs = Msrs::from_entries(&entries).map_err(|_| VcpuError::RestoreMsrs {
            id,
            set: 0,
            wanted: entries.len(),
        })?;
        let set = self.fd.set_msrs(&msrs).map_err(kvm("set MSRs"))?;
        if set != entries.len() {
            return Err(VcpuError::RestoreMsrs {
                id,
                set,
                wanted: entries.len(),
            });
        }
        self.fd
            .set_sregs(&s.sregs)
            .map_err(kvm("set special registers"))?;
        // SAFETY: the state was read from a vCPU of a VM with the same CPUID (checked when the
        // snapshot was opened); KVM validates the buffer's contents.
        unsafe { self.fd.set_xsave(&s.xsave) }.map_err(kvm("set the extended state"))?;
        self.fd.set_xcrs(&s.xcrs).map_err(kvm("set the XCRs"))?;
        self.fd
            .set_debug_regs(&s.debugregs)
            .map_err(kvm("set debug registers"))?;
        self.fd
            .set_lapic(&s.lapic)
            .map_err(kvm("set the local APIC"))?;
        self.fd
            .set_mp_state(s.mp_state)
            .map_err(kvm("set the run state"))?;
        self.fd.set_regs(&s.regs).map_err(kvm("set registers"))?;
        self.fd
            .set_vcpu_events(&s.events)
            .map_err(kvm("set pending events"))?;
        Ok(())
    }

    /// Starts the vCPU's thread, parked if `paused`.
    ///
    /// # Errors
    /// Fails when the thread cannot be created.
    pub fn start(self, paused: bool) -> Result<VcpuHandle, VcpuError> {
        let id = self.ctx.id;
        let control = Arc::new(Control {
            state: Mutex::new(ControlState {
                request: if paused { Request::Pause } else { Request::Run },
                parked: false,
                job: None,
                job_done: None,
                reset: None,
                reset_done: 0,
                tid: None,
            }),
            changed: Condvar::new(),
        });
        let thread_control = control.clone();
        let thread = std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || self.run(&thread_control))
            .map_err(|e| VcpuError::Spawn(id, e))?;
        Ok(VcpuHandle { thread, control })
    }

    fn run(mut self, control: &Control) {
        let ptr: *mut u8 = &mut self.fd.get_kvm_run().immediate_exit;
        set_kick_target(ptr);
        // Confined before the guest runs a single instruction here.
        if let Err(e) = crate::seccomp::confine(crate::seccomp::ThreadKind::Vcpu) {
            self.ctx.events.send(VmEvent::Fatal(chain(&e)));
            return;
        }
        {
            let mut st = control.lock();
            // SAFETY: gettid has no preconditions.
            st.tid = Some(unsafe { libc::gettid() });
            control.changed.notify_all();
        }
        while self.wait_until_runnable(control) {
            self.run_once(control);
        }
        set_kick_target(std::ptr::null_mut());
    }

    /// Parks while the main loop asks for a pause (applying resets); false means exit.
    fn wait_until_runnable(&mut self, control: &Control) -> bool {
        let mut st = control.lock();
        loop {
            match st.request {
                Request::Exit => return false,
                Request::Run => {
                    st.parked = false;
                    return true;
                }
                Request::Pause => {
                    if let Some(job) = st.job.take() {
                        st.job_done = Some(match job {
                            Job::Save => self.save_state().map(|s| Some(Box::new(s))),
                            Job::Restore(state) => self.restore_state(&state).map(|()| None),
                        });
                        control.changed.notify_all();
                    }
                    if let Some((generation, entry)) = st.reset.take() {
                        self.complete_pending_exit();
                        if let Err(e) = self.reset_state(entry.as_ref()) {
                            self.ctx
                                .events
                                .send(VmEvent::Fatal(format!("Reset failed: {}", chain(&e))));
                        }
                        st.reset_done = generation;
                    }
                    if !st.parked {
                        st.parked = true;
                    }
                    control.changed.notify_all();
                    st = control.changed.wait(st).unwrap_or_else(|e| e.into_inner());
                }
            }
        }
    }

    /// Lets KVM finish the operation of the last exit (the port or MMIO access this thread
    /// handled) without running guest code. KVM completes it only at the next `KVM_RUN`
    /// (KVM's API documentation of `KVM_RUN` and `immediate_exit`), so a reset that set new
    /// registers first would have the previous boot's instruction completed on top of them
    /// (for an emulated instruction, its register results written back).
    fn complete_pending_exit(&mut self) {
        self.fd.set_kvm_immediate_exit(1);
        // With immediate_exit set, KVM_RUN completes what is pending and returns EINTR.
        let _ = self.fd.run();
        self.fd.set_kvm_immediate_exit(0);
    }

    fn run_once(&mut self, control: &Control) {
        let outcome = match self.fd.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                if !self.ctx.pio.read(u64::from(port), data) {
                    data.fill(0xff);
                }
                return;
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                self.ctx.pio.write(u64::from(port), data);
                if take_lifecycle_request() {
                    self.park_for_main_loop(control);
                }
                return;
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                if !self.ctx.mmio.read(addr, data) {
                    data.fill(0xff);
                }
                return;
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                self.ctx.mmio.write(addr, data);
                if take_lifecycle_request() {
                    self.park_for_main_loop(control);
                }
                return;
            }
            Ok(VcpuExit::Hlt) => return,
            Ok(VcpuExit::Shutdown) => Stop::Event(VmEvent::Reset(ResetCause::TripleFault)),
            Ok(VcpuExit::InternalError) => Stop::Internal,
            Ok(VcpuExit::FailEntry(reason, cpu)) => Stop::FailEntry(reason, cpu),
            Ok(other) => Stop::Other(format!("{other:?}")),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                self.fd.set_kvm_immediate_exit(0);
                return;
            }
            Err(e) => Stop::Other(format!("KVM_RUN error: {e}")),
        };
        let event = self.describe(outcome);
        // Park until the main loop decides (reset or exit): running on would repeat the
        // failure or race the reset.
        self.park_for_main_loop(control);
        self.ctx.events.send(event);
        // Parked already: the flag that send() may have set (a reset) must not park this
        // vCPU again at its first device write after the reset.
        take_lifecycle_request();
    }

    /// Stops this vCPU from entering the guest again until the main loop, which has a request
    /// from it (a reset, a power-off, a fatal error), resumes or ends it. A pause of the whole
    /// VM requested meanwhile is kept.
    fn park_for_main_loop(&self, control: &Control) {
        let mut st = control.lock();
        if st.request == Request::Run {
            st.request = Request::Pause;
        }
    }

    /// Turns a stop reason into the event for the main loop, with the guest RIP for errors.
    fn describe(&mut self, stop: Stop) -> VmEvent {
        let id = self.ctx.id;
        let what = match stop {
            Stop::Event(event) => return event,
            Stop::Internal => {
                // SAFETY: the exit reason was KVM_EXIT_INTERNAL_ERROR, so `internal` is the
                // active member of the exit union.
                let sub = unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal.suberror };
                let name = match sub {
                    1 => " (emulation failure)",
                    2 => " (simultaneous exceptions)",
                    3 => " (delivery event failed)",
                    _ => "",
                };
                format!("KVM internal error, suberror {sub}{name}")
            }
            Stop::FailEntry(reason, cpu) => {
                format!("KVM entry failure, hardware reason {reason:#x} on host CPU {cpu}")
            }
            Stop::Other(exit) => format!("unexpected KVM exit {exit}"),
        };
        let rip = self
            .fd
            .get_regs()
            .map(|r| format!("{:#x}", r.rip))
            .unwrap_or_else(|_| "unknown".into());
        VmEvent::Fatal(format!("{what} on vCPU {id} at RIP {rip}"))
    }
}

/// Why a vCPU stopped running guest code.
enum Stop {
    /// A request the main loop handles (reset on triple fault).
    Event(VmEvent),
    /// `KVM_EXIT_INTERNAL_ERROR`.
    Internal,
    /// `KVM_EXIT_FAIL_ENTRY` with the hardware reason and host CPU.
    FailEntry(u64, u32),
    /// Any other exit, or a failed `KVM_RUN`.
    Other(String),
}

/// The main loop's handle on a running vCPU thread.
#[derive(Debug)]
pub struct VcpuHandle {
    thread: JoinHandle<()>,
    control: Arc<Control>,
}

impl VcpuHandle {
    /// The vCPU thread's Linux thread id (as `query-cpus-fast` reports it).
    pub fn thread_id(&self) -> Option<i32> {
        let mut st = self.control.lock();
        while st.tid.is_none() && !self.thread.is_finished() {
            st = self
                .control
                .changed
                .wait(st)
                .unwrap_or_else(|e| e.into_inner());
        }
        st.tid
    }

    fn kick(&self) {
        // The thread may have exited already (ESRCH); nothing to kick then.
        let _ = self.thread.kill(kick_signal());
    }

    fn set_request(&self, request: Request) {
        self.control.lock().request = request;
        self.control.changed.notify_all();
    }

    /// Asks the thread to park; see [`wait_parked`](Self::wait_parked).
    pub fn request_pause(&self) {
        self.set_request(Request::Pause);
        self.kick();
    }

    /// Waits until the thread is parked, re-kicking it in case it was between signal checks.
    pub fn wait_parked(&self) {
        self.wait_parked_unless(|| false);
    }

    /// As [`wait_parked`](Self::wait_parked), but gives up (without kicking) while the
    /// thread waits on a missing page of guest RAM (postcopy): it cannot stop before the
    /// page arrives, and then parks, its pause request still set, before running guest code
    /// again. `true` when it is parked.
    pub fn wait_stopped(&self) -> bool {
        let tid = self.control.lock().tid;
        let blocked = || tid.is_some_and(crate::migration::faults::is_blocked);
        self.wait_parked_unless(blocked);
        self.control.lock().parked
    }

    fn wait_parked_unless(&self, give_up: impl Fn() -> bool) {
        let mut st = self.control.lock();
        while !st.parked && !self.thread.is_finished() {
            if give_up() {
                return;
            }
            let (guard, timeout) = self
                .control
                .changed
                .wait_timeout(st, std::time::Duration::from_millis(20))
                .unwrap_or_else(|e| e.into_inner());
            st = guard;
            if timeout.timed_out() && !st.parked {
                drop(st);
                self.kick();
                st = self.control.lock();
            }
        }
    }

    /// Hands a parked vCPU its power-on state (`entry` for the boot vCPU) and waits until it
    /// has applied it.
    pub fn reset(&self, generation: u64, entry: Option<BootEntry>) {
        let mut st = self.control.lock();
        st.reset = Some((generation, entry));
        self.control.changed.notify_all();
        while st.reset_done != generation && !self.thread.is_finished() {
            st = self
                .control
                .changed
                .wait(st)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Runs `job` on the parked vCPU's thread and waits for its result.
    fn run_job(&self, job: Job) -> Result<Option<Box<VcpuState>>, VcpuError> {
        let mut st = self.control.lock();
        st.job = Some(job);
        st.job_done = None;
        self.control.changed.notify_all();
        loop {
            if let Some(done) = st.job_done.take() {
                return done;
            }
            if self.thread.is_finished() {
                return Err(VcpuError::Gone);
            }
            st = self
                .control
                .changed
                .wait_timeout(st, std::time::Duration::from_millis(50))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The complete state of a parked vCPU.
    ///
    /// # Errors
    /// KVM refused to report part of it, or the thread is gone.
    pub fn save(&self) -> Result<VcpuState, VcpuError> {
        match self.run_job(Job::Save)? {
            Some(state) => Ok(*state),
            None => Err(VcpuError::Gone),
        }
    }

    /// Loads `state` into a parked vCPU.
    ///
    /// # Errors
    /// KVM refused part of it, or the thread is gone.
    pub fn restore(&self, state: VcpuState) -> Result<(), VcpuError> {
        self.run_job(Job::Restore(Box::new(state))).map(drop)
    }

    /// Lets a parked vCPU run.
    pub fn resume(&self) {
        self.set_request(Request::Run);
    }

    /// Stops the thread and waits for it.
    pub fn stop(self) {
        self.set_request(Request::Exit);
        self.kick();
        // A vCPU thread never panics (panic = abort); join only fails on a panic.
        let _ = self.thread.join();
    }
}
