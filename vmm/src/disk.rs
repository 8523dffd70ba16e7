// SPDX-License-Identifier: Apache-2.0
//! The `--disk` option: `PATH`, or `path=PATH[,id=ID][,node-name=NAME][,readonly=on|off]
//! [,cache=writeback|none|unsafe][,aio=io_uring|threads][,num-queues=N][,io-threads=N][,serial=STR]
//! [,werror=ACTION][,rerror=ACTION][,locking=on|off|auto][,throttling.KEY=VALUE...]
//! [,inject.N.KEY=VALUE...]`. As in QEMU's option syntax, a comma inside a value is
//! written as `,,`. Parsed by [`OptionList`].
//!
//! `locking` is QEMU's `file` driver option (default `auto`: lock where the kernel has OFD
//! locks; `off` opens an image whoever else uses it). The `throttling.*` keys are QEMU's
//! `-drive` I/O limits: `throttling.bps-total`, `-read`, `-write` (bytes per second),
//! `throttling.iops-total`, `-read`, `-write` (operations per second), each with a burst rate
//! `...-max` and its length in seconds `...-max-length`, `throttling.iops-size` (bytes counted
//! as one operation) and `throttling.group` (disks of one group share their limits; default:
//! the drive id). QEMU's legacy aliases (`bps`, `bps_rd`, ..., `iops_wr_max`, `iops_size`,
//! `group`) are accepted too, and the limits are checked with QEMU's rules and texts.
//!
//! `werror`/`rerror` are QEMU's error policies (`report`, `ignore`, `enospc` — writes only —,
//! `stop`; defaults `enospc` and `report`). `aio` is QEMU's engine key (`native` is taken as
//! `io_uring`); without it the disk uses io_uring where the host allows it. `num-queues` is
//! QEMU's virtio-blk property: above 1 the device offers multi-queue. `io-threads` is how many
//! I/O threads serve the queues (1 to `num-queues`; queue `i` on thread `i % io-threads`); by
//! default one per queue, but no more than the host's CPUs (threads beyond them would only take
//! turns). `inject.N.*` keys describe fault-injection rule N (0, 1, ...) with the members of
//! QMP's `blockdev-inject-error`: `inject.N.operation` (`read`, `write`, `flush`),
//! `inject.N.errno` (`eio`, `enospc`, `eperm`, `erofs`, `edquot`), `inject.N.sector`,
//! `inject.N.count`, `inject.N.once`, `inject.N.delay-ms`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use block::{
    parse_errno, Aio, Bucket, CacheMode, DevicePolicy, FaultRule, IoKind, Locking, OnError,
    ParseLockingError, ParseOnErrorError, ThrottleConfig, ThrottleConfigError,
};

use devices::virtio::block::MAX_QUEUES;

use crate::options::{self, OptionError, OptionList};

/// Errors in a `--disk` value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DiskSpecError {
    /// An option we do not know.
    #[error("Unknown --disk option '{0}' (known: path, id, node-name, readonly, cache, aio, num-queues, io-threads, serial, werror, rerror, locking, throttling.*, inject.N.*)")]
    UnknownKey(String),
    /// No path given.
    #[error("--disk needs a path, as in --disk img.raw or --disk path=img.raw,id=data0")]
    NoPath,
    /// An option given twice.
    #[error("--disk option '{0}' is given twice")]
    Repeated(String),
    /// An option without a value.
    #[error("--disk option '{0}' needs a value")]
    NoValue(String),
    /// A bad on/off value.
    #[error("--disk option '{0}' takes on or off, not '{1}'")]
    BadBool(String, String),
    /// A bad cache mode.
    #[error("--disk cache takes writeback, none or unsafe, not '{0}'")]
    BadCache(String),
    /// A bad engine.
    #[error("--disk aio takes io_uring, threads or native, not '{0}'")]
    BadAio(String),
    /// A bad queue count.
    #[error("--disk num-queues takes 1 to {max}, not '{0}'", max = MAX_QUEUES)]
    BadQueues(String),
    /// A bad I/O thread count.
    #[error("--disk io-threads takes 1 to num-queues ({1}), not '{0}'")]
    BadIoThreads(String, u16),
    /// A malformed option list (an empty item, an item without a key).
    #[error("--disk {0}")]
    Syntax(OptionError),
    /// A bad `werror`/`rerror` value (QEMU's words).
    #[error("--disk {0}")]
    Policy(ParseOnErrorError),
    /// A bad `inject.N.*` rule.
    #[error("--disk inject.{0}: {1}")]
    Inject(u64, String),
    /// A bad `locking` value.
    #[error("--disk {0}")]
    Locking(ParseLockingError),
    /// A `throttling.*` key and its legacy alias together (QEMU's words).
    #[error("--disk '{0}' and its alias '{1}' can't be used at the same time")]
    Alias(String, String),
    /// I/O limits QEMU refuses (its words).
    #[error("--disk {0}")]
    Throttle(ThrottleConfigError),
}

/// What a disk reads and writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskSource {
    /// A raw image, opened as a new `file` node (`--disk`).
    Image(PathBuf),
    /// A node already in the block graph (QEMU's `-device virtio-blk-device,drive=NODE` over
    /// `-blockdev` nodes); the node's own read-only and cache settings apply.
    Node(String),
}

/// The option that made the disk, for messages: `--disk PATH`, `-device ...,drive=NODE`.
impl std::fmt::Display for DiskSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DiskSource::Image(path) => write!(f, "--disk {}", path.display()),
            DiskSource::Node(name) => write!(f, "-device virtio-blk-device,drive={name}"),
        }
    }
}

/// One disk: a parsed `--disk`, or a `-device virtio-blk-device` of QEMU's command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    /// The image or node.
    pub source: DiskSource,
    /// The drive id (backend name); `driveN` when absent.
    pub id: Option<String>,
    /// The image's node-name; generated when absent (images only).
    pub node_name: Option<String>,
    /// Refuse guest writes (images only).
    pub read_only: bool,
    /// Host cache mode (images only).
    pub cache: CacheMode,
    /// The I/O engine asked for; the fastest the host allows when absent.
    pub aio: Option<Aio>,
    /// The device's queues.
    pub num_queues: u16,
    /// The I/O threads serving them (1 to `num_queues`); [`DiskSpec::io_threads`] when
    /// absent.
    pub io_threads: Option<u16>,
    /// The serial number the guest sees (GET_ID); the id when absent.
    pub serial: Option<String>,
    /// `rerror`/`werror`.
    pub policy: DevicePolicy,
    /// Fault-injection rules, in `inject.N` order.
    pub inject: Vec<FaultRule>,
    /// Image locking (images only).
    pub locking: Locking,
    /// I/O limits (none by default).
    pub throttle: ThrottleConfig,
    /// The throttle group; the drive id when absent.
    pub throttle_group: Option<String>,
}

impl From<OptionError> for DiskSpecError {
    fn from(e: OptionError) -> Self {
        match e {
            OptionError::Unknown(key) => Self::UnknownKey(key),
            OptionError::Repeated(key) => Self::Repeated(key),
            OptionError::NoValue(key) => Self::NoValue(key),
            OptionError::BadBool { key, value } => Self::BadBool(key, value),
            e => Self::Syntax(e),
        }
    }
}

/// Takes a value that must not be empty (`id=` is refused, as a bare `id` is).
fn take_value(opts: &mut OptionList, key: &str) -> Result<Option<String>, DiskSpecError> {
    match opts.take_str(key)? {
        Some(v) if v.is_empty() => Err(DiskSpecError::NoValue(key.into())),
        v => Ok(v),
    }
}

impl std::str::FromStr for DiskSpec {
    type Err = DiskSpecError;

    fn from_str(s: &str) -> Result<Self, DiskSpecError> {
        let mut opts = OptionList::parse(s, Some("path"))?;
        // readonly is QEMU's -drive spelling, read-only its -blockdev one; the later wins.
        let read_only_key = opts
            .keys()
            .filter(|k| matches!(*k, "readonly" | "read-only"))
            .last()
            .map(str::to_owned);
        let mut read_only = false;
        for key in ["readonly", "read-only"] {
            if let Some(v) = take_value(&mut opts, key)? {
                let on = options::parse_bool(key, &v)?;
                if read_only_key.as_deref() == Some(key) {
                    read_only = on;
                }
            }
        }
        let path = take_value(&mut opts, "path")?;
        let id = take_value(&mut opts, "id")?;
        let node_name = take_value(&mut opts, "node-name")?;
        let cache = match take_value(&mut opts, "cache")?.as_deref() {
            None | Some("writeback") => CacheMode::Writeback,
            Some("none") => CacheMode::None,
            Some("unsafe") => CacheMode::Unsafe,
            Some(other) => return Err(DiskSpecError::BadCache(other.into())),
        };
        let aio = take_value(&mut opts, "aio")?
            .map(|v| v.parse::<Aio>().map_err(|_| DiskSpecError::BadAio(v)))
            .transpose()?;
        let num_queues = match take_value(&mut opts, "num-queues")? {
            None => 1,
            Some(v) => match v.parse::<u16>() {
                Ok(n) if (1..=MAX_QUEUES).contains(&n) => n,
                _ => return Err(DiskSpecError::BadQueues(v)),
            },
        };
        let io_threads = take_value(&mut opts, "io-threads")?
            .map(|v| match v.parse::<u16>() {
                Ok(n) if (1..=num_queues).contains(&n) => Ok(n),
                _ => Err(DiskSpecError::BadIoThreads(v, num_queues)),
            })
            .transpose()?;
        let serial = take_value(&mut opts, "serial")?;
        let mut policy = DevicePolicy::default();
        if let Some(v) = take_value(&mut opts, "werror")? {
            policy.write = OnError::parse_write(&v).map_err(DiskSpecError::Policy)?;
        }
        if let Some(v) = take_value(&mut opts, "rerror")? {
            policy.read = OnError::parse_read(&v).map_err(DiskSpecError::Policy)?;
        }
        let locking = match take_value(&mut opts, "locking")? {
            Some(v) => v.parse().map_err(DiskSpecError::Locking)?,
            None => Locking::default(),
        };
        let (throttle, throttle_group) = take_throttling(&mut opts)?;
        let inject = take_rules(&mut opts)?;
        opts.finish()?;
        Ok(DiskSpec {
            source: DiskSource::Image(path.map(PathBuf::from).ok_or(DiskSpecError::NoPath)?),
            id,
            node_name,
            read_only,
            cache,
            aio,
            num_queues,
            io_threads,
            serial,
            policy,
            inject,
            locking,
            throttle,
            throttle_group,
        })
    }
}

impl DiskSpec {
    /// The I/O threads serving the queues: as given, else one per queue but at most
    /// `host_cpus` (at least one).
    pub fn io_threads(&self, host_cpus: usize) -> u16 {
        self.io_threads.unwrap_or_else(|| {
            let cpus = u16::try_from(host_cpus).unwrap_or(u16::MAX);
            cpus.clamp(1, self.num_queues.max(1))
        })
    }
}

/// Takes `throttling.KEY` or its legacy alias (not both, as QEMU).
fn take_aliased(
    opts: &mut OptionList,
    key: &str,
    alias: Option<&str>,
) -> Result<Option<String>, DiskSpecError> {
    let value = opts.take_str(key)?;
    let Some(alias) = alias else {
        return Ok(value);
    };
    match (value, opts.take_str(alias)?) {
        (Some(_), Some(_)) => Err(DiskSpecError::Alias(key.into(), alias.into())),
        (a, b) => Ok(a.or(b)),
    }
}

/// Takes a number `throttling.KEY` (or its alias).
fn take_limit(
    opts: &mut OptionList,
    key: &str,
    alias: Option<&str>,
) -> Result<Option<u64>, DiskSpecError> {
    match take_aliased(opts, key, alias)? {
        Some(v) => Ok(Some(options::parse_u64(key, &v)?)),
        None => Ok(None),
    }
}

/// Takes the `throttling.*` keys (and QEMU's aliases) and checks the limits as QEMU does.
fn take_throttling(
    opts: &mut OptionList,
) -> Result<(ThrottleConfig, Option<String>), DiskSpecError> {
    let mut config = ThrottleConfig::default();
    for b in Bucket::ALL {
        let (key, qmp) = (format!("throttling.{}", b.option_name()), b.qmp_name());
        let limit = config.limit_mut(b);
        if let Some(v) = take_limit(opts, &key, Some(qmp))? {
            limit.avg = v;
        }
        if let Some(v) = take_limit(opts, &format!("{key}-max"), Some(&format!("{qmp}_max")))? {
            limit.max = v;
        }
        if let Some(v) = take_limit(opts, &format!("{key}-max-length"), None)? {
            limit.max_length = v;
        }
    }
    if let Some(v) = take_limit(opts, "throttling.iops-size", Some("iops_size"))? {
        config.iops_size = v;
    }
    let group = take_aliased(opts, "throttling.group", Some("group"))?;
    config.validate().map_err(DiskSpecError::Throttle)?;
    Ok((config, group))
}

/// The members an `inject.N.` rule may have.
const RULE_KEYS: [&str; 6] = ["operation", "errno", "sector", "count", "once", "delay-ms"];

/// Takes every `inject.N.KEY` and builds rule N from its keys, in N order (the rules' QMP ids
/// follow it). Range checks against the image happen when the rule is installed.
fn take_rules(opts: &mut OptionList) -> Result<Vec<FaultRule>, DiskSpecError> {
    let mut indexes = BTreeMap::new();
    for key in opts.keys() {
        let Some(rest) = key.strip_prefix("inject.") else {
            continue;
        };
        let bad = || DiskSpecError::UnknownKey(key.to_owned());
        let (n, member) = rest.split_once('.').ok_or_else(bad)?;
        let n: u64 = n.parse().map_err(|_| bad())?;
        if !RULE_KEYS.contains(&member) {
            return Err(bad());
        }
        indexes.insert(n, ());
    }
    let mut rules = Vec::new();
    for n in indexes.into_keys() {
        let fail = |msg: String| DiskSpecError::Inject(n, msg);
        let key = |member: &str| format!("inject.{n}.{member}");
        let operation = match take_value(opts, &key("operation"))?.as_deref() {
            Some("read") => IoKind::Read,
            Some("write") => IoKind::Write,
            Some("flush") => IoKind::Flush,
            Some(other) => {
                return Err(fail(format!(
                    "operation takes read, write or flush, not '{other}'"
                )))
            }
            None => return Err(fail("needs an operation".into())),
        };
        let errno = match take_value(opts, &key("errno"))? {
            Some(name) => Some(parse_errno(&name).ok_or_else(|| {
                fail(format!(
                    "errno takes eio, enospc, eperm, erofs or edquot, not '{name}'"
                ))
            })?),
            None => None,
        };
        let delay = opts.take_u64(&key("delay-ms"))?.map(Duration::from_millis);
        rules.push(FaultRule {
            operation,
            errno,
            sector: opts.take_u64(&key("sector"))?,
            count: opts.take_u64(&key("count"))?,
            once: opts.take_bool(&key("once"))?.unwrap_or(false),
            delay,
        });
    }
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<DiskSpec, DiskSpecError> {
        s.parse()
    }

    fn image(d: &DiskSpec) -> PathBuf {
        match &d.source {
            DiskSource::Image(p) => p.clone(),
            DiskSource::Node(n) => panic!("not an image: {n}"),
        }
    }

    #[test]
    fn io_threads_are_bounded_by_the_queues_and_default_to_at_most_the_host_cpus() {
        let spec = p("img,num-queues=4,io-threads=3").unwrap();
        assert_eq!(spec.io_threads, Some(3));
        assert_eq!(spec.io_threads(64), 3);
        let default = p("img,num-queues=4").unwrap();
        assert_eq!(default.io_threads, None);
        for (cpus, threads) in [(0, 1), (1, 1), (2, 2), (3, 3), (8, 4), (64, 4)] {
            assert_eq!(default.io_threads(cpus), threads, "{cpus} host CPUs");
        }
        assert_eq!(p("img").unwrap().io_threads(64), 1);
        for bad in ["0", "5", "x"] {
            assert_eq!(
                p(&format!("img,num-queues=4,io-threads={bad}"))
                    .unwrap_err()
                    .to_string(),
                format!("--disk io-threads takes 1 to num-queues (4), not '{bad}'")
            );
        }
        assert_eq!(
            p("img,io-threads=2").unwrap_err().to_string(),
            "--disk io-threads takes 1 to num-queues (1), not '2'"
        );
    }

    #[test]
    fn num_queues_is_bounded() {
        let p = |s: &str| s.parse::<DiskSpec>();
        assert_eq!(p("img").unwrap().num_queues, 1);
        assert_eq!(p("img,num-queues=4").unwrap().num_queues, 4);
        for bad in ["0", "17", "-1", "four"] {
            assert_eq!(
                p(&format!("img,num-queues={bad}")),
                Err(DiskSpecError::BadQueues(bad.into()))
            );
        }
        assert_eq!(
            p("img,num-queues=0").unwrap_err().to_string(),
            "--disk num-queues takes 1 to 16, not '0'"
        );
    }

    #[test]
    fn aio_takes_qemus_engines() {
        let p = |s: &str| s.parse::<DiskSpec>();
        assert_eq!(p("img").unwrap().aio, None);
        assert_eq!(p("img,aio=threads").unwrap().aio, Some(Aio::Threads));
        assert_eq!(p("img,aio=io_uring").unwrap().aio, Some(Aio::IoUring));
        assert_eq!(p("img,aio=native").unwrap().aio, Some(Aio::IoUring));
        assert_eq!(
            p("img,aio=posix"),
            Err(DiskSpecError::BadAio("posix".into()))
        );
        assert_eq!(
            p("img,aio=posix").unwrap_err().to_string(),
            "--disk aio takes io_uring, threads or native, not 'posix'"
        );
    }

    #[test]
    fn plain_path_and_full_form() {
        let d = p("img.raw").unwrap();
        assert_eq!(image(&d), PathBuf::from("img.raw"));
        assert_eq!(
            (d.id, d.read_only, d.cache),
            (None, false, CacheMode::Writeback)
        );
        let d = p("path=data.raw,id=data0,node-name=n0,readonly=on,cache=none,serial=SN1").unwrap();
        assert_eq!(image(&d), PathBuf::from("data.raw"));
        assert_eq!(d.id.as_deref(), Some("data0"));
        assert_eq!(d.node_name.as_deref(), Some("n0"));
        assert!(d.read_only);
        assert_eq!(d.cache, CacheMode::None);
        assert_eq!(d.serial.as_deref(), Some("SN1"));
        assert_eq!(
            image(&p("a,,b.raw,cache=unsafe").unwrap()),
            PathBuf::from("a,b.raw")
        );
    }

    #[test]
    fn errors() {
        assert_eq!(p(""), Err(DiskSpecError::NoPath));
        assert_eq!(p("id=x"), Err(DiskSpecError::NoPath));
        assert_eq!(
            p("img,format=raw"),
            Err(DiskSpecError::UnknownKey("format".into()))
        );
        assert_eq!(
            p("img,readonly=maybe"),
            Err(DiskSpecError::BadBool("readonly".into(), "maybe".into()))
        );
        assert_eq!(
            p("img,cache=directsync"),
            Err(DiskSpecError::BadCache("directsync".into()))
        );
        assert_eq!(
            p("img,id=a,id=b"),
            Err(DiskSpecError::Repeated("id".into()))
        );
        assert_eq!(p("img,path=x"), Err(DiskSpecError::Repeated("path".into())));
        assert_eq!(p("img,id="), Err(DiskSpecError::NoValue("id".into())));
        assert_eq!(
            p("img,readonly"),
            Err(DiskSpecError::NoValue("readonly".into()))
        );
    }

    #[test]
    fn toggles_aliases_and_escapes() {
        for (v, ro) in [("yes", true), ("true", true), ("no", false), ("off", false)] {
            assert_eq!(p(&format!("img,readonly={v}")).unwrap().read_only, ro);
        }
        assert!(p("img,read-only=on").unwrap().read_only);
        // Both spellings: the later wins, as before the shared parser.
        assert!(!p("img,readonly=on,read-only=off").unwrap().read_only);
        assert!(p("img,read-only=off,readonly=on").unwrap().read_only);
        let d = p("path=a,,b,serial=S,,N,id=x,,y").unwrap();
        assert_eq!(image(&d), PathBuf::from("a,b"));
        assert_eq!(d.serial.as_deref(), Some("S,N"));
        assert_eq!(d.id.as_deref(), Some("x,y"));
    }

    #[test]
    fn malformed_lists_and_messages() {
        assert_eq!(
            p("img,"),
            Err(DiskSpecError::Syntax(OptionError::EmptyItem))
        );
        assert_eq!(
            p("img,=x"),
            Err(DiskSpecError::Syntax(OptionError::NoKey("=x".into())))
        );
        assert_eq!(
            p("img,bogus"),
            Err(DiskSpecError::UnknownKey("bogus".into()))
        );
        assert_eq!(p("img,cache="), Err(DiskSpecError::NoValue("cache".into())));
        assert_eq!(p("path="), Err(DiskSpecError::NoValue("path".into())));
        let m = |s: &str| p(s).unwrap_err().to_string();
        assert_eq!(
            m("img,format=raw"),
            "Unknown --disk option 'format' (known: path, id, node-name, readonly, cache, aio, num-queues, io-threads, serial, werror, rerror, locking, throttling.*, inject.N.*)"
        );
        assert_eq!(m("img,id=a,id=b"), "--disk option 'id' is given twice");
        assert_eq!(m("img,id="), "--disk option 'id' needs a value");
        assert_eq!(
            m("img,readonly=maybe"),
            "--disk option 'readonly' takes on or off, not 'maybe'"
        );
        assert_eq!(
            m("img,"),
            "--disk list has an empty item (a comma inside a value is written ',,')"
        );
    }

    #[test]
    fn error_policies() {
        assert_eq!(p("img").unwrap().policy, DevicePolicy::default());
        let d = p("img,werror=stop,rerror=ignore").unwrap();
        assert_eq!(
            (d.policy.write, d.policy.read),
            (OnError::Stop, OnError::Ignore)
        );
        assert_eq!(
            p("img,werror=enospc").unwrap().policy.write,
            OnError::Enospc
        );
        let m = |s: &str| p(s).unwrap_err().to_string();
        assert_eq!(
            m("img,werror=panic"),
            "--disk 'panic' invalid write error action"
        );
        assert_eq!(
            m("img,rerror=enospc"),
            "--disk 'enospc' invalid read error action"
        );
    }

    #[test]
    fn injection_rules() {
        let d = p(
            "img,inject.1.operation=flush,inject.1.delay-ms=20,inject.0.operation=write,\
                   inject.0.errno=enospc,inject.0.sector=8,inject.0.count=2,inject.0.once=on",
        )
        .unwrap();
        assert_eq!(
            d.inject,
            [
                FaultRule {
                    sector: Some(8),
                    count: Some(2),
                    once: true,
                    ..FaultRule::new(IoKind::Write, libc::ENOSPC)
                },
                FaultRule {
                    errno: None,
                    delay: Some(Duration::from_millis(20)),
                    ..FaultRule::new(IoKind::Flush, 0)
                },
            ]
        );
        let m = |s: &str| p(s).unwrap_err().to_string();
        assert_eq!(
            m("img,inject.0.errno=eio"),
            "--disk inject.0: needs an operation"
        );
        assert_eq!(
            m("img,inject.0.operation=trim"),
            "--disk inject.0: operation takes read, write or flush, not 'trim'"
        );
        assert_eq!(
            m("img,inject.0.operation=read,inject.0.errno=ebadf"),
            "--disk inject.0: errno takes eio, enospc, eperm, erofs or edquot, not 'ebadf'"
        );
        assert!(m("img,inject.x.operation=read")
            .starts_with("Unknown --disk option 'inject.x.operation'"));
        assert!(m("img,inject.0.colour=red").starts_with("Unknown --disk option 'inject.0.colour'"));
        assert_eq!(
            m("img,inject.0.operation=read,inject.0.sector=many"),
            "--disk option 'inject.0.sector' takes a number, not 'many'"
        );
    }
}

#[cfg(test)]
mod throttle_tests {
    use block::Limit;

    use super::*;

    fn p(s: &str) -> Result<DiskSpec, DiskSpecError> {
        s.parse()
    }

    fn m(s: &str) -> String {
        p(s).unwrap_err().to_string()
    }

    #[test]
    fn locking() {
        assert_eq!(p("img").unwrap().locking, Locking::Auto);
        for (v, l) in [
            ("on", Locking::On),
            ("off", Locking::Off),
            ("auto", Locking::Auto),
        ] {
            assert_eq!(p(&format!("img,locking={v}")).unwrap().locking, l);
        }
        assert_eq!(
            m("img,locking=yes"),
            "--disk locking takes on, off or auto, not 'yes'"
        );
        assert_eq!(m("img,locking="), "--disk option 'locking' needs a value");
    }

    #[test]
    fn throttling_keys_and_aliases() {
        let d = p("img").unwrap();
        assert_eq!(
            (d.throttle, d.throttle_group),
            (ThrottleConfig::default(), None)
        );
        let d = p("img,throttling.iops-total=10,throttling.iops-total-max=20,\
                   throttling.iops-total-max-length=3,throttling.bps-read=0x1000,\
                   throttling.bps-write=2048,throttling.bps-write-max=4096,\
                   throttling.iops-size=512,throttling.group=g1")
        .unwrap();
        let c = d.throttle;
        assert_eq!(
            c.limit(Bucket::IopsTotal),
            Limit {
                avg: 10,
                max: 20,
                max_length: 3
            }
        );
        assert_eq!(c.limit(Bucket::BpsRead).avg, 4096);
        assert_eq!(
            c.limit(Bucket::BpsWrite),
            Limit {
                avg: 2048,
                max: 4096,
                max_length: 1
            }
        );
        assert_eq!(c.limit(Bucket::BpsTotal), Limit::default());
        assert_eq!(c.iops_size, 512);
        assert_eq!(d.throttle_group.as_deref(), Some("g1"));
        // Every bucket's three keys reach it.
        for b in Bucket::ALL {
            let k = format!("throttling.{}", b.option_name());
            let d = p(&format!("img,{k}=5,{k}-max=6,{k}-max-length=7")).unwrap();
            assert_eq!(
                d.throttle.limit(b),
                Limit {
                    avg: 5,
                    max: 6,
                    max_length: 7
                },
                "{k}"
            );
        }
        // QEMU's legacy -drive spellings.
        let d =
            p("img,iops_rd=5,iops_rd_max=9,bps=100,bps_max=200,iops_size=4096,group=old").unwrap();
        assert_eq!(d.throttle.limit(Bucket::IopsRead).max, 9);
        assert_eq!(d.throttle.limit(Bucket::BpsTotal).max, 200);
        assert_eq!(d.throttle.iops_size, 4096);
        assert_eq!(d.throttle_group.as_deref(), Some("old"));
    }

    #[test]
    fn throttling_errors_are_qemus() {
        assert_eq!(
            m("img,iops=10,throttling.iops-total=5"),
            "--disk 'throttling.iops-total' and its alias 'iops' can't be used at the same time"
        );
        assert_eq!(
            m("img,throttling.bps-total=abc"),
            "--disk option 'throttling.bps-total' takes a number, not 'abc'"
        );
        assert_eq!(
            m("img,throttling.bps-total=100,throttling.bps-read=5"),
            "--disk bps/iops/max total values and read/write values cannot be used at the same time"
        );
        assert_eq!(
            m("img,throttling.bps-total-max=100"),
            "--disk bps_max/iops_max require corresponding bps/iops values"
        );
        assert_eq!(
            m("img,throttling.iops-total=10,throttling.iops-total-max=20,\
               throttling.iops-total-max-length=0"),
            "--disk the burst length cannot be 0"
        );
        assert_eq!(
            m("img,throttling.iops-total-max-length=99"),
            "--disk burst length set without burst rate"
        );
        assert_eq!(
            m("img,throttling.bps-write=18446744073709551615"),
            "--disk bps/iops/max values must be within [0, 1000000000000000]"
        );
        assert_eq!(
            m("img,throttling.iops-size=512"),
            "--disk iops size requires an iops value to be set"
        );
        assert!(m("img,throttling.bps-everything=1")
            .starts_with("Unknown --disk option 'throttling.bps-everything'"));
    }
}
