/* rst_signals: signal state that restore tests change after capture. At
 * start SIGUSR1 runs handler 1, SIGUSR2 is blocked and an alternate signal
 * stack is set. It prints "ready" and reads commands from stdin:
 *   change  SIGUSR1 runs handler 2, the mask blocks SIGHUP only, the
 *           alternate stack is disabled; prints "changed"
 *   check   raises SIGUSR1 and prints "check handler=1|2 usr2=blocked|open
 *           hup=blocked|open altstack=set|other" */
#include <signal.h>
#include <stdio.h>
#include <string.h>

static volatile sig_atomic_t last;
static char altstack[64 << 10];

static void handler1(int sig) { last = 1; }
static void handler2(int sig) { last = 2; }

static void set_handler(void (*h)(int))
{
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = h;
	sa.sa_flags = SA_RESTART | SA_ONSTACK;
	sigaction(SIGUSR1, &sa, NULL);
}

static void change(void)
{
	set_handler(handler2);
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGHUP);
	sigprocmask(SIG_SETMASK, &set, NULL);
	stack_t ss = {.ss_flags = SS_DISABLE};
	sigaltstack(&ss, NULL);
	printf("changed\n");
}

static void check(void)
{
	last = 0;
	raise(SIGUSR1);
	sigset_t set;
	sigprocmask(SIG_BLOCK, NULL, &set);
	stack_t ss;
	sigaltstack(NULL, &ss);
	int alt = ss.ss_flags == 0 && ss.ss_sp == altstack && ss.ss_size == sizeof altstack;
	printf("check handler=%d usr2=%s hup=%s altstack=%s\n", (int)last,
	       sigismember(&set, SIGUSR2) ? "blocked" : "open", sigismember(&set, SIGHUP) ? "blocked" : "open",
	       alt ? "set" : "other");
}

int main(void)
{
	set_handler(handler1);
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGUSR2);
	sigprocmask(SIG_SETMASK, &set, NULL);
	stack_t ss = {.ss_sp = altstack, .ss_size = sizeof altstack};
	sigaltstack(&ss, NULL);
	printf("ready\n");
	fflush(stdout);

	char line[64];
	while (fgets(line, sizeof line, stdin)) {
		if (strcmp(line, "change\n") == 0)
			change();
		else if (strcmp(line, "check\n") == 0)
			check();
		else
			printf("error unknown command %s", line);
		fflush(stdout);
	}
	return 0;
}
