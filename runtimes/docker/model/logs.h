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

#include <json-c/json.h>
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

/* Where container id's CRI log goes, as crimux set it at creation: its
 * labels DK_LABEL_LOG_DIRECTORY and DK_LABEL_LOG_PATH, which crimux sets on
 * every container it makes (empty when none), so an image's labels never
 * show through Docker's merge; Docker stores them with the container, as
 * durably as the container itself. A container made before the directory
 * label has crimux's own record instead (its state file). *log_dir and *rel
 * malloc'd; -ENOENT when it logs nowhere (or nowhere crimux can vouch for:
 * the two labels must agree and the path below the directory be confined). */
int dk_logs_location(struct dk_logs *l, const char *id, json_object *labels, char **log_dir,
		     char **rel);
/* log_dir/rel, malloc'd. */
char *dk_log_join(const char *log_dir, const char *rel);
/* Starts (or, after a restart, resumes from the saved position) following
 * container id into log_dir/rel, opened at once. Tracking an already tracked
 * container is a no-op. */
int dk_logs_track(struct dk_logs *l, const char *id, const char *log_dir, const char *rel,
		  const char *docker_log, struct crx_err *err);
/* Copies everything Docker has written so far. */
int dk_logs_drain(struct dk_logs *l, const char *id);
/* Copies what is pending into the current file, then opens the CRI path
 * anew. -ENOENT when the container is not tracked. */
int dk_logs_reopen(struct dk_logs *l, const char *id, struct crx_err *err);
/* Drains and stops following. The position file stays for
 * dk_logs_drop_state, which removes it (while Docker removes the container). */
void dk_logs_forget(struct dk_logs *l, const char *id);
void dk_logs_drop_state(struct dk_logs *l, const char *id);
/* Whether id is followed. */
int dk_logs_tracked(struct dk_logs *l, const char *id);
