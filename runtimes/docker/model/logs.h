/* CRI log files made from Docker's json-file logs. Docker writes each
 * container's output as JSON lines; crimux copies them, in the CRI format
 * ("<RFC 3339 time> <stream> <P|F> <text>"), to the log path the kubelet
 * asked for. A thread follows every tracked container; the position in
 * Docker's file (inode and offset) is saved in the state directory after
 * each batch, so a restarted crimuxd goes on where the last one stopped:
 * lines may repeat after a crash between write and save, none is lost.
 * Docker's own rotation (max-size) is followed through the renamed files;
 * ReopenContainerLog starts a new CRI file after the kubelet rotated it. */
#pragma once

#include <stddef.h>

#include "common/err.h"

/* One json-file line to one CRI line (with its newline). -EINVAL when the
 * line is not a log entry. */
int dk_log_line_to_cri(const char *line, size_t len, char **out, size_t *out_len);

struct dk_logs;

/* state_dir holds one position file per container; interval_ms is how
 * often the files are looked at. A process runs one pump per state
 * directory: asking again for a directory already pumped (a reload that
 * replaces a dockershim while the old one finishes its calls) gives the same
 * pump, now at the new interval, never a second one copying the same
 * lines. */
int dk_logs_new(const char *state_dir, unsigned interval_ms, struct dk_logs **out,
		struct crx_err *err);
/* Drops a reference; the last one copies what is left, saves positions and
 * stops the thread. */
void dk_logs_free(struct dk_logs *l);

/* Checks a CRI log location: log_dir absolute and without "..", rel
 * relative, without "", "." or ".." components. -EINVAL naming the problem. */
int dk_log_path_check(const char *log_dir, const char *rel, struct crx_err *err);
/* Opens log_dir/rel for appending, confined to log_dir: no component
 * below it may be a symbolic link (-ELOOP), and the file must be a regular
 * file with no other hard link (-EBUSY). Missing directories are made. */
int dk_log_open(const char *log_dir, const char *rel, int *fd, struct crx_err *err);

/* Records, in crimux's own state, that container id logs to log_dir/rel;
 * the only source of a log path from then on (labels are never read for
 * one). Done at creation, before the container starts. */
int dk_logs_register(struct dk_logs *l, const char *id, const char *log_dir, const char *rel,
		     struct crx_err *err);
/* The registered CRI log path of id (malloc'd), NULL when none. */
char *dk_logs_path(struct dk_logs *l, const char *id);
/* Starts (or, after a restart, resumes) following a registered container;
 * 0 and nothing done when it has no registration. The CRI file is opened
 * at once. Tracking an already tracked container is a no-op. */
int dk_logs_track(struct dk_logs *l, const char *id, const char *docker_log, struct crx_err *err);
/* Copies everything Docker has written so far. */
int dk_logs_drain(struct dk_logs *l, const char *id);
/* Copies what is pending into the current file, then opens the CRI path
 * anew. -ENOENT when the container is not tracked. */
int dk_logs_reopen(struct dk_logs *l, const char *id, struct crx_err *err);
/* Drains and stops following; removes the position file. */
void dk_logs_forget(struct dk_logs *l, const char *id);
/* Whether id is followed. */
int dk_logs_tracked(struct dk_logs *l, const char *id);
