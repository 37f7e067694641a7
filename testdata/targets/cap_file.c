/* Opens argv[1] for reading and writing with O_APPEND, seeks to offset
 * 1234, prints the descriptor and blocks in read(0). */
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	char c;
	int fd;

	if (argc < 2)
		return 2;
	fd = open(argv[1], O_RDWR | O_APPEND);
	if (fd < 0 || lseek(fd, 1234, SEEK_SET) != 1234) {
		perror(argv[1]);
		return 1;
	}
	printf("fd %d\nready\n", fd);
	fflush(stdout);
	while (read(0, &c, 1) == 1)
		;
	return 0;
}
