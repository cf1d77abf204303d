#include "config.h"

#include "common/workers.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <time.h>

#define IDLE_EXIT_SECONDS 30

struct job {
	struct job *next;
	void (*fn)(void *arg);
	void *arg;
};

struct workers {
	pthread_mutex_t lock;
	pthread_cond_t work; /* a job was queued, or the pool stops */
	pthread_cond_t gone; /* a thread left */
	struct job *head, *tail;
	/* A woken thread stays "idle" until it takes a job: a new job needs a
	 * new thread unless the idle ones outnumber the jobs waiting. */
	unsigned threads, idle, queued, max_threads;
	bool stopping;
};

static void *worker_main(void *arg)
{
	struct workers *w = arg;
	pthread_mutex_lock(&w->lock);
	for (;;) {
		while (!w->head && !w->stopping) {
			struct timespec until;
			clock_gettime(CLOCK_REALTIME, &until);
			until.tv_sec += IDLE_EXIT_SECONDS;
			w->idle++;
			int r = pthread_cond_timedwait(&w->work, &w->lock, &until);
			w->idle--;
			if (r == ETIMEDOUT && !w->head)
				goto leave;
		}
		struct job *job = w->head;
		if (!job)
			break; /* stopping and nothing left */
		w->head = job->next;
		if (!w->head)
			w->tail = NULL;
		w->queued--;
		pthread_mutex_unlock(&w->lock);
		job->fn(job->arg);
		free(job);
		pthread_mutex_lock(&w->lock);
	}
leave:
	w->threads--;
	pthread_cond_broadcast(&w->gone);
	pthread_mutex_unlock(&w->lock);
	return NULL;
}

int workers_new(unsigned max_threads, struct workers **out)
{
	struct workers *w = calloc(1, sizeof(*w));
	if (!w)
		return -ENOMEM;
	pthread_mutex_init(&w->lock, NULL);
	pthread_cond_init(&w->work, NULL);
	pthread_cond_init(&w->gone, NULL);
	w->max_threads = max_threads ? max_threads : 1;
	*out = w;
	return 0;
}

static int submit(struct workers *w, void (*fn)(void *arg), void *arg, bool only_now)
{
	struct job *job = malloc(sizeof(*job));
	if (!job)
		return -ENOMEM;
	*job = (struct job){.fn = fn, .arg = arg};
	pthread_mutex_lock(&w->lock);
	if (w->stopping) {
		pthread_mutex_unlock(&w->lock);
		free(job);
		return -ESHUTDOWN;
	}
	if (w->idle <= w->queued) {
		int r = w->threads < w->max_threads ? 0 : EBUSY;
		if (r == 0) {
			pthread_attr_t attr;
			pthread_attr_init(&attr);
			pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
			pthread_t t;
			r = pthread_create(&t, &attr, worker_main, w);
			pthread_attr_destroy(&attr);
		}
		if (r == 0) {
			w->threads++;
		} else if (only_now || w->threads == 0) { /* nobody would run it now, or ever */
			pthread_mutex_unlock(&w->lock);
			free(job);
			return -r;
		}
	}
	if (w->tail)
		w->tail->next = job;
	else
		w->head = job;
	w->tail = job;
	w->queued++;
	pthread_mutex_unlock(&w->lock);
	/* After the unlock: a thread woken under the lock would only block on
	 * it again, one more wake-up on the way to every job. */
	pthread_cond_signal(&w->work);
	return 0;
}

int workers_submit(struct workers *w, void (*fn)(void *arg), void *arg)
{
	return submit(w, fn, arg, false);
}

int workers_submit_now(struct workers *w, void (*fn)(void *arg), void *arg)
{
	return submit(w, fn, arg, true);
}

void workers_free(struct workers *w)
{
	if (!w)
		return;
	pthread_mutex_lock(&w->lock);
	w->stopping = true;
	pthread_cond_broadcast(&w->work);
	while (w->threads > 0)
		pthread_cond_wait(&w->gone, &w->lock);
	pthread_mutex_unlock(&w->lock);
	pthread_cond_destroy(&w->work);
	pthread_cond_destroy(&w->gone);
	pthread_mutex_destroy(&w->lock);
	free(w);
}
