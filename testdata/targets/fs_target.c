/* Test target for the fs package. Fills a small heap buffer and a global
 * with distinct marker strings, starts argv[1] extra threads (default 0)
 * that sleep in pause(), prints the markers' addresses and every thread
 * id, then "ready", and serves one-letter commands read from stdin with
 * read(2), one byte at a time so that no stdio buffer holds unread input:
 *   i  increment the counter and print it
 *   g  print the counter
 * It exits when stdin closes. Between commands it is blocked in read(0),
 * so its maps do not change while a test looks at it. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

char global_marker[8192];
volatile unsigned long counter;
static pthread_mutex_t print_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_barrier_t started;

static void print_tid(void)
{
	pthread_mutex_lock(&print_lock);
	printf("thread %ld\n", (long)syscall(SYS_gettid));
	fflush(stdout);
	pthread_mutex_unlock(&print_lock);
}

static void *sleeper(void *arg)
{
	(void)arg;
	print_tid();
	pthread_barrier_wait(&started);
	for (;;)
		pause();
	return NULL;
}

int main(int argc, char **argv)
{
	int threads = argc > 1 ? atoi(argv[1]) : 0;
	char *heap = malloc(256);
	pthread_t th;
	char c;

	strcpy(global_marker, "CKPTFS-FS-GLOBAL-MARKER-71d2");
	strcpy(heap, "CKPTFS-FS-HEAP-MARKER-4a8f");
	printf("heap %p\nglobal %p\n", (void *)heap, (void *)global_marker);
	print_tid();

	pthread_barrier_init(&started, NULL, threads + 1);
	for (int i = 0; i < threads; i++)
		if (pthread_create(&th, NULL, sleeper, NULL) != 0)
			return 1;
	pthread_barrier_wait(&started);
	printf("ready\n");
	fflush(stdout);

	while (read(0, &c, 1) == 1) {
		if (c == 'i')
			counter++;
		if (c == 'i' || c == 'g') {
			printf("counter %lu\n", counter);
			fflush(stdout);
		}
	}
	return 0;
}
