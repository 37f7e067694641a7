/* rst_files: descriptors that restore tests change after capture. It opens
 * the file named by its argument, reads 100 bytes of it, makes a pipe,
 * prints "ready fd=FD pipe=READ_END" and reads commands from stdin:
 *   read       read the next 100 bytes of the file; prints "read N"
 *   close      close the file; prints "closed"
 *   open       open /dev/null; prints "opened FD"
 *   closepipe  close the pipe's read end; prints "pipe closed"
 *   check FD   read 100 bytes of the file and print
 *              "check pos=OFFSET data=HEX newfd=open|closed", where OFFSET is
 *              the offset after the read and newfd tells whether FD is open
 *   ping       prints "pong" */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: rst_files FILE\n");
		return 2;
	}
	int fd = open(argv[1], O_RDONLY);
	if (fd < 0) {
		perror("open");
		return 1;
	}
	char buf[100];
	if (read(fd, buf, sizeof buf) != sizeof buf) {
		perror("read");
		return 1;
	}
	int p[2];
	if (pipe(p) < 0) {
		perror("pipe");
		return 1;
	}
	printf("ready fd=%d pipe=%d\n", fd, p[0]);
	fflush(stdout);

	char line[64];
	while (fgets(line, sizeof line, stdin)) {
		int other;
		if (strcmp(line, "read\n") == 0) {
			printf("read %zd\n", read(fd, buf, sizeof buf));
		} else if (strcmp(line, "close\n") == 0) {
			close(fd);
			printf("closed\n");
		} else if (strcmp(line, "open\n") == 0) {
			printf("opened %d\n", open("/dev/null", O_RDONLY));
		} else if (strcmp(line, "closepipe\n") == 0) {
			close(p[0]);
			printf("pipe closed\n");
		} else if (sscanf(line, "check %d", &other) == 1) {
			ssize_t n = read(fd, buf, sizeof buf);
			printf("check pos=%ld data=", (long)lseek(fd, 0, SEEK_CUR));
			for (ssize_t i = 0; i < n; i++)
				printf("%02x", (unsigned char)buf[i]);
			printf(" newfd=%s\n", fcntl(other, F_GETFD) >= 0 ? "open" : "closed");
		} else if (strcmp(line, "ping\n") == 0) {
			printf("pong\n");
		} else {
			printf("error unknown command %s", line);
		}
		fflush(stdout);
	}
	return 0;
}
