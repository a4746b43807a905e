/* fuzz_pgsql.c - libFuzzer target for the placeholder translation of engine/pg.c
 * (eng_pg_translate: the engine's `?` and `:name` SQL to PostgreSQL's $1..$n).
 *
 * Input: one SQL text. Invariants on success: nparams is 0..ENG_PG_PARAMS_MAX; the translation
 * is at most 7 bytes for each byte of the text; named placeholders have valid, distinct names;
 * and the translation, translated again, is kept as it is with the same nparams (a text of $n
 * placeholders only is left alone: a `$n` glued to a name or to digits after it would read
 * differently). A failure hands out a message and no statement. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pg.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A name's bytes, as PostgreSQL reads identifiers: letters, '_', any byte from 0x80 (UTF-8), and
 * digits after the first. */
static int ident_char(char ch, int first) {
  unsigned char c = (unsigned char)ch;
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c >= 0x80 || (!first && c >= '0' && c <= '9');
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  eng_pg_stmt *st = NULL;
  char *err = NULL;
  int rc = eng_pg_translate((const char *)data, size, &st, &err);
  if (rc != 0) {
    if (st != NULL)
      abort(); /* a failure hands out no statement */
    free(err);
    return 0;
  }
  if (st == NULL || st->pg_sql == NULL || st->nparams < 0 || st->nparams > ENG_PG_PARAMS_MAX)
    abort();
  size_t out_len = strlen(st->pg_sql);
  /* A placeholder of one byte or more becomes " $n": at most 7 bytes for each byte it was. */
  if (out_len > size * 7)
    abort();
  if (st->names != NULL)
    for (int i = 0; i < st->nparams; i++) {
      const char *n = st->names[i];
      if (n == NULL || !ident_char(n[0], 1))
        abort();
      for (const char *p = n + 1; *p; p++)
        if (!ident_char(*p, 0))
          abort();
      for (int j = 0; j < i; j++)
        if (strcmp(st->names[j], n) == 0)
          abort(); /* the same name is one parameter */
    }
  if (memchr(data, '\0', size) == NULL) { /* a text with a NUL in it is not SQL PostgreSQL reads */
    eng_pg_stmt *again = NULL;
    char *err2 = NULL;
    if (eng_pg_translate(st->pg_sql, out_len, &again, &err2) != 0)
      abort();
    if (strcmp(again->pg_sql, st->pg_sql) != 0 || again->nparams != st->nparams)
      abort();
    eng_pg_stmt_free(again);
  }
  eng_pg_stmt_free(st);
  return 0;
}
