/* Shared freestanding runtime for the vmm test guests.  See rt.h. */
#include "rt.h"
#include "boot.h"

#define COM1 0x3f8
#define LSR_THRE 0x20
/* A broken UART must not hang a guest forever: give up polling after this many reads. */
#define LSR_MAX_POLLS 100000

int spin_continue(u64 iter, u64 max_iters, u64 start_tsc, u64 max_tsc)
{
    if (iter >= max_iters)
        return 0;
    if (rdtsc() - start_tsc >= max_tsc)
        return 0;
    return 1;
}

void *memset(void *d, int c, usize n)
{
    u8 *p = d;
    while (n--)
        *p++ = (u8)c;
    return d;
}

void *memcpy(void *d, const void *s, usize n)
{
    u8 *dp = d;
    const u8 *sp = s;
    while (n--)
        *dp++ = *sp++;
    return d;
}

int memcmp(const void *a, const void *b, usize n)
{
    const u8 *x = a, *y = b;
    for (usize i = 0; i < n; i++)
        if (x[i] != y[i])
            return x[i] < y[i] ? -1 : 1;
    return 0;
}

usize strlen(const char *s)
{
    usize n = 0;
    while (s[n])
        n++;
    return n;
}

usize strnlen(const char *s, usize max)
{
    usize n = 0;
    while (n < max && s[n])
        n++;
    return n;
}

int strncmp(const char *a, const char *b, usize n)
{
    for (usize i = 0; i < n; i++) {
        if (a[i] != b[i])
            return (u8)a[i] < (u8)b[i] ? -1 : 1;
        if (!a[i])
            return 0;
    }
    return 0;
}

u32 fnv1a32(const u8 *p, u64 n)
{
    u32 h = 0x811c9dc5u;
    for (u64 i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x01000193u;
    }
    return h;
}

void putc(char c)
{
    for (int i = 0; i < LSR_MAX_POLLS; i++)
        if (inb(COM1 + 5) & LSR_THRE)
            break;
    outb(COM1, (u8)c);
}

void puts(const char *s)
{
    while (*s)
        putc(*s++);
}

void putsn(const char *s, usize max)
{
    for (usize i = 0; i < max && s[i]; i++)
        putc(s[i]);
}

void put_hex(u64 v)
{
    char buf[16];
    int n = 0;
    puts("0x");
    do {
        buf[n++] = "0123456789abcdef"[v & 0xf];
        v >>= 4;
    } while (v);
    while (n)
        putc(buf[--n]);
}

void put_dec(u64 v)
{
    char buf[20];
    int n = 0;
    do {
        buf[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n)
        putc(buf[--n]);
}

void nl(void) { putc('\n'); }

void kv_hex(const char *key, u64 v)
{
    puts(key);
    putc('=');
    put_hex(v);
    nl();
}

void kv_str(const char *key, const char *s, usize max)
{
    puts(key);
    putc('=');
    if (s)
        putsn(s, max);
    nl();
}

void line(const char *s)
{
    puts(s);
    nl();
}

const char *boot_name(u32 boot)
{
    switch (boot) {
    case BOOT_PVH: return "pvh";
    case BOOT_LINUX64: return "linux64";
    case BOOT_BZIMAGE64: return "bzimage";
    case BOOT_BZIMAGE32: return "bzimage";
    default: return "unknown";
    }
}

const char *boot_cmdline(u32 boot, u64 info)
{
    u64 p;
    if (info == 0)
        return NULL;
    if (boot == BOOT_PVH) {
        const struct hvm_start_info *si = (const struct hvm_start_info *)info;
        p = si->cmdline_paddr;
    } else {
        p = (u64)bp_read32(info, BP_CMD_LINE_PTR) | ((u64)bp_read32(info, BP_EXT_CMD_LINE_PTR) << 32);
    }
    if (p == 0 || p >= MAPPED_LIMIT)
        return NULL;
    return (const char *)p;
}

static int is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

const char *cmdline_find(const char *cmdline, const char *key)
{
    usize klen = strlen(key);
    const char *p = cmdline;
    if (!p)
        return NULL;
    while (*p) {
        while (*p && is_space(*p))
            p++;
        if (!*p)
            break;
        if (strncmp(p, key, klen) == 0)
            return p + klen;
        while (*p && !is_space(*p))
            p++;
    }
    return NULL;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int parse_num(const char **pp, u64 *out)
{
    const char *p = *pp;
    u64 v = 0;
    int digits = 0;
    if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) {
        p += 2;
        int h;
        while ((h = hexval(*p)) >= 0) {
            v = (v << 4) | (u64)h;
            p++;
            digits++;
        }
    } else {
        while (*p >= '0' && *p <= '9') {
            v = v * 10 + (u64)(*p - '0');
            p++;
            digits++;
        }
    }
    if (digits) {
        *out = v;
        *pp = p;
    }
    return digits;
}

int parse_size(const char **pp, u64 *out)
{
    u64 v;
    int d = parse_num(pp, &v);
    if (!d)
        return 0;
    switch (**pp) {
    case 'k': case 'K': v <<= 10; (*pp)++; break;
    case 'm': case 'M': v <<= 20; (*pp)++; break;
    case 'g': case 'G': v <<= 30; (*pp)++; break;
    default: break;
    }
    *out = v;
    return d;
}

void triple_fault(void)
{
    static const struct __attribute__((packed)) {
        u16 limit;
        u64 base;
    } empty_idt = { 0, 0 };
    __asm__ volatile("cli\n\tlidt %0\n\tud2" : : "m"(empty_idt) : "memory");
    __builtin_unreachable();
}

void guest_reset(void)
{
    __asm__ volatile("cli");
    outb(0x64, 0xfe);
    /* Still running: the VMM ignored the i8042 reset.  Say so, then end the VM
     * the hard way so that nothing hangs (QEMU microvm has no i8042). */
    line("i8042_reset=ignored");
    triple_fault();
}
