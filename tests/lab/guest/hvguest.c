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
 * Under UEFI (efivarfs mounted by /init) and with a TPM (/dev/tpm0), each where present, the guest keeps
 * a token: on its first boot it writes the boot id (32 hex digits) into the EFI variable EFI_VAR and into
 * the TPM NV index NV_INDEX (owner auth, empty password); a later boot keeps what it finds. After each
 * heartbeat it reads both back, so a test sees what the firmware and the TPM of the host it runs on hold
 * now:
 *   HVLAB-STATE name=NAME boot=BOOT_ID n=COUNTER efi=VALUE tpm=VALUE\n
 * VALUE: the 32 hex digits, "none" (no such device), "missing" (not there, could not write), "rc-XXX".
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
#define EFI_VAR "/sys/firmware/efi/efivars/HvlabState-6d1f2a4e-8c3b-4f5a-9e7d-2b6c8a0f4e13"
#define TPM_DEV "/dev/tpm0"
#define NV_INDEX 0x01800148U /* owner range of the TCG handle registry */
#define TOKEN_LEN 32

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

/* ---- state in the firmware's NVRAM and in the TPM ---------------------------------------- */

static char token[TOKEN_LEN + 1]; /* what a first boot writes: the boot id without dashes */

/* EFI variable: efivarfs files are 4 bytes of attributes, then the data. */
static void efi_state(char *out, size_t len, int write_if_missing)
{
    unsigned char buf[4 + TOKEN_LEN + 8];
    if (access("/sys/firmware/efi/efivars", F_OK) != 0) {
        snprintf(out, len, "none");
        return;
    }
    int fd = open(EFI_VAR, O_RDONLY);
    if (fd < 0 && write_if_missing) {
        memcpy(buf, "\x07\x00\x00\x00", 4); /* NON_VOLATILE | BOOTSERVICE_ACCESS | RUNTIME_ACCESS */
        memcpy(buf + 4, token, TOKEN_LEN);
        int wfd = open(EFI_VAR, O_WRONLY | O_CREAT, 0644);
        if (wfd >= 0) {
            if (write(wfd, buf, 4 + TOKEN_LEN) < 0)
                dprintf(STDOUT_FILENO, "HVLAB-ERR efi write: %m\n");
            close(wfd);
        }
        fd = open(EFI_VAR, O_RDONLY);
    }
    ssize_t n = fd < 0 ? -1 : read(fd, buf, sizeof(buf));
    if (fd >= 0)
        close(fd);
    if (n == 4 + TOKEN_LEN)
        snprintf(out, len, "%.*s", TOKEN_LEN, (char *)buf + 4);
    else
        snprintf(out, len, "missing");
}

static unsigned char *put32(unsigned char *p, uint32_t v)
{
    p[0] = v >> 24, p[1] = v >> 16, p[2] = v >> 8, p[3] = v;
    return p + 4;
}

static unsigned char *put16(unsigned char *p, uint16_t v)
{
    p[0] = v >> 8, p[1] = v;
    return p + 2;
}

/* One TPM 2.0 command on `handles` with an empty password session (TPM_RS_PW) and `params`; returns the
   response code (0xFFFFFFFF when the device failed), the response in rsp. */
static uint32_t tpm_call(uint32_t cc, const uint32_t *handles, int nhandles, const unsigned char *params,
                         size_t plen, unsigned char *rsp, size_t rsp_len)
{
    unsigned char cmd[256], *p = cmd + 10;
    for (int i = 0; i < nhandles; i++)
        p = put32(p, handles[i]);
    p = put32(p, 9);          /* authorization area: 9 bytes */
    p = put32(p, 0x40000009); /* TPM_RS_PW */
    p = put16(p, 0);          /* no nonce */
    *p++ = 0;                 /* session attributes */
    p = put16(p, 0);          /* empty password */
    memcpy(p, params, plen);
    p += plen;
    put16(cmd, 0x8002); /* TPM_ST_SESSIONS */
    put32(cmd + 2, (uint32_t)(p - cmd));
    put32(cmd + 6, cc);
    int fd = open(TPM_DEV, O_RDWR);
    if (fd < 0)
        return 0xFFFFFFFFU;
    ssize_t n = write(fd, cmd, (size_t)(p - cmd)) == p - cmd ? read(fd, rsp, rsp_len) : -1;
    close(fd);
    if (n < 10)
        return 0xFFFFFFFFU;
    return (uint32_t)rsp[6] << 24 | (uint32_t)rsp[7] << 16 | (uint32_t)rsp[8] << 8 | rsp[9];
}

/* TPM2_NV_Read of the whole index; 0 and the value in out, else the response code. */
static uint32_t nv_read(char *out)
{
    const uint32_t handles[] = {0x40000001, NV_INDEX}; /* TPM_RH_OWNER authorizes */
    unsigned char params[4], rsp[128];
    put16(put16(params, TOKEN_LEN), 0); /* size, offset */
    uint32_t rc = tpm_call(0x0000014E, handles, 2, params, 4, rsp, sizeof(rsp));
    if (rc == 0 && ((uint32_t)rsp[14] << 8 | rsp[15]) == TOKEN_LEN)
        memcpy(out, rsp + 16, TOKEN_LEN); /* after the header and parameterSize: TPM2B_MAX_NV_BUFFER */
    return rc;
}

/* TPM2_NV_DefineSpace (owner read/write, SHA-256 name) and TPM2_NV_Write of the token. */
static void nv_write_token(void)
{
    const uint32_t owner[] = {0x40000001}, handles[] = {0x40000001, NV_INDEX};
    unsigned char params[64], rsp[128], *p = put16(params, 0); /* TPM2B_AUTH: empty */
    p = put16(p, 14);                                         /* TPM2B_NV_PUBLIC */
    p = put32(p, NV_INDEX);
    p = put16(p, 0x000B);     /* TPM_ALG_SHA256 */
    p = put32(p, 0x00060006); /* OWNERWRITE | AUTHWRITE | OWNERREAD | AUTHREAD, ordinary index */
    p = put16(p, 0);          /* no policy */
    p = put16(p, TOKEN_LEN);
    tpm_call(0x0000012A, owner, 1, params, (size_t)(p - params), rsp, sizeof(rsp));
    p = put16(params, TOKEN_LEN);
    memcpy(p, token, TOKEN_LEN);
    p = put16(p + TOKEN_LEN, 0); /* offset */
    tpm_call(0x00000137, handles, 2, params, (size_t)(p - params), rsp, sizeof(rsp));
}

static void tpm_state(char *out, size_t len, int write_if_missing)
{
    char value[TOKEN_LEN];
    if (access(TPM_DEV, F_OK) != 0) {
        snprintf(out, len, "none");
        return;
    }
    uint32_t rc = nv_read(value);
    /* TPM_RC_HANDLE (any handle number): no such index; TPM_RC_NV_UNINITIALIZED: never written */
    if (write_if_missing && ((rc & ~0x700U) == 0x08BU || rc == 0x14AU)) {
        nv_write_token();
        rc = nv_read(value);
    }
    if (rc == 0)
        snprintf(out, len, "%.*s", TOKEN_LEN, value);
    else
        snprintf(out, len, "rc-%X", rc);
}

int main(void)
{
    parse_cmdline();
    read_file("/proc/sys/kernel/random/boot_id", boot_id, sizeof(boot_id));
    int out = open_console();
    for (size_t i = 0, j = 0; boot_id[i] && j < TOKEN_LEN; i++)
        if (boot_id[i] != '-')
            token[j++] = boot_id[i];
    char efi[48], tpm[48];
    efi_state(efi, sizeof(efi), 1);
    tpm_state(tpm, sizeof(tpm), 1);
    int keeps_state = strcmp(efi, "none") != 0 || strcmp(tpm, "none") != 0;

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
        if (keeps_state) {
            efi_state(efi, sizeof(efi), 0);
            tpm_state(tpm, sizeof(tpm), 0);
            dprintf(out, "HVLAB-STATE name=%s boot=%s n=%lu efi=%s tpm=%s\n", name, boot_id, n, efi, tpm);
        }
        next.tv_nsec += (long)(hb_ms % 1000) * 1000000L;
        next.tv_sec += (time_t)(hb_ms / 1000) + next.tv_nsec / 1000000000L;
        next.tv_nsec %= 1000000000L;
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL) != 0)
            ;
    }
}
