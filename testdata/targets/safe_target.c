/* Test target for the access and safety tests. Prints "ready" and serves
 * one-letter commands read from stdin with read(2), one byte at a time:
 *   i  increment the counter and print "counter N"
 *   g  print "counter N"
 *   u  become uid and gid 65534 (real, effective and saved), mark itself
 *      dumpable again (a uid change clears the flag) and print "uid 65534"
 *   d  mark itself not dumpable (prctl PR_SET_DUMPABLE 0), print "dumpable 0"
 *   e  exec its own executable again, which prints "ready" again
 *   x  exec "sleep 1000", a different program
 * Between commands it is blocked in read(0). It exits when stdin closes. */
#define _GNU_SOURCE
#include <grp.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <unistd.h>

volatile unsigned long counter;

static void drop_to_nobody(void)
{
	if (setgroups(0, NULL) != 0 || setresgid(65534, 65534, 65534) != 0 ||
	    setresuid(65534, 65534, 65534) != 0) {
		perror("drop to nobody");
		return;
	}
	if (prctl(PR_SET_DUMPABLE, 1) != 0)
		perror("prctl PR_SET_DUMPABLE 1");
	printf("uid %d\n", (int)getuid());
}

int main(int argc, char **argv)
{
	char c;

	(void)argc;
	printf("ready\n");
	fflush(stdout);

	while (read(0, &c, 1) == 1) {
		switch (c) {
		case 'i':
			counter++;
			/* fall through */
		case 'g':
			printf("counter %lu\n", counter);
			break;
		case 'u':
			drop_to_nobody();
			break;
		case 'd':
			if (prctl(PR_SET_DUMPABLE, 0) != 0)
				perror("prctl PR_SET_DUMPABLE 0");
			printf("dumpable %d\n", prctl(PR_GET_DUMPABLE));
			break;
		case 'e':
			execv("/proc/self/exe", argv);
			perror("exec self");
			break;
		case 'x':
			execlp("sleep", "sleep", "1000", (char *)NULL);
			perror("exec sleep");
			break;
		}
		fflush(stdout);
	}
	return 0;
}
