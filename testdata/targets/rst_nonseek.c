/* rst_nonseek: opens the file named by its argument write-only, writes
 * "1\n" to it, prints "ready FD" and reads commands from stdin:
 *   write  writes "snap-1\n" to the file; prints "wrote N" (bytes written)
 *   ping   prints "pong"
 * Each write moves the descriptor's offset even when the file was opened
 * non-seekable, as a FUSE control file is. */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: rst_nonseek FILE\n");
		return 2;
	}
	int fd = open(argv[1], O_WRONLY);
	if (fd < 0 || write(fd, "1\n", 2) != 2) {
		perror(argv[1]);
		return 1;
	}
	printf("ready %d\n", fd);
	fflush(stdout);

	char line[64];
	while (fgets(line, sizeof line, stdin)) {
		if (strcmp(line, "write\n") == 0) {
			printf("wrote %zd\n", write(fd, "snap-1\n", 7));
		} else if (strcmp(line, "ping\n") == 0) {
			printf("pong\n");
		} else {
			printf("error unknown command %s", line);
		}
		fflush(stdout);
	}
	return 0;
}
