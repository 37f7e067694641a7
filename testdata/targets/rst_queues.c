/* rst_queues: pending signals and timers for restore tests. It blocks
 * SIGUSR1, SIGUSR2 and SIGRTMIN+1, whose handlers print what arrives.
 * It reads one-byte commands from stdin and prints one line for each:
 *   p  queue SIGUSR1 to the process, SIGUSR2 to this thread (tgkill), and
 *      SIGRTMIN+1 to the process twice with values 42 and 43: "queued"
 *   d  dequeue every pending signal with sigtimedwait: "drained N"
 *   P  "pending MASK": the hex mask of pending signals (sigpending)
 *   u  unblock the three signals; each handler prints "got SIGNO VALUE",
 *      then "unblocked"
 *   i  arm ITIMER_REAL for 50 s with a 7 s period: "armed"
 *   k  disarm ITIMER_REAL: "disarmed"
 *   I  "itimer VALUE_MS INTERVAL_MS" of ITIMER_REAL
 *   t  create a POSIX timer on CLOCK_MONOTONIC that sends SIGRTMIN+2 with
 *      value 0x77, armed for 100 s with a 3 s period: "timer ID"
 *   c  create a disarmed POSIX timer with SIGEV_NONE: "timer ID"
 *   x  delete the last timer t created: "deleted ID"
 *   g  "posix ID VALUE_MS INTERVAL_MS" of the timer t created last
 * SIGALRM and SIGRTMIN+2 have handlers that print "got SIGNO VALUE" too. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static timer_t last;

static void handler(int sig, siginfo_t *info, void *ctx)
{
	char line[64];
	int n = snprintf(line, sizeof(line), "got %d %ld\n", sig, (long)info->si_value.sival_ptr);

	(void)ctx;
	write(1, line, n);
}

static sigset_t held(void)
{
	sigset_t set;

	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	sigaddset(&set, SIGUSR2);
	sigaddset(&set, SIGRTMIN + 1);
	return set;
}

static long ms(struct timespec ts)
{
	return ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void command(char c)
{
	sigset_t set = held();
	struct itimerval it;
	struct itimerspec spec;
	struct sigevent ev;
	union sigval v;
	int n = 0;

	switch (c) {
	case 'p':
		kill(getpid(), SIGUSR1);
		syscall(SYS_tgkill, getpid(), gettid(), SIGUSR2);
		v.sival_ptr = (void *)42;
		sigqueue(getpid(), SIGRTMIN + 1, v);
		v.sival_ptr = (void *)43;
		sigqueue(getpid(), SIGRTMIN + 1, v);
		printf("queued\n");
		break;
	case 'd': {
		struct timespec zero = {0, 0};

		while (sigtimedwait(&set, NULL, &zero) > 0)
			n++;
		printf("drained %d\n", n);
		break;
	}
	case 'P': {
		sigset_t pending;
		unsigned long mask = 0;

		sigpending(&pending);
		for (int sig = 1; sig <= 64; sig++)
			if (sigismember(&pending, sig))
				mask |= 1UL << (sig - 1);
		printf("pending %lx\n", mask);
		break;
	}
	case 'u':
		fflush(stdout);
		sigprocmask(SIG_UNBLOCK, &set, NULL);
		sigprocmask(SIG_BLOCK, &set, NULL);
		printf("unblocked\n");
		break;
	case 'i':
		it.it_value.tv_sec = 50, it.it_value.tv_usec = 0;
		it.it_interval.tv_sec = 7, it.it_interval.tv_usec = 0;
		setitimer(ITIMER_REAL, &it, NULL);
		printf("armed\n");
		break;
	case 'k':
		memset(&it, 0, sizeof(it));
		setitimer(ITIMER_REAL, &it, NULL);
		printf("disarmed\n");
		break;
	case 'I':
		getitimer(ITIMER_REAL, &it);
		printf("itimer %ld %ld\n", it.it_value.tv_sec * 1000 + it.it_value.tv_usec / 1000,
		       it.it_interval.tv_sec * 1000 + it.it_interval.tv_usec / 1000);
		break;
	case 't':
		memset(&ev, 0, sizeof(ev));
		ev.sigev_notify = SIGEV_SIGNAL;
		ev.sigev_signo = SIGRTMIN + 2;
		ev.sigev_value.sival_ptr = (void *)0x77;
		timer_create(CLOCK_MONOTONIC, &ev, &last);
		spec.it_value.tv_sec = 100, spec.it_value.tv_nsec = 0;
		spec.it_interval.tv_sec = 3, spec.it_interval.tv_nsec = 0;
		timer_settime(last, 0, &spec, NULL);
		printf("timer %ld\n", (long)last);
		break;
	case 'c': {
		timer_t other;

		memset(&ev, 0, sizeof(ev));
		ev.sigev_notify = SIGEV_NONE;
		timer_create(CLOCK_MONOTONIC, &ev, &other);
		printf("timer %ld\n", (long)other);
		break;
	}
	case 'x':
		timer_delete(last);
		printf("deleted %ld\n", (long)last);
		break;
	case 'g':
		timer_gettime(last, &spec);
		printf("posix %ld %ld %ld\n", (long)last, ms(spec.it_value), ms(spec.it_interval));
		break;
	default:
		return;
	}
	fflush(stdout);
}

int main(void)
{
	struct sigaction sa;
	sigset_t set = held();
	char c;

	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = handler;
	sa.sa_flags = SA_SIGINFO | SA_RESTART;
	sigaction(SIGUSR1, &sa, NULL);
	sigaction(SIGUSR2, &sa, NULL);
	sigaction(SIGRTMIN + 1, &sa, NULL);
	sigaction(SIGRTMIN + 2, &sa, NULL);
	sigaction(SIGALRM, &sa, NULL);
	sigprocmask(SIG_BLOCK, &set, NULL);

	printf("ready\n");
	fflush(stdout);
	while (read(0, &c, 1) == 1)
		command(c);
	return 0;
}
