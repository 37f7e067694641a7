/* Counts in a busy loop and prints the counter every 10 ms. The counter is
 * an initialized global, so it lives in the data section: a private mapping
 * of the executable. */
#include <stdio.h>
#include <time.h>

volatile unsigned long counter = 1;

int main(void)
{
	struct timespec last, now;

	clock_gettime(CLOCK_MONOTONIC, &last);
	for (;;) {
		counter++;
		clock_gettime(CLOCK_MONOTONIC, &now);
		if ((now.tv_sec - last.tv_sec) * 1000000000L + (now.tv_nsec - last.tv_nsec) >= 10000000L) {
			printf("count %lu\n", counter);
			fflush(stdout);
			last = now;
		}
	}
}
