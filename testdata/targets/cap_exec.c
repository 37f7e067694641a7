/* Prints "ready", waits for one byte on stdin, then execs sleep 1000. */
#include <stdio.h>
#include <unistd.h>

int main(void)
{
	char c;

	printf("ready\n");
	fflush(stdout);
	if (read(0, &c, 1) != 1)
		return 1;
	execlp("sleep", "sleep", "1000", (char *)NULL);
	perror("execlp");
	return 1;
}
