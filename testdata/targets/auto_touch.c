/* Test target for autosave. Maps argv[1] MiB (default 64) of private
 * anonymous memory, fills every page with pseudo-random bytes, which do not
 * compress, prints "ready" and serves one-letter commands read from stdin
 * with read(2), one byte at a time:
 *   t  rewrite 1% of the pages (chosen at random, whole pages) with new
 *      pseudo-random bytes and print "touched N", N the number of pages
 * It exits when stdin closes. Between commands it is blocked in read(0). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE 4096

static uint64_t state = 0x9e3779b97f4a7c15ULL;

static uint64_t next_random(void)
{
	state ^= state << 13;
	state ^= state >> 7;
	state ^= state << 17;
	return state;
}

static void fill_page(unsigned char *page)
{
	uint64_t *words = (uint64_t *)page;
	for (size_t i = 0; i < PAGE / sizeof(uint64_t); i++)
		words[i] = next_random();
}

int main(int argc, char **argv)
{
	size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 64;
	size_t pages = mib * 1024 * 1024 / PAGE;
	size_t touch = pages / 100;
	unsigned char *buf;
	char c;

	buf = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (buf == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	for (size_t i = 0; i < pages; i++)
		fill_page(buf + i * PAGE);
	printf("ready\n");
	fflush(stdout);

	while (read(0, &c, 1) == 1) {
		if (c != 't')
			continue;
		for (size_t i = 0; i < touch; i++)
			fill_page(buf + (next_random() % pages) * PAGE);
		printf("touched %zu\n", touch);
		fflush(stdout);
	}
	return 0;
}
