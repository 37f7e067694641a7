/* rst_threads: four threads each count in a busy loop; the main thread
 * prints "counts A B C D" every 10 ms. */
#include <pthread.h>
#include <stdio.h>
#include <time.h>

static volatile unsigned long counts[4];

static void *count(void *arg)
{
	volatile unsigned long *c = arg;
	for (;;)
		(*c)++;
	return NULL;
}

int main(void)
{
	pthread_t t[4];
	for (int i = 0; i < 4; i++)
		pthread_create(&t[i], NULL, count, (void *)&counts[i]);

	struct timespec ts = {0, 10 * 1000 * 1000};
	for (;;) {
		nanosleep(&ts, NULL);
		printf("counts %lu %lu %lu %lu\n", counts[0], counts[1], counts[2], counts[3]);
		fflush(stdout);
	}
}
