#include "config.h"

#include "router/census.h"

#include <stdlib.h>
#include <string.h>

#include "common/metrics.h"
#include "common/util.h"
#include "cri/api.pb-c.h"
#include "router/merge.h"

static const char *const sandbox_states[] = {
	[RUNTIME__V1__POD_SANDBOX_STATE__SANDBOX_READY] = "ready",
	[RUNTIME__V1__POD_SANDBOX_STATE__SANDBOX_NOTREADY] = "notready",
};
#define N_SANDBOX_STATES ARRAY_SIZE(sandbox_states)

static const char *const container_states[] = {
	[RUNTIME__V1__CONTAINER_STATE__CONTAINER_CREATED] = "created",
	[RUNTIME__V1__CONTAINER_STATE__CONTAINER_RUNNING] = "running",
	[RUNTIME__V1__CONTAINER_STATE__CONTAINER_EXITED] = "exited",
	[RUNTIME__V1__CONTAINER_STATE__CONTAINER_UNKNOWN] = "unknown",
};
#define N_CONTAINER_STATES ARRAY_SIZE(container_states)

/* A sandbox's ID and the slot of its handler, to find a container's. */
struct pod {
	const char *id;
	size_t slot;
};

static int by_id(const void *a, const void *b)
{
	return strcmp(((const struct pod *)a)->id, ((const struct pod *)b)->id);
}

/* The counting slot of a backend's handler name: the configured handler's
 * index, or, without [handler] sections, the one slot of the one backend. */
static long handler_slot(struct router *r, size_t backend, const char *runtime_handler)
{
	if (r->n_handlers == 0)
		return 0;
	const char *name = router_handler_name(r, backend, runtime_handler ? runtime_handler : "");
	for (size_t i = 0; name && i < r->n_handlers; i++)
		if (streq(r->handlers[i].name, name))
			return (long)i;
	return -1; /* a handler crimux does not route to: not counted */
}

static void list(struct router *r, const char *method, unsigned timeout_ms,
		 struct rpc_result *results)
{
	/* Both requests are empty (no filter): zero bytes. */
	struct rpc_buf req = {(uint8_t *)"", 0};
	fanout_call(r, method, &req, NULL, timeout_ms, results);
}

void router_count_objects(struct router *r, unsigned timeout_ms)
{
	size_t slots = r->n_handlers ? r->n_handlers : 1;
	_cleanup_free_ struct rpc_result *pods = calloc(r->n_backends, sizeof(*pods));
	_cleanup_free_ struct rpc_result *ctrs = calloc(r->n_backends, sizeof(*ctrs));
	_cleanup_free_ unsigned *pod_n = calloc(slots * N_SANDBOX_STATES, sizeof(unsigned));
	_cleanup_free_ unsigned *ctr_n = calloc(slots * N_CONTAINER_STATES, sizeof(unsigned));
	_cleanup_free_ bool *answered = calloc(slots, sizeof(bool));
	if (!pods || !ctrs || !pod_n || !ctr_n || !answered)
		return;
	list(r, "/runtime.v1.RuntimeService/ListPodSandbox", timeout_ms, pods);
	list(r, "/runtime.v1.RuntimeService/ListContainers", timeout_ms, ctrs);

	for (size_t b = 0; b < r->n_backends; b++) {
		if (pods[b].code != RPC_OK || ctrs[b].code != RPC_OK)
			continue;
		Runtime__V1__ListPodSandboxResponse *pl =
			runtime__v1__list_pod_sandbox_response__unpack(NULL, pods[b].reply.len,
								       pods[b].reply.data);
		Runtime__V1__ListContainersResponse *cl =
			runtime__v1__list_containers_response__unpack(NULL, ctrs[b].reply.len,
								      ctrs[b].reply.data);
		struct pod *index = pl ? calloc(pl->n_items + 1, sizeof(*index)) : NULL;
		if (pl && cl && index) {
			/* This backend's handlers get fresh figures. */
			if (r->n_handlers == 0)
				answered[0] = true;
			for (size_t h = 0; h < r->n_handlers; h++)
				if (r->handlers[h].backend == b)
					answered[h] = true;
			size_t n = 0;
			for (size_t i = 0; i < pl->n_items; i++) {
				const Runtime__V1__PodSandbox *p = pl->items[i];
				long slot = handler_slot(r, b, p->runtime_handler);
				if (slot < 0 || !p->id)
					continue;
				if ((size_t)p->state < N_SANDBOX_STATES)
					pod_n[(size_t)slot * N_SANDBOX_STATES + (size_t)p->state]++;
				index[n++] = (struct pod){p->id, (size_t)slot};
			}
			qsort(index, n, sizeof(*index), by_id);
			for (size_t i = 0; i < cl->n_containers; i++) {
				const Runtime__V1__Container *c = cl->containers[i];
				struct pod key = {.id = c->pod_sandbox_id ? c->pod_sandbox_id : ""};
				const struct pod *pod =
					bsearch(&key, index, n, sizeof(*index), by_id);
				if (pod && (size_t)c->state < N_CONTAINER_STATES)
					ctr_n[pod->slot * N_CONTAINER_STATES + (size_t)c->state]++;
			}
		}
		free(index);
		runtime__v1__list_pod_sandbox_response__free_unpacked(pl, NULL);
		runtime__v1__list_containers_response__free_unpacked(cl, NULL);
	}
	results_clear(r, pods);
	results_clear(r, ctrs);

	for (size_t h = 0; h < slots; h++) {
		if (!answered[h])
			continue;
		const char *name = r->n_handlers ? r->handlers[h].name : "";
		for (size_t s = 0; s < N_SANDBOX_STATES; s++)
			crx_metric_set(CRX_M_PODS, pod_n[h * N_SANDBOX_STATES + s],
				       (const char *[]){name, sandbox_states[s]});
		for (size_t s = 0; s < N_CONTAINER_STATES; s++)
			crx_metric_set(CRX_M_CONTAINERS, ctr_n[h * N_CONTAINER_STATES + s],
				       (const char *[]){name, container_states[s]});
	}
}
