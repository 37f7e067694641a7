/* Large test target for the safety tests. argv[1] is a size in MiB (default
 * 512); argv[2] "random" fills it with pseudo-random bytes that do not
 * compress, anything else with a pattern: every 8-byte word of page k
 * of the mapping holds SEED + k, SEED starting at 0x5afe0001 and growing
 * by 0x100 with each rewrite. It maps and writes every page, prints
 * "mem ADDRESS" and "ready", and then counts: the global counter goes up
 * by one about every millisecond while it waits for commands on stdin
 * (poll with a 1 ms timeout). Commands, one byte each:
 *   g  print "counter N"
 *   t  write every page again with a new pattern, then print "touched"
 * It exits when stdin closes. */
#define _GNU_SOURCE
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

volatile unsigned long counter;

static void fill(uint64_t *p, size_t words, uint64_t seed, int random)
{
	uint64_t x = seed | 1;

	for (size_t i = 0; i < words; i++) {
		if (random) {
			x ^= x << 13;
			x ^= x >> 7;
			x ^= x << 17;
			p[i] = x;
		} else {
			p[i] = seed + i / 512;
		}
	}
}

int main(int argc, char **argv)
{
	size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 512;
	int random = argc > 2 && strcmp(argv[2], "random") == 0;
	size_t size = mib << 20;
	uint64_t seed = 0x5afe0001;
	struct pollfd in = { .fd = 0, .events = POLLIN };
	char c;

	uint64_t *mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	fill(mem, size / 8, seed, random);
	printf("mem %p\nready\n", (void *)mem);
	fflush(stdout);

	for (;;) {
		int n = poll(&in, 1, 1);
		if (n == 0) {
			counter++;
			continue;
		}
		if (n < 0)
			continue;
		if (read(0, &c, 1) != 1)
			return 0;
		if (c == 'g')
			printf("counter %lu\n", counter);
		if (c == 't') {
			seed += 0x100;
			fill(mem, size / 8, seed, random);
			printf("touched\n");
		}
		fflush(stdout);
	}
}
