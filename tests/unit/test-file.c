/* common/file.h: durable replacement of a file, a unique temporary per
 * writer, the mode asked for whatever the umask, nothing left behind. */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/file.h"
#include "tap.h"

static char dir[] = "/tmp/crimux-file-XXXXXX";
static char path[300];

static int entries(void)
{
	DIR *d = opendir(dir);
	int n = 0;
	struct dirent *e;
	while (d && (e = readdir(d)))
		n += e->d_name[0] != '.';
	if (d)
		closedir(d);
	return n;
}

static void *writer(void *arg)
{
	char text[64];
	int k = (int)(long)arg;
	for (int i = 0; i < 200; i++) {
		int n = snprintf(text, sizeof(text), "writer %d round %d\n", k, i);
		if (crx_write_file_atomic(path, text, (size_t)n, 0600, NULL) < 0)
			return (void *)1;
	}
	return NULL;
}

int main(void)
{
	if (!mkdtemp(dir))
		return 1;
	snprintf(path, sizeof(path), "%s/state.json", dir);
	mode_t old = umask(0777); /* the mode must not depend on it */
	is_int(crx_write_file_atomic(path, "one", 3, 0640, NULL), 0, "written");
	umask(old);
	struct stat st;
	ok(stat(path, &st) == 0 && (st.st_mode & 0777) == 0640, "mode 0640 under umask 0777");
	is_int(entries(), 1, "no temporary left behind");

	/* Writers of one path never share a temporary: each round's content
	 * arrives whole. */
	pthread_t t[4];
	for (long i = 0; i < 4; i++)
		pthread_create(&t[i], NULL, writer, (void *)i);
	int failed = 0;
	for (int i = 0; i < 4; i++) {
		void *r;
		pthread_join(t[i], &r);
		failed += r != NULL;
	}
	is_int(failed, 0, "four concurrent writers all succeeded");
	FILE *f = fopen(path, "r");
	char line[64] = "", rest[8] = "";
	int k, i;
	ok(f && fgets(line, sizeof(line), f) && sscanf(line, "writer %d round %d", &k, &i) == 2 &&
		   !fgets(rest, sizeof(rest), f),
	   "the file is one writer's whole content: %s", line);
	if (f)
		fclose(f);
	is_int(entries(), 1, "still nothing else in the directory");

	char missing[400];
	snprintf(missing, sizeof(missing), "%s/no/such/dir/x", dir);
	struct crx_err err = {0};
	is_int(crx_write_file_atomic(missing, "x", 1, 0600, &err), -ENOENT, "no directory");
	ok(strstr(err.msg, missing) != NULL, "the message names the file: %s", err.msg);
	unlink(path);
	rmdir(dir);
	return tap_done();
}
