/* A pool of threads for work that blocks (a backend that answers calls itself,
 * calls that fan out to several backends). Threads are started on demand up
 * to a bound and leave after a while without work. */
#pragma once

struct workers;

int workers_new(unsigned max_threads, struct workers **out);
/* Runs fn(arg) on a pool thread; queued when every thread is busy. */
int workers_submit(struct workers *w, void (*fn)(void *arg), void *arg);
/* Only when a thread can start fn(arg) at once: -EBUSY when every thread
 * is busy and the pool is at its bound. */
int workers_submit_now(struct workers *w, void (*fn)(void *arg), void *arg);
/* Runs what is queued, then waits for every thread to leave. */
void workers_free(struct workers *w);
