/* rst_waits: threads blocked in waits that Linux never restarts after a
 * stop. One thread waits in epoll_wait without a timeout on a pipe, and
 * prints "epoll N" or "epoll -1 errno=E" at each return. Another waits
 * in sigwaitinfo for SIGUSR1, which every thread blocks, and prints
 * "sigwait SIGNO" or "sigwait -1 errno=E". The main thread prints
 * "ready" and reads one-byte commands from stdin:
 *   e  write a byte into the pipe, which ends one epoll_wait
 *   s  send SIGUSR1 to the process, which ends one sigwaitinfo
 *   p  print "pong" */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <sys/epoll.h>
#include <unistd.h>

static int pipefd[2];
static int epfd;

static void *epoller(void *arg)
{
	struct epoll_event ev;
	char c;

	(void)arg;
	for (;;) {
		int n = epoll_wait(epfd, &ev, 1, -1);

		if (n < 0) {
			printf("epoll -1 errno=%d\n", errno);
		} else {
			read(pipefd[0], &c, 1);
			printf("epoll %d\n", n);
		}
		fflush(stdout);
	}
	return NULL;
}

static void *waiter(void *arg)
{
	sigset_t set;

	(void)arg;
	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	for (;;) {
		int sig = sigwaitinfo(&set, NULL);

		if (sig < 0)
			printf("sigwait -1 errno=%d\n", errno);
		else
			printf("sigwait %d\n", sig);
		fflush(stdout);
	}
	return NULL;
}

int main(void)
{
	struct epoll_event ev = {.events = EPOLLIN};
	sigset_t set;
	pthread_t a, b;
	char c;

	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	pipe(pipefd);
	epfd = epoll_create1(0);
	ev.data.fd = pipefd[0];
	epoll_ctl(epfd, EPOLL_CTL_ADD, pipefd[0], &ev);
	pthread_create(&a, NULL, epoller, NULL);
	pthread_create(&b, NULL, waiter, NULL);

	printf("ready\n");
	fflush(stdout);
	while (read(0, &c, 1) == 1) {
		switch (c) {
		case 'e':
			write(pipefd[1], "x", 1);
			break;
		case 's':
			kill(getpid(), SIGUSR1);
			break;
		case 'p':
			printf("pong\n");
			fflush(stdout);
			break;
		}
	}
	return 0;
}
