/* Access probe run as another user by the access tests. It performs one
 * file operation and prints its outcome on one line: "ok" (with details)
 * or "err NAME", NAME being the errno's symbolic name.
 *   safe_try write PATH DATA   open O_WRONLY|O_TRUNC, write DATA, close
 *   safe_try read PATH         read the whole file, print "ok BYTES"
 *   safe_try list DIR          print "entry NAME" lines, then "ok"
 *   safe_try stat PATH         print "ok uid=U mode=OCTAL" (lstat) */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int fail(void)
{
	printf("err %s\n", strerrorname_np(errno));
	return 0;
}

static int do_write(const char *path, const char *data)
{
	int fd = open(path, O_WRONLY | O_TRUNC);

	if (fd < 0)
		return fail();
	if (write(fd, data, strlen(data)) < 0)
		return fail();
	if (close(fd) != 0)
		return fail();
	printf("ok\n");
	return 0;
}

static int do_read(const char *path)
{
	char buf[65536];
	long total = 0;
	ssize_t n;
	int fd = open(path, O_RDONLY);

	if (fd < 0)
		return fail();
	while ((n = read(fd, buf, sizeof buf)) > 0)
		total += n;
	if (n < 0)
		return fail();
	close(fd);
	printf("ok %ld\n", total);
	return 0;
}

static int do_list(const char *path)
{
	DIR *dir = opendir(path);
	struct dirent *e;

	if (dir == NULL)
		return fail();
	errno = 0;
	while ((e = readdir(dir)) != NULL)
		if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
			printf("entry %s\n", e->d_name);
	if (errno != 0)
		return fail();
	closedir(dir);
	printf("ok\n");
	return 0;
}

static int do_stat(const char *path)
{
	struct stat st;

	if (lstat(path, &st) != 0)
		return fail();
	printf("ok uid=%u mode=%o\n", st.st_uid, st.st_mode & 07777);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 4 && strcmp(argv[1], "write") == 0)
		return do_write(argv[2], argv[3]);
	if (argc == 3 && strcmp(argv[1], "read") == 0)
		return do_read(argv[2]);
	if (argc == 3 && strcmp(argv[1], "list") == 0)
		return do_list(argv[2]);
	if (argc == 3 && strcmp(argv[1], "stat") == 0)
		return do_stat(argv[2]);
	fprintf(stderr, "usage: safe_try write PATH DATA | read PATH | list DIR | stat PATH\n");
	return 2;
}
