/* Captures itself through the mount at argv[1], then restores itself to
 * that snapshot once. Each pass after the capture appends a byte to the
 * file argv[2]; file contents are not rolled back, so the second pass
 * sees two bytes and stops instead of restoring again. It prints
 * "pass N" for each pass, "restore returned" if the restore write ever
 * returns in place, then waits for stdin to close. The control files are
 * written with write(2) on descriptors opened once, so the descriptor
 * table is the same at the capture and at the restore. */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int open_control(const char *mnt, const char *name)
{
	char path[4096];
	snprintf(path, sizeof(path), "%s/self/%s", mnt, name);
	return open(path, O_WRONLY);
}

int main(int argc, char **argv)
{
	int capture, restore, passes;
	struct stat st;
	char c;

	if (argc != 3)
		return 2;
	capture = open_control(argv[1], "capture");
	restore = open_control(argv[1], "restore");
	passes = open(argv[2], O_WRONLY | O_CREAT | O_APPEND, 0600);
	if (capture < 0 || restore < 0 || passes < 0) {
		perror("open");
		return 1;
	}

	if (write(capture, "1\n", 2) != 2) {
		perror("capture");
		return 1;
	}
	if (write(passes, "x", 1) != 1 || fstat(passes, &st) != 0)
		return 1;
	printf("pass %ld\n", (long)st.st_size);
	fflush(stdout);
	if (st.st_size < 2) {
		if (write(restore, "snap-1\n", 7) != 7)
			perror("restore");
		printf("restore returned\n");
		fflush(stdout);
	}
	while (read(0, &c, 1) == 1)
		;
	return 0;
}
