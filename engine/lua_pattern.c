/* lua_pattern.c - Lua's string patterns for route scripts: string.find, match, gmatch and gsub
 * (see eng_lua_pattern_set in lua_runtime_int.h), with the time budget checked while matching.
 *
 * Why our own matcher: Lua's (lstrlib) is a recursive backtracker with no point where the count
 * hook can run, so ("a"):rep(50000):find(".-.-.-.-b") is a single C call that runs for hours.
 * This one implements the same language (Lua 5.4 manual, 6.4.1) the same way - a backtracking
 * interpreter that reads the pattern as it matches - because the observable behaviour depends
 * on it: a malformed piece of a pattern raises only when the matcher reaches it, and nesting
 * deeper than PAT_MAX_DEPTH calls raises "pattern too complex". What it adds is a step counter:
 * every PAT_CHECK_STEPS steps it calls eng_lua_budget_check, which raises the budget error once
 * the handler's deadline has passed. A step is one pattern item tried at one subject position,
 * one subject byte scanned by a repetition or %b, or 64 bytes compared, copied or searched (a
 * plain find: memchr and memcmp).
 *
 * Results, argument handling (init, plain, the replacement count, numbers as strings) and error
 * messages are those of Lua 5.4's string library; tests/c/test_pattern.c compares the two over
 * listed and random patterns and tests/fuzz/fuzz_pattern.c over fuzzed ones. */
#include "lua_runtime_int.h"

#include <lauxlib.h>

#include <ctype.h>
#include <limits.h>
#include <stddef.h>
#include <string.h>

#define PAT_ESC '%'
#define PAT_MAX_CAPTURES 32  /* Lua's LUA_MAXCAPTURES: "too many captures" past it */
#define PAT_MAX_DEPTH 200    /* nested matcher calls: Lua's MAXCCALLS ("pattern too complex") */
#define PAT_CHECK_STEPS 4096 /* matcher steps between deadline checks */

enum { CAP_OPEN = -1, CAP_POSITION = -2 }; /* capture lengths that are not lengths */

typedef struct capture {
  const char *at;
  ptrdiff_t len; /* bytes, or CAP_OPEN (not closed yet) or CAP_POSITION (a "()" capture) */
} capture;

typedef struct matcher {
  const char *src, *src_end; /* the subject */
  const char *pat_end;       /* one past the pattern's last byte */
  lua_State *L;              /* the thread errors are raised on */
  int depth;                 /* nested do_match calls still allowed */
  int ncap;                  /* captures opened so far (closed or not) */
  long steps;                /* steps left before the next deadline check */
  capture cap[PAT_MAX_CAPTURES];
} matcher;

static void matcher_init(matcher *m, lua_State *L, const char *s, size_t ls, const char *p, size_t lp) {
  m->L = L;
  m->src = s;
  m->src_end = s + ls;
  m->pat_end = p + lp;
  m->steps = PAT_CHECK_STEPS;
}

/* Before each attempt at a subject position. The step count runs on across attempts. */
static void matcher_reset(matcher *m) {
  m->ncap = 0;
  m->depth = PAT_MAX_DEPTH;
}

static void steps_out(matcher *m) {
  m->steps = PAT_CHECK_STEPS;
  eng_lua_budget_check(m->L);
}

static inline void spend(matcher *m, long n) {
  if ((m->steps -= n) <= 0)
    steps_out(m);
}

/* ---- single items: ".", "%x", "[set]" or a byte ---- */

/* Does byte c belong to the class of "%cl"? Letters name classes (upper case: the complement);
 * any other byte stands for itself. */
static int class_match(int c, int cl) {
  int in;
  switch (tolower(cl)) {
  case 'a':
    in = isalpha(c);
    break;
  case 'c':
    in = iscntrl(c);
    break;
  case 'd':
    in = isdigit(c);
    break;
  case 'g':
    in = isgraph(c);
    break;
  case 'l':
    in = islower(c);
    break;
  case 'p':
    in = ispunct(c);
    break;
  case 's':
    in = isspace(c);
    break;
  case 'u':
    in = isupper(c);
    break;
  case 'w':
    in = isalnum(c);
    break;
  case 'x':
    in = isxdigit(c);
    break;
  case 'z': /* the zero byte: gone from the 5.4 manual, still in its library */
    in = c == 0;
    break;
  default:
    return cl == c;
  }
  if (isupper(cl))
    in = !in;
  return in != 0;
}

/* Does byte c belong to the set that opens with '[' at p and closes with the ']' at close? */
static inline int set_match(int c, const char *p, const char *close) {
  int found = 1;
  p++;
  if (*p == '^') {
    found = 0;
    p++;
  }
  for (; p < close; p++) {
    if (*p == PAT_ESC) {
      p++;
      if (class_match(c, (unsigned char)*p))
        return found;
    } else if (p + 2 < close && p[1] == '-') {
      if ((unsigned char)p[0] <= c && c <= (unsigned char)p[2])
        return found;
      p += 2;
    } else if ((unsigned char)*p == c) {
      return found;
    }
  }
  return !found;
}

/* One past the single item that starts at p. In a set, the first byte (after an optional '^')
 * is a member even when it is ']', and "%x" escapes x. */
static const char *item_end(matcher *m, const char *p) {
  char c = *p++;
  if (c == PAT_ESC) {
    if (p >= m->pat_end)
      luaL_error(m->L, "malformed pattern (ends with '%%')");
    return p + 1;
  }
  if (c == '[') {
    if (p < m->pat_end && *p == '^')
      p++;
    do {
      if (p >= m->pat_end)
        luaL_error(m->L, "malformed pattern (missing ']')");
      c = *p++;
      if (c == PAT_ESC && p < m->pat_end)
        p++;
    } while (p >= m->pat_end || *p != ']');
    return p + 1;
  }
  return p;
}

/* Does the item p..ep match the byte at s (not past the subject's end)? Inlined: it is the
 * matcher's innermost step (out of line it cost 10-20% on typical patterns). */
static inline __attribute__((always_inline)) int item_match(const matcher *m, const char *s, const char *p,
                                                            const char *ep) {
  if (s >= m->src_end)
    return 0;
  int c = (unsigned char)*s;
  switch (*p) {
  case '.':
    return 1;
  case PAT_ESC:
    return class_match(c, (unsigned char)p[1]);
  case '[':
    return set_match(c, p, ep - 1);
  default:
    return (unsigned char)*p == c;
  }
}

/* ---- the matcher ---- */

static const char *do_match(matcher *m, const char *s, const char *p);

/* "x*" and "x+" (after its first x): as many x as there are, then fewer until the rest of
 * the pattern (after ep) matches. */
static const char *greedy(matcher *m, const char *s, const char *p, const char *ep) {
  ptrdiff_t n = 0;
  if (*p == '.') {
    n = m->src_end - s; /* matches every byte: nothing to scan */
  } else {
    while (item_match(m, s + n, p, ep))
      if ((++n & 0xfff) == 0) /* counted in a register, spent every 4096 bytes */
        spend(m, 0x1000);
    spend(m, n & 0xfff);
  }
  for (; n >= 0; n--) {
    const char *e = do_match(m, s + n, ep + 1);
    if (e != NULL)
      return e;
  }
  return NULL;
}

/* "x-": as few x as let the rest of the pattern match. */
static const char *lazy(matcher *m, const char *s, const char *p, const char *ep) {
  for (;;) {
    const char *e = do_match(m, s, ep + 1);
    if (e != NULL)
      return e;
    if (!item_match(m, s, p, ep))
      return NULL;
    s++;
  }
}

/* "%bxy" with p at x: from an x at s to the y that balances it. */
static const char *balanced(matcher *m, const char *s, const char *p) {
  if (m->pat_end - p < 2)
    luaL_error(m->L, "malformed pattern (missing arguments to '%%b')");
  if (s >= m->src_end || *s != p[0])
    return NULL;
  char open = p[0], close = p[1];
  int depth = 1;
  while (++s < m->src_end) {
    if (--m->steps <= 0)
      steps_out(m);
    if (*s == close) {
      if (--depth == 0)
        return s + 1;
    } else if (*s == open) {
      depth++;
    }
  }
  return NULL;
}

/* "%1".."%9": the text of a closed capture again (a position capture never matches). */
static const char *backref(matcher *m, const char *s, int digit) {
  int i = digit - '1';
  if (i < 0 || i >= m->ncap || m->cap[i].len == CAP_OPEN)
    luaL_error(m->L, "invalid capture index %%%d", i + 1);
  ptrdiff_t len = m->cap[i].len;
  if (len < 0 || m->src_end - s < len)
    return NULL;
  spend(m, (long)(len >> 6));
  if (memcmp(m->cap[i].at, s, (size_t)len) != 0)
    return NULL;
  return s + len;
}

static const char *open_capture(matcher *m, const char *s, const char *p, ptrdiff_t kind) {
  if (m->ncap >= PAT_MAX_CAPTURES)
    luaL_error(m->L, "too many captures");
  m->cap[m->ncap].at = s;
  m->cap[m->ncap].len = kind;
  m->ncap++;
  const char *e = do_match(m, s, p);
  if (e == NULL)
    m->ncap--;
  return e;
}

static const char *close_capture(matcher *m, const char *s, const char *p) {
  int i = m->ncap - 1;
  while (i >= 0 && m->cap[i].len != CAP_OPEN)
    i--;
  if (i < 0)
    luaL_error(m->L, "invalid pattern capture");
  m->cap[i].len = s - m->cap[i].at;
  const char *e = do_match(m, s, p);
  if (e == NULL)
    m->cap[i].len = CAP_OPEN;
  return e;
}

/* Matches the pattern from p on against the subject from s: one past the match's end, or
 * NULL. Items that cannot need backtracking (a single item without a repetition, %b, %f, a
 * back-reference) are handled in the loop; the others recurse, each level counting against
 * PAT_MAX_DEPTH. */
static const char *do_match(matcher *m, const char *s, const char *p) {
  if (m->depth-- == 0)
    luaL_error(m->L, "pattern too complex");
  for (;;) {
    if (--m->steps <= 0)
      steps_out(m);
    if (p == m->pat_end)
      break;
    switch (*p) {
    case '(':
      if (p + 1 < m->pat_end && p[1] == ')')
        s = open_capture(m, s, p + 2, CAP_POSITION);
      else
        s = open_capture(m, s, p + 1, CAP_OPEN);
      goto done;
    case ')':
      s = close_capture(m, s, p + 1);
      goto done;
    case '$':
      if (p + 1 == m->pat_end) {
        if (s != m->src_end)
          s = NULL;
        goto done;
      }
      break; /* a '$' elsewhere is a plain byte */
    case PAT_ESC:
      if (p + 1 >= m->pat_end)
        break; /* item_end raises "ends with '%'" */
      switch (p[1]) {
      case 'b':
        s = balanced(m, s, p + 2);
        if (s == NULL)
          goto done;
        p += 4;
        continue;
      case 'f': {
        p += 2;
        if (p >= m->pat_end || *p != '[')
          luaL_error(m->L, "missing '[' after '%%f' in pattern");
        const char *ep = item_end(m, p);
        int before = s == m->src ? 0 : (unsigned char)s[-1];
        int at = s < m->src_end ? (unsigned char)*s : 0;
        if (!set_match(before, p, ep - 1) && set_match(at, p, ep - 1)) {
          p = ep;
          continue;
        }
        s = NULL;
        goto done;
      }
      case '0':
      case '1':
      case '2':
      case '3':
      case '4':
      case '5':
      case '6':
      case '7':
      case '8':
      case '9':
        s = backref(m, s, (unsigned char)p[1]);
        if (s == NULL)
          goto done;
        p += 2;
        continue;
      default:
        break;
      }
      break;
    default:
      break;
    }
    /* A single item, maybe followed by a repetition. */
    const char *ep = *p == PAT_ESC || *p == '[' ? item_end(m, p) : p + 1;
    char rep = ep < m->pat_end ? *ep : '\0';
    if (!item_match(m, s, p, ep)) {
      if (rep == '*' || rep == '?' || rep == '-') {
        p = ep + 1; /* zero of them is fine */
        continue;
      }
      s = NULL;
      goto done;
    }
    switch (rep) {
    case '?': {
      const char *e = do_match(m, s + 1, ep + 1);
      if (e != NULL) {
        s = e;
        goto done;
      }
      p = ep + 1;
      continue;
    }
    case '+':
      s = greedy(m, s + 1, p, ep);
      goto done;
    case '*':
      s = greedy(m, s, p, ep);
      goto done;
    case '-':
      s = lazy(m, s, p, ep);
      goto done;
    default:
      s++;
      p = ep;
      continue;
    }
  }
done:
  m->depth++;
  return s;
}

/* ---- captures as Lua values ---- */

/* Capture i of the last match s..e: pushes a position capture's integer and returns
 * CAP_POSITION, else sets *at and returns the length. Capture 0 of a pattern without captures
 * is the whole match. */
static ptrdiff_t get_capture(matcher *m, int i, const char *s, const char *e, const char **at) {
  if (i >= m->ncap) {
    if (i != 0)
      luaL_error(m->L, "invalid capture index %%%d", i + 1);
    *at = s;
    return e - s;
  }
  ptrdiff_t len = m->cap[i].len;
  *at = m->cap[i].at;
  if (len == CAP_OPEN)
    luaL_error(m->L, "unfinished capture");
  if (len == CAP_POSITION)
    lua_pushinteger(m->L, (m->cap[i].at - m->src) + 1);
  return len;
}

static void push_capture(matcher *m, int i, const char *s, const char *e) {
  const char *at;
  ptrdiff_t len = get_capture(m, i, s, e, &at);
  if (len != CAP_POSITION)
    lua_pushlstring(m->L, at, (size_t)len);
}

/* Pushes every capture, or the whole match s..e when there are none (nothing when s is NULL). */
static int push_captures(matcher *m, const char *s, const char *e) {
  int n = m->ncap == 0 && s != NULL ? 1 : m->ncap;
  luaL_checkstack(m->L, n, "too many captures");
  for (int i = 0; i < n; i++)
    push_capture(m, i, s, e);
  return n;
}

/* ---- find and match ---- */

/* The 1-based start a script's init means: negative counts from the end, past either end
 * is clamped to 1; the caller checks the far end. */
static size_t start_index(lua_Integer pos, size_t len) {
  if (pos > 0)
    return (size_t)pos;
  if (pos == 0 || pos < -(lua_Integer)len)
    return 1;
  return len + (size_t)pos + 1;
}

static int has_specials(const char *p, size_t lp) {
  for (size_t i = 0; i < lp; i++) {
    switch (p[i]) {
    case '^':
    case '$':
    case '*':
    case '+':
    case '?':
    case '.':
    case '(':
    case '[':
    case '%':
    case '-':
      return 1;
    default:
      break;
    }
  }
  return 0;
}

/* The first occurrence of p in s: memchr to each candidate for the first byte, memcmp for the
 * rest. Quadratic at worst (a long needle that almost matches everywhere), so the bytes scanned
 * and compared count as steps like the matcher's. */
static const char *plain_find(lua_State *L, const char *s, size_t ls, const char *p, size_t lp) {
  if (lp == 0)
    return s;
  if (lp > ls)
    return NULL;
  const char *last = s + (ls - lp); /* the last place an occurrence can start */
  long steps = PAT_CHECK_STEPS;
  while (s <= last) {
    const char *at = memchr(s, *p, (size_t)(last - s) + 1);
    if (at == NULL)
      return NULL;
    if (memcmp(at + 1, p + 1, lp - 1) == 0)
      return at;
    steps -= 1 + (long)((size_t)(at - s) >> 6) + (long)(lp >> 6);
    if (steps <= 0) {
      steps = PAT_CHECK_STEPS;
      eng_lua_budget_check(L);
    }
    s = at + 1;
  }
  return NULL;
}

static int find_or_match(lua_State *L, int find) {
  size_t ls, lp;
  const char *s = luaL_checklstring(L, 1, &ls);
  const char *p = luaL_checklstring(L, 2, &lp);
  size_t init = start_index(luaL_optinteger(L, 3, 1), ls) - 1;
  if (init > ls) {
    luaL_pushfail(L);
    return 1;
  }
  if (find && (lua_toboolean(L, 4) || !has_specials(p, lp))) {
    const char *at = plain_find(L, s + init, ls - init, p, lp);
    if (at != NULL) {
      lua_pushinteger(L, (at - s) + 1);
      lua_pushinteger(L, (lua_Integer)(at - s) + (lua_Integer)lp);
      return 2;
    }
    luaL_pushfail(L);
    return 1;
  }
  int anchor = lp > 0 && *p == '^';
  if (anchor) {
    p++;
    lp--;
  }
  matcher m;
  matcher_init(&m, L, s, ls, p, lp);
  const char *from = s + init;
  do {
    matcher_reset(&m);
    const char *e = do_match(&m, from, p);
    if (e != NULL) {
      if (!find)
        return push_captures(&m, from, e);
      lua_pushinteger(L, (from - s) + 1);
      lua_pushinteger(L, e - s);
      return push_captures(&m, NULL, NULL) + 2;
    }
  } while (from++ < m.src_end && !anchor);
  luaL_pushfail(L);
  return 1;
}

static int l_find(lua_State *L) { return find_or_match(L, 1); }
static int l_match(lua_State *L) { return find_or_match(L, 0); }

/* ---- gmatch ---- */

typedef struct gmatch_state {
  const char *next; /* where the next search starts (past the subject's end: none) */
  const char *last; /* end of the last match: an empty match there is skipped */
  const char *p;    /* the pattern (no anchor: '^' is a plain byte in gmatch) */
  matcher m;
} gmatch_state;

/* The iterator: upvalues subject, pattern (keeping the strings m points into alive), state. */
static int gmatch_next(lua_State *L) {
  gmatch_state *g = lua_touserdata(L, lua_upvalueindex(3));
  g->m.L = L;
  for (const char *src = g->next; src <= g->m.src_end; src++) {
    matcher_reset(&g->m);
    const char *e = do_match(&g->m, src, g->p);
    if (e != NULL && e != g->last) {
      g->next = g->last = e;
      return push_captures(&g->m, src, e);
    }
  }
  return 0;
}

static int l_gmatch(lua_State *L) {
  size_t ls, lp;
  const char *s = luaL_checklstring(L, 1, &ls);
  const char *p = luaL_checklstring(L, 2, &lp);
  size_t init = start_index(luaL_optinteger(L, 3, 1), ls) - 1;
  if (init > ls)
    init = ls + 1; /* nothing to find, and no pointer further out than that */
  lua_settop(L, 2);
  gmatch_state *g = lua_newuserdatauv(L, sizeof *g, 0);
  matcher_init(&g->m, L, s, ls, p, lp);
  g->next = s + init;
  g->last = NULL;
  g->p = p;
  lua_pushcclosure(L, gmatch_next, 3);
  return 1;
}

/* ---- gsub ---- */

/* Appends the replacement string (argument 3) for the match s..e: "%0" is the match, "%1".."%9"
 * its captures, "%%" a '%'. */
static void add_template(matcher *m, luaL_Buffer *b, const char *s, const char *e) {
  size_t len;
  const char *t = lua_tolstring(m->L, 3, &len);
  const char *end = t + len;
  spend(m, (long)(len >> 6));
  const char *pc;
  while ((pc = memchr(t, PAT_ESC, (size_t)(end - t))) != NULL) {
    luaL_addlstring(b, t, (size_t)(pc - t));
    pc++;
    int c = pc < end ? (unsigned char)*pc : '\0';
    if (c == PAT_ESC) {
      luaL_addchar(b, PAT_ESC);
    } else if (c == '0') {
      luaL_addlstring(b, s, (size_t)(e - s));
    } else if (isdigit(c)) {
      const char *at;
      ptrdiff_t n = get_capture(m, c - '1', s, e, &at);
      if (n == CAP_POSITION)
        luaL_addvalue(b);
      else
        luaL_addlstring(b, at, (size_t)n);
    } else {
      luaL_error(m->L, "invalid use of '%c' in replacement string", PAT_ESC);
    }
    t = pc + 1;
  }
  luaL_addlstring(b, t, (size_t)(end - t));
}

/* Appends the replacement of the match s..e after the subject bytes not yet copied
 * (*copied..s). A function or table answer of nil or false keeps the match: it stays among the
 * bytes not yet copied. Returns 1 when something was replaced. */
static int add_replacement(matcher *m, luaL_Buffer *b, const char *s, const char *e, int type, const char **copied) {
  lua_State *L = m->L;
  luaL_addlstring(b, *copied, (size_t)(s - *copied));
  *copied = s;
  if (type == LUA_TFUNCTION) {
    lua_pushvalue(L, 3);
    int n = push_captures(m, s, e);
    lua_call(L, n, 1);
  } else if (type == LUA_TTABLE) {
    push_capture(m, 0, s, e);
    lua_gettable(L, 3);
  } else {
    add_template(m, b, s, e);
    *copied = e;
    return 1;
  }
  if (!lua_toboolean(L, -1)) {
    lua_pop(L, 1);
    return 0;
  }
  if (!lua_isstring(L, -1))
    return luaL_error(L, "invalid replacement value (a %s)", luaL_typename(L, -1));
  luaL_addvalue(b);
  *copied = e;
  return 1;
}

static int l_gsub(lua_State *L) {
  size_t ls, lp;
  const char *src = luaL_checklstring(L, 1, &ls);
  const char *p = luaL_checklstring(L, 2, &lp);
  int type = lua_type(L, 3);
  lua_Integer max_n = luaL_optinteger(L, 4, (lua_Integer)ls + 1);
  luaL_argexpected(L, type == LUA_TNUMBER || type == LUA_TSTRING || type == LUA_TFUNCTION || type == LUA_TTABLE, 3,
                   "string/function/table");
  int anchor = lp > 0 && *p == '^';
  if (anchor) {
    p++;
    lp--;
  }
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  matcher m;
  matcher_init(&m, L, src, ls, p, lp);
  const char *s = src, *last = NULL, *copied = src;
  lua_Integer n = 0;
  int changed = 0;
  while (n < max_n) {
    matcher_reset(&m);
    const char *e = do_match(&m, s, p);
    if (e != NULL && e != last) {
      n++;
      changed |= add_replacement(&m, &b, s, e, type, &copied);
      s = last = e;
    } else if (s < m.src_end) {
      s++;
    } else {
      break;
    }
    if (anchor)
      break;
  }
  if (!changed) {
    lua_pushvalue(L, 1);
  } else {
    luaL_addlstring(&b, copied, (size_t)(m.src_end - copied));
    luaL_pushresult(&b);
  }
  lua_pushinteger(L, n);
  return 2;
}

void eng_lua_pattern_set(lua_State *L, int idx) {
  static const luaL_Reg fns[] = {
      {"find", l_find}, {"match", l_match}, {"gmatch", l_gmatch}, {"gsub", l_gsub}, {NULL, NULL},
  };
  idx = lua_absindex(L, idx);
  for (const luaL_Reg *f = fns; f->name != NULL; f++) {
    lua_pushcfunction(L, f->func);
    lua_setfield(L, idx, f->name);
  }
}
