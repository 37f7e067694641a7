/* rst_sleep: three threads that each block, in a loop, in a system call
 * with a timeout of SECONDS (the argument), which the kernel restarts
 * through restart_syscall after a ptrace stop:
 *   nanosleep  nanosleep(SECONDS)
 *   futex      sem_timedwait, SECONDS ahead, on a semaphore that only
 *              "post" posts. Once it gets it, the thread calls pause()
 *              forever.
 *   poll       poll with no descriptors and a timeout of SECONDS
 * Each thread counts the returns of its call and keeps the last result.
 * The main thread prints "ready NANOSLEEP_TID FUTEX_TID POLL_TID" and reads
 * commands from stdin:
 *   status  waits 200 ms, then prints "status nanosleep=N futex=N poll=N"
 *           (returns so far) and "last nanosleep=R/E futex=R/E poll=R/E"
 *           (result and errno of the last return of each call)
 *   post    posts the semaphore; prints "posted" */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct call {
	volatile int tid, returns, ret, err;
};

static struct call nap, futex, poller;
static long seconds;
static sem_t sem;

static void returned(struct call *c, int ret)
{
	c->ret = ret;
	c->err = ret < 0 ? errno : 0;
	c->returns++;
}

static void *nap_thread(void *arg)
{
	nap.tid = gettid();
	for (;;) {
		struct timespec ts = {seconds, 0};
		returned(&nap, nanosleep(&ts, NULL));
	}
	return NULL;
}

static void *futex_thread(void *arg)
{
	futex.tid = gettid();
	for (;;) {
		struct timespec deadline;
		clock_gettime(CLOCK_REALTIME, &deadline);
		deadline.tv_sec += seconds;
		int ret = sem_timedwait(&sem, &deadline);
		returned(&futex, ret);
		if (ret == 0)
			break;
	}
	for (;;)
		pause();
	return NULL;
}

static void *poll_thread(void *arg)
{
	poller.tid = gettid();
	for (;;)
		returned(&poller, poll(NULL, 0, (int)(seconds * 1000)));
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: rst_sleep SECONDS\n");
		return 2;
	}
	seconds = strtol(argv[1], NULL, 10);
	sem_init(&sem, 0, 0);
	pthread_t t;
	pthread_create(&t, NULL, nap_thread, NULL);
	pthread_create(&t, NULL, futex_thread, NULL);
	pthread_create(&t, NULL, poll_thread, NULL);
	while (!nap.tid || !futex.tid || !poller.tid)
		usleep(1000);
	printf("ready %d %d %d\n", nap.tid, futex.tid, poller.tid);
	fflush(stdout);

	char line[64];
	while (fgets(line, sizeof line, stdin)) {
		if (strcmp(line, "status\n") == 0) {
			usleep(200 * 1000);
			printf("status nanosleep=%d futex=%d poll=%d\n", nap.returns, futex.returns, poller.returns);
			printf("last nanosleep=%d/%d futex=%d/%d poll=%d/%d\n", nap.ret, nap.err, futex.ret,
			       futex.err, poller.ret, poller.err);
		} else if (strcmp(line, "post\n") == 0) {
			sem_post(&sem);
			printf("posted\n");
		} else {
			printf("error unknown command %s", line);
		}
		fflush(stdout);
	}
	return 0;
}
