//! The probe's kernel command line: `probe.test=a,b,c` plus `probe.*`
//! parameters. Words not starting with `probe.` belong to others and are
//! ignored; unknown `probe.*` words are errors.

/// One workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Test {
    /// Report RAM, CPUs, virtio devices and the command line.
    Boot,
    /// Write the sector pattern, then flush.
    BlkWrite,
    /// Read back and compare with the sector pattern.
    BlkRead,
    /// Print the disk's GET_ID string.
    BlkId,
    /// Throughput and IOPS benchmark.
    BlkBench,
    /// Halt until the power button or a reset.
    Idle,
    /// Write/read/verify forever, reporting failures.
    IoLoop,
    /// Reboot through the ACPI reset register.
    Reboot,
    /// Reset through a triple fault.
    TripleFault,
    /// Reset through the i8042 keyboard controller (command 0xFE).
    KbdReset,
    /// Hostile virtio-mmio register accesses.
    MmioChaos,
    /// Hostile port I/O and MMIO to every emulated device and to the gaps between them.
    PioChaos,
    /// Hostile virtqueue rings on a virtio-blk device that is up.
    VirtqChaos,
    /// Start the application processors (INIT-SIPI-SIPI).
    Smp,
    /// Rewrite `probe.mib` MiB of pages with checksummed patterns until the power button.
    MemWalk,
}

impl Test {
    fn from_name(n: &[u8]) -> Option<Test> {
        Some(match n {
            b"boot" => Test::Boot,
            b"blk-write" => Test::BlkWrite,
            b"blk-read" => Test::BlkRead,
            b"blk-id" => Test::BlkId,
            b"blk-bench" => Test::BlkBench,
            b"idle" => Test::Idle,
            b"io-loop" => Test::IoLoop,
            b"reboot" => Test::Reboot,
            b"triple-fault" => Test::TripleFault,
            b"kbd-reset" => Test::KbdReset,
            b"mmio-chaos" => Test::MmioChaos,
            b"pio-chaos" => Test::PioChaos,
            b"virtq-chaos" => Test::VirtqChaos,
            b"smp" => Test::Smp,
            b"mem-walk" => Test::MemWalk,
            _ => return None,
        })
    }

    /// The name used on the command line and in output.
    pub fn name(self) -> &'static str {
        match self {
            Test::Boot => "boot",
            Test::BlkWrite => "blk-write",
            Test::BlkRead => "blk-read",
            Test::BlkId => "blk-id",
            Test::BlkBench => "blk-bench",
            Test::Idle => "idle",
            Test::IoLoop => "io-loop",
            Test::Reboot => "reboot",
            Test::TripleFault => "triple-fault",
            Test::KbdReset => "kbd-reset",
            Test::MmioChaos => "mmio-chaos",
            Test::PioChaos => "pio-chaos",
            Test::VirtqChaos => "virtq-chaos",
            Test::Smp => "smp",
            Test::MemWalk => "mem-walk",
        }
    }
}

/// Most tests in one `probe.test=` list.
pub const MAX_TESTS: usize = 16;

/// One blk-bench workload (`probe.bench=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// `seqw`: sequential writes of 1 MiB.
    SeqWrite,
    /// `seqr`: sequential reads of 1 MiB.
    SeqRead,
    /// `randr`: 4 KiB random reads.
    RandRead,
    /// `randw`: 4 KiB random writes.
    RandWrite,
    /// `mix`: 4 KiB random requests, 70% reads and 30% writes.
    Mix,
}

impl Workload {
    /// Every workload, in the order of the default plan.
    pub const ALL: [Workload; 5] = [
        Workload::SeqWrite,
        Workload::SeqRead,
        Workload::RandRead,
        Workload::RandWrite,
        Workload::Mix,
    ];

    fn from_name(n: &[u8]) -> Option<Workload> {
        Some(match n {
            b"seqw" => Workload::SeqWrite,
            b"seqr" => Workload::SeqRead,
            b"randr" => Workload::RandRead,
            b"randw" => Workload::RandWrite,
            b"mix" => Workload::Mix,
            _ => return None,
        })
    }

    /// The name in `probe.bench=`.
    pub fn key(self) -> &'static str {
        match self {
            Workload::SeqWrite => "seqw",
            Workload::SeqRead => "seqr",
            Workload::RandRead => "randr",
            Workload::RandWrite => "randw",
            Workload::Mix => "mix",
        }
    }

    /// The name printed in `test=` of the phase lines.
    pub fn name(self) -> &'static str {
        match self {
            Workload::SeqWrite => "seq-write",
            Workload::SeqRead => "seq-read",
            Workload::RandRead => "rand-read",
            Workload::RandWrite => "rand-write",
            Workload::Mix => "rand-mix",
        }
    }

    /// Sequential workloads run once at a fixed depth; the random ones once per `probe.qd`.
    pub fn sequential(self) -> bool {
        matches!(self, Workload::SeqWrite | Workload::SeqRead)
    }

    /// Whether the workload writes (skipped on read-only disks).
    pub fn writes(self) -> bool {
        matches!(
            self,
            Workload::SeqWrite | Workload::RandWrite | Workload::Mix
        )
    }
}

/// Most entries in `probe.bench=`.
pub const MAX_WORKLOADS: usize = 8;
/// Most depths in `probe.qd=`.
pub const MAX_DEPTHS: usize = 8;
/// Deepest queue depth `probe.qd=` accepts (a virtqueue has at most 256 descriptors here).
pub const MAX_QD: u32 = 256;
/// Most queues `probe.queues=` accepts.
pub const MAX_QUEUES: u32 = 8;
/// Most MiB `probe.mib=` accepts (the probe maps 4 GiB and uses RAM below 3 GiB).
pub const MAX_MIB: u64 = 3072;
/// Shortest mem-walk progress interval, in milliseconds.
pub const MIN_INTERVAL_MS: u64 = 10;

/// Parsed `probe.*` parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    /// Tests to run in order, `test_count` valid.
    pub tests: [Test; MAX_TESTS],
    /// Number of valid entries in `tests`.
    pub test_count: usize,
    /// `probe.dev`: disk index (order of virtio-blk devices in the DSDT). Default 0.
    pub dev: u32,
    /// `probe.lba`: first sector. Default 0.
    pub lba: u64,
    /// `probe.count`: sectors (blk-*), accesses (mmio-chaos, pio-chaos) or race rounds
    /// (virtq-chaos). Default 8.
    pub count: u64,
    /// `probe.seed`: pattern / chaos seed. Default 1.
    pub seed: u64,
    /// `probe.irq`: interrupt-driven completions (`on`, default) or polling (`off`).
    pub irq: bool,
    /// `probe.secs`: duration of each blk-bench phase. Default 2.
    pub secs: u64,
    /// `probe.loops`: io-loop iterations, 0 = until stopped. Default 0.
    pub loops: u64,
    /// `probe.bench`: blk-bench workloads in order, `bench_count` valid.
    /// Default `seqw,seqr,randr`.
    pub bench: [Workload; MAX_WORKLOADS],
    /// Number of valid entries in `bench`.
    pub bench_count: usize,
    /// `probe.qd`: depths of the random workloads, `qd_count` valid. Default `1,32`.
    pub qd: [u32; MAX_DEPTHS],
    /// Number of valid entries in `qd`.
    pub qd_count: usize,
    /// `probe.queues`: virtqueues (and vCPUs) blk-bench drives at once. Default 1.
    pub queues: u32,
    /// `probe.mib`: MiB of pages mem-walk rewrites. Default 64.
    pub mib: u64,
    /// `probe.rate`: mem-walk's rewrites in MiB/s; `None` (`max`, the default) as fast as
    /// the CPU goes, 0 none after the first fill.
    pub rate: Option<u64>,
    /// `probe.interval`: milliseconds between mem-walk's progress lines. Default 1000.
    pub interval_ms: u64,
    /// `probe.cpus`: CPUs that walk mem-walk's pages, each its own share. Default 1.
    pub cpus: u32,
    /// `probe.touch`: microseconds from which mem-walk counts a page rewrite as a slow touch
    /// and prints its latency histogram; `None` (the default, `off`) for none.
    pub touch_us: Option<u64>,
}

/// One blk-bench phase: a workload at a queue depth (`None`: the sequential depth).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Phase {
    /// What the phase does.
    pub work: Workload,
    /// Requests in flight per queue; `None` for the sequential workloads' fixed depth.
    pub qd: Option<u32>,
}

impl Params {
    /// The tests to run.
    pub fn tests(&self) -> &[Test] {
        &self.tests[..self.test_count]
    }

    /// The blk-bench workloads.
    pub fn workloads(&self) -> &[Workload] {
        &self.bench[..self.bench_count]
    }

    /// The queue depths of the random workloads.
    pub fn depths(&self) -> &[u32] {
        &self.qd[..self.qd_count]
    }

    /// blk-bench's phases in order: each workload of `probe.bench` once if sequential,
    /// else once per depth of `probe.qd`.
    pub fn phases(&self) -> impl Iterator<Item = Phase> + '_ {
        self.workloads().iter().flat_map(move |&work| {
            let depths: &[u32] = if work.sequential() {
                &[0]
            } else {
                self.depths()
            };
            depths.iter().map(move |&d| Phase {
                work,
                qd: (!work.sequential()).then_some(d),
            })
        })
    }
}

/// Splits a comma-separated list, skipping empty items.
fn items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&c| c == b',').filter(|n| !n.is_empty())
}

/// What is wrong with the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmdlineError<'a> {
    /// `probe.test=` names an unknown test.
    UnknownTest(&'a [u8]),
    /// An unknown `probe.*` parameter.
    UnknownParam(&'a [u8]),
    /// A parameter value that does not parse.
    BadValue(&'a [u8]),
    /// More than `MAX_TESTS` tests.
    TooManyTests,
    /// No `probe.test=` at all.
    NoTest,
}

/// Parses a decimal or `0x` hexadecimal number.
pub fn parse_u64(s: &[u8]) -> Option<u64> {
    let (digits, radix) = match s {
        [b'0', b'x' | b'X', rest @ ..] => (rest, 16),
        _ => (s, 10),
    };
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &c| {
        let d = (c as char).to_digit(radix)?;
        acc.checked_mul(u64::from(radix))?.checked_add(u64::from(d))
    })
}

/// Parses the command line.
pub fn parse(cmdline: &[u8]) -> Result<Params, CmdlineError<'_>> {
    let mut p = Params {
        tests: [Test::Boot; MAX_TESTS],
        test_count: 0,
        dev: 0,
        lba: 0,
        count: 8,
        seed: 1,
        irq: true,
        secs: 2,
        loops: 0,
        bench: [Workload::SeqWrite; MAX_WORKLOADS],
        bench_count: 3,
        qd: [0; MAX_DEPTHS],
        qd_count: 2,
        queues: 1,
        mib: 64,
        rate: None,
        interval_ms: 1000,
        cpus: 1,
        touch_us: None,
    };
    p.bench[1] = Workload::SeqRead;
    p.bench[2] = Workload::RandRead;
    p.qd[0] = 1;
    p.qd[1] = 32;
    let mut saw_test = false;
    for word in cmdline
        .split(|c| c.is_ascii_whitespace())
        .filter(|w| !w.is_empty())
    {
        let Some(rest) = word.strip_prefix(b"probe.") else {
            continue;
        };
        let eq = rest
            .iter()
            .position(|&c| c == b'=')
            .ok_or(CmdlineError::UnknownParam(word))?;
        let (key, value) = (&rest[..eq], &rest[eq + 1..]);
        let num = || parse_u64(value).ok_or(CmdlineError::BadValue(word));
        match key {
            b"test" => {
                saw_test = true;
                for name in items(value) {
                    let t = Test::from_name(name).ok_or(CmdlineError::UnknownTest(name))?;
                    if p.test_count == MAX_TESTS {
                        return Err(CmdlineError::TooManyTests);
                    }
                    p.tests[p.test_count] = t;
                    p.test_count += 1;
                }
            }
            b"dev" => p.dev = u32::try_from(num()?).map_err(|_| CmdlineError::BadValue(word))?,
            b"lba" => p.lba = num()?,
            b"count" => p.count = num()?,
            b"seed" => p.seed = num()?,
            b"secs" => p.secs = num()?,
            b"loops" => p.loops = num()?,
            b"bench" => {
                p.bench_count = 0;
                for name in items(value) {
                    let w = Workload::from_name(name).ok_or(CmdlineError::BadValue(word))?;
                    if p.bench_count == MAX_WORKLOADS {
                        return Err(CmdlineError::BadValue(word));
                    }
                    p.bench[p.bench_count] = w;
                    p.bench_count += 1;
                }
                if p.bench_count == 0 {
                    return Err(CmdlineError::BadValue(word));
                }
            }
            b"qd" => {
                p.qd_count = 0;
                for n in items(value) {
                    let d = parse_u64(n)
                        .filter(|d| (1..=u64::from(MAX_QD)).contains(d))
                        .ok_or(CmdlineError::BadValue(word))?;
                    if p.qd_count == MAX_DEPTHS {
                        return Err(CmdlineError::BadValue(word));
                    }
                    p.qd[p.qd_count] = d as u32;
                    p.qd_count += 1;
                }
                if p.qd_count == 0 {
                    return Err(CmdlineError::BadValue(word));
                }
            }
            b"queues" => {
                p.queues = num()?
                    .try_into()
                    .ok()
                    .filter(|q| (1..=MAX_QUEUES).contains(q))
                    .ok_or(CmdlineError::BadValue(word))?
            }
            b"mib" => {
                p.mib = Some(num()?)
                    .filter(|m| (1..=MAX_MIB).contains(m))
                    .ok_or(CmdlineError::BadValue(word))?
            }
            b"rate" => {
                p.rate = match value {
                    b"max" => None,
                    _ => Some(num()?),
                }
            }
            b"cpus" => {
                p.cpus = num()?
                    .try_into()
                    .ok()
                    .filter(|q| (1..=MAX_QUEUES).contains(q))
                    .ok_or(CmdlineError::BadValue(word))?
            }
            b"interval" => {
                p.interval_ms = Some(num()?)
                    .filter(|&ms| ms >= MIN_INTERVAL_MS)
                    .ok_or(CmdlineError::BadValue(word))?
            }
            b"touch" => {
                p.touch_us = match value {
                    b"off" => None,
                    _ => Some(
                        Some(num()?)
                            .filter(|&us| us >= 1)
                            .ok_or(CmdlineError::BadValue(word))?,
                    ),
                }
            }
            b"irq" => {
                p.irq = match value {
                    b"on" | b"1" => true,
                    b"off" | b"0" => false,
                    _ => return Err(CmdlineError::BadValue(word)),
                }
            }
            _ => return Err(CmdlineError::UnknownParam(word)),
        }
    }
    if !saw_test || p.test_count == 0 {
        return Err(CmdlineError::NoTest);
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sequences_and_numbers() {
        let p = parse(b"console=ttyS0 probe.test=boot,blk-write,blk-read probe.dev=1 probe.lba=0x10 probe.count=4 probe.seed=99 probe.irq=off").unwrap();
        assert_eq!(p.tests(), &[Test::Boot, Test::BlkWrite, Test::BlkRead]);
        assert_eq!(
            (p.dev, p.lba, p.count, p.seed, p.irq),
            (1, 16, 4, 99, false)
        );
        let p = parse(b"probe.test=idle").unwrap();
        assert_eq!((p.count, p.seed, p.irq, p.secs), (8, 1, true, 2));
        let p = parse(b"probe.test=mmio-chaos,pio-chaos,virtq-chaos,idle").unwrap();
        assert_eq!(
            p.tests(),
            &[
                Test::MmioChaos,
                Test::PioChaos,
                Test::VirtqChaos,
                Test::Idle
            ]
        );
        assert_eq!(Test::PioChaos.name(), "pio-chaos");
        assert_eq!(Test::VirtqChaos.name(), "virtq-chaos");
    }

    #[test]
    fn rejects_unknowns() {
        assert_eq!(
            parse(b"probe.test=boot,fly"),
            Err(CmdlineError::UnknownTest(b"fly"))
        );
        assert_eq!(
            parse(b"probe.test=boot probe.speed=3"),
            Err(CmdlineError::UnknownParam(b"probe.speed=3"))
        );
        assert_eq!(
            parse(b"probe.test=boot probe.lba=12x"),
            Err(CmdlineError::BadValue(b"probe.lba=12x"))
        );
        assert_eq!(
            parse(b"probe.test=boot probe.irq=maybe"),
            Err(CmdlineError::BadValue(b"probe.irq=maybe"))
        );
        assert_eq!(parse(b"console=ttyS0"), Err(CmdlineError::NoTest));
        assert_eq!(
            parse(b"probe.verbose"),
            Err(CmdlineError::UnknownParam(b"probe.verbose"))
        );
    }

    #[test]
    fn bench_parameters() {
        let p = parse(b"probe.test=blk-bench").unwrap();
        assert_eq!(
            p.workloads(),
            &[Workload::SeqWrite, Workload::SeqRead, Workload::RandRead]
        );
        assert_eq!((p.depths(), p.queues), (&[1, 32][..], 1));
        let p = parse(
            b"probe.test=blk-bench probe.bench=mix,seqr,randw,randr probe.qd=128,0x8 probe.queues=4",
        )
        .unwrap();
        assert_eq!(
            p.workloads(),
            &[
                Workload::Mix,
                Workload::SeqRead,
                Workload::RandWrite,
                Workload::RandRead
            ]
        );
        assert_eq!((p.depths(), p.queues), (&[128, 8][..], 4));
        for bad in [
            &b"probe.bench=seqw,fly"[..],
            b"probe.bench=",
            b"probe.bench=,",
            b"probe.qd=0",
            b"probe.qd=257",
            b"probe.qd=1,,x",
            b"probe.qd=",
            b"probe.qd=1,2,3,4,5,6,7,8,9",
            b"probe.queues=0",
            b"probe.queues=9",
            b"probe.queues=4294967297",
        ] {
            let mut line = b"probe.test=blk-bench ".to_vec();
            line.extend_from_slice(bad);
            assert_eq!(
                parse(&line),
                Err(CmdlineError::BadValue(bad)),
                "{}",
                core::str::from_utf8(bad).unwrap()
            );
        }
        assert!(parse(b"probe.test=blk-bench probe.qd=256 probe.queues=8").is_ok());
    }

    #[test]
    fn phase_plan() {
        let p =
            parse(b"probe.test=blk-bench probe.bench=seqw,randr,seqr,mix probe.qd=1,32").unwrap();
        let plan: Vec<(Workload, Option<u32>)> = p.phases().map(|ph| (ph.work, ph.qd)).collect();
        assert_eq!(
            plan,
            vec![
                (Workload::SeqWrite, None),
                (Workload::RandRead, Some(1)),
                (Workload::RandRead, Some(32)),
                (Workload::SeqRead, None),
                (Workload::Mix, Some(1)),
                (Workload::Mix, Some(32)),
            ]
        );
        // The default plan is the benchmark's historical four phases.
        let p = parse(b"probe.test=blk-bench").unwrap();
        let names: Vec<(&str, Option<u32>)> =
            p.phases().map(|ph| (ph.work.name(), ph.qd)).collect();
        assert_eq!(
            names,
            vec![
                ("seq-write", None),
                ("seq-read", None),
                ("rand-read", Some(1)),
                ("rand-read", Some(32)),
            ]
        );
        for w in Workload::ALL {
            assert_eq!(Workload::from_name(w.key().as_bytes()), Some(w));
            assert_eq!(
                w.writes(),
                w != Workload::SeqRead && w != Workload::RandRead
            );
        }
    }

    #[test]
    fn mem_walk_parameters() {
        let p = parse(b"probe.test=mem-walk").unwrap();
        assert_eq!(p.tests(), &[Test::MemWalk]);
        assert_eq!((p.mib, p.rate, p.interval_ms, p.cpus), (64, None, 1000, 1));
        assert_eq!(p.touch_us, None);
        assert_eq!(
            parse(b"probe.test=mem-walk probe.touch=50")
                .unwrap()
                .touch_us,
            Some(50)
        );
        assert_eq!(
            parse(b"probe.test=mem-walk probe.touch=off")
                .unwrap()
                .touch_us,
            None
        );
        assert_eq!(parse(b"probe.test=mem-walk probe.cpus=8").unwrap().cpus, 8);
        let p =
            parse(b"probe.test=mem-walk probe.mib=2048 probe.rate=0 probe.interval=50").unwrap();
        assert_eq!((p.mib, p.rate, p.interval_ms), (2048, Some(0), 50));
        let p = parse(b"probe.test=mem-walk probe.rate=300").unwrap();
        assert_eq!(p.rate, Some(300));
        assert_eq!(
            parse(b"probe.test=mem-walk probe.rate=max").unwrap().rate,
            None
        );
        assert_eq!(
            Test::from_name(Test::MemWalk.name().as_bytes()),
            Some(Test::MemWalk)
        );
        for bad in [
            &b"probe.mib=0"[..],
            b"probe.mib=3073",
            b"probe.mib=",
            b"probe.rate=fast",
            b"probe.interval=9",
            b"probe.interval=x",
            b"probe.cpus=0",
            b"probe.cpus=9",
            b"probe.touch=0",
            b"probe.touch=on",
        ] {
            let mut line = b"probe.test=mem-walk ".to_vec();
            line.extend_from_slice(bad);
            assert_eq!(
                parse(&line),
                Err(CmdlineError::BadValue(bad)),
                "{}",
                core::str::from_utf8(bad).unwrap()
            );
        }
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_u64(b"0"), Some(0));
        assert_eq!(parse_u64(b"0xfF"), Some(255));
        assert_eq!(parse_u64(b"18446744073709551616"), None);
        assert_eq!(parse_u64(b""), None);
        assert_eq!(parse_u64(b"0x"), None);
    }
}
