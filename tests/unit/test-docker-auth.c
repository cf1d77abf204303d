/* The X-Registry-Auth header for a pull: Docker's AuthConfig JSON, built
 * without json-c (whose freed buffers would keep the password), escaped
 * correctly, from either CRI form of the credentials. */
#include "config.h"

#include <errno.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>

#include "runtimes/docker/engine/json.h"
#include "runtimes/docker/image.h"
#include "tap.h"

static json_object *decode(const char *hdr)
{
	const char *prefix = "X-Registry-Auth: ";
	if (!hdr || strncmp(hdr, prefix, strlen(prefix)) != 0)
		return NULL;
	char *b = strdup(hdr + strlen(prefix));
	for (char *p = b; *p; p++)
		*p = *p == '-' ? '+' : *p == '_' ? '/' : *p;
	unsigned char *out = calloc(1, strlen(b) + 1);
	int n = EVP_DecodeBlock(out, (unsigned char *)b, (int)strlen(b));
	json_object *o = NULL;
	while (n > 0 && out[n - 1] == '\0')
		n--;
	if (n < 0 || dk_json_parse((char *)out, (size_t)n, &o, NULL) < 0)
		o = NULL;
	free(b);
	free(out);
	return o;
}

int main(void)
{
	Runtime__V1__AuthConfig a = RUNTIME__V1__AUTH_CONFIG__INIT;
	char *hdr = NULL;
	is_int(dk_registry_auth_header(NULL, &hdr), 0, "no credentials");
	ok(hdr == NULL, "no header");

	a.username = "alice";
	a.password = "p\"a\\ss\nw\x01rd";
	a.server_address = "registry.example:5000";
	is_int(dk_registry_auth_header(&a, &hdr), 0, "username and password");
	json_object *o = decode(hdr);
	ok(o != NULL, "base64url of JSON");
	is_str(dk_json_str(o, "username"), "alice", "username");
	is_str(dk_json_str(o, "password"), "p\"a\\ss\nw\x01rd", "password, escaped and back");
	is_str(dk_json_str(o, "serveraddress"), "registry.example:5000", "server");
	is_str(dk_json_str(o, "identitytoken"), "", "an empty token as protobuf has it");
	json_object_put(o);
	free(hdr);

	Runtime__V1__AuthConfig b = RUNTIME__V1__AUTH_CONFIG__INIT;
	b.auth = "Ym9iOnMzY3IzdDpwYXJ0"; /* bob:s3cr3t:part */
	b.identity_token = "tok";
	is_int(dk_registry_auth_header(&b, &hdr), 0, "the auth form");
	o = decode(hdr);
	is_str(dk_json_str(o, "username"), "bob", "user from auth");
	is_str(dk_json_str(o, "password"), "s3cr3t:part", "password from auth");
	is_str(dk_json_str(o, "identitytoken"), "tok", "identity token");
	json_object_put(o);
	free(hdr);

	b.auth = "bm9jb2xvbg=="; /* nocolon */
	is_int(dk_registry_auth_header(&b, &hdr), -EINVAL, "auth without a colon");
	b.auth = "!!!";
	is_int(dk_registry_auth_header(&b, &hdr), -EINVAL, "auth not base64");
	return tap_done();
}
