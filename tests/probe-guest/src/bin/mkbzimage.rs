//! Host tool: packs the 16-bit setup sectors and the linked probe ELF into a
//! Linux bzImage.
//!
//! Usage: `mkbzimage <setup.bin> <probe.elf> <bzImage>`
//!
//! The protected-mode part is the ELF's PT_LOAD contents flattened from
//! 1 MiB (where the loader puts it, `code32_start`). The tool fills in
//! `setup_sects`, `syssize` and `init_size`; everything else in the setup
//! header is static in setup/setup.S.

use std::process::ExitCode;

const LOAD_ADDR: u64 = 0x10_0000;

fn u16_at(b: &[u8], o: usize) -> u64 {
    u64::from(u16::from_le_bytes([b[o], b[o + 1]]))
}

fn u32_at(b: &[u8], o: usize) -> u64 {
    u64::from(u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes")))
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

/// Flattens the PT_LOAD segments: (image bytes from LOAD_ADDR, memory size).
fn flatten(elf: &[u8]) -> Result<(Vec<u8>, u64), String> {
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 {
        return Err("not a 64-bit ELF".into());
    }
    let phoff = u64_at(elf, 32) as usize;
    let phentsize = u16_at(elf, 54) as usize;
    let phnum = u16_at(elf, 56) as usize;
    let mut image = Vec::new();
    let mut mem_end = LOAD_ADDR;
    for i in 0..phnum {
        let ph = &elf[phoff + i * phentsize..phoff + (i + 1) * phentsize];
        if u32_at(ph, 0) != 1 {
            continue;
        }
        let (off, paddr, filesz, memsz) = (
            u64_at(ph, 8),
            u64_at(ph, 24),
            u64_at(ph, 32),
            u64_at(ph, 40),
        );
        if paddr < LOAD_ADDR {
            return Err(format!("segment at {paddr:#x} below {LOAD_ADDR:#x}"));
        }
        let start = (paddr - LOAD_ADDR) as usize;
        let end = start + filesz as usize;
        if image.len() < end {
            image.resize(end, 0);
        }
        image[start..end].copy_from_slice(&elf[off as usize..off as usize + filesz as usize]);
        mem_end = mem_end.max(paddr + memsz);
    }
    if image.is_empty() {
        return Err("no PT_LOAD segment".into());
    }
    Ok((image, mem_end - LOAD_ADDR))
}

fn run(args: &[String]) -> Result<(), String> {
    let [_, setup_path, elf_path, out_path] = args else {
        return Err("usage: mkbzimage <setup.bin> <probe.elf> <bzImage>".into());
    };
    let read = |p: &str| std::fs::read(p).map_err(|e| format!("{p}: {e}"));
    let mut setup = read(setup_path)?;
    let elf = read(elf_path)?;
    if setup.len() < 0x270 || &setup[0x202..0x206] != b"HdrS" || setup[0x1fe..0x200] != [0x55, 0xaa]
    {
        return Err(format!("{setup_path}: no setup header"));
    }
    let sectors = setup.len().div_ceil(512).max(2);
    setup.resize(sectors * 512, 0);
    let (kernel, mem_size) = flatten(&elf)?;
    let init_size = (mem_size.max(kernel.len() as u64) + 0xfff) & !0xfff;
    setup[0x1f1] = u8::try_from(sectors - 1).map_err(|_| "setup too large")?;
    let syssize = u32::try_from(kernel.len().div_ceil(16)).map_err(|_| "kernel too large")?;
    setup[0x1f4..0x1f8].copy_from_slice(&syssize.to_le_bytes());
    setup[0x260..0x264].copy_from_slice(
        &u32::try_from(init_size)
            .map_err(|_| "init_size")?
            .to_le_bytes(),
    );
    let mut out = setup;
    out.extend_from_slice(&kernel);
    std::fs::write(out_path, &out).map_err(|e| format!("{out_path}: {e}"))?;
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mkbzimage: {e}");
            ExitCode::FAILURE
        }
    }
}
