/* trk_pages: a buffer of pages that write-tracking tests change page by
 * page. It maps NPAGES private anonymous pages, fills page i with the byte
 * i % 251 + 1, prints "ready addr=ADDR pages=NPAGES" and reads commands
 * from stdin, one a line:
 *   w I V   fill page I with byte V; prints "wrote I"
 *   z I     drop page I (MADV_DONTNEED, reads as zeros); prints "dropped I"
 *   m       map and fill a new 4-page region with 'M'; prints "mapped ADDR"
 *   ro I N  make pages I..I+N-1 read-only; prints "protected I"
 *   rw I N  make pages I..I+N-1 writable again; prints "protected I"
 *   g I     prints "page I=B" with B the first byte of page I
 *   sum     prints "sum HEX", a hash of the whole buffer
 * A further 2 MiB of private memory, never changed, makes the process large
 * enough for a capture to clone it rather than copy its memory while frozen.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define PAGE 4096
#define NPAGES 256

static unsigned char *buf;

static uint64_t checksum(void)
{
	uint64_t h = 0xcbf29ce484222325ULL;
	for (size_t i = 0; i < (size_t)NPAGES * PAGE; i++)
		h = (h ^ buf[i]) * 0x100000001b3ULL;
	return h;
}

int main(void)
{
	char *ballast = mmap(NULL, 2 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	buf = mmap(NULL, NPAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (ballast == MAP_FAILED || buf == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	memset(ballast, 1, 2 << 20);
	for (int i = 0; i < NPAGES; i++)
		memset(buf + (size_t)i * PAGE, i % 251 + 1, PAGE);
	printf("ready addr=%p pages=%d\n", (void *)buf, NPAGES);
	fflush(stdout);

	char line[128];
	while (fgets(line, sizeof line, stdin)) {
		int i, v;
		if (sscanf(line, "w %d %d", &i, &v) == 2 && i >= 0 && i < NPAGES) {
			memset(buf + (size_t)i * PAGE, v, PAGE);
			printf("wrote %d\n", i);
		} else if (sscanf(line, "z %d", &i) == 1 && i >= 0 && i < NPAGES) {
			madvise(buf + (size_t)i * PAGE, PAGE, MADV_DONTNEED);
			printf("dropped %d\n", i);
		} else if (sscanf(line, "ro %d %d", &i, &v) == 2 && i >= 0 && v > 0 && i + v <= NPAGES) {
			mprotect(buf + (size_t)i * PAGE, (size_t)v * PAGE, PROT_READ);
			printf("protected %d\n", i);
		} else if (sscanf(line, "rw %d %d", &i, &v) == 2 && i >= 0 && v > 0 && i + v <= NPAGES) {
			mprotect(buf + (size_t)i * PAGE, (size_t)v * PAGE, PROT_READ | PROT_WRITE);
			printf("protected %d\n", i);
		} else if (sscanf(line, "g %d", &i) == 1 && i >= 0 && i < NPAGES) {
			printf("page %d=%d\n", i, buf[(size_t)i * PAGE]);
		} else if (line[0] == 'm') {
			unsigned char *p = mmap(NULL, 4 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			memset(p, 'M', 4 * PAGE);
			printf("mapped %p\n", (void *)p);
		} else if (strncmp(line, "sum", 3) == 0) {
			printf("sum %016llx\n", (unsigned long long)checksum());
		} else {
			printf("error %s", line);
		}
		fflush(stdout);
	}
	return 0;
}
