#include "config.h"

#include "runtimes/docker/model/convert.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "common/util.h"
#include "runtimes/docker/engine/json.h"

static int digits(const char **p, int n)
{
	int v = 0;
	for (int i = 0; i < n; i++, (*p)++) {
		if (!isdigit((unsigned char)**p))
			return -1;
		v = v * 10 + (**p - '0');
	}
	return v;
}

int64_t dk_parse_time(const char *s)
{
	if (!s)
		return 0;
	const char *p = s;
	int y = digits(&p, 4);
	if (y < 0 || *p++ != '-')
		return 0;
	int mo = digits(&p, 2);
	if (mo < 0 || *p++ != '-')
		return 0;
	int d = digits(&p, 2);
	if (d < 0 || (*p != 'T' && *p != 't' && *p != ' '))
		return 0;
	p++;
	int h = digits(&p, 2);
	if (h < 0 || *p++ != ':')
		return 0;
	int mi = digits(&p, 2);
	if (mi < 0 || *p++ != ':')
		return 0;
	int sec = digits(&p, 2);
	if (sec < 0)
		return 0;
	int64_t frac = 0;
	if (*p == '.') {
		p++;
		int n = 0;
		for (; isdigit((unsigned char)*p); p++, n++)
			if (n < 9)
				frac = frac * 10 + (*p - '0');
		if (n == 0)
			return 0;
		for (; n < 9; n++)
			frac *= 10;
	}
	int offset = 0;
	if (*p == 'Z' || *p == 'z') {
		p++;
	} else if (*p == '+' || *p == '-') {
		int sign = *p++ == '-' ? -1 : 1;
		int oh = digits(&p, 2);
		if (oh < 0 || *p++ != ':')
			return 0;
		int om = digits(&p, 2);
		if (om < 0)
			return 0;
		offset = sign * (oh * 3600 + om * 60);
	} else {
		return 0;
	}
	if (*p || y < 1970)
		return 0; /* Docker's zero time is year 1 */
	struct tm tm = {.tm_year = y - 1900,
			.tm_mon = mo - 1,
			.tm_mday = d,
			.tm_hour = h,
			.tm_min = mi,
			.tm_sec = sec};
	time_t t = timegm(&tm);
	if (t == (time_t)-1)
		return 0;
	/* int64 nanoseconds end in 2262: later is no time crimux can give. */
	int64_t secs = (int64_t)t - offset;
	if (secs < 0 || secs > INT64_MAX / 1000000000 ||
	    (secs == INT64_MAX / 1000000000 && frac > INT64_MAX % 1000000000))
		return 0;
	return secs * 1000000000 + frac;
}

void dk_format_time(int64_t ns, char *buf, size_t size)
{
	time_t t = (time_t)(ns / 1000000000);
	struct tm tm;
	gmtime_r(&t, &tm);
	char base[32];
	strftime(base, sizeof(base), "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(buf, size, "%s.%09lldZ", base, (long long)(ns % 1000000000));
}

int64_t dk_realtime_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

Runtime__V1__ContainerState dk_container_state(json_object *state)
{
	if (!state)
		return RUNTIME__V1__CONTAINER_STATE__CONTAINER_UNKNOWN;
	if (dk_json_bool(state, "Running"))
		return RUNTIME__V1__CONTAINER_STATE__CONTAINER_RUNNING;
	return dk_container_state_word(dk_json_str(state, "Status"));
}

Runtime__V1__ContainerState dk_container_state_word(const char *state)
{
	if (streq(state, "created"))
		return RUNTIME__V1__CONTAINER_STATE__CONTAINER_CREATED;
	if (streq(state, "running") || streq(state, "paused") || streq(state, "restarting"))
		return RUNTIME__V1__CONTAINER_STATE__CONTAINER_RUNNING;
	if (streq(state, "exited") || streq(state, "dead"))
		return RUNTIME__V1__CONTAINER_STATE__CONTAINER_EXITED;
	return RUNTIME__V1__CONTAINER_STATE__CONTAINER_UNKNOWN;
}

const char *dk_exit_reason(json_object *state)
{
	if (dk_container_state(state) != RUNTIME__V1__CONTAINER_STATE__CONTAINER_EXITED)
		return "";
	if (dk_json_bool(state, "OOMKilled"))
		return "OOMKilled";
	return dk_json_int(state, "ExitCode", 0) == 0 ? "Completed" : "Error";
}

Runtime__V1__NamespaceMode dk_ns_mode(const char *docker_mode, Runtime__V1__NamespaceMode joined)
{
	if (streq(docker_mode, "host"))
		return RUNTIME__V1__NAMESPACE_MODE__NODE;
	if (docker_mode && strncmp(docker_mode, "container:", 10) == 0)
		return joined;
	if (streq(docker_mode, "shareable") || streq(docker_mode, "none"))
		return RUNTIME__V1__NAMESPACE_MODE__POD;
	return RUNTIME__V1__NAMESPACE_MODE__CONTAINER;
}
