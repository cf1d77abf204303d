/* The one UTF-8 reading: wire strings, metric labels, status messages. */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "common/utf8.h"
#include "tap.h"

static bool valid(const char *s)
{
	return utf8_valid((const uint8_t *)s, strlen(s));
}

int main(void)
{
	ok(valid(""), "empty");
	ok(valid("plain ascii"), "ASCII");
	ok(valid("\xc3\xa9\xe2\x82\xac\xf0\x9f\x90\xb3"), "two, three and four bytes");
	ok(!valid("\xc0\xaf"), "overlong two bytes");
	ok(!valid("\xe0\x80\xaf"), "overlong three bytes");
	ok(!valid("\xf0\x80\x80\xaf"), "overlong four bytes");
	ok(!valid("\xed\xa0\x80"), "a surrogate");
	ok(!valid("\xf4\x90\x80\x80"), "past U+10FFFF");
	ok(!valid("\xe2\x82"), "cut short");
	ok(!valid("\xff"), "never a lead byte");
	is_int(utf8_char_len((const uint8_t *)"\xe2\x82\xac", 2), 0, "bounded by n");
	char *r = utf8_repair("a\xff"
			      "b\xe2\x82"
			      "c\xc3\xa9");
	is_str(r,
	       "a\xef\xbf\xbd"
	       "b\xef\xbf\xbd\xef\xbf\xbd"
	       "c\xc3\xa9",
	       "each bad byte becomes U+FFFD, good ones stay");
	ok(valid(r), "and the result is valid");
	free(r);
	return tap_done();
}
