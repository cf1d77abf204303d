/* The WebSocket session state machine (stream/ws.c over stream/session.c):
 * framing, fragmentation and reassembly, control frames, channel bytes,
 * base64 variants, v5 close signals, resize and port-forward channels.
 * See fuzz/session-harness.h for the input's layout and the properties. */
#include "fuzz/session-harness.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	return fuzz_session(true, data, size);
}
