/* tcpblast: move bytes over one stream connection with large buffers, for the guest's network and
 * vsock tests and benchmarks.
 *
 *   tcpblast recv PORT FILE              accept one connection on PORT, write what arrives to FILE
 *   tcpblast send HOST PORT FILE [BYTES] connect to HOST:PORT (retrying for a minute), send FILE
 *                                        (at most BYTES of it: FILE may be /dev/zero), close
 *   tcpblast echo PORT                   accept one connection on PORT, send back what arrives
 *
 * TCP over IPv4 by default; a PORT written vsock:N listens on vsock port N, a HOST written
 * vsock:CID connects to that vsock CID (2 is the host), so that one program, with the same
 * buffers, sources and sinks, measures both transports.
 *
 * busybox nc moves data 1 KiB per system call; in a guest whose system calls are emulated
 * (DESIGN.md, "Host quirks") that, not the NIC, bounds the transfer. This tool reads and writes
 * 1 MiB at a time. Built statically by build-rootfs.sh. Exit status 0 when every byte moved. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/vm_sockets.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define CHUNK (1 << 20)

static char buf[CHUNK];

/* A socket address of either family. */
union addr {
    struct sockaddr sa;
    struct sockaddr_in in;
    struct sockaddr_vm vm;
};

static int fail(const char *what)
{
    fprintf(stderr, "tcpblast: %s: %s\n", what, strerror(errno));
    return 1;
}

/* "vsock:N" sets *vsock and returns N; otherwise the whole text's number. */
static long parse_vsock(const char *text, int *vsock)
{
    *vsock = strncmp(text, "vsock:", 6) == 0;
    return atol(*vsock ? text + 6 : text);
}

/* Writes all of buf[0..len) to fd. */
static int write_all(int fd, const char *p, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Copies from `in` to `out` until EOF on `in` or `limit` bytes (< 0: no limit); returns the bytes
 * moved or -1. */
static long long copy(int in, int out, long long limit)
{
    long long total = 0;
    while (limit < 0 || total < limit) {
        size_t want = sizeof buf;
        if (limit >= 0 && (unsigned long long)(limit - total) < want)
            want = (size_t)(limit - total);
        ssize_t n = read(in, buf, want);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        if (n == 0)
            break;
        if (write_all(out, buf, (size_t)n) < 0)
            return -1;
        total += n;
    }
    return total;
}

/* Listens on PORT (TCP or vsock:N) and accepts one connection. */
static int accept_one(const char *port_text)
{
    int one = 1, vsock;
    long port = parse_vsock(port_text, &vsock);
    union addr addr;
    socklen_t len;
    memset(&addr, 0, sizeof addr);
    if (vsock) {
        addr.vm.svm_family = AF_VSOCK;
        addr.vm.svm_port = (unsigned)port;
        addr.vm.svm_cid = VMADDR_CID_ANY;
        len = sizeof addr.vm;
    } else {
        addr.in.sin_family = AF_INET;
        addr.in.sin_port = htons((unsigned short)port);
        len = sizeof addr.in;
    }
    int ls = socket(vsock ? AF_VSOCK : AF_INET, SOCK_STREAM, 0);
    if (ls < 0)
        return -fail("socket");
    if (!vsock)
        setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(ls, &addr.sa, len) < 0)
        return -fail("bind");
    if (listen(ls, 1) < 0)
        return -fail("listen");
    int s = accept(ls, NULL, NULL);
    if (s < 0)
        return -fail("accept");
    close(ls);
    return s;
}

static int do_recv(const char *port, const char *path)
{
    int s = accept_one(port);
    if (s < 0)
        return 1;
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        return fail(path);
    long long n = copy(s, fd, -1);
    if (n < 0)
        return fail("receive");
    if (close(fd) < 0)
        return fail(path);
    close(s);
    printf("tcpblast: received %lld bytes\n", n);
    return 0;
}

static int do_echo(const char *port)
{
    int s = accept_one(port);
    if (s < 0)
        return 1;
    long long n = copy(s, s, -1);
    if (n < 0)
        return fail("echo");
    close(s);
    printf("tcpblast: echoed %lld bytes\n", n);
    return 0;
}

static int do_send(const char *host, int port, const char *path, long long limit)
{
    int vsock;
    long cid = parse_vsock(host, &vsock);
    union addr addr;
    socklen_t len;
    memset(&addr, 0, sizeof addr);
    if (vsock) {
        addr.vm.svm_family = AF_VSOCK;
        addr.vm.svm_port = (unsigned)port;
        addr.vm.svm_cid = (unsigned)cid;
        len = sizeof addr.vm;
    } else {
        addr.in.sin_family = AF_INET;
        addr.in.sin_port = htons((unsigned short)port);
        len = sizeof addr.in;
        if (inet_pton(AF_INET, host, &addr.in.sin_addr) != 1) {
            fprintf(stderr, "tcpblast: '%s' is not an IPv4 address or vsock:CID\n", host);
            return 1;
        }
    }
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return fail(path);
    int s = -1;
    for (int tries = 0; tries < 300; tries++) {
        s = socket(vsock ? AF_VSOCK : AF_INET, SOCK_STREAM, 0);
        if (s < 0)
            return fail("socket");
        if (connect(s, &addr.sa, len) == 0)
            break;
        close(s);
        s = -1;
        usleep(200000);
    }
    if (s < 0)
        return fail("connect");
    long long n = copy(fd, s, limit);
    if (n < 0)
        return fail("send");
    /* Half-close, then wait for the peer's close: every byte has been taken. */
    shutdown(s, SHUT_WR);
    while (read(s, buf, sizeof buf) > 0)
        ;
    close(s);
    printf("tcpblast: sent %lld bytes\n", n);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 4 && strcmp(argv[1], "recv") == 0)
        return do_recv(argv[2], argv[3]);
    if (argc == 3 && strcmp(argv[1], "echo") == 0)
        return do_echo(argv[2]);
    if ((argc == 5 || argc == 6) && strcmp(argv[1], "send") == 0)
        return do_send(argv[2], atoi(argv[3]), argv[4], argc == 6 ? atoll(argv[5]) : -1);
    fprintf(stderr, "usage: tcpblast recv PORT FILE | tcpblast send HOST PORT FILE [BYTES] | "
                    "tcpblast echo PORT\n(PORT: N or vsock:N; HOST: an IPv4 address or "
                    "vsock:CID)\n");
    return 2;
}
