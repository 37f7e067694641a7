/*
 * cli_at_pid PID: starts a child whose pid is exactly PID (clone3 with
 * set_tid, which needs CAP_SYS_ADMIN), so a test can put a new process on
 * the pid of one that exited. The child prints "child PID" and sleeps until
 * killed; it gets SIGKILL when this parent dies. The parent prints
 * "error ERRNO" when the pid cannot be had, and otherwise waits for the
 * child.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: cli_at_pid PID\n");
		return 2;
	}
	pid_t want = (pid_t)atoi(argv[1]);
	pid_t parent = getpid();
	struct clone_args args;

	memset(&args, 0, sizeof(args));
	args.exit_signal = SIGCHLD;
	args.set_tid = (uint64_t)(uintptr_t)&want;
	args.set_tid_size = 1;

	setvbuf(stdout, NULL, _IOLBF, 0);
	long pid = syscall(SYS_clone3, &args, sizeof(args));
	if (pid < 0) {
		printf("error %d\n", errno);
		return 1;
	}
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(1);
		printf("child %d\n", (int)getpid());
		for (;;)
			pause();
	}
	waitpid((pid_t)pid, NULL, 0);
	return 0;
}
