// SPDX-License-Identifier: Apache-2.0
//! Image locking in QEMU's scheme, so that two vmm processes, one vmm given the same image
//! twice, and vmm and QEMU all exclude each other.
//!
//! QEMU's `file-posix` driver (`block/file-posix.c`: `raw_apply_lock_bytes`,
//! `raw_check_lock_bytes`, `raw_handle_perm_lock`) expresses the permissions of a user of an
//! image as open-file-description byte-range locks (`F_OFD_SETLK`), all of them *shared* read
//! locks of one byte:
//!
//! - byte `100 + bit` (`RAW_LOCK_PERM_BASE`) for each permission the user *holds*;
//! - byte `200 + bit` (`RAW_LOCK_SHARED_BASE`) for each permission it does *not share*.
//!
//! The bits are QEMU's `BLK_PERM_*`: consistent read (0), write (1), write unchanged (2) and
//! resize (3). (`BLK_PERM_GRAPH_MOD`, bit 4, was removed before QEMU 7.2, whose `BLK_PERM_ALL`
//! is `0x0f`; QEMU 6.1 and older may still lock bytes 104/204, which no newer user tests.)
//!
//! A user first takes its locks, then tests with `F_OFD_GETLK` (asking for an exclusive lock,
//! which only locks of *other* open file descriptions block) that nobody else unshares a
//! permission it holds (bytes `200 + bit`: `Failed to get "write" lock`) or holds a permission
//! it does not share (bytes `100 + bit`: `Failed to get shared "write" lock`). Taking before
//! testing means two racing users may both fail, never both succeed. OFD locks belong to the
//! open file description, not to the process, so two opens of one image in a single process
//! conflict as well; they are released when the file is closed.
//!
//! The permissions of a virtio-blk disk are those of QEMU 7.2's `blkconf_apply_backend_options`
//! (`hw/block/block.c`: held `BLK_PERM_CONSISTENT_READ`, plus `BLK_PERM_WRITE` unless
//! read-only; shared `CONSISTENT_READ | WRITE_UNCHANGED`, plus `RESIZE` as virtio-blk is
//! resizable, plus `WRITE` only with `share-rw=on`), which the `raw` format driver passes on to
//! its file node (`block/raw-format.c` `raw_child_perm`: `bdrv_default_perms`, keeping write
//! and resize only where the parent holds them). So the disk holds consistent read, plus write
//! unless it is read-only, and shares everything but write. So a read-write disk locks bytes 100, 101 and 201, a read-only one bytes 100 and
//! 201 — exactly what `/proc/locks` shows for QEMU 7.2 with
//! `-drive file=IMG,format=raw,if=none,id=d0[,readonly=on] -device virtio-blk-pci,drive=d0`.
//! Read-only users therefore share an image with each other, while a writer excludes (and is
//! excluded by) any other user that does not share write.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// Whether an image is locked (QEMU's `file` driver option `locking`, an `OnOffAuto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Locking {
    /// Lock where the kernel has OFD locks (QEMU's default).
    #[default]
    Auto,
    /// Always lock; an image whose filesystem refuses the locks is refused.
    On,
    /// Never lock: other users are neither excluded nor checked for.
    Off,
}

/// Why a `locking` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("locking takes on, off or auto, not '{0}'")]
pub struct ParseLockingError(pub String);

impl std::str::FromStr for Locking {
    type Err = ParseLockingError;

    fn from_str(s: &str) -> Result<Self, ParseLockingError> {
        match s {
            "auto" => Ok(Locking::Auto),
            "on" => Ok(Locking::On),
            "off" => Ok(Locking::Off),
            other => Err(ParseLockingError(other.into())),
        }
    }
}

impl Locking {
    /// Whether an image opened with this setting takes and checks locks: `auto` does when
    /// the kernel has OFD locks (probed once, as QEMU's `qemu_has_ofd_lock` does on
    /// `/dev/null`).
    pub fn enabled(self) -> bool {
        match self {
            Locking::On => true,
            Locking::Off => false,
            Locking::Auto => has_ofd_locks(),
        }
    }
}

/// Whether the kernel knows `F_OFD_GETLK` (Linux 3.15 and later), asked once.
fn has_ofd_locks() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        let Ok(null) = File::open("/dev/null") else {
            // Nothing to probe with: assume a current kernel.
            return true;
        };
        let mut fl = one_byte(libc::F_RDLCK, 0);
        !matches!(
            fcntl_lock(&null, libc::F_OFD_GETLK, &mut fl),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL)
        )
    })
}

/// Offset of the bytes locked for the permissions a user holds (QEMU's `RAW_LOCK_PERM_BASE`).
pub const LOCK_PERM_BASE: i64 = 100;
/// Offset of the bytes locked for the permissions a user does not share
/// (QEMU's `RAW_LOCK_SHARED_BASE`).
pub const LOCK_SHARED_BASE: i64 = 200;

/// A permission on an image (QEMU's `BLK_PERM_*`), by its bit number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Perm {
    /// Reads see consistent data (`BLK_PERM_CONSISTENT_READ`, bit 0).
    ConsistentRead = 0,
    /// Writes that change the data (`BLK_PERM_WRITE`, bit 1).
    Write = 1,
    /// Writes that leave the data as it was (`BLK_PERM_WRITE_UNCHANGED`, bit 2).
    WriteUnchanged = 2,
    /// Changing the image's size (`BLK_PERM_RESIZE`, bit 3).
    Resize = 3,
}

impl Perm {
    /// Every permission QEMU 7.2 knows, in bit order.
    pub const ALL: [Perm; 4] = [
        Perm::ConsistentRead,
        Perm::Write,
        Perm::WriteUnchanged,
        Perm::Resize,
    ];

    /// The permission's bit in a [`Perms`] mask.
    pub const fn mask(self) -> u8 {
        1 << self as u8
    }

    /// QEMU's name of the permission (`bdrv_perm_names`).
    pub const fn name(self) -> &'static str {
        match self {
            Perm::ConsistentRead => "consistent read",
            Perm::Write => "write",
            Perm::WriteUnchanged => "write unchanged",
            Perm::Resize => "resize",
        }
    }
}

/// What a user of an image holds and what it lets others hold, as masks of [`Perm::mask`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Perms {
    /// The permissions held.
    pub held: u8,
    /// The permissions others may hold.
    pub shared: u8,
}

impl Perms {
    /// The permissions of a virtio-blk disk in QEMU 7.2: consistent read (and write unless
    /// `read_only`); everything but write shared.
    pub const fn virtio_blk(read_only: bool) -> Self {
        let held = if read_only {
            Perm::ConsistentRead.mask()
        } else {
            Perm::ConsistentRead.mask() | Perm::Write.mask()
        };
        Self {
            held,
            shared: Perm::ConsistentRead.mask() | Perm::WriteUnchanged.mask() | Perm::Resize.mask(),
        }
    }

    fn holds(self, p: Perm) -> bool {
        self.held & p.mask() != 0
    }

    fn shares(self, p: Perm) -> bool {
        self.shared & p.mask() != 0
    }
}

/// Another user of the image is in the way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockConflict {
    /// The permission in question.
    pub perm: Perm,
    /// False: another user does not share a permission we hold. True: another user holds a
    /// permission we do not share.
    pub shared: bool,
}

impl std::fmt::Display for LockConflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shared = if self.shared { "shared " } else { "" };
        write!(f, "Failed to get {shared}\"{}\" lock", self.perm.name())
    }
}

/// Why [`lock`] failed.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another user's locks conflict with ours.
    #[error("{0}")]
    Conflict(LockConflict),
    /// The filesystem refused to take or test a lock.
    #[error("Failed to lock byte {0}")]
    Io(i64, #[source] io::Error),
}

fn one_byte(l_type: libc::c_int, start: i64) -> libc::flock {
    // SAFETY: `flock` is plain data for which all-zero bytes are a valid value (and `l_pid`
    // must be 0 for OFD locks).
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = l_type as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = start;
    fl.l_len = 1;
    fl
}

fn fcntl_lock(file: &File, cmd: libc::c_int, fl: &mut libc::flock) -> io::Result<()> {
    loop {
        // SAFETY: F_OFD_SETLK/F_OFD_GETLK on our own descriptor with a valid, exclusively
        // borrowed `flock` that the kernel reads (and for GETLK writes) within the call.
        let ret = unsafe { libc::fcntl(file.as_raw_fd(), cmd, fl as *mut libc::flock) };
        if ret != -1 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Takes a shared lock on byte `start` (QEMU's `qemu_lock_fd(fd, start, 1, false)`).
fn take(file: &File, start: i64) -> Result<(), LockError> {
    fcntl_lock(file, libc::F_OFD_SETLK, &mut one_byte(libc::F_RDLCK, start))
        .map_err(|e| LockError::Io(start, e))
}

/// True when another open file description holds a lock on byte `start` (QEMU's
/// `qemu_lock_fd_test(fd, start, 1, true)`).
fn held_elsewhere(file: &File, start: i64) -> Result<bool, LockError> {
    let mut fl = one_byte(libc::F_WRLCK, start);
    fcntl_lock(file, libc::F_OFD_GETLK, &mut fl).map_err(|e| LockError::Io(start, e))?;
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

/// Takes the locks of `perms` on `file` and checks that no other user's locks conflict with
/// them, as QEMU's `raw_handle_perm_lock(RAW_PL_PREPARE)` does for a newly opened image. The
/// locks last as long as `file`'s open file description; on failure the caller drops `file`,
/// which releases whatever was taken.
///
/// # Errors
/// A conflicting user ([`LockError::Conflict`]), or a filesystem without OFD locks.
pub fn lock(file: &File, perms: Perms) -> Result<(), LockError> {
    for p in Perm::ALL {
        if perms.holds(p) {
            take(file, LOCK_PERM_BASE + p as i64)?;
        }
    }
    for p in Perm::ALL {
        if !perms.shares(p) {
            take(file, LOCK_SHARED_BASE + p as i64)?;
        }
    }
    for p in Perm::ALL {
        if perms.holds(p) && held_elsewhere(file, LOCK_SHARED_BASE + p as i64)? {
            return Err(LockError::Conflict(LockConflict {
                perm: p,
                shared: false,
            }));
        }
    }
    for p in Perm::ALL {
        if !perms.shares(p) && held_elsewhere(file, LOCK_PERM_BASE + p as i64)? {
            return Err(LockError::Conflict(LockConflict {
                perm: p,
                shared: true,
            }));
        }
    }
    Ok(())
}

/// Releases every lock [`lock`] may have taken on `file` (bytes 100 to 103 and 200 to 203),
/// keeping the file open: QEMU's state of an inactive image (`raw_apply_lock_bytes` with no
/// permissions held and all shared), which other users then may lock.
///
/// # Errors
/// The filesystem refused to release a lock.
pub fn unlock(file: &File) -> Result<(), LockError> {
    for base in [LOCK_PERM_BASE, LOCK_SHARED_BASE] {
        let mut fl = one_byte(libc::F_UNLCK, base);
        fl.l_len = Perm::ALL.len() as i64;
        fcntl_lock(file, libc::F_OFD_SETLK, &mut fl).map_err(|e| LockError::Io(base, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use vmm_sys_util::tempfile::TempFile;

    use super::*;

    fn open(f: &TempFile) -> File {
        File::options()
            .read(true)
            .write(true)
            .open(f.as_path())
            .unwrap()
    }

    #[test]
    fn virtio_blk_perms_match_qemu_7_2() {
        // QEMU 7.2, -device virtio-blk-pci on a raw -drive: /proc/locks shows 100-101 and 201
        // for a writable drive, 100 and 201 for readonly=on.
        let f = TempFile::new().unwrap();
        for (read_only, locked) in [(false, vec![100, 101, 201]), (true, vec![100, 201])] {
            let holder = open(&f);
            lock(&holder, Perms::virtio_blk(read_only)).unwrap();
            let probe = open(&f);
            let seen: Vec<i64> = (100..104)
                .chain(200..204)
                .filter(|&b| held_elsewhere(&probe, b).unwrap())
                .collect();
            assert_eq!(seen, locked, "read_only={read_only}");
            // The holder does not see its own locks.
            assert!(!held_elsewhere(&holder, 100).unwrap());
        }
        // Dropping the holders released everything.
        let probe = open(&f);
        assert!(!(100..104)
            .chain(200..204)
            .any(|b| held_elsewhere(&probe, b).unwrap()));
    }

    #[test]
    fn unlock_releases_everything_and_keeps_the_file() {
        let f = TempFile::new().unwrap();
        let a = open(&f);
        lock(&a, Perms::virtio_blk(false)).unwrap();
        let b = open(&f);
        assert!(lock(&b, Perms::virtio_blk(false)).is_err());
        // A failed lock leaves what it took (the caller drops the file, or unlocks).
        unlock(&b).unwrap();
        unlock(&a).unwrap();
        let probe = open(&f);
        assert!(!(100..104)
            .chain(200..204)
            .any(|byte| held_elsewhere(&probe, byte).unwrap()));
        lock(&b, Perms::virtio_blk(false)).unwrap();
        // The first user takes its locks back only once the second is gone.
        assert!(lock(&a, Perms::virtio_blk(false)).is_err());
        unlock(&a).unwrap();
        drop(b);
        lock(&a, Perms::virtio_blk(false)).unwrap();
        unlock(&a).unwrap();
        unlock(&a).unwrap();
    }

    #[test]
    fn locking_values() {
        assert_eq!("auto".parse(), Ok(Locking::Auto));
        assert_eq!("on".parse(), Ok(Locking::On));
        assert_eq!("off".parse(), Ok(Locking::Off));
        assert_eq!(
            "yes".parse::<Locking>().unwrap_err().to_string(),
            "locking takes on, off or auto, not 'yes'"
        );
        assert_eq!(Locking::default(), Locking::Auto);
        assert!(Locking::On.enabled() && !Locking::Off.enabled());
        // This project's hosts all have OFD locks.
        assert!(Locking::Auto.enabled());
    }

    #[test]
    fn conflicts_within_one_process() {
        let f = TempFile::new().unwrap();
        let rw = Perms::virtio_blk(false);
        let ro = Perms::virtio_blk(true);
        let write = LockConflict {
            perm: Perm::Write,
            shared: false,
        };
        let shared_write = LockConflict {
            perm: Perm::Write,
            shared: true,
        };
        let a = open(&f);
        lock(&a, rw).unwrap();
        for (perms, conflict) in [(rw, write), (ro, shared_write)] {
            let b = open(&f);
            match lock(&b, perms) {
                Err(LockError::Conflict(c)) => assert_eq!(c, conflict),
                other => panic!("{other:?}"),
            }
        }
        drop(a);
        // Two read-only users share the image; a writer is refused by either.
        let a = open(&f);
        lock(&a, ro).unwrap();
        let b = open(&f);
        lock(&b, ro).unwrap();
        let c = open(&f);
        let e = lock(&c, rw).unwrap_err();
        assert_eq!(e.to_string(), "Failed to get \"write\" lock");
        drop((a, b, c));
        let d = open(&f);
        lock(&d, rw).unwrap();
    }
}
