/*
 * hvguest: the lab guest's workload (run by /init as PID 1).
 *
 * Kernel command line keys:
 *   hvlab.name=NAME       name printed in every heartbeat (default "guest")
 *   hvlab.dirty_mb=N      MiB buffer to keep dirtying (default 0 = idle)
 *   hvlab.dirty_rate=R    MiB/s written into that buffer (default 0 = as fast as possible)
 *   hvlab.hb_ms=M         heartbeat period in ms (default 500)
 *
 * Every hb_ms it writes one line to the serial console:
 *   HVLAB-HB name=NAME boot=BOOT_ID n=COUNTER up_ms=MONOTONIC_MS dirtied_mb=MIB_WRITTEN\n
 * n starts at 1; boot comes from /proc/sys/kernel/random/boot_id (changes on reboot);
 * dirtied_mb counts every page write, including the first touch of the buffer.
 *
 * Build: gcc -O2 -static -pthread -o hvguest hvguest.c
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096UL
#define MIB (1024UL * 1024UL)
#define SLICE_NS 5000000L /* pacing slice: 5 ms */

static char name[64] = "guest";
static char boot_id[64] = "unknown";
static unsigned long dirty_mb, dirty_rate, hb_ms = 500;
static uint64_t pages_written; /* updated with __atomic builtins */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void read_file(const char *path, char *buf, size_t len)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return;
    ssize_t n = read(fd, buf, len - 1);
    close(fd);
    if (n > 0) {
        buf[n] = '\0';
        buf[strcspn(buf, "\n")] = '\0';
    }
}

static void parse_cmdline(void)
{
    char line[4096] = "";
    read_file("/proc/cmdline", line, sizeof(line));
    for (char *save, *tok = strtok_r(line, " \t", &save); tok; tok = strtok_r(NULL, " \t", &save)) {
        if (strncmp(tok, "hvlab.name=", 11) == 0)
            snprintf(name, sizeof(name), "%s", tok + 11);
        else if (strncmp(tok, "hvlab.dirty_mb=", 15) == 0)
            dirty_mb = strtoul(tok + 15, NULL, 10);
        else if (strncmp(tok, "hvlab.dirty_rate=", 17) == 0)
            dirty_rate = strtoul(tok + 17, NULL, 10);
        else if (strncmp(tok, "hvlab.hb_ms=", 12) == 0)
            hb_ms = strtoul(tok + 12, NULL, 10);
    }
    if (hb_ms == 0)
        hb_ms = 500;
}

/* Write one word into each of `count` pages starting at page *pos (wrapping). */
static void dirty_pages(volatile uint64_t *buf, size_t npages, size_t *pos, size_t count, uint64_t stamp)
{
    for (size_t i = 0; i < count; i++) {
        buf[*pos * (PAGE / sizeof(uint64_t))] = stamp + i;
        if (++*pos == npages)
            *pos = 0;
    }
    __atomic_add_fetch(&pages_written, count, __ATOMIC_RELAXED);
}

static void *dirtier(void *arg)
{
    volatile uint64_t *buf = arg;
    size_t npages = dirty_mb * MIB / PAGE, pos = 0;

    dirty_pages(buf, npages, &pos, npages, 0); /* touch every page once */
    if (dirty_rate == 0) {
        for (uint64_t round = 1;; round++)
            dirty_pages(buf, npages, &pos, 256, round); /* 1 MiB per call, flat out */
    }
    /* Paced: in each small slice, catch up with the pages owed since the start. */
    uint64_t start = now_ns(), done = 0;
    for (uint64_t round = 1;; round++) {
        uint64_t owed = (now_ns() - start) / 1000 * dirty_rate * (MIB / PAGE) / 1000000;
        if (owed > done) {
            dirty_pages(buf, npages, &pos, owed - done, round);
            done = owed;
        }
        struct timespec slice = {0, SLICE_NS};
        nanosleep(&slice, NULL);
    }
    return NULL;
}

static int open_console(void)
{
    int fd = open("/dev/ttyS0", O_WRONLY | O_NOCTTY);
    if (fd < 0)
        return STDOUT_FILENO;
    struct termios t;
    if (tcgetattr(fd, &t) == 0) { /* lines end in exactly "\n", not "\r\n" */
        t.c_oflag &= ~(tcflag_t)ONLCR;
        tcsetattr(fd, TCSANOW, &t);
    }
    return fd;
}

int main(void)
{
    parse_cmdline();
    read_file("/proc/sys/kernel/random/boot_id", boot_id, sizeof(boot_id));
    int out = open_console();

    if (dirty_mb > 0) {
        void *buf = mmap(NULL, dirty_mb * MIB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        pthread_t tid;
        if (buf == MAP_FAILED) {
            dprintf(out, "HVLAB-ERR cannot allocate %lu MiB\n", dirty_mb);
        } else if (pthread_create(&tid, NULL, dirtier, buf) != 0) {
            dprintf(out, "HVLAB-ERR cannot start dirtying thread\n");
        }
    }

    /* The heartbeat (this thread only) preempts the dirtier as soon as it is due. */
    struct sched_param sp = {.sched_priority = 10};
    pthread_setschedparam(pthread_self(), SCHED_FIFO, &sp);

    /* Heartbeat on absolute deadlines so the period does not drift. */
    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    for (unsigned long n = 1;; n++) {
        uint64_t written = __atomic_load_n(&pages_written, __ATOMIC_RELAXED);
        char line[256];
        int len = snprintf(line, sizeof(line), "HVLAB-HB name=%s boot=%s n=%lu up_ms=%llu dirtied_mb=%llu\n", name,
                           boot_id, n, (unsigned long long)(now_ns() / 1000000),
                           (unsigned long long)(written * PAGE / MIB));
        if (write(out, line, (size_t)len) < 0 && out != STDOUT_FILENO)
            out = STDOUT_FILENO;
        next.tv_nsec += (long)(hb_ms % 1000) * 1000000L;
        next.tv_sec += (time_t)(hb_ms / 1000) + next.tv_nsec / 1000000000L;
        next.tv_nsec %= 1000000000L;
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL) != 0)
            ;
    }
}
