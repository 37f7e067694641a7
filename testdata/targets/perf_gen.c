// perf_gen: a target whose memory changes all the time. It maps SIZE MiB of
// private anonymous memory and starts a writer thread that rewrites every
// page in passes: pass G stores G in the first word of each page and the
// page index in the second, in page order, and after each page sets cursor
// to the index of the next page. A snapshot taken at one instant therefore
// holds generation G in the pages before cursor, G-1 in those after it, and
// either in the page at cursor.
//
// It prints "ready BUF LEN GEN CURSOR" (addresses in hex, LEN in bytes) once
// the first pass is done, then the main thread reads commands from stdin:
//
//   pause   stop the writer after its current page; prints "paused G C"
//   resume  let it run again; prints "resumed"
//   gen     print "gen G" (the generation being written)
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE 4096

static uint64_t *buf;
static size_t npages;
static volatile uint64_t gen;
static volatile uint64_t cursor;
static volatile int paused;
static volatile int parked;

static void *writer(void *arg) {
	(void)arg;
	for (;;) {
		gen++;
		for (size_t i = 0; i < npages; i++) {
			while (paused) {
				parked = 1;
				usleep(100);
			}
			parked = 0;
			uint64_t *p = buf + i * (PAGE / 8);
			p[0] = gen;
			p[1] = i;
			cursor = i + 1;
		}
		cursor = 0;
	}
	return NULL;
}

int main(int argc, char **argv) {
	if (argc != 2) {
		fprintf(stderr, "usage: perf_gen SIZE_MIB\n");
		return 2;
	}
	size_t len = (size_t)strtoull(argv[1], NULL, 10) << 20;
	buf = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (buf == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	npages = len / PAGE;
	for (size_t i = 0; i < npages; i++) {
		buf[i * (PAGE / 8)] = 0;
		buf[i * (PAGE / 8) + 1] = i;
	}

	pthread_t t;
	if (pthread_create(&t, NULL, writer, NULL) != 0) {
		perror("pthread_create");
		return 1;
	}
	while (gen < 2)
		usleep(1000);
	printf("ready %llx %zu %llx %llx\n", (unsigned long long)(uintptr_t)buf, len,
	       (unsigned long long)(uintptr_t)&gen, (unsigned long long)(uintptr_t)&cursor);
	fflush(stdout);

	char line[64];
	while (fgets(line, sizeof line, stdin) != NULL) {
		if (strcmp(line, "pause\n") == 0) {
			paused = 1;
			while (!parked)
				usleep(100);
			printf("paused %llu %llu\n", (unsigned long long)gen, (unsigned long long)cursor);
		} else if (strcmp(line, "resume\n") == 0) {
			paused = 0;
			printf("resumed\n");
		} else if (strcmp(line, "gen\n") == 0) {
			printf("gen %llu\n", (unsigned long long)gen);
		} else {
			printf("error unknown command\n");
		}
		fflush(stdout);
	}
	for (;;)
		pause();
}
