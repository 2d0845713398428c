/*
 * The sleeper scripts/compare-linux runs under Linux: on one CPU, ITERATIONS times, an absolute
 * CLOCK_MONOTONIC sleep of 10 us then one of 100 us (clock_nanosleep with TIMER_ABSTIME), as a
 * SCHED_FIFO task with a timer slack of 1 ns (else Linux adds 50 us of slack to a normal task's
 * sleep), memory locked. The deadlines are kept in memory and printed after the last sleep, one
 * line each, so that no console write runs between a sleep and the next:
 *   SLEEP cpu=C delta_ns=D deadline_ns=T woke_ns=W
 * T is the absolute deadline handed to the kernel; W the first clock read after the return (the
 * user-space wake-up, for reference). The host matches T with ftrace's hrtimer_start `expires`
 * of this task's hrtimer_wakeup timer, and that timer's hrtimer_expire_entry `now`.
 * Usage: sleeper CPU ITERATIONS
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <time.h>

static const long long DELTAS_NS[] = {10000, 100000};
#define NDELTAS (sizeof(DELTAS_NS) / sizeof(DELTAS_NS[0]))
/* Sleeps before the recorded ones: page faults and first-use paths out of the way. */
#define WARMUP 20

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void die(const char *what)
{
    fprintf(stderr, "sleeper: %s: %s\n", what, strerror(errno));
    exit(1);
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: sleeper CPU ITERATIONS\n");
        return 2;
    }
    int cpu = atoi(argv[1]);
    long iterations = atol(argv[2]);
    if (iterations <= 0) {
        fprintf(stderr, "sleeper: ITERATIONS must be positive\n");
        return 2;
    }
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof(set), &set) != 0)
        die("sched_setaffinity");
    struct sched_param param = {.sched_priority = 50};
    if (sched_setscheduler(0, SCHED_FIFO, &param) != 0)
        die("sched_setscheduler(SCHED_FIFO)");
    if (prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0) != 0)
        die("prctl(PR_SET_TIMERSLACK, 1)");
    long total = iterations * (long)NDELTAS;
    long long *deadline = calloc(total, sizeof(long long));
    long long *woke = calloc(total, sizeof(long long));
    if (!deadline || !woke)
        die("calloc");
    if (mlockall(MCL_CURRENT | MCL_FUTURE) != 0)
        die("mlockall");

    for (long i = -WARMUP * (long)NDELTAS; i < total; i++) {
        long long delta = DELTAS_NS[(i % (long)NDELTAS + NDELTAS) % NDELTAS];
        long long t = now_ns() + delta;
        struct timespec ts = {.tv_sec = t / 1000000000LL, .tv_nsec = t % 1000000000LL};
        int err;
        while ((err = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL)) == EINTR)
            ;
        if (err != 0) {
            errno = err;
            die("clock_nanosleep");
        }
        long long w = now_ns();
        if (i >= 0) {
            deadline[i] = t;
            woke[i] = w;
        }
    }
    for (long i = 0; i < total; i++)
        printf("SLEEP cpu=%d delta_ns=%lld deadline_ns=%lld woke_ns=%lld\n", cpu,
               DELTAS_NS[i % NDELTAS], deadline[i], woke[i]);
    return 0;
}
