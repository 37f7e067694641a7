/* rst_counter: prints "addr ADDR" with the counter's address, then counts
 * in a busy loop and prints "count N" every 10 ms, for restore tests that
 * roll the counter back. */
#include <stdio.h>
#include <time.h>

int main(void)
{
	volatile unsigned long counter = 0;
	struct timespec last, now;

	printf("addr %p\n", (void *)&counter);
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
