/*
 * Ring-0 part of the probe guest: entry points, GDT, IDT, TSS, page tables,
 * interrupt stubs and the ud2 call gate.  Everything else runs in ring 3.
 *
 * Ring-0 code is emulated instruction by instruction on PVM hosts, so it is
 * kept to a few dozen plain integer instructions per path, and every table
 * is built at link time (no loops).  No SSE/x87, popcnt, cmpxchg16b, int3.
 *
 * Entry points (all leave EDI = boot information pointer, ESI = entry kind):
 *   image + 0x000  startup_32   32-bit protected mode, ESI = boot_params
 *   image + 0x200  startup_64   64-bit long mode,      RSI = boot_params
 *   pvh_start (PVH ELF note)    32-bit protected mode, EBX = hvm_start_info
 *
 * Every CPU's GS base points at its per-CPU area (probe_percpu + 64 * index;
 * the GS selector is null, so the base survives the switches to ring 3):
 * the interrupt stubs count its interrupts there, the wait gate compares
 * with that count, and a fault on a bench worker AP is recorded there.
 *
 * Braces are avoided in this file: it is included through global_asm!.
 */
    .set CODE32_CS, 0x08
    .set KERNEL_DS, 0x10
    .set KERNEL_CS, 0x18
    .set USER_DS, 0x23
    .set USER_CS, 0x2b
    .set TSS_SEL, 0x30
    .set RING0_BASE, 0x101000           /* .ring0, fixed by link.ld */
    .set TSS_ADDR, RING0_BASE + 0x1000
    .set TSS_LIMIT, 104 + 8192          /* I/O bitmap for all 65536 ports + 0xff */
    .set NVEC, 128                      /* IDT size: exceptions + IRQ vectors */
    .set ENTRY_BZIMAGE64, 0
    .set ENTRY_BZIMAGE32, 1
    .set ENTRY_PVH, 2
    .set GATE_WAIT, 1
    .set GATE_RESET, 2
    .set GATE_IOAPIC_WRITE, 4
    .set GATE_IOAPIC_READ, 5
    .set SPURIOUS_VECTOR, 0x7f
    .set MSR_GS_BASE, 0xc0000101
    /* Per-CPU area (probe_percpu, 64 bytes per CPU: 0 the BSP, k bench worker k). */
    .set PERCPU_SIZE, 64
    .set PC_IRQS, 0                     /* interrupts this CPU took */
    .set PC_MAGIC, 8                    /* AP_MAGIC on a worker AP */
    .set PC_INDEX, 16
    .set PC_FAULT, 24                   /* vector + 1 once a fault stopped this AP */
    .set PC_FAULT_ERR, 32
    .set PC_FAULT_RIP, 40
    .set PC_FAULT_CR2, 48
    .set AP_MAGIC, 0x41504150
    /* Bench worker APs 1..MAX_APS: TSS k-1 at .ring0 + AP_TSS_OFF + 0x80 * (k-1),
     * selector AP_TSS_SEL + 16 * (k-1), sharing the BSP TSS's I/O bitmap (an I/O
     * map base is an offset from its TSS, so these TSSs sit below the bitmap). */
    .set MAX_APS, 7
    .set AP_TSS_SEL, 0x40
    .set AP_TSS_OFF, 0xc80
    .set AP_TSS_STRIDE, 0x80
    .set IOMAP_OFF, 0x1000 + 104
    .set AP_KSTACK, 8192
    .set AP_USTACK, 65536

/* ------------------------------------------------------------------ */
    .pushsection .text.entry, "ax"
    .code32
    .globl startup_32
startup_32:
    cli
    cld
    mov %esi, %edi
    mov $ENTRY_BZIMAGE32, %esi
    jmp common32

    /* Boot protocol 2.15 kernel_info (kernel_info_offset in setup.S). */
    .org 0x1e0
kernel_info:
    .ascii "LToP"
    .long kernel_info_end - kernel_info /* size */
    .long kernel_info_end - kernel_info /* size_total */
    .long 0                             /* setup_type_max */
kernel_info_end:

    .org 0x200
    .code64
    .globl startup_64
startup_64:
    cli
    cld
    mov %rsi, %rdi
    mov $ENTRY_BZIMAGE64, %esi
    mov $stack0_top, %esp               /* the protocol promises no stack */
    lgdt gdt_ptr(%rip)
    mov $pml4, %eax
    mov %rax, %cr3
    pushq $KERNEL_CS
    lea long_common(%rip), %rax
    push %rax
    lretq

    .code32
    .globl pvh_start
pvh_start:
    cli
    cld
    mov %ebx, %edi
    mov $ENTRY_PVH, %esi
common32:
    lgdt %cs:gdt_ptr
    ljmp $CODE32_CS, $1f
1:  mov $KERNEL_DS, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    mov %eax, %fs
    mov %eax, %gs
    mov %cr4, %eax
    or $0x620, %eax                     /* PAE, OSFXSR, OSXMMEXCPT */
    mov %eax, %cr4
    mov $pml4, %eax
    mov %eax, %cr3
    mov $0xc0000080, %ecx               /* EFER.LME */
    rdmsr
    or $0x100, %eax
    wrmsr
    mov %cr0, %eax
    or $0x80000001, %eax                /* PG, PE */
    mov %eax, %cr0
    ljmp $KERNEL_CS, $long_common

    .code64
long_common:
    mov $KERNEL_DS, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    mov %eax, %fs
    mov %eax, %gs
    mov $stack0_top, %esp
    xor %eax, %eax                      /* per-CPU area 0: the BSP */
    call set_gs_base
    mov %cr4, %rax
    or $0x620, %rax                     /* OSFXSR, OSXMMEXCPT: SSE for ring 3 */
    mov %rax, %cr4
    mov %cr0, %rax
    and $~0x6000000c, %rax              /* clear CD, NW (reset values), EM, TS */
    or $0x2, %rax                       /* MP */
    mov %rax, %cr0
    andb $~0x02, gdt + TSS_SEL + 5      /* not busy, in case of a warm restart */
    mov $TSS_SEL, %eax
    ltr %ax
    lidt idt_ptr
    mov $0xff, %al                      /* mask both 8259s */
    out %al, $0x21
    out %al, $0xa1
    pushq $USER_DS
    pushq $user_stack_top
    pushq $0x202                        /* IF=1 */
    pushq $USER_CS
    pushq $user_entry
    iretq

/* ------------------------------------------------------------------ */
/* Application processors.  Ring 3 copies the 16-bit trampoline to a free
 * page below 1 MiB, sets probe_ap_index and sends INIT-SIPI-SIPI with that
 * page as the vector; the AP enters long mode with the BSP's GDT and page
 * tables and prints "PROBE ap apic_id=0xNN" itself.  With probe_ap_index 0
 * (probe.test=smp) it counts itself in probe_ap_count and halts with
 * interrupts off.  With index k >= 1 (a blk-bench worker) it takes per-CPU
 * area k, TSS k-1 and its own stacks, loads the IDT, counts itself and
 * enters ring 3 at probe_ap_main(k) with interrupts on.  APs start one at a
 * time (the BSP waits for each), so they share the message buffer. */
    .code16
    .globl ap_trampoline, ap_trampoline_end
ap_trampoline:
    cli
    cld
    lgdtl %cs:(ap_gdt_ptr - ap_trampoline)
    mov %cr0, %eax
    or $1, %eax
    mov %eax, %cr0
    ljmpl $CODE32_CS, $ap_start32
    .balign 8
ap_gdt_ptr:
    .word gdt_end - gdt - 1
    .long gdt
ap_trampoline_end:

    .code32
ap_start32:
    mov $KERNEL_DS, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    mov %eax, %fs
    mov %eax, %gs
    mov %cr4, %eax
    or $0x620, %eax
    mov %eax, %cr4
    mov $pml4, %eax
    mov %eax, %cr3
    mov $0xc0000080, %ecx
    rdmsr
    or $0x100, %eax
    wrmsr
    mov %cr0, %eax
    or $0x80000001, %eax
    mov %eax, %cr0
    ljmp $KERNEL_CS, $ap_long

    .code64
ap_long:
    mov probe_ap_index, %ebx
    mov $ap_stack_top, %esp
    test %ebx, %ebx
    jz 1f
    mov %ebx, %eax
    shl $13, %eax                       /* AP_KSTACK */
    lea ap_kstacks(%rax), %rsp
1:  mov probe_lapic_eoi, %rax           /* LAPIC base + 0xb0 */
    mov -0x90(%rax), %eax               /* LAPIC ID register (base + 0x20) */
    shr $24, %eax
    mov %eax, %ecx
    shr $4, %eax
    and $0xf, %eax
    movb hex_digits(%rax), %al
    movb %al, ap_msg_hex
    mov %ecx, %eax
    and $0xf, %eax
    movb hex_digits(%rax), %al
    movb %al, ap_msg_hex + 1
    mov $ap_msg, %esi
    call serial_puts
    test %ebx, %ebx
    jnz ap_worker
    lock incq probe_ap_count
    cli
1:  hlt
    jmp 1b

ap_worker:
    mov %ebx, %eax
    call set_gs_base
    movq $AP_MAGIC, %gs:PC_MAGIC
    mov %rbx, %gs:PC_INDEX
    movq $0, %gs:PC_FAULT
    mov %cr0, %rax                      /* caches on, FPU usable, as on the BSP */
    and $~0x6000000c, %rax
    or $0x2, %rax
    mov %rax, %cr0
    lea -1(%rbx), %eax                  /* TSS k-1, not busy from an earlier start */
    shl $4, %eax
    add $AP_TSS_SEL, %eax
    andb $~0x02, gdt + 5(%rax)
    ltr %ax
    lidt idt_ptr
    lock incq probe_ap_count
    mov %ebx, %eax
    shl $16, %eax                       /* AP_USTACK */
    lea ap_ustacks(%rax), %rax
    pushq $USER_DS
    push %rax
    pushq $0x202                        /* IF=1 */
    pushq $USER_CS
    pushq $ap_user_entry
    mov %ebx, %edi
    iretq

/* GS base = per-CPU area EAX (0: the BSP), with a null GS selector. */
set_gs_base:
    shl $6, %eax                        /* PERCPU_SIZE */
    add $probe_percpu, %eax
    xor %edx, %edx
    mov %edx, %gs
    mov $MSR_GS_BASE, %ecx
    wrmsr
    ret

/* Polled COM1 output of the NUL-terminated string at RSI. */
serial_puts:
    movzbl (%rsi), %ecx
    test %ecx, %ecx
    jz 2f
    mov $0x3fd, %edx
1:  in %dx, %al
    test $0x20, %al
    jz 1b
    mov $0x3f8, %edx
    mov %ecx, %eax
    out %al, %dx
    inc %rsi
    jmp serial_puts
2:  ret
    .popsection

/* ------------------------------------------------------------------ */
    .pushsection .ring0, "awx"
    .code64
    /* One 16-byte stub per vector at RING0_BASE + 16 * vector. */
isr_stubs:
    .set vec, 0
    .rept NVEC
    .if (vec == 8) || ((vec >= 10) && (vec <= 14)) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
    .else
    pushq $0
    .endif
    pushq $vec
    jmp isr_common
    .balign 16
    .set vec, vec + 1
    .endr
    .org isr_stubs + 16 * NVEC

/* Stack: 0 vector, 8 error code, 16 rip, 24 cs, 32 rflags, 40 rsp, 48 ss */
isr_common:
    cmpq $32, (%rsp)
    jae irq_entry
    cmpq $6, (%rsp)
    jne fault_entry
    testb $3, 24(%rsp)
    jz fault_entry
    push %rcx
    mov 24(%rsp), %rcx
    cmpw $0x0b0f, (%rcx)
    pop %rcx
    jne fault_entry
    /* The ring-3 call gate: ud2 with the operation in RAX, argument in RDX. */
    addq $2, 16(%rsp)
    cmp $GATE_WAIT, %rax
    je gate_wait
    cmp $GATE_RESET, %rax
    je triple_fault
    cmp $GATE_IOAPIC_WRITE, %rax
    je gate_ioapic_write
    cmp $GATE_IOAPIC_READ, %rax
    je gate_ioapic_read
    mov $-1, %rax
gate_return:
    add $16, %rsp
    iretq
gate_wait:
    /* Sleep unless an interrupt came in since ring 3 read probe_irq_total. */
    cmp %gs:PC_IRQS, %rdx
    jne 1f
    sti
    hlt
    cli
1:  xor %eax, %eax
    jmp gate_return

/* I/O APIC access with interrupts off, so that the index register cannot
 * change under ring 3's feet: RDX = base, ECX = value, RCX[63:32] = index. */
gate_ioapic_write:
    mov %rcx, %rax
    shr $32, %rax
    mov %eax, (%rdx)
    mov %ecx, 0x10(%rdx)
    xor %eax, %eax
    jmp gate_return
gate_ioapic_read:
    mov %ecx, (%rdx)
    mov 0x10(%rdx), %eax
    jmp gate_return

triple_fault:
    lidt null_idt_ptr
    ud2

/* Device interrupt: count it; for a level-triggered pin, mask it at the
 * I/O APIC (ring 3 unmasks it once the device is quiet: some KVMs, PVM
 * among them, retire level interrupts without waiting for the guest's EOI,
 * so leaving the EOI to ring 3 is not enough); then EOI. */
irq_entry:
    push %rax
    push %rcx
    mov 16(%rsp), %rax
    lock incq probe_irq_counts(,%rax,8)
    lock incq probe_irq_total
    incq %gs:PC_IRQS
    cmp $SPURIOUS_VECTOR, %rax
    je 2f
    movzbl probe_irq_level(%rax), %ecx
    test %ecx, %ecx
    jz 1f
    push %rdx
    mov probe_irq_ioapic(,%rax,8), %rdx
    mov %ecx, (%rdx)
    mov probe_irq_redir(,%rax,4), %ecx
    or $0x10000, %ecx
    mov %ecx, 0x10(%rdx)
    pop %rdx
1:  mov probe_lapic_eoi, %rcx
    movl $0, (%rcx)
2:  pop %rcx
    pop %rax
    add $16, %rsp
    iretq

/* An unexpected exception: record it and "return" into the ring-3 reporter.
 * On a bench worker AP: record it in the per-CPU area (the BSP reports it)
 * and stop that CPU. */
fault_entry:
    cmpq $AP_MAGIC, %gs:PC_MAGIC
    je ap_fault
    cmpq $0, probe_fault_active
    jne triple_fault
    movq $1, probe_fault_active
    push %rax
    mov 8(%rsp), %rax
    mov %rax, probe_fault_vector
    mov 16(%rsp), %rax
    mov %rax, probe_fault_error
    mov 24(%rsp), %rax
    mov %rax, probe_fault_rip
    mov 32(%rsp), %rax
    mov %rax, probe_fault_cs
    mov %cr2, %rax
    mov %rax, probe_fault_cr2
    pop %rax
    add $16, %rsp
    movq $fault_trampoline, 0(%rsp)
    movq $USER_CS, 8(%rsp)
    movq $0x2, 16(%rsp)
    movq $fault_stack_top, 24(%rsp)
    movq $USER_DS, 32(%rsp)
    iretq

ap_fault:
    push %rax
    mov 16(%rsp), %rax
    mov %rax, %gs:PC_FAULT_ERR
    mov 24(%rsp), %rax
    mov %rax, %gs:PC_FAULT_RIP
    mov %cr2, %rax
    mov %rax, %gs:PC_FAULT_CR2
    mov 8(%rsp), %rax
    inc %rax
    mov %rax, %gs:PC_FAULT
1:  cli
    hlt
    jmp 1b

    /* The worker APs' 64-bit TSSs: RSP0 and the BSP TSS's I/O bitmap. */
    .org AP_TSS_OFF
ap_tss:
    .set i, 0
    .rept MAX_APS
    .long 0
    .quad ap_kstacks + (i + 1) * AP_KSTACK  /* RSP0 */
    .fill 88, 1, 0                      /* RSP1, RSP2, IST1-7, reserved */
    .word 0
    .word IOMAP_OFF - (AP_TSS_OFF + AP_TSS_STRIDE * i)
    .fill AP_TSS_STRIDE - 104, 1, 0
    .set i, i + 1
    .endr

    /* 64-bit TSS at TSS_ADDR: RSP0 and an I/O bitmap allowing every port. */
    .org 0x1000
tss:
    .long 0
    .quad stack0_top                    /* RSP0 */
    .quad 0, 0, 0                       /* RSP1, RSP2, reserved */
    .quad 0, 0, 0, 0, 0, 0, 0           /* IST1-7 */
    .quad 0
    .word 0
    .word 104                           /* I/O map base */
    .fill 8192, 1, 0
    .byte 0xff
    .popsection

/* ------------------------------------------------------------------ */
    .pushsection .data.ring0, "aw"
    .balign 16
gdt:
    .quad 0
    .quad 0x00cf9a000000ffff            /* 0x08 code32 */
    .quad 0x00cf92000000ffff            /* 0x10 data */
    .quad 0x00af9a000000ffff            /* 0x18 code64 */
    .quad 0x00cff2000000ffff            /* 0x20 user data (DPL 3) */
    .quad 0x00affa000000ffff            /* 0x28 user code64 (DPL 3) */
    .word TSS_LIMIT & 0xffff            /* 0x30 TSS */
    .word TSS_ADDR & 0xffff
    .byte (TSS_ADDR >> 16) & 0xff
    .byte 0x89
    .byte (TSS_LIMIT >> 16) & 0x0f
    .byte (TSS_ADDR >> 24) & 0xff
    .long 0
    .long 0
    .set i, 0                           /* 0x40 + 16 * i: worker AP i+1's TSS */
    .rept MAX_APS
    .set ap_tss_addr, RING0_BASE + AP_TSS_OFF + AP_TSS_STRIDE * i
    .set ap_tss_limit, IOMAP_OFF - (AP_TSS_OFF + AP_TSS_STRIDE * i) + 8192
    .word ap_tss_limit & 0xffff
    .word ap_tss_addr & 0xffff
    .byte (ap_tss_addr >> 16) & 0xff
    .byte 0x89
    .byte (ap_tss_limit >> 16) & 0x0f
    .byte (ap_tss_addr >> 24) & 0xff
    .long 0
    .long 0
    .set i, i + 1
    .endr
gdt_end:
    .balign 8
gdt_ptr:
    .word gdt_end - gdt - 1
    .quad gdt
    .balign 8
idt_ptr:
    .word NVEC * 16 - 1
    .quad idt
    .balign 8
null_idt_ptr:
    .word 0
    .quad 0
    .balign 16
idt:
    .set vec, 0
    .rept NVEC
    .word (RING0_BASE + 16 * vec) & 0xffff
    .word KERNEL_CS
    .byte 0
    .byte 0x8e                          /* present, DPL 0, interrupt gate */
    .word ((RING0_BASE + 16 * vec) >> 16) & 0xffff
    .long 0
    .long 0
    .set vec, vec + 1
    .endr

    /* State shared with ring 3 (read there with volatile loads). */
    .balign 8
    .globl probe_irq_total, probe_irq_counts, probe_irq_level, probe_lapic_eoi
    .globl probe_irq_ioapic, probe_irq_redir
    .globl probe_fault_active, probe_fault_vector, probe_fault_error
    .globl probe_fault_rip, probe_fault_cs, probe_fault_cr2
probe_irq_total:    .quad 0
probe_irq_counts:   .fill NVEC, 8, 0
probe_irq_ioapic:   .fill NVEC, 8, 0        /* level pins: I/O APIC base */
probe_irq_redir:    .fill NVEC, 4, 0        /* level pins: redirection low word */
probe_lapic_eoi:    .quad 0xfee000b0
probe_fault_active: .quad 0
probe_fault_vector: .quad 0
probe_fault_error:  .quad 0
probe_fault_rip:    .quad 0
probe_fault_cs:     .quad 0
probe_fault_cr2:    .quad 0
    .globl probe_ap_count, probe_ap_index, probe_percpu
probe_ap_count:     .quad 0
probe_ap_index:     .quad 0                 /* set by the BSP before each SIPI */
    .balign 64
probe_percpu:       .fill (MAX_APS + 1) * PERCPU_SIZE, 1, 0
hex_digits:         .ascii "0123456789abcdef"
ap_msg:             .ascii "PROBE ap apic_id=0x"
ap_msg_hex:         .asciz "??\n"
probe_irq_level:                        /* level pins: redirection register index */
    .fill NVEC, 1, 0
    .popsection

/* Identity map of the first 4 GiB with 2 MiB pages, user-accessible; the
 * top GiB (32-bit MMIO hole, IOAPIC, LAPIC) uncached. */
    .pushsection .data.pagetables, "aw"
    .balign 4096
pml4:
    .quad pdpt + 0x7
    .fill 511, 8, 0
pdpt:
    .quad pd + 0x0000 + 0x7
    .quad pd + 0x1000 + 0x7
    .quad pd + 0x2000 + 0x7
    .quad pd + 0x3000 + 0x7
    .fill 508, 8, 0
pd:
    .set i, 0
    .rept 2048
    .if i < 1536
    .quad (i << 21) | 0x87              /* P, RW, US, PS */
    .else
    .quad (i << 21) | 0x9f              /* + PWT, PCD */
    .endif
    .set i, i + 1
    .endr
    .popsection

/* ------------------------------------------------------------------ */
    .pushsection .note.Xen, "a", @note
    .balign 4
    .long 4                             /* namesz */
    .long 4                             /* descsz */
    .long 18                            /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .long pvh_start
    .popsection

    .pushsection .stack, "aw", @nobits
    .balign 4096
stack0:
    .skip 16384
stack0_top:
    .skip 16384
fault_stack_top:
    .skip 262144
user_stack_top:
    .skip 4096
ap_stack_top:
    .balign 4096
ap_kstacks:                             /* worker k: ring 0 below ap_kstacks + k * AP_KSTACK */
    .skip MAX_APS * AP_KSTACK
ap_ustacks:                             /* worker k: ring 3 below ap_ustacks + k * AP_USTACK */
    .skip MAX_APS * AP_USTACK
    .popsection

/* ------------------------------------------------------------------ */
    .pushsection .text.user_entry, "ax"
    .code64
/* First ring-3 code: RDI = boot information, RSI = entry kind. */
user_entry:
    fninit
    ldmxcsr mxcsr_default
    and $-16, %rsp
    call probe_main
    ud2
fault_trampoline:
    call probe_fault_report
    ud2
/* First ring-3 code of a bench worker AP: RDI = its index. */
ap_user_entry:
    fninit
    ldmxcsr mxcsr_default
    and $-16, %rsp
    call probe_ap_main
    ud2
    .balign 4
mxcsr_default:
    .long 0x1f80
    .popsection
