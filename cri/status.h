/* gRPC status codes as crimux uses them, and the one place where an error
 * (negative errno) becomes a status code. The numbers are the gRPC wire codes. */
#pragma once

enum rpc_code {
	RPC_OK = 0,
	RPC_CANCELLED = 1,
	RPC_UNKNOWN = 2,
	RPC_INVALID_ARGUMENT = 3,
	RPC_DEADLINE_EXCEEDED = 4,
	RPC_NOT_FOUND = 5,
	RPC_ALREADY_EXISTS = 6,
	RPC_PERMISSION_DENIED = 7,
	RPC_RESOURCE_EXHAUSTED = 8,
	RPC_FAILED_PRECONDITION = 9,
	RPC_ABORTED = 10,
	RPC_OUT_OF_RANGE = 11,
	RPC_UNIMPLEMENTED = 12,
	RPC_INTERNAL = 13,
	RPC_UNAVAILABLE = 14,
	RPC_DATA_LOSS = 15,
	RPC_UNAUTHENTICATED = 16,
};

/* Maps a negative errno (or 0) to the status code a CRI client should see. */
enum rpc_code rpc_code_from_errno(int err);

/* "NOT_FOUND" and so on, for logs. */
const char *rpc_code_name(int code);
