/* dk_kill_tree: a process tree is killed through pidfds, and nothing is
 * signalled when the PID no longer names the process meant (recycled). */
#include "config.h"

#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "runtimes/docker/engine/api.h"
#include "tap.h"

static bool yes(int pid, void *arg)
{
	(void)pid;
	(void)arg;
	return true;
}

static bool no(int pid, void *arg)
{
	(void)pid;
	*(int *)arg += 1;
	return false;
}

static int children(int pid)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/task/%d/children", pid, pid);
	FILE *f = fopen(path, "r");
	int n = 0, c;
	while (f && fscanf(f, "%d", &c) == 1)
		n++;
	if (f)
		fclose(f);
	return n;
}

/* Reaps what was killed: the shell, and its children (we are their
 * subreaper). Returns how many died of SIGKILL. */
static int reap_killed(void)
{
	int killed = 0, status;
	for (int i = 0; i < 200; i++) {
		pid_t p = waitpid(-1, &status, WNOHANG);
		if (p > 0) {
			killed += WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
			continue;
		}
		if (p < 0)
			break; /* no children left */
		nanosleep(&(struct timespec){.tv_nsec = 10 * 1000 * 1000}, NULL);
	}
	return killed;
}

int main(void)
{
	prctl(PR_SET_CHILD_SUBREAPER, 1);
	pid_t sh = fork();
	if (sh == 0) {
		execl("/bin/sh", "sh", "-c", "sleep 100 & sleep 100 & wait", (char *)NULL);
		_exit(127);
	}
	for (int i = 0; i < 500 && children(sh) < 2; i++)
		nanosleep(&(struct timespec){.tv_nsec = 10 * 1000 * 1000}, NULL);
	is_int(children(sh), 2, "a shell with two children");

	int asked = 0;
	is_int(dk_kill_tree(sh, no, &asked), -ESRCH, "not ours any more: nothing done");
	is_int(asked, 1, "asked after the pidfd was open");
	ok(kill(sh, 0) == 0 && children(sh) == 2, "the tree is untouched");

	is_int(dk_kill_tree(sh, yes, NULL), 0, "ours: killed");
	is_int(reap_killed(), 3, "the shell and both children died of SIGKILL");
	is_int(dk_kill_tree(sh, yes, NULL), -ESRCH, "a PID nobody has");
	is_int(dk_kill_tree(0, yes, NULL), -ESRCH, "no PID");
	return tap_done();
}
