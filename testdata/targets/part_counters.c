/* part_counters: counters for partial restore tests. It keeps one counter
 * in a malloc'ed block on the brk heap, one in a global and one, the loop
 * count, in a local of main's frame on the stack. It maps region R of
 * 8 pages, each filled with 'R' plus its index, and prints
 *   "ready heap=ADDR global=ADDR loop=ADDR r=ADDR"
 * Then, every 10 ms (poll's timeout on stdin), it increments the three
 * counters and prints
 *   "tick heap=H global=G loop=L"
 * A command on stdin, one a line, is handled at once:
 *   open   opens /dev/null and prints "opened FD"
 *   map    maps a new region N of 8 pages and prints "mapped n=ADDR"
 *   unmap  unmaps R and prints "unmapped"
 * Only write(2) prints, and commands are read with read(2), so stdio
 * keeps no buffer on the heap and the heap holds only the counter. */
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE 4096
#define NPAGES 8

static volatile unsigned long global_count;
static unsigned char *r;

static void say(const char *line)
{
	if (write(1, line, strlen(line)) < 0)
		exit(1);
}

static unsigned char *map_pages(int fill)
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

static void command(const char *cmd)
{
	char out[96];

	if (strcmp(cmd, "open") == 0)
		snprintf(out, sizeof out, "opened %d\n", open("/dev/null", O_RDONLY));
	else if (strcmp(cmd, "map") == 0)
		snprintf(out, sizeof out, "mapped n=%p\n", (void *)map_pages('N'));
	else if (strcmp(cmd, "unmap") == 0)
		snprintf(out, sizeof out, "%s\n", munmap(r, NPAGES * PAGE) == 0 ? "unmapped" : "error munmap");
	else
		snprintf(out, sizeof out, "error unknown command %.64s\n", cmd);
	say(out);
}

/* commands reads what stdin holds and runs each complete line. */
static void commands(char *buf, size_t *len, size_t size)
{
	ssize_t n = read(0, buf + *len, size - 1 - *len);
	if (n <= 0)
		exit(0);
	*len += (size_t)n;
	buf[*len] = 0;

	char *line = buf, *nl;
	while ((nl = strchr(line, '\n')) != NULL) {
		*nl = 0;
		command(line);
		line = nl + 1;
	}
	*len = strlen(line);
	memmove(buf, line, *len + 1);
}

int main(void)
{
	volatile unsigned long loop = 0;
	volatile unsigned long *heap = malloc(64);
	char out[128], in[256];
	size_t inlen = 0;

	*heap = 0;
	r = map_pages('R');
	snprintf(out, sizeof out, "ready heap=%p global=%p loop=%p r=%p\n",
		 (void *)heap, (void *)&global_count, (void *)&loop, (void *)r);
	say(out);

	for (;;) {
		struct pollfd pfd = {.fd = 0, .events = POLLIN};
		if (poll(&pfd, 1, 10) > 0) {
			commands(in, &inlen, sizeof in);
			continue;
		}
		(*heap)++;
		global_count++;
		loop++;
		snprintf(out, sizeof out, "tick heap=%lu global=%lu loop=%lu\n", *heap, global_count, loop);
		say(out);
	}
}
