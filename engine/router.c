/* router.c - a segment tree (see router.h).
 *
 * Each node holds its static children in a small array (APIs have few
 * siblings, so a linear scan beats hashing), at most one parameter child, and
 * one handler slot per method. */
#include "router.h"
#include "text.h"
#include "error.h"

#include <stdlib.h>
#include <string.h>

typedef struct node node;
struct node {
  char *seg; /* static text, or the parameter name for a param node */
  size_t seg_len;
  node **kids; /* static children */
  size_t nkids;
  node *param; /* the {name} child */
  int handlers[ENG_M_COUNT_];
  unsigned mask; /* which handlers[] are set */
  char *pattern; /* the pattern as first registered here */
};

struct eng_router {
  node root;
};

static const char *const method_names[ENG_M_COUNT_] = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"};

int eng_router_method(const char *name, size_t len) {
  for (int i = 0; i < ENG_M_COUNT_; i++)
    if (strlen(method_names[i]) == len && memcmp(method_names[i], name, len) == 0)
      return i;
  return -1;
}

const char *eng_router_method_name(int method) {
  return method >= 0 && method < ENG_M_COUNT_ ? method_names[method] : "?";
}

int eng_router_new(eng_router **out) {
  eng_router *r = calloc(1, sizeof *r);
  if (r == NULL)
    return ENG_ENOMEM;
  *out = r;
  return 0;
}

static void node_free(node *n) {
  for (size_t i = 0; i < n->nkids; i++) {
    node_free(n->kids[i]);
    free(n->kids[i]);
  }
  free(n->kids);
  if (n->param) {
    node_free(n->param);
    free(n->param);
  }
  free(n->seg);
  free(n->pattern);
}

void eng_router_free(eng_router *r) {
  if (r == NULL)
    return;
  node_free(&r->root);
  free(r);
}

static node *node_new(const char *seg, size_t len) {
  node *n = calloc(1, sizeof *n);
  if (n == NULL)
    return NULL;
  n->seg = malloc(len + 1);
  if (n->seg == NULL) {
    free(n);
    return NULL;
  }
  memcpy(n->seg, seg, len);
  n->seg[len] = '\0';
  n->seg_len = len;
  return n;
}

static int valid_static_char(unsigned char c) {
  return c > 0x20 && c < 0x7f && c != '{' && c != '}' && c != '?' && c != '#' && c != '%';
}

/* Follows pattern's segments down the nodes that exist: returns the node it ends on, or NULL
 * where it leaves the tree. A {name} segment follows the parameter child whatever its name;
 * when clash is not NULL, *clash says whether one of them had another name (one node serves
 * every pattern through it, so the second route's handler would read its parameter under the
 * first route's name: params.id instead of params.customer_id). */
static node *descend(const eng_router *r, const char *pattern, int *clash) {
  node *n = (node *)&r->root;
  if (clash)
    *clash = 0;
  for (const char *p = pattern + 1; *p && n;) {
    const char *end = strchr(p, '/');
    size_t len = end ? (size_t)(end - p) : strlen(p);
    node *next = NULL;
    if (len > 0 && p[0] == '{') {
      next = n->param;
      if (clash && next && (next->seg_len + 2 != len || memcmp(next->seg, p + 1, len - 2) != 0))
        *clash = 1;
    } else {
      for (size_t i = 0; i < n->nkids && !next; i++)
        if (n->kids[i]->seg_len == len && memcmp(n->kids[i]->seg, p, len) == 0)
          next = n->kids[i];
    }
    n = next;
    if (!end)
      break;
    p = end + 1;
  }
  return n;
}

int eng_router_add(eng_router *r, int method, const char *pattern, int handler, const char **errmsg) {
  *errmsg = NULL;
  if (method < 0 || method >= ENG_M_COUNT_) {
    *errmsg = "unknown method";
    return ENG_EINVAL;
  }
  size_t plen = strlen(pattern);
  if (plen == 0 || pattern[0] != '/' || plen > ENG_ROUTER_MAX_PATTERN) {
    *errmsg = "pattern must start with '/' and be at most 1024 bytes";
    return ENG_EINVAL;
  }
  /* First pass: validate, so a bad pattern adds no nodes. */
  int nparams = 0, nsegs = 0;
  for (const char *p = pattern + 1; plen > 1;) {
    const char *end = strchr(p, '/');
    size_t len = end ? (size_t)(end - p) : strlen(p);
    if (len == 0) {
      *errmsg = "empty path segment";
      return ENG_EINVAL;
    }
    if (++nsegs > ENG_ROUTER_MAX_SEGMENTS) {
      *errmsg = "too many segments";
      return ENG_EINVAL;
    }
    if (p[0] == '{') {
      if (len < 3 || p[len - 1] != '}') {
        *errmsg = "a parameter must be a whole segment: {name}";
        return ENG_EINVAL;
      }
      for (size_t i = 1; i + 1 < len; i++) {
        char c = p[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_')) {
          *errmsg = "parameter names are [A-Za-z0-9_]";
          return ENG_EINVAL;
        }
      }
      if (++nparams > ENG_ROUTER_MAX_PARAMS) {
        *errmsg = "too many parameters";
        return ENG_EINVAL;
      }
    } else {
      for (size_t i = 0; i < len; i++) {
        if (!valid_static_char((unsigned char)p[i])) {
          *errmsg = "invalid character in static segment";
          return ENG_EINVAL;
        }
      }
    }
    if (!end)
      break;
    p = end + 1;
  }

  int clash;
  descend(r, pattern, &clash);
  if (clash) {
    *errmsg = "a parameter at this position has another name in a route already added: use one name";
    return ENG_EINVAL;
  }

  node *n = &r->root;
  for (const char *p = pattern + 1; plen > 1;) {
    const char *end = strchr(p, '/');
    size_t len = end ? (size_t)(end - p) : strlen(p);
    node *next = NULL;
    if (p[0] == '{') {
      if (n->param == NULL && (n->param = node_new(p + 1, len - 2)) == NULL)
        return ENG_ENOMEM;
      next = n->param;
    } else {
      for (size_t i = 0; i < n->nkids; i++) {
        if (n->kids[i]->seg_len == len && memcmp(n->kids[i]->seg, p, len) == 0) {
          next = n->kids[i];
          break;
        }
      }
      if (next == NULL) {
        node **kids = realloc(n->kids, (n->nkids + 1) * sizeof *kids);
        if (kids == NULL)
          return ENG_ENOMEM;
        n->kids = kids;
        if ((next = node_new(p, len)) == NULL)
          return ENG_ENOMEM;
        n->kids[n->nkids++] = next;
      }
    }
    n = next;
    if (!end)
      break;
    p = end + 1;
  }
  if (n->mask & (1u << method)) {
    *errmsg = "route already defined for this method";
    return ENG_EEXISTS;
  }
  if (n->pattern == NULL && (n->pattern = strdup(pattern)) == NULL)
    return ENG_ENOMEM;
  n->handlers[method] = handler;
  n->mask |= 1u << method;
  return 0;
}

int *eng_router_slot(eng_router *r, int method, const char *pattern) {
  size_t plen = strlen(pattern);
  if (method < 0 || method >= ENG_M_COUNT_ || pattern[0] != '/' || (plen > 1 && pattern[plen - 1] == '/'))
    return NULL;
  node *n = descend(r, pattern, NULL);
  if (n == NULL || !(n->mask & (1u << method)))
    return NULL;
  return &n->handlers[method];
}

typedef struct seg {
  const char *p;
  size_t len;
} seg;

/* Depth-first, static before param; returns the first node with handlers. */
static const node *find(const node *n, const seg *segs, int nsegs, int depth, const node **stack) {
  if (depth == nsegs)
    return n->mask ? n : NULL;
  const seg *s = &segs[depth];
  for (size_t i = 0; i < n->nkids; i++) {
    const node *k = n->kids[i];
    if (k->seg_len == s->len && memcmp(k->seg, s->p, s->len) == 0) {
      const node *hit = find(k, segs, nsegs, depth + 1, stack);
      if (hit) {
        stack[depth] = k;
        return hit;
      }
      break;
    }
  }
  if (n->param && s->len > 0) {
    const node *hit = find(n->param, segs, nsegs, depth + 1, stack);
    if (hit) {
      stack[depth] = n->param;
      return hit;
    }
  }
  return NULL;
}

void eng_router_match(const eng_router *r, int method, const char *path, size_t path_len, char *scratch,
                      eng_route_match *m) {
  m->status = 404;
  m->handler = 0;
  m->allow = 0;
  m->nparams = 0;
  m->pattern = NULL;
  if (path_len == 0 || path[0] != '/')
    return;
  /* Decode segment by segment into scratch (an encoded '/' stays inside its segment). */
  seg segs[ENG_ROUTER_MAX_SEGMENTS];
  int nsegs = 0;
  size_t o = 0;
  if (path_len > 1) {
    size_t i = 1;
    for (;;) {
      if (nsegs == ENG_ROUTER_MAX_SEGMENTS)
        return;
      segs[nsegs].p = scratch + o;
      size_t start = o;
      while (i < path_len && path[i] != '/') {
        if (path[i] == '%') {
          int hi, lo;
          if (i + 2 >= path_len || (hi = eng_hex_digit((unsigned char)path[i + 1])) < 0 ||
              (lo = eng_hex_digit((unsigned char)path[i + 2])) < 0)
            return;
          scratch[o++] = (char)(hi * 16 + lo);
          i += 3;
        } else {
          scratch[o++] = path[i++];
        }
      }
      segs[nsegs].len = o - start;
      nsegs++;
      if (i >= path_len)
        break;
      i++; /* skip '/' */
    }
  }
  scratch[o] = '\0';

  const node *stack[ENG_ROUTER_MAX_SEGMENTS];
  const node *hit = find(&r->root, segs, nsegs, 0, stack);
  if (hit == NULL)
    return;
  m->pattern = hit->pattern;
  m->allow = hit->mask;
  if (hit->mask & (1u << ENG_M_GET))
    m->allow |= 1u << ENG_M_HEAD;
  int use = method;
  if (method == ENG_M_HEAD && !(hit->mask & (1u << ENG_M_HEAD)))
    use = ENG_M_GET;
  if (use < 0 || !(hit->mask & (1u << use))) {
    m->status = 405;
    return;
  }
  m->status = 200;
  m->handler = hit->handlers[use];
  for (int d = 0; d < nsegs; d++) {
    const node *k = stack[d];
    /* A node reached as a param child is its parent's ->param; static kids never have '{' names,
     * so compare against the parent's param pointer. */
    const node *parent = d == 0 ? &r->root : stack[d - 1];
    if (parent->param == k && m->nparams < ENG_ROUTER_MAX_PARAMS) {
      eng_route_param *p = &m->params[m->nparams++];
      p->name = k->seg;
      p->name_len = k->seg_len;
      p->value = segs[d].p;
      p->value_len = segs[d].len;
    }
  }
}

void eng_router_allow_string(unsigned allow, char *out, size_t size) {
  size_t o = 0;
  out[0] = '\0';
  for (int i = 0; i < ENG_M_COUNT_; i++) {
    if (!(allow & (1u << i)))
      continue;
    const char *name = method_names[i];
    size_t need = strlen(name) + (o ? 2 : 0);
    if (o + need + 1 > size)
      break;
    if (o) {
      out[o++] = ',';
      out[o++] = ' ';
    }
    memcpy(out + o, name, strlen(name));
    o += strlen(name);
    out[o] = '\0';
  }
}

static void each(const node *n, void (*fn)(int, void *), void *ud) {
  for (int i = 0; i < ENG_M_COUNT_; i++)
    if (n->mask & (1u << i))
      fn(n->handlers[i], ud);
  for (size_t i = 0; i < n->nkids; i++)
    each(n->kids[i], fn, ud);
  if (n->param)
    each(n->param, fn, ud);
}

void eng_router_each_handler(const eng_router *r, void (*fn)(int handler, void *ud), void *ud) {
  each(&r->root, fn, ud);
}
