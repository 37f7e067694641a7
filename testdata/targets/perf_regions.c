// perf_regions: regions that a copy-on-write clone cannot show as they were,
// each filled with its own marker in every page: a shared anonymous mapping
// (MAP_SHARED), a private one with MADV_DONTFORK (absent from a clone) and
// one with MADV_WIPEONFORK (zero in a clone), plus an ordinary private one.
// It prints "NAME ADDR LEN" for each, then "ready", and waits on stdin; at
// end of input it exits.
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define LEN (64 * 4096)

static void make(const char *name, int flags, int advice) {
	char *p = mmap(NULL, LEN, PROT_READ | PROT_WRITE, flags | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED) {
		perror("mmap");
		_exit(1);
	}
	if (advice >= 0 && madvise(p, LEN, advice) != 0) {
		perror("madvise");
		_exit(1);
	}
	for (size_t off = 0; off < LEN; off += 4096)
		snprintf(p + off, 64, "CKPTFS-%s-%zu", name, off / 4096);
	printf("%s %lx %d\n", name, (unsigned long)p, LEN);
}

int main(void) {
	make("shared", MAP_SHARED, -1);
	make("dontfork", MAP_PRIVATE, MADV_DONTFORK);
	make("wipeonfork", MAP_PRIVATE, MADV_WIPEONFORK);
	make("private", MAP_PRIVATE, -1);
	printf("ready\n");
	fflush(stdout);

	char c;
	while (read(0, &c, 1) > 0)
		;
	return 0;
}
