/* CNI as the spec (1.0, with 0.3/0.4 configurations) describes it for a
 * runtime: the first valid network configuration of a directory, plugins
 * executed in list order for ADD and in reverse for DEL, each with the
 * CNI_* environment and its configuration on stdin (name, cniVersion,
 * prevResult chaining, runtimeConfig for the capabilities it declares). */
#pragma once

#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>

#include "common/err.h"

/* Parses one file's text into a network configuration list; a single
 * network configuration (.conf) becomes a list of one plugin. */
int dk_cni_parse(const char *text, size_t len, bool is_list, json_object **out,
		 struct crx_err *err);
/* The first valid configuration in dir (*.conflist, *.conf, *.json in name
 * order), and its file. -ENOENT when there is none; err says why. */
int dk_cni_load(const char *dir, json_object **conflist, char **file, struct crx_err *err);

struct dk_cni_args {
	const char *container_id;
	const char *netns; /* "" on a DEL whose namespace is gone */
	const char *ifname;
	const char *pod_name, *pod_namespace, *pod_uid;
	const char *bin_path;       /* directories searched for plugins, ':'-separated */
	json_object *port_mappings; /* runtimeConfig.portMappings; NULL: none */
	unsigned timeout_ms;        /* per plugin; 0: a default */
};

/* The stdin document of plugin i. */
int dk_cni_plugin_conf(json_object *conflist, size_t i, json_object *prev_result,
		       const struct dk_cni_args *a, bool del, json_object **out);

/* ADD over the list; *result is the last plugin's result. When a plugin
 * fails, DEL runs over the whole list before the error is returned. */
int dk_cni_add(json_object *conflist, const struct dk_cni_args *a, json_object **result,
	       struct crx_err *err);
/* DEL in reverse order; prev_result is what ADD returned (passed on for
 * configurations of version 0.4.0 and later). Every plugin runs; the first
 * error is returned. */
int dk_cni_del(json_object *conflist, const struct dk_cni_args *a, json_object *prev_result,
	       struct crx_err *err);

/* The addresses (without prefix length) in a result, IPv4 first. */
int dk_cni_result_ips(json_object *result, char ***ips, size_t *n);
void dk_strv_free(char **v, size_t n);

/* Runs argv with envp, feeding stdin_data and collecting stdout (at most
 * out_max bytes) and stderr. Killed after timeout_ms. Returns the exit
 * status (>= 0) or a negative errno. */
int dk_run(const char *path, char *const argv[], char *const envp[], const char *stdin_data,
	   size_t stdin_len, size_t out_max, unsigned timeout_ms, char **out, char **errout,
	   struct crx_err *err);
