/* The two protocols a streaming client may speak, as session plug-ins. */
#pragma once

#include "stream/session.h"

extern const struct stream_proto spdy_proto; /* SPDY/3.1 (spdy.c) */
extern const struct stream_proto ws_proto;   /* WebSocket (ws.c) */
