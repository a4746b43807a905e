/* text.h - tiny character helpers shared by the parsers (router, query strings, hex). */
#ifndef ENG_TEXT_H
#define ENG_TEXT_H

/* The value of one hex digit (either case), or -1. */
static inline int eng_hex_digit(int c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

#endif
