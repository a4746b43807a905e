/* lua_request.c - the request table a handler gets (see lua_runtime_int.h).
 *
 * Fields: method, path (set at once); params, query, headers, body, request_id, peer, route
 * (built on first read, see below); req:json() decodes the body with engine.json. */
#include "lua_runtime_int.h"
#include "lua_json.h"

#include <lauxlib.h>

#include <ctype.h>
#include <string.h>

static int req_json(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_getfield(L, 1, "body");
  size_t len;
  const char *body = lua_tolstring(L, -1, &len);
  if (body == NULL || len == 0) {
    lua_pushnil(L);
    lua_pushliteral(L, "empty body");
    return 2;
  }
  return eng_json_decode(L, body, len);
}

/* Pushes the form-decoded s (eng_http_form_decode: '+' is a space, a bad %-escape stays). */
static void push_form_decoded(lua_State *L, const char *s, size_t n) {
  luaL_Buffer b;
  char *p = luaL_buffinitsize(L, &b, n);
  luaL_pushresultsize(&b, eng_http_form_decode(s, n, p));
}

/* Pushes the table of req's query string: name -> value, both decoded; the last of a
 * repeated name wins; an item without '=' has the value "". */
static void push_query(lua_State *L, const eng_http_request *req) {
  size_t n, pos = 0;
  const char *q = eng_http_query(req, &n);
  eng_http_param p;
  lua_newtable(L);
  while (q != NULL && eng_http_query_next(q, n, &pos, &p)) {
    push_form_decoded(L, p.name, p.name_len);
    push_form_decoded(L, p.value, p.value_len);
    lua_rawset(L, -3);
  }
}

static void push_params(lua_State *L, const eng_route_match *m) {
  lua_createtable(L, 0, m->nparams);
  for (int i = 0; i < m->nparams; i++) {
    lua_pushlstring(L, m->params[i].name, m->params[i].name_len);
    lua_pushlstring(L, m->params[i].value, m->params[i].value_len);
    lua_rawset(L, -3);
  }
}

static void push_headers(eng_runtime *rt, lua_State *L, const eng_http_request *req) {
  lua_createtable(L, 0, req->nheaders);
  size_t pos = 0;
  eng_http_header h;
  while (eng_http_next_header(req, &pos, &h)) {
    lua_pushlstring(L, h.name, h.name_len);
    lua_pushvalue(L, -1);
    if (lua_rawget(L, -3) == LUA_TSTRING) { /* repeated header: join with ", " */
      lua_pushliteral(L, ", ");
      lua_pushlstring(L, h.value, h.value_len);
      lua_concat(L, 3);
    } else {
      lua_pop(L, 1);
      lua_pushlstring(L, h.value, h.value_len);
    }
    lua_rawset(L, -3);
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->headers_mt);
  lua_setmetatable(L, -2);
}

/* The request table is built lazily. A handler of a small route reads a field or
 * two, and building all of them up front (five tables and a dozen strings per
 * request, then their garbage) was the largest part of such a request's cost. Only
 * method and path are set at once; params, query, headers, body, request_id, peer
 * and route are built by the metatable's __index on first read, from the C request
 * still held by the running handler, and stored in the table with rawset so later
 * reads are plain lookups.
 *
 * The C request lives only while its handler runs: a field first read after that
 * (a request kept past its handler) raises an error rather than touching freed
 * memory. What scripts see differently from a plain table: rawget, next and pairs
 * show only the fields built so far, and a lazy field set to nil comes back on the
 * next read. */
enum { F_NONE, F_JSON, F_PARAMS, F_QUERY, F_HEADERS, F_BODY, F_REQUEST_ID, F_PEER, F_ROUTE };

static int request_field(const char *k, size_t n) {
  static const struct {
    const char *name;
    size_t len;
    int field;
  } fields[] = {{"params", 6, F_PARAMS}, {"query", 5, F_QUERY}, {"headers", 7, F_HEADERS},
                {"body", 4, F_BODY},     {"json", 4, F_JSON},   {"request_id", 10, F_REQUEST_ID},
                {"peer", 4, F_PEER},     {"route", 5, F_ROUTE}};
  for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
    if (fields[i].len == n && memcmp(fields[i].name, k, n) == 0)
      return fields[i].field;
  return F_NONE;
}

static int req_index(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  if (lua_type(L, 2) != LUA_TSTRING)
    return 0;
  size_t n;
  const char *k = lua_tolstring(L, 2, &n);
  int field = request_field(k, n);
  if (field == F_NONE)
    return 0;
  if (field == F_JSON) { /* a method, shared: not stored in the table */
    lua_pushcfunction(L, req_json);
    return 1;
  }
  eng_runtime *rt = eng_rt(L);
  const void *self = lua_topointer(L, 1);
  const eng_live_request *lr = rt->live;
  while (lr != NULL && lr->table != self)
    lr = lr->prev;
  if (lr == NULL)
    return luaL_error(L, "req.%s read after the request's handler returned", k);
  const eng_http_request *req = lr->req;
  switch (field) {
  case F_PARAMS:
    push_params(L, lr->m);
    break;
  case F_QUERY:
    push_query(L, req);
    break;
  case F_HEADERS:
    push_headers(rt, L, req);
    break;
  case F_BODY:
    lua_pushlstring(L, req->body.data ? req->body.data : "", req->body.len);
    break;
  case F_REQUEST_ID:
    lua_pushstring(L, lr->request_id);
    break;
  case F_PEER:
    lua_pushstring(L, lr->peer);
    break;
  default: /* F_ROUTE */
    lua_pushstring(L, lr->m->pattern ? lr->m->pattern : "");
    break;
  }
  lua_pushvalue(L, 2);
  lua_pushvalue(L, -2);
  lua_rawset(L, 1);
  return 1;
}

/* Pushes the request table of lr->req and makes lr the innermost live request
 * (the caller unlinks it when the handler is done). */
void eng_lua_request_push(eng_runtime *rt, lua_State *L, eng_live_request *lr) {
  /* Room for method, path and six of the seven lazy fields (Lua sizes the part to a power of
   * two): with room for four, the fifth key (a handler that reads headers, query and
   * request_id, as the default API's token check does) rehashed the table, which cost more than
   * building it. */
  lua_createtable(L, 0, 8);
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->key_method);
  lua_pushstring(L, lr->req->method);
  lua_rawset(L, -3);
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->key_path);
  lua_pushlstring(L, lr->req->url.data, lr->req->path_len);
  lua_rawset(L, -3);
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->req_mt);
  lua_setmetatable(L, -2);
  lr->table = lua_topointer(L, -1);
  lr->prev = rt->live;
  rt->live = lr;
}

static int headers_index(lua_State *L) {
  size_t len;
  const char *k = lua_tolstring(L, 2, &len);
  if (k == NULL)
    return 0;
  char low[256];
  if (len >= sizeof low)
    return 0;
  for (size_t i = 0; i < len; i++)
    low[i] = (char)tolower((unsigned char)k[i]);
  lua_pushlstring(L, low, len);
  lua_rawget(L, 1);
  return 1;
}

void eng_lua_request_init(eng_runtime *rt, lua_State *L) {
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, headers_index);
  lua_setfield(L, -2, "__index");
  rt->headers_mt = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, req_index);
  lua_setfield(L, -2, "__index");
  rt->req_mt = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pushliteral(L, "method");
  rt->key_method = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pushliteral(L, "path");
  rt->key_path = luaL_ref(L, LUA_REGISTRYINDEX);
}
