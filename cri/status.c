#include "config.h"

#include "cri/status.h"

#include <errno.h>

enum rpc_code rpc_code_from_errno(int err)
{
	switch (-err) {
	case 0:
		return RPC_OK;
	case ENOENT:
	case ESRCH:
		return RPC_NOT_FOUND;
	case EINVAL:
	case EDOM:
	case ERANGE:
	case ENAMETOOLONG:
		return RPC_INVALID_ARGUMENT;
	case EEXIST:
		return RPC_ALREADY_EXISTS;
	case EPERM:
	case EACCES:
		return RPC_PERMISSION_DENIED;
	case ETIMEDOUT:
	case ETIME:
		return RPC_DEADLINE_EXCEEDED;
	case ECANCELED:
		return RPC_CANCELLED;
	case ENOMEM:
	case ENOSPC:
	case EMSGSIZE:
	case E2BIG:
	case EMFILE:
	case ENFILE:
		return RPC_RESOURCE_EXHAUSTED;
	case ENOSYS:
	case EOPNOTSUPP:
		return RPC_UNIMPLEMENTED;
	case ECONNREFUSED:
	case ECONNRESET:
	case ECONNABORTED:
	case ENOTCONN:
	case EHOSTDOWN:
	case EHOSTUNREACH:
	case ENETUNREACH:
	case EPIPE:
	case EAGAIN:
		return RPC_UNAVAILABLE;
	case EBUSY:
	case ELOOP:
	case ENOTEMPTY:
	case ENOTDIR:
	case EISDIR:
		return RPC_FAILED_PRECONDITION;
	case EBADMSG:
	case EPROTO:
	case EILSEQ:
		return RPC_INTERNAL;
	default:
		return RPC_UNKNOWN;
	}
}

const char *rpc_code_name(int code)
{
	static const char *const names[] = {
		"OK",
		"CANCELLED",
		"UNKNOWN",
		"INVALID_ARGUMENT",
		"DEADLINE_EXCEEDED",
		"NOT_FOUND",
		"ALREADY_EXISTS",
		"PERMISSION_DENIED",
		"RESOURCE_EXHAUSTED",
		"FAILED_PRECONDITION",
		"ABORTED",
		"OUT_OF_RANGE",
		"UNIMPLEMENTED",
		"INTERNAL",
		"UNAVAILABLE",
		"DATA_LOSS",
		"UNAUTHENTICATED",
	};
	if (code < 0 || (unsigned)code >= sizeof(names) / sizeof(names[0]))
		return "UNKNOWN";
	return names[code];
}
