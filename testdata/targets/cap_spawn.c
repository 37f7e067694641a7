/* Creates short-lived threads without pause, printing "spawned N" every
 * 1000 threads, so that threads appear and exit during a freeze. */
#include <pthread.h>
#include <stdio.h>

static void *nothing(void *arg)
{
	return arg;
}

int main(void)
{
	for (unsigned long n = 1;; n++) {
		pthread_t t;

		if (pthread_create(&t, NULL, nothing, NULL) == 0)
			pthread_detach(t);
		if (n % 1000 == 0) {
			printf("spawned %lu\n", n);
			fflush(stdout);
		}
	}
}
