/* Installs a SIGUSR1 handler (without SA_RESTART) on an alternate signal
 * stack, ignores SIGUSR2, prints the handler and stack addresses, then
 * blocks in read(0). Every SIGUSR1 interrupts the read, and the target
 * prints "usr1 N" with the count of handled signals. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t handled;
static char altstack[65536];

static void on_usr1(int sig)
{
	(void)sig;
	handled++;
}

int main(void)
{
	struct sigaction sa;
	stack_t ss = { .ss_sp = altstack, .ss_size = sizeof(altstack) };
	int seen = 0;
	char c;

	sigaltstack(&ss, NULL);
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_usr1;
	sa.sa_flags = SA_ONSTACK;
	sigaddset(&sa.sa_mask, SIGUSR2);
	sigaction(SIGUSR1, &sa, NULL);
	signal(SIGUSR2, SIG_IGN);

	printf("handler %p\naltstack %p\nready\n", (void *)on_usr1, (void *)altstack);
	fflush(stdout);
	for (;;) {
		ssize_t n;

		while (seen < handled) {
			seen++;
			printf("usr1 %d\n", seen);
			fflush(stdout);
		}
		n = read(0, &c, 1);
		if (n == 0 || (n < 0 && errno != EINTR))
			return 0;
	}
}
