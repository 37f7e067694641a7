// bench_mem: the benchmark's workload. It maps SIZE MiB of private anonymous
// memory, fills every page (so all of it is present), prints
// "ready ADDR LEN" and then ticks every 10 ms while it reads commands, one a
// line, from stdin:
//
//   d1   rewrite 1% of the pages (every 100th, a different residue each time)
//   da   rewrite every page
//   sum  print a 64-bit hash of the whole buffer
//
// Each command prints one line when it is done: "dirtied COUNT FIRST STRIDE"
// (page indexes FIRST, FIRST+STRIDE, ...) or "sum HEX". At end of input the
// target keeps ticking, so it can also run detached with stdin on /dev/null.
//
// Pages come in three kinds, page index modulo 3, so that zstd compresses
// the buffer about 3x: pseudo-random bytes, repeated English text, and
// mostly-zero records. Every page carries its index and a generation number,
// so no two pages are equal and a rewritten page differs from its old self.
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096

static unsigned char *buf;
static size_t npages;
static volatile uint64_t ticks;

static uint64_t splitmix(uint64_t *s) {
	uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static void fill_random(unsigned char *p, uint64_t seed) {
	uint64_t s = seed;
	for (size_t i = 0; i < PAGE; i += 8) {
		uint64_t v = splitmix(&s);
		memcpy(p + i, &v, 8);
	}
}

static void fill_text(unsigned char *p, size_t idx, uint64_t gen) {
	static const char line[] =
	    "The quick brown fox jumps over the lazy dog while the daemon "
	    "takes a snapshot of page %zu in generation %llu.\n";
	size_t off = 0;
	while (off < PAGE) {
		char tmp[160];
		int n = snprintf(tmp, sizeof tmp, line, idx, (unsigned long long)gen);
		size_t take = (size_t)n < PAGE - off ? (size_t)n : PAGE - off;
		memcpy(p + off, tmp, take);
		off += take;
	}
}

// fill_records writes 64-byte records that are mostly zero: an id, a
// counter and a flag word, as in an array of structs with sparse fields.
static void fill_records(unsigned char *p, size_t idx, uint64_t gen) {
	memset(p, 0, PAGE);
	for (size_t r = 0; r < PAGE / 64; r++) {
		uint64_t id = idx * (PAGE / 64) + r;
		uint32_t counter = (uint32_t)(gen * 7 + r);
		uint32_t flags = (uint32_t)(r & 3);
		memcpy(p + r * 64, &id, 8);
		memcpy(p + r * 64 + 8, &counter, 4);
		memcpy(p + r * 64 + 12, &flags, 4);
	}
}

static void fill_page(size_t idx, uint64_t gen) {
	unsigned char *p = buf + idx * PAGE;
	switch (idx % 3) {
	case 0:
		fill_random(p, idx * 0x100000001b3ULL + gen);
		break;
	case 1:
		fill_text(p, idx, gen);
		break;
	default:
		fill_records(p, idx, gen);
	}
}

static uint64_t checksum(void) {
	const uint64_t *w = (const uint64_t *)buf;
	size_t n = npages * PAGE / 8;
	uint64_t h = 0xcbf29ce484222325ULL;
	for (size_t i = 0; i < n; i++)
		h = (h ^ w[i]) * 0x100000001b3ULL;
	return h;
}

static void command(const char *cmd, uint64_t *gen, size_t *residue) {
	if (strcmp(cmd, "d1") == 0) {
		size_t first = *residue % 100, count = 0;
		(*gen)++;
		for (size_t i = first; i < npages; i += 100, count++)
			fill_page(i, *gen);
		*residue += 37;
		printf("dirtied %zu %zu 100\n", count, first);
	} else if (strcmp(cmd, "da") == 0) {
		(*gen)++;
		for (size_t i = 0; i < npages; i++)
			fill_page(i, *gen);
		printf("dirtied %zu 0 1\n", npages);
	} else if (strcmp(cmd, "sum") == 0) {
		printf("sum %016llx\n", (unsigned long long)checksum());
	} else {
		printf("error unknown command %s\n", cmd);
	}
	fflush(stdout);
}

int main(int argc, char **argv) {
	if (argc != 2) {
		fprintf(stderr, "usage: bench_mem SIZE_MIB\n");
		return 2;
	}
	size_t len = (size_t)strtoull(argv[1], NULL, 10) << 20;
	buf = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (buf == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	npages = len / PAGE;
	for (size_t i = 0; i < npages; i++)
		fill_page(i, 0);
	printf("ready %llx %zu\n", (unsigned long long)(uintptr_t)buf, len);
	fflush(stdout);

	uint64_t gen = 0;
	size_t residue = 0;
	int input = 1;
	char line[64];
	size_t used = 0;
	for (;;) {
		struct pollfd pfd = {.fd = 0, .events = POLLIN};
		int ready = input ? poll(&pfd, 1, 10) : 0;
		if (!input) {
			struct timespec ts = {0, 10 * 1000 * 1000};
			nanosleep(&ts, NULL);
		}
		ticks++;
		if (ready <= 0)
			continue;

		ssize_t n = read(0, line + used, sizeof line - 1 - used);
		if (n <= 0) {
			input = 0;
			continue;
		}
		used += (size_t)n;
		line[used] = 0;
		char *nl;
		while ((nl = strchr(line, '\n')) != NULL) {
			*nl = 0;
			command(line, &gen, &residue);
			used -= (size_t)(nl + 1 - line);
			memmove(line, nl + 1, used + 1);
		}
		if (used == sizeof line - 1)
			used = 0;
	}
}
