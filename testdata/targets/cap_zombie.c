/* Forks a child that exits at once and never reaps it, so the child stays
 * a zombie; prints the child's pid and sleeps. */
#include <stdio.h>
#include <unistd.h>

int main(void)
{
	pid_t child = fork();

	if (child == 0)
		_exit(0);
	printf("zombie %d\n", child);
	fflush(stdout);
	for (;;)
		sleep(1);
}
