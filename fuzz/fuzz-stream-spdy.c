/* The SPDY/3.1 session state machine (stream/spdy.c over stream/session.c):
 * frames, the shared header compression context, stream creation for exec
 * and port-forward pairs, resets, GOAWAY, data with backpressure.
 * See fuzz/session-harness.h for the input's layout and the properties. */
#include "fuzz/session-harness.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	return fuzz_session(false, data, size);
}
