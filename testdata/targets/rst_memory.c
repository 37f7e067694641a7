/* rst_memory: a layout that restore tests change after capture. It grows a
 * heap, maps regions A (rewritten later), B (unmapped later) and C
 * (protected read-only later), prints
 *   "ready brk=KERNEL_BRK a=ADDR b=ADDR c=ADDR"
 * and reads commands from stdin, one a line:
 *   change  grow the heap by 1 MiB with sbrk and fill it, map a new region N,
 *           unmap B, make C read-only, overwrite A;
 *           prints "changed brk=KERNEL_BRK n=ADDR"
 *   check   prints "check brk=KERNEL_BRK a=ok|bad b=ok|bad", then writes C
 *           and mallocs 4 MiB from the heap (brk, not mmap) and fills it:
 *           prints "malloc ok brk=KERNEL_BRK"
 *   ping    prints "pong"
 * KERNEL_BRK is brk(0) asked of the kernel, not glibc's cached value. */
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#define PAGE 4096
#define NPAGES 8

static unsigned char *a, *b, *c;

static void *kernel_brk(void)
{
	return (void *)syscall(SYS_brk, 0);
}

static unsigned char *map_filled(int fill)
{
	unsigned char *p = mmap(NULL, NPAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED) {
		perror("mmap");
		exit(1);
	}
	for (int i = 0; i < NPAGES * PAGE; i++)
		p[i] = (unsigned char)(fill + i / PAGE);
	return p;
}

static const char *pattern(const unsigned char *p, int fill)
{
	for (int i = 0; i < NPAGES * PAGE; i++)
		if (p[i] != (unsigned char)(fill + i / PAGE))
			return "bad";
	return "ok";
}

static void change(void)
{
	unsigned char *grown = sbrk(1 << 20);
	memset(grown, 0x5a, 1 << 20);
	unsigned char *n = map_filled('N');
	munmap(b, NPAGES * PAGE);
	mprotect(c, NPAGES * PAGE, PROT_READ);
	memset(a, 'Z', NPAGES * PAGE);
	printf("changed brk=%p n=%p\n", kernel_brk(), (void *)n);
}

static void check(void)
{
	printf("check brk=%p a=%s b=%s\n", kernel_brk(), pattern(a, 'A'), pattern(b, 'B'));
	fflush(stdout);
	memset(c, 'c', NPAGES * PAGE);
	unsigned char *m = malloc(4 << 20);
	memset(m, 0x77, 4 << 20);
	printf("malloc ok brk=%p\n", kernel_brk());
}

int main(void)
{
	/* Keep big allocations on the brk heap, so that check's malloc needs brk. */
	mallopt(M_MMAP_THRESHOLD, 64 << 20);
	mallopt(M_TRIM_THRESHOLD, 1 << 30);
	void *small = malloc(64 << 10);
	memset(small, 1, 64 << 10);

	a = map_filled('A');
	b = map_filled('B');
	c = map_filled('C');
	printf("ready brk=%p a=%p b=%p c=%p\n", kernel_brk(), (void *)a, (void *)b, (void *)c);
	fflush(stdout);

	char line[64];
	while (fgets(line, sizeof line, stdin)) {
		if (strcmp(line, "change\n") == 0)
			change();
		else if (strcmp(line, "check\n") == 0)
			check();
		else if (strcmp(line, "ping\n") == 0)
			printf("pong\n");
		else
			printf("error unknown command %s", line);
		fflush(stdout);
	}
	return 0;
}
