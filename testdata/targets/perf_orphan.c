// perf_orphan: leaves the kind of zombie that a copy-on-write capture
// leaves when its daemon dies: a child cloned with exit signal 0, killed by
// SIGKILL and never reaped. It prints "zombie PID" and then "ready", and
// waits on stdin; at end of input it exits.
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(void) {
	long child = syscall(SYS_clone, 0L, 0L, 0L, 0L, 0L);
	if (child < 0) {
		perror("clone");
		return 1;
	}
	if (child == 0) {
		for (;;)
			pause();
	}
	kill((pid_t)child, SIGKILL);
	printf("zombie %ld\nready\n", child);
	fflush(stdout);

	char c;
	while (read(0, &c, 1) > 0)
		;
	return 0;
}
