/*
 * crimux-pause: the process that holds a pod sandbox's namespaces open.
 *
 * It runs as PID 1 of the pod, so it must reap orphans that get re-parented
 * to it, and it must exit cleanly when the runtime stops the sandbox.
 * Everything else is sleeping in pause(2).
 *
 * Build: cc -std=c11 -O2 -static -o crimux-pause pause.c
 */
#define _POSIX_C_SOURCE 200809L

#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef PACKAGE_VERSION
#define PACKAGE_VERSION "dev"
#endif

/* A stop request from the runtime is a normal end of the sandbox. */
static void on_stop(int sig)
{
	(void)sig;
	_exit(0);
}

/* Reap every child that has exited; errno belongs to the interrupted code. */
static void on_child(int sig)
{
	int saved = errno;

	(void)sig;
	while (waitpid(-1, NULL, WNOHANG) > 0)
		;
	errno = saved;
}

static int install(int sig, void (*handler)(int), int flags)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = handler;
	sa.sa_flags = flags;
	sigemptyset(&sa.sa_mask);
	return sigaction(sig, &sa, NULL);
}

int main(int argc, char **argv)
{
	if (argc > 1 && strcmp(argv[1], "-v") == 0) {
		printf("crimux-pause %s\n", PACKAGE_VERSION);
		return 0;
	}
	if (getpid() != 1)
		fputs("crimux-pause: warning: not running as PID 1\n", stderr);

	if (install(SIGINT, on_stop, 0) < 0 || install(SIGTERM, on_stop, 0) < 0 ||
	    install(SIGCHLD, on_child, SA_NOCLDSTOP | SA_RESTART) < 0) {
		perror("crimux-pause: sigaction");
		return 1;
	}

	for (;;)
		pause();
}
