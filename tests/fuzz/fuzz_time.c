/* fuzz_time.c - libFuzzer target for eng_clock_parse (engine/clock.c, plain C).
 * Properties: never crashes or reads past len; an accepted date-time formats back to a string
 * that parses to the same instant; an accepted date is at midnight UTC. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  /* A private copy so ASan catches any read past the end. */
  char *s = malloc(size ? size : 1);
  if (!s)
    return 0;
  if (size)
    memcpy(s, data, size);
  int64_t ms = 0, again = 0;
  int is_date = 0, is_date2 = 1;
  const char *msg = NULL;
  if (eng_clock_parse(s, size, &ms, &is_date, &msg) == 0) {
    if (is_date && ms % 86400000 != 0)
      abort();
    char out[ENG_CLOCK_FORMAT_MAX];
    eng_clock_format(ms, out);
    /* Offsets can push an instant just outside 0000-9999; those format in expanded form. */
    if (out[0] != '+' && out[0] != '-') {
      if (eng_clock_parse(out, strlen(out), &again, &is_date2, &msg) != 0)
        abort();
      if (again != ms || is_date2)
        abort();
    }
  } else if (!msg) {
    abort();
  }
  free(s);
  return 0;
}
