/*
 * cli_counter: counts up every 20 ms and prints "count N" after each step,
 * so a test can see the counter drop when the process is rolled back.
 * Prints "ready" once at start.
 */
#include <stdio.h>
#include <time.h>

int main(void)
{
	struct timespec step = {0, 20 * 1000 * 1000};
	volatile unsigned long counter = 0;

	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("ready\n");
	for (;;) {
		counter++;
		printf("count %lu\n", counter);
		nanosleep(&step, NULL);
	}
}
