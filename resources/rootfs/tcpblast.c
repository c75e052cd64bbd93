/* tcpblast: move a file over one TCP connection with large buffers, for the guest's network test.
 *
 *   tcpblast recv PORT FILE        accept one connection on PORT, write what arrives to FILE
 *   tcpblast send HOST PORT FILE   connect to HOST:PORT (retrying for a minute), send FILE, close
 *
 * busybox nc moves data 1 KiB per system call; in a guest whose system calls are emulated
 * (DESIGN.md, "Host quirks") that, not the NIC, bounds the transfer. This tool reads and writes
 * 1 MiB at a time. Built statically by build-rootfs.sh. Exit status 0 when every byte moved. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define CHUNK (1 << 20)

static char buf[CHUNK];

static int fail(const char *what)
{
    fprintf(stderr, "tcpblast: %s: %s\n", what, strerror(errno));
    return 1;
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

/* Copies from `in` to `out` until EOF on `in`; returns the bytes moved or -1. */
static long long copy(int in, int out)
{
    long long total = 0;
    for (;;) {
        ssize_t n = read(in, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        if (n == 0)
            return total;
        if (write_all(out, buf, (size_t)n) < 0)
            return -1;
        total += n;
    }
}

static int do_recv(int port, const char *path)
{
    int one = 1;
    struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons((unsigned short)port) };
    int ls = socket(AF_INET, SOCK_STREAM, 0);
    if (ls < 0)
        return fail("socket");
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(ls, (struct sockaddr *)&addr, sizeof addr) < 0)
        return fail("bind");
    if (listen(ls, 1) < 0)
        return fail("listen");
    int s = accept(ls, NULL, NULL);
    if (s < 0)
        return fail("accept");
    close(ls);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        return fail(path);
    long long n = copy(s, fd);
    if (n < 0)
        return fail("receive");
    if (close(fd) < 0)
        return fail(path);
    close(s);
    printf("tcpblast: received %lld bytes\n", n);
    return 0;
}

static int do_send(const char *host, int port, const char *path)
{
    struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons((unsigned short)port) };
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        fprintf(stderr, "tcpblast: '%s' is not an IPv4 address\n", host);
        return 1;
    }
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return fail(path);
    int s = -1;
    for (int tries = 0; tries < 300; tries++) {
        s = socket(AF_INET, SOCK_STREAM, 0);
        if (s < 0)
            return fail("socket");
        if (connect(s, (struct sockaddr *)&addr, sizeof addr) == 0)
            break;
        close(s);
        s = -1;
        usleep(200000);
    }
    if (s < 0)
        return fail("connect");
    long long n = copy(fd, s);
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
        return do_recv(atoi(argv[2]), argv[3]);
    if (argc == 5 && strcmp(argv[1], "send") == 0)
        return do_send(argv[2], atoi(argv[3]), argv[4]);
    fprintf(stderr, "usage: tcpblast recv PORT FILE | tcpblast send HOST PORT FILE\n");
    return 2;
}
