/*
 * System V shared memory and timerfd for a guest kernel built without
 * CONFIG_SYSVIPC and CONFIG_TIMERFD (the vmm test guest's allnoconfig kernel).
 *
 * fio keeps its per-job state in shmget() segments, and its helper thread
 * sleeps on a timerfd; both stop it at start on such a kernel (ENOSYS). The
 * benchmark runs fio with this library preloaded:
 * - each shm "segment" is an anonymous shared mapping (shared with forked
 *   children too), found again by its id, kept until the process exits;
 * - a "timerfd" is the read end of a non-blocking pipe; a thread per timer
 *   writes one 8-byte expiration count into it when the armed time passes.
 * Built by resources/build-rootfs.sh into the ext4 image as
 * /usr/lib/vmm-shmshim.so.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define SEGMENTS 256

static struct {
    void *addr;
    size_t size;
} segment[SEGMENTS];

int shmget(key_t key, size_t size, int flags)
{
    (void)key;
    (void)flags;
    for (int id = 0; id < SEGMENTS; id++) {
        if (segment[id].addr)
            continue;
        void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED)
            return -1;
        segment[id].addr = p;
        segment[id].size = size;
        return id;
    }
    errno = ENOSPC;
    return -1;
}

void *shmat(int id, const void *where, int flags)
{
    (void)where;
    (void)flags;
    if (id < 0 || id >= SEGMENTS || !segment[id].addr) {
        errno = EINVAL;
        return (void *)-1;
    }
    return segment[id].addr;
}

int shmdt(const void *addr)
{
    (void)addr;
    return 0;
}

int shmctl(int id, int cmd, struct shmid_ds *buf)
{
    if (id < 0 || id >= SEGMENTS || !segment[id].addr) {
        errno = EINVAL;
        return -1;
    }
    if (cmd == IPC_STAT && buf)
        buf->shm_segsz = segment[id].size;
    return 0;
}

#define TIMERS 16

static struct timer {
    int rfd, wfd;
    int armed;
    struct timespec deadline, interval;
    pthread_mutex_t lock;
    pthread_cond_t changed;
} timers[TIMERS];
static int ntimers;
static pthread_mutex_t timers_lock = PTHREAD_MUTEX_INITIALIZER;

static int before(const struct timespec *a, const struct timespec *b)
{
    return a->tv_sec < b->tv_sec || (a->tv_sec == b->tv_sec && a->tv_nsec < b->tv_nsec);
}

static void add(struct timespec *t, const struct timespec *d)
{
    t->tv_sec += d->tv_sec;
    t->tv_nsec += d->tv_nsec;
    if (t->tv_nsec >= 1000000000L) {
        t->tv_sec++;
        t->tv_nsec -= 1000000000L;
    }
}

static void *timer_thread(void *arg)
{
    struct timer *t = arg;
    sigset_t all;
    /* Signals (SIGPIPE after the reader closed its end too) stay off this thread. */
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    pthread_mutex_lock(&t->lock);
    for (;;) {
        if (!t->armed) {
            pthread_cond_wait(&t->changed, &t->lock);
            continue;
        }
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (before(&now, &t->deadline)) {
            pthread_cond_timedwait(&t->changed, &t->lock, &t->deadline);
            continue;
        }
        uint64_t one = 1;
        if (write(t->wfd, &one, sizeof(one)) < 0 && errno == EPIPE)
            t->armed = 0;
        if (t->interval.tv_sec || t->interval.tv_nsec)
            add(&t->deadline, &t->interval);
        else
            t->armed = 0;
    }
    return NULL;
}

int timerfd_create(int clockid, int flags)
{
    (void)clockid;
    int fds[2];
    pthread_mutex_lock(&timers_lock);
    if (ntimers == TIMERS) {
        pthread_mutex_unlock(&timers_lock);
        errno = EMFILE;
        return -1;
    }
    struct timer *t = &timers[ntimers];
    if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) < 0) {
        pthread_mutex_unlock(&timers_lock);
        return -1;
    }
    if (!(flags & TFD_NONBLOCK))
        fcntl(fds[0], F_SETFL, 0);
    t->rfd = fds[0];
    t->wfd = fds[1];
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&t->changed, &attr);
    pthread_mutex_init(&t->lock, NULL);
    pthread_t thread;
    if (pthread_create(&thread, NULL, timer_thread, t) != 0) {
        close(fds[0]);
        close(fds[1]);
        pthread_mutex_unlock(&timers_lock);
        errno = EAGAIN;
        return -1;
    }
    pthread_detach(thread);
    ntimers++;
    pthread_mutex_unlock(&timers_lock);
    return fds[0];
}

int timerfd_settime(int fd, int flags, const struct itimerspec *new, struct itimerspec *old)
{
    struct timer *t = NULL;
    pthread_mutex_lock(&timers_lock);
    for (int i = 0; i < ntimers; i++)
        if (timers[i].rfd == fd)
            t = &timers[i];
    pthread_mutex_unlock(&timers_lock);
    if (!t || !new) {
        errno = EINVAL;
        return -1;
    }
    if (old)
        *old = (struct itimerspec){0};
    pthread_mutex_lock(&t->lock);
    /* A new setting drops expirations not read yet, as a real timerfd does. */
    uint64_t stale;
    int fl = fcntl(t->rfd, F_GETFL);
    fcntl(t->rfd, F_SETFL, fl | O_NONBLOCK);
    while (read(t->rfd, &stale, sizeof(stale)) > 0)
        ;
    fcntl(t->rfd, F_SETFL, fl);
    t->armed = new->it_value.tv_sec || new->it_value.tv_nsec;
    t->interval = new->it_interval;
    if (flags & TFD_TIMER_ABSTIME) {
        t->deadline = new->it_value;
    } else {
        clock_gettime(CLOCK_MONOTONIC, &t->deadline);
        add(&t->deadline, &new->it_value);
    }
    pthread_cond_signal(&t->changed);
    pthread_mutex_unlock(&t->lock);
    return 0;
}
