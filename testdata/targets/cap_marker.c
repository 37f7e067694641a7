/* Fills a heap buffer and a global with distinct marker strings, prints
 * their addresses, then blocks in read(0) until stdin closes or a byte
 * arrives, so its maps cannot change while a test looks at it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

char global_marker[8192];

int main(void)
{
	char *heap = malloc(1 << 20);
	char c;

	strcpy(global_marker, "CKPTFS-GLOBAL-MARKER-5b1e");
	strcpy(heap, "CKPTFS-HEAP-MARKER-93c7");
	printf("heap %p\nglobal %p\nready\n", (void *)heap, (void *)global_marker);
	fflush(stdout);
	while (read(0, &c, 1) == 1)
		;
	return 0;
}
