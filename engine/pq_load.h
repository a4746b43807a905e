/* pq_load.h - libpq, loaded when the engine first talks to PostgreSQL, not at start.
 *
 * libpq brings about 25 shared libraries (GnuTLS, Kerberos, LDAP, SASL, ...): linked into the
 * binary, they cost a SQLite-only server about 4 MiB of resident memory and their start-up
 * relocations, for nothing. So the files that talk to PostgreSQL include this header instead of
 * <libpq-fe.h>: it declares the same functions, by the same names, as pointers filled by
 * eng_pq_load() from ENG_PQ_SONAME (Debian's libpq5 package), or $APIENGINE_LIBPQ when set.
 * Call eng_pq_load() before the first PQ* call (the connect functions do: pg.c, pg_migrate.c,
 * pg_copy.c, test.c); calling a PQ* function before it is a NULL call. Types and constants come
 * from <libpq-fe.h> as before.
 *
 * Errors: 0 or a negative ENG_E* code (error.h). */
#ifndef ENG_PQ_LOAD_H
#define ENG_PQ_LOAD_H

#include <libpq-fe.h>

#define ENG_PQ_SONAME "libpq.so.5"
#define ENG_PQ_ENV "APIENGINE_LIBPQ" /* another file name or path for it */

/* Every libpq function the engine calls. */
/* clang-format off */
#define ENG_PQ_FUNCTIONS(X) \
  X(PQclear) \
  X(PQcmdStatus) \
  X(PQcmdTuples) \
  X(PQconnectPoll) \
  X(PQconnectStart) \
  X(PQconnectdb) \
  X(PQconnectdbParams) \
  X(PQconsumeInput) \
  X(PQcancel) \
  X(PQerrorMessage) \
  X(PQexec) \
  X(PQexecParams) \
  X(PQfinish) \
  X(PQflush) \
  X(PQfname) \
  X(PQfreeCancel) \
  X(PQfreemem) \
  X(PQftype) \
  X(PQgetCancel) \
  X(PQgetResult) \
  X(PQgetisnull) \
  X(PQgetlength) \
  X(PQgetvalue) \
  X(PQisBusy) \
  X(PQnfields) \
  X(PQnotifies) \
  X(PQntuples) \
  X(PQputCopyData) \
  X(PQputCopyEnd) \
  X(PQresultErrorField) \
  X(PQresultErrorMessage) \
  X(PQresultStatus) \
  X(PQsendPrepare) \
  X(PQsendQuery) \
  X(PQsendQueryParams) \
  X(PQsendQueryPrepared) \
  X(PQsetNoticeProcessor) \
  X(PQsetnonblocking) \
  X(PQsocket) \
  X(PQstatus) \
  X(PQtransactionStatus)
/* clang-format on */

#define ENG_PQ_MEMBER(f) __typeof__(f) *f;
typedef struct eng_pq_api {
  ENG_PQ_FUNCTIONS(ENG_PQ_MEMBER)
} eng_pq_api;
#undef ENG_PQ_MEMBER

extern eng_pq_api eng_pq;

/* Loads libpq once per process (thread-safe; later calls return at once). On failure *err (if
 * not NULL) gets a malloc'd message naming the library and dlopen's reason, and every later call
 * fails the same way. */
int eng_pq_load(char **err);

/* From here on, PQclear(r) is eng_pq.PQclear(r), and so on (pq_load.c defines ENG_PQ_LOADER to
 * see the real names). */
#ifndef ENG_PQ_LOADER
#define PQclear (eng_pq.PQclear)
#define PQcmdStatus (eng_pq.PQcmdStatus)
#define PQcmdTuples (eng_pq.PQcmdTuples)
#define PQconnectPoll (eng_pq.PQconnectPoll)
#define PQconnectStart (eng_pq.PQconnectStart)
#define PQconnectdb (eng_pq.PQconnectdb)
#define PQconnectdbParams (eng_pq.PQconnectdbParams)
#define PQconsumeInput (eng_pq.PQconsumeInput)
#define PQcancel (eng_pq.PQcancel)
#define PQerrorMessage (eng_pq.PQerrorMessage)
#define PQexec (eng_pq.PQexec)
#define PQexecParams (eng_pq.PQexecParams)
#define PQfinish (eng_pq.PQfinish)
#define PQflush (eng_pq.PQflush)
#define PQfname (eng_pq.PQfname)
#define PQfreeCancel (eng_pq.PQfreeCancel)
#define PQfreemem (eng_pq.PQfreemem)
#define PQftype (eng_pq.PQftype)
#define PQgetCancel (eng_pq.PQgetCancel)
#define PQgetResult (eng_pq.PQgetResult)
#define PQgetisnull (eng_pq.PQgetisnull)
#define PQgetlength (eng_pq.PQgetlength)
#define PQgetvalue (eng_pq.PQgetvalue)
#define PQisBusy (eng_pq.PQisBusy)
#define PQnfields (eng_pq.PQnfields)
#define PQnotifies (eng_pq.PQnotifies)
#define PQntuples (eng_pq.PQntuples)
#define PQputCopyData (eng_pq.PQputCopyData)
#define PQputCopyEnd (eng_pq.PQputCopyEnd)
#define PQresultErrorField (eng_pq.PQresultErrorField)
#define PQresultErrorMessage (eng_pq.PQresultErrorMessage)
#define PQresultStatus (eng_pq.PQresultStatus)
#define PQsendPrepare (eng_pq.PQsendPrepare)
#define PQsendQuery (eng_pq.PQsendQuery)
#define PQsendQueryParams (eng_pq.PQsendQueryParams)
#define PQsendQueryPrepared (eng_pq.PQsendQueryPrepared)
#define PQsetNoticeProcessor (eng_pq.PQsetNoticeProcessor)
#define PQsetnonblocking (eng_pq.PQsetnonblocking)
#define PQsocket (eng_pq.PQsocket)
#define PQstatus (eng_pq.PQstatus)
#define PQtransactionStatus (eng_pq.PQtransactionStatus)
#endif

#endif
