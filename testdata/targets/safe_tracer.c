/* Forks a child that waits in pause() and attaches to it with
 * PTRACE_SEIZE, so the child is a process traced by a tracer other than
 * ckptfs. Prints "child PID" once the child is seized, then sleeps. The
 * child dies with its tracer (PR_SET_PDEATHSIG). */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <unistd.h>

int main(void)
{
	pid_t child = fork();

	if (child == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		for (;;)
			pause();
	}
	if (child < 0 || ptrace(PTRACE_SEIZE, child, NULL, NULL) != 0) {
		perror("seize child");
		return 1;
	}
	printf("child %d\n", child);
	fflush(stdout);
	for (;;)
		pause();
}
