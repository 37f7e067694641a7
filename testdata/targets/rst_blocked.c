/* rst_blocked: one thread sleeps 30 s in nanosleep, another blocks in read
 * on the FIFO named by the argument (opened read-write, so that the open
 * does not wait for a writer). Each reports its call's result:
 *   "sleeper returned RET errno E" and "fifo read N DATA" or
 *   "fifo error STRERROR". The main thread prints "ready SLEEPER_TID
 * READER_TID" and reads commands from stdin:
 *   status  waits 200 ms, then prints "status sleeper=sleeping|returned
 *           reader=waiting|returned" */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static volatile int sleeper_tid, reader_tid, sleeper_done, reader_done;
static int fifo;

static void *sleeper(void *arg)
{
	sleeper_tid = gettid();
	struct timespec ts = {30, 0};
	int ret = nanosleep(&ts, NULL);
	sleeper_done = 1;
	printf("sleeper returned %d errno %d\n", ret, ret ? errno : 0);
	fflush(stdout);
	return NULL;
}

static void *reader(void *arg)
{
	reader_tid = gettid();
	char buf[64];
	ssize_t n = read(fifo, buf, sizeof buf - 1);
	reader_done = 1;
	if (n < 0) {
		printf("fifo error %s\n", strerror(errno));
	} else {
		buf[n] = 0;
		printf("fifo read %zd %s\n", n, buf);
	}
	fflush(stdout);
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: rst_blocked FIFO\n");
		return 2;
	}
	fifo = open(argv[1], O_RDWR);
	if (fifo < 0) {
		perror("open");
		return 1;
	}
	pthread_t t1, t2;
	pthread_create(&t1, NULL, sleeper, NULL);
	pthread_create(&t2, NULL, reader, NULL);
	while (!sleeper_tid || !reader_tid)
		usleep(1000);
	printf("ready %d %d\n", sleeper_tid, reader_tid);
	fflush(stdout);

	char line[64];
	while (fgets(line, sizeof line, stdin)) {
		if (strcmp(line, "status\n") == 0) {
			usleep(200 * 1000);
			printf("status sleeper=%s reader=%s\n", sleeper_done ? "returned" : "sleeping",
			       reader_done ? "returned" : "waiting");
		} else {
			printf("error unknown command %s", line);
		}
		fflush(stdout);
	}
	return 0;
}
