/*
 * Real-mode setup sectors of the probe guest's bzImage.
 *
 * Holds the Linux boot protocol setup header (offset 0x1f1) and the 16-bit
 * code a BIOS-style loader (QEMU -kernel through qboot or the linuxboot
 * option ROM) enters at setup segment + 0x200, with CS = setup segment +
 * 0x20 and DS = ES = SS = the setup segment, which is the zero page
 * (struct boot_params).  The code asks the BIOS for the e820 map (the
 * loader does not fill it in this path), switches to 32-bit protected mode
 * and jumps to code32_start with ESI = linear address of boot_params,
 * like Linux's own setup code does (which, unlike this one, copies the
 * header into a separate zero page first).
 *
 * Loaders that use the 32-bit or 64-bit entry never run this code; they
 * only read the header.  setup_sects, syssize and init_size are patched in
 * by mkbzimage.
 */
    .code16
    .section .text, "ax"
    .globl _start
_start:
    /* The boot sector is not bootable on its own. */
    .org 0x1f1
setup_sects:    .byte 0                 /* patched */
root_flags:     .word 0
syssize:        .long 0                 /* patched: 16-byte units */
ram_size:       .word 0
vid_mode:       .word 0xffff            /* NORMAL_VGA */
root_dev:       .word 0
boot_flag:      .word 0xaa55
    /* 0x200: entry of the real-mode code. */
    .byte 0xeb, header_end - 1f         /* jmp short */
1:
    .ascii "HdrS"
    .word 0x020f                        /* boot protocol 2.15 */
realmode_swtch: .long 0
start_sys_seg:  .word 0
                .word kernel_version - 0x200
type_of_loader: .byte 0
loadflags:      .byte 0x01              /* LOADED_HIGH */
setup_move_size: .word 0
code32_start:   .long 0x100000
ramdisk_image:  .long 0
ramdisk_size:   .long 0
bootsect_kludge: .long 0
heap_end_ptr:   .word 0
ext_loader_ver: .byte 0
ext_loader_type: .byte 0
cmd_line_ptr:   .long 0
initrd_addr_max: .long 0x7fffffff
kernel_alignment: .long 0x200000
relocatable_kernel: .byte 0
min_alignment:  .byte 21
xloadflags:     .word 0x0001            /* XLF_KERNEL_64: 64-bit entry at +0x200 */
cmdline_size:   .long 2047
hardware_subarch: .long 0
hardware_subarch_data: .quad 0
payload_offset: .long 0
payload_length: .long 0
setup_data:     .quad 0
pref_address:   .quad 0x100000
init_size:      .long 0                 /* patched: bytes needed from 1 MiB */
handover_offset: .long 0
kernel_info_offset: .long 0x1e0       /* from code32_start: entry.S */

kernel_version:
    .asciz "probe-guest"
header_end:
    jmp start_of_setup

    /*
     * The setup segment is also the zero page handed to the kernel part,
     * so the code must stay clear of the boot_params fields that get
     * filled in: e820_table (0x2d0-0xcd0) in particular.
     */
    .org 0xd00

    .set BP_E820_ENTRIES, 0x1e8
    .set BP_E820_TABLE, 0x2d0
    .set BP_CODE32_START, 0x214
    .set SMAP, 0x534d4150

start_of_setup:
    cli
    cld
    /* e820 map from the BIOS, unless the loader already supplied one. */
    cmpb $0, BP_E820_ENTRIES
    jne e820_done
    push %ds
    pop %es
    xor %ebx, %ebx
    xor %bp, %bp
    mov $BP_E820_TABLE, %di
e820_next:
    mov $0xe820, %eax
    mov $20, %ecx
    mov $SMAP, %edx
    int $0x15
    jc e820_end
    cmp $SMAP, %eax
    jne e820_end
    add $20, %di
    inc %bp
    cmp $128, %bp
    jae e820_end
    test %ebx, %ebx
    jnz e820_next
e820_end:
    mov %bp, %ax
    movb %al, BP_E820_ENTRIES
e820_done:
    cli
    /* ESI = linear address of boot_params (DS base). */
    xor %esi, %esi
    mov %ds, %si
    shl $4, %esi
    /* The GDT lives in this segment: patch its linear base in. */
    mov %esi, %eax
    add $gdt, %eax
    mov %eax, gdt_ptr + 2
    lgdtl gdt_ptr
    /* Far pointer to code32_start. */
    mov BP_CODE32_START, %eax
    mov %eax, jump_ptr
    movw $0x08, jump_ptr + 4
    mov %cr0, %eax
    or $1, %eax
    mov %eax, %cr0
    ljmpl *jump_ptr

    .balign 8
gdt:
    .quad 0
    .quad 0x00cf9a000000ffff            /* 0x08: flat 32-bit code */
    .quad 0x00cf92000000ffff            /* 0x10: flat data */
gdt_end:
gdt_ptr:
    .word gdt_end - gdt - 1
    .long 0                             /* patched at run time */
jump_ptr:
    .long 0
    .word 0

    /* Pad the setup to whole sectors (at least 4 beyond the boot sector). */
    .balign 512
