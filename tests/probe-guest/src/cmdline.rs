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
    /// Start the application processors (INIT-SIPI-SIPI).
    Smp,
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
            b"smp" => Test::Smp,
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
            Test::Smp => "smp",
        }
    }
}

/// Most tests in one `probe.test=` list.
pub const MAX_TESTS: usize = 16;

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
    /// `probe.count`: sectors (blk-*) or accesses (mmio-chaos). Default 8.
    pub count: u64,
    /// `probe.seed`: pattern / chaos seed. Default 1.
    pub seed: u64,
    /// `probe.irq`: interrupt-driven completions (`on`, default) or polling (`off`).
    pub irq: bool,
    /// `probe.secs`: duration of each blk-bench phase. Default 2.
    pub secs: u64,
    /// `probe.loops`: io-loop iterations, 0 = until stopped. Default 0.
    pub loops: u64,
}

impl Params {
    /// The tests to run.
    pub fn tests(&self) -> &[Test] {
        &self.tests[..self.test_count]
    }
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
    };
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
                for name in value.split(|&c| c == b',').filter(|n| !n.is_empty()) {
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
    fn numbers() {
        assert_eq!(parse_u64(b"0"), Some(0));
        assert_eq!(parse_u64(b"0xfF"), Some(255));
        assert_eq!(parse_u64(b"18446744073709551616"), None);
        assert_eq!(parse_u64(b""), None);
        assert_eq!(parse_u64(b"0x"), None);
    }
}
