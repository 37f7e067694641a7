/*
 * fleet_target: test target for the fleet tests, which capture it into an
 * S3 store. Usage: fleet_target [MIB]
 *
 * It fills MIB MiB (default 0) of anonymous memory with pseudo-random
 * bytes, so every page is present and compresses poorly, puts marker
 * strings in a heap buffer and in a global, and prints
 *   heap ADDR        address of the heap marker
 *   global ADDR      address of the global marker
 *   counter-at ADDR  address of the counter (an unsigned long)
 *   ready
 * Then it serves one-byte commands read from stdin with read(2), so that no
 * stdio buffer keeps unread input:
 *   i  increment the counter and print "value N"
 *   g  print "value N"
 * It exits when stdin closes. Between commands it is blocked in read(0).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

char global_marker[4096];
volatile unsigned long counter;

/* fill writes xorshift64 output over len bytes. */
static void fill(uint64_t *p, size_t len)
{
	uint64_t x = 0x9e3779b97f4a7c15ull;

	for (size_t i = 0; i < len / sizeof(*p); i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		p[i] = x;
	}
}

int main(int argc, char **argv)
{
	size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 0;
	char *heap = malloc(256);
	char c;

	if (heap == NULL)
		return 1;
	if (mib > 0) {
		void *bulk = mmap(NULL, mib << 20, PROT_READ | PROT_WRITE,
				  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (bulk == MAP_FAILED)
			return 1;
		fill(bulk, mib << 20);
	}

	strcpy(global_marker, "CKPTFS-FLEET-GLOBAL-5e1a");
	strcpy(heap, "CKPTFS-FLEET-HEAP-c09d");
	printf("heap %p\nglobal %p\ncounter-at %p\nready\n", (void *)heap,
	       (void *)global_marker, (void *)&counter);
	fflush(stdout);

	while (read(0, &c, 1) == 1) {
		if (c == 'i')
			counter++;
		if (c == 'i' || c == 'g') {
			printf("value %lu\n", counter);
			fflush(stdout);
		}
	}
	return 0;
}
