/* Starts three threads besides the main one, prints every tid and then
 * lets all four sleep. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>

static pthread_barrier_t started;

static void *worker(void *arg)
{
	(void)arg;
	printf("tid %d\n", gettid());
	fflush(stdout);
	pthread_barrier_wait(&started);
	for (;;)
		sleep(1);
	return NULL;
}

int main(void)
{
	pthread_t t[3];

	pthread_barrier_init(&started, NULL, 4);
	printf("tid %d\n", gettid());
	fflush(stdout);
	for (int i = 0; i < 3; i++)
		pthread_create(&t[i], NULL, worker, NULL);
	pthread_barrier_wait(&started);
	printf("ready\n");
	fflush(stdout);
	for (;;)
		sleep(1);
}
