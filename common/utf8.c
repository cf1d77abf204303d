#include "config.h"

#include "common/utf8.h"

#include <stdlib.h>
#include <string.h>

size_t utf8_char_len(const uint8_t *p, size_t n)
{
	if (n == 0)
		return 0;
	size_t len = p[0] < 0x80                    ? 1
		     : p[0] >= 0xc2 && p[0] <= 0xdf ? 2
		     : (p[0] & 0xf0) == 0xe0        ? 3
		     : p[0] >= 0xf0 && p[0] <= 0xf4 ? 4
						    : 0;
	if (len > n)
		return 0;
	for (size_t i = 1; i < len; i++)
		if ((p[i] & 0xc0) != 0x80)
			return 0;
	if ((len == 3 && ((p[0] == 0xe0 && p[1] < 0xa0) || (p[0] == 0xed && p[1] >= 0xa0))) ||
	    (len == 4 && ((p[0] == 0xf0 && p[1] < 0x90) || (p[0] == 0xf4 && p[1] >= 0x90))))
		return 0;
	return len;
}

bool utf8_valid(const uint8_t *p, size_t n)
{
	for (size_t i = 0, len; i < n; i += len)
		if (!(len = utf8_char_len(p + i, n - i)))
			return false;
	return true;
}

char *utf8_repair(const char *s)
{
	size_t n = strlen(s);
	char *out = malloc(3 * n + 1); /* each bad byte grows to three */
	if (!out)
		return NULL;
	const uint8_t *p = (const uint8_t *)s;
	size_t o = 0;
	for (size_t i = 0, len; i < n; i += len) {
		len = utf8_char_len(p + i, n - i);
		if (len) {
			memcpy(out + o, p + i, len);
			o += len;
		} else {
			memcpy(out + o, "\xef\xbf\xbd", 3);
			o += 3;
			len = 1;
		}
	}
	out[o] = '\0';
	return out;
}
