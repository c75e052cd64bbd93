/* Shared freestanding runtime for the vmm test guests (x86_64, long mode).
 *
 * Every guest is entered by one of the entry stubs (entry_*.S), which switch to
 * long mode with their own identity map of the first 4 GiB (2 MiB pages), their
 * own GDT and stack, zero .bss and then call
 *     void guest_main(u32 boot, u64 info, u64 entry_rflags);
 * `boot` is one of BOOT_*, `info` the pointer the VMM handed over (EBX for PVH,
 * RSI/ESI for the Linux protocols), `entry_rflags` the RFLAGS seen at entry.
 * When guest_main returns, the stub resets the machine (see guest_reset()).
 */
#ifndef RT_H
#define RT_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef signed long long i64;
typedef unsigned long usize;

#define NULL ((void *)0)

#include "boot_kinds.h"

/* ---- port I/O ---- */
static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outw(u16 port, u16 v) { __asm__ volatile("outw %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outl(u16 port, u32 v) { __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port)); }
static inline u8 inb(u16 port) { u8 v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u16 inw(u16 port) { u16 v; __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u32 inl(u16 port) { u32 v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }

/* ---- MMIO (addresses below 4 GiB are identity mapped) ---- */
static inline u8 mmio_read8(u64 a) { return *(volatile u8 *)a; }
static inline u16 mmio_read16(u64 a) { return *(volatile u16 *)a; }
static inline u32 mmio_read32(u64 a) { return *(volatile u32 *)a; }
static inline u64 mmio_read64(u64 a) { return *(volatile u64 *)a; }
static inline void mmio_write8(u64 a, u8 v) { *(volatile u8 *)a = v; }
static inline void mmio_write16(u64 a, u16 v) { *(volatile u16 *)a = v; }
static inline void mmio_write32(u64 a, u32 v) { *(volatile u32 *)a = v; }
static inline void mmio_write64(u64 a, u64 v) { *(volatile u64 *)a = v; }

/* ---- CPU helpers ---- */
static inline void barrier(void) { __asm__ volatile("" : : : "memory"); }
static inline void mb(void) { __asm__ volatile("mfence" : : : "memory"); }
static inline void cpu_relax(void) { __asm__ volatile("pause" : : : "memory"); }
static inline u64 rdtsc(void)
{
    u32 lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((u64)hi << 32) | lo;
}

/* Bounded wait helper: returns 1 while neither `max_iters` iterations nor
 * `max_tsc` TSC ticks (since `start_tsc`) have passed.  Both bounds apply so
 * that a frozen or racing TSC cannot make a wait unbounded or instant. */
int spin_continue(u64 iter, u64 max_iters, u64 start_tsc, u64 max_tsc);

/* ---- memory/string ---- */
void *memset(void *d, int c, usize n);
void *memcpy(void *d, const void *s, usize n);
int memcmp(const void *a, const void *b, usize n);
usize strlen(const char *s);
usize strnlen(const char *s, usize max);
int strncmp(const char *a, const char *b, usize n);

/* FNV-1a 32-bit over `n` bytes (offset basis 0x811c9dc5, prime 0x01000193). */
u32 fnv1a32(const u8 *p, u64 n);

/* ---- serial (COM1 8250 at 0x3f8; LSR bit 5 polled before each byte) ---- */
void putc(char c);
void puts(const char *s);                 /* no newline added */
void putsn(const char *s, usize max);     /* at most max bytes, stops at NUL */
void put_hex(u64 v);                      /* "0x" + lowercase hex, no leading zeros */
void put_dec(u64 v);
void nl(void);
/* One fact per line. */
void kv_hex(const char *key, u64 v);      /* key=0x...\n */
void kv_str(const char *key, const char *s, usize max); /* key=text\n */
void line(const char *s);                 /* s\n */

/* ---- boot information, whatever the protocol ---- */
/* "pvh", "linux64", "bzimage" (both bzImage entries) or "unknown". */
const char *boot_name(u32 boot);
/* Pointer to the NUL-terminated kernel command line, or NULL if none. */
const char *boot_cmdline(u32 boot, u64 info);

/* ---- command line parsing ---- */
/* Finds `key` (e.g. "virtio_mmio.device=") at the start of a space-separated
 * word; returns a pointer just after it, or NULL. */
const char *cmdline_find(const char *cmdline, const char *key);
/* Parses a number: "0x" prefix = hex, else decimal.  Advances *p.  Returns the
 * number of digits consumed (0 = no number). */
int parse_num(const char **p, u64 *out);
/* Parses a size like "4K", "512", "1M", "0x1000": number then optional K/M/G. */
int parse_size(const char **p, u64 *out);

/* ---- end of the VM ---- */
/* Prints nothing; writes 0xFE to port 0x64 (i8042 reset).  If the VMM ignores
 * it, prints "i8042_reset=ignored" and triple-faults instead. */
void guest_reset(void) __attribute__((noreturn));
/* Loads an empty IDT (limit 0) and executes ud2: a triple fault. */
void triple_fault(void) __attribute__((noreturn));

/* Implemented by each guest. */
void guest_main(u32 boot, u64 info, u64 entry_rflags);

#endif
