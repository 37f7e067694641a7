/* rst_uffd: a process with a userfaultfd of its own. It maps and fills 64
 * pages and registers them with a userfaultfd in missing mode, so a fault
 * on an empty page would wait for a handler that never runs. It prints
 * "ready ADDR" and reads commands from stdin, one a line:
 *   z   drop page 5 (MADV_DONTNEED); prints "dropped"
 *   p   prints "pong" */
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#define PAGE 4096
#define NPAGES 64

int main(void)
{
	char *buf = mmap(NULL, NPAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (buf == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	memset(buf, 'U', NPAGES * PAGE);

	int fd = syscall(SYS_userfaultfd, O_CLOEXEC);
	struct uffdio_api api = {.api = UFFD_API};
	struct uffdio_register reg = {
		.range = {.start = (unsigned long)buf, .len = NPAGES * PAGE},
		.mode = UFFDIO_REGISTER_MODE_MISSING,
	};
	if (fd < 0 || ioctl(fd, UFFDIO_API, &api) != 0 || ioctl(fd, UFFDIO_REGISTER, &reg) != 0) {
		perror("userfaultfd");
		return 1;
	}
	printf("ready %p\n", (void *)buf);
	fflush(stdout);

	char line[64];
	while (fgets(line, sizeof line, stdin)) {
		if (line[0] == 'z') {
			madvise(buf + 5 * PAGE, PAGE, MADV_DONTNEED);
			printf("dropped\n");
		} else {
			printf("pong\n");
		}
		fflush(stdout);
	}
	return 0;
}
