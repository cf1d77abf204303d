/* The one mapping from errors to gRPC status codes. */
#include "config.h"

#include <errno.h>

#include "cri/status.h"
#include "tap.h"

int main(void)
{
	is_int(rpc_code_from_errno(0), RPC_OK, "0 is OK");
	is_int(rpc_code_from_errno(-ENOENT), RPC_NOT_FOUND, "ENOENT is NOT_FOUND");
	is_int(rpc_code_from_errno(-EINVAL), RPC_INVALID_ARGUMENT, "EINVAL is INVALID_ARGUMENT");
	is_int(rpc_code_from_errno(-EEXIST), RPC_ALREADY_EXISTS, "EEXIST is ALREADY_EXISTS");
	is_int(rpc_code_from_errno(-ETIMEDOUT), RPC_DEADLINE_EXCEEDED,
	       "ETIMEDOUT is DEADLINE_EXCEEDED");
	is_int(rpc_code_from_errno(-ECONNREFUSED), RPC_UNAVAILABLE, "ECONNREFUSED is UNAVAILABLE");
	is_int(rpc_code_from_errno(-EMSGSIZE), RPC_RESOURCE_EXHAUSTED,
	       "EMSGSIZE is RESOURCE_EXHAUSTED");
	is_int(rpc_code_from_errno(-EOPNOTSUPP), RPC_UNIMPLEMENTED, "EOPNOTSUPP is UNIMPLEMENTED");
	is_int(rpc_code_from_errno(-EACCES), RPC_PERMISSION_DENIED, "EACCES is PERMISSION_DENIED");
	is_int(rpc_code_from_errno(-EXDEV), RPC_UNKNOWN, "an unmapped errno is UNKNOWN");
	is_str(rpc_code_name(RPC_NOT_FOUND), "NOT_FOUND", "code names");
	is_str(rpc_code_name(99), "UNKNOWN", "out-of-range code name");
	return tap_done();
}
