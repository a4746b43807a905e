/* test_config.c - defaults, config file, environment and flag precedence, bad values; the
 * config file's `settings`, packed once and rebuilt in another state exactly. */
#include "check.h"
#include "config.h"
#include "error.h"
#include "lua_common.h"
#include "lua_config.h"

#include <lauxlib.h>
#include <lualib.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int load(eng_config *c, int argc, char **argv, char **err) {
  int help, version;
  eng_config_init(c);
  return eng_config_load(c, argc, argv, 0, &help, &version, err);
}

/* Writes source to a temporary config file and loads it; returns the eng_config_load code. */
static int load_source(eng_config *c, const char *source, char **err) {
  char file[] = "/tmp/apiengine-config-XXXXXX";
  int fd = mkstemp(file);
  FILE *f = fdopen(fd, "w");
  fputs(source, f);
  fclose(f);
  char *argv[] = {"--config", file};
  int rc = load(c, 2, argv, err);
  unlink(file);
  return rc;
}

/* Runs check (a chunk that raises on a mismatch) in a fresh state whose engine.config
 * settings are rebuilt from c's packed bytes; returns 1 when it passed. */
static int rebuilt_passes(const eng_config *c, const char *check) {
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  luaL_requiref(L, "engine.config", eng_luaopen_config, 0);
  lua_setglobal(L, "config");
  eng_lua_config_unpack(L, c->settings.data, c->settings.len);
  int ok = luaL_loadstring(L, check) == LUA_OK && lua_pcall(L, 0, 0, 0) == LUA_OK;
  if (!ok)
    fprintf(stderr, "rebuilt settings: %s\n", lua_tostring(L, -1));
  lua_close(L);
  return ok;
}

static void test_settings_are_rebuilt_exactly(void) {
  eng_config c;
  char *err = NULL;
  CHECK_INT(load_source(&c,
                        "local shared = { x = 1 }\n"
                        "local cyc = { name = 'c' }\n"
                        "cyc.self = cyc\n"
                        "return { workers = 2, settings = {\n"
                        "  a = shared, b = shared, cyc = cyc, n = 3, f = 1.0, big = 9007199254740993,\n"
                        "  s = 'h\\0\\255', list = { 1, 2, 'x' },\n"
                        "  mixed = { 1, 2, k = 'v', [2.5] = true, [true] = 'b' },\n"
                        "  yes = true, no = false, nan = 0/0, neg0 = -0.0, empty = {},\n"
                        "  plans = { standard = { max_apps = 5 } } } }\n",
                        &err),
            0);
  CHECK(err == NULL);
  CHECK(c.settings.len > 0);
  CHECK(rebuilt_passes(&c, "local s = config.settings()\n"
                           "assert(s.a == s.b and s.a.x == 1, 'shared table')\n"
                           "assert(s.cyc.self == s.cyc and s.cyc.name == 'c', 'cycle')\n"
                           "assert(math.type(s.n) == 'integer' and math.type(s.f) == 'float' and s.f == 1)\n"
                           "assert(s.big == 9007199254740993 and math.type(s.big) == 'integer', 'big integer')\n"
                           "assert(s.s == 'h\\0\\255', 'bytes')\n"
                           "assert(#s.list == 3 and s.list[3] == 'x' and getmetatable(s.list) == nil, 'list')\n"
                           "assert(s.mixed[1] == 1 and s.mixed.k == 'v' and s.mixed[2.5] and s.mixed[true] == 'b')\n"
                           "assert(s.yes == true and s.no == false, 'booleans')\n"
                           "assert(s.nan ~= s.nan and 1 / s.neg0 < 0, 'nan and -0.0')\n"
                           "assert(next(s.empty) == nil, 'empty')\n"
                           "assert(config.get('plans').standard.max_apps == 5, 'nested')\n"
                           "assert(config.get('missing', 'd') == 'd', 'default')\n"
                           "assert(s.workers == nil, 'engine settings stay out')\n"));
  eng_config_free(&c);
}

static void test_settings_that_are_not_data_are_refused_at_start_up(void) {
  eng_config c;
  char *err = NULL;
  CHECK_INT(load_source(&c, "return { settings = { hooks = { f = function() end } } }\n", &err), ENG_ECONFIG);
  CHECK(err && strstr(err, ": settings.hooks.f is a function: settings hold only strings, numbers, booleans "
                           "and tables") != NULL);
  free(err);
  err = NULL;
  eng_config_free(&c);
  CHECK_INT(load_source(&c, "return { settings = { t = { [function() end] = 1 } } }\n", &err), ENG_ECONFIG);
  CHECK(err && strstr(err, ": settings.t has a key that is a function") != NULL);
  free(err);
  err = NULL;
  eng_config_free(&c);
  CHECK_INT(load_source(&c,
                        "local t = {} local r = t for i = 1, 300 do r.n = {} r = r.n end\n"
                        "return { settings = t }\n",
                        &err),
            ENG_ECONFIG);
  CHECK(err && strstr(err, "tables nested deeper than 200") != NULL);
  free(err);
  err = NULL;
  eng_config_free(&c);
}

static void test_settings_missing_or_not_a_table_are_empty(void) {
  static const char *const sources[] = {"return { workers = 1 }\n", "return { settings = 5 }\n",
                                        "return { settings = function() end }\n"};
  for (size_t i = 0; i < sizeof sources / sizeof sources[0]; i++) {
    eng_config c;
    char *err = NULL;
    CHECK_INT(load_source(&c, sources[i], &err), 0);
    CHECK_INT(c.settings.len, 0);
    CHECK(rebuilt_passes(&c, "assert(next(config.settings()) == nil)"));
    eng_config_free(&c);
  }
  eng_config c;
  char *err = NULL;
  CHECK_INT(load(&c, 0, NULL, &err), 0); /* no config file at all */
  CHECK(rebuilt_passes(&c, "assert(next(config.settings()) == nil)"));
  eng_config_free(&c);
}

static void test_environment_wins_over_settings_as_a_string(void) {
  eng_config c;
  char *err = NULL;
  CHECK_INT(load_source(&c, "return { settings = { token_ttl_days = 30 } }\n", &err), 0);
  setenv("APIENGINE_TOKEN_TTL_DAYS", "7", 1);
  CHECK(rebuilt_passes(&c, "assert(config.get('token_ttl_days') == '7')"));
  unsetenv("APIENGINE_TOKEN_TTL_DAYS");
  CHECK(rebuilt_passes(&c, "assert(config.get('token_ttl_days') == 30)"));
  eng_config_free(&c);
}

/* eng_config_diff names every option by its config-file key (the reload's warning relies on
 * it): each one changed from its default is named, in the table's order, and skip leaves one out;
 * the key's value never appears. */
static void test_diff_names_every_changed_option(void) {
  eng_config a, b;
  char *err = NULL;
  char names[1024];
  char file[] = "/tmp/apiengine-config-XXXXXX";
  int fd = mkstemp(file);
  FILE *f = fdopen(fd, "w");
  fputs("return { synchronous = 'NORMAL' }\n", f);
  fclose(f);
  setenv("APIENGINE_KEY", "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", 1);
  char *argv[] = {"--listen",
                  "127.0.0.1:9",
                  "--workers",
                  "7",
                  "--scripts",
                  "s2",
                  "--schema",
                  "c2",
                  "--db",
                  "d2",
                  "--config",
                  file,
                  "--log-level",
                  "debug",
                  "--log-format",
                  "json",
                  "--access-log",
                  "off",
                  "--max-header-bytes",
                  "1000",
                  "--max-url-bytes",
                  "1000",
                  "--max-body-bytes",
                  "1000",
                  "--header-timeout",
                  "1000",
                  "--body-timeout",
                  "1000",
                  "--idle-timeout",
                  "1000",
                  "--send-timeout",
                  "1000",
                  "--max-connections",
                  "10",
                  "--drain-timeout",
                  "1000",
                  "--budget-ms",
                  "10",
                  "--load-budget-ms",
                  "10",
                  "--memory-limit-mb",
                  "9",
                  "--pid-file",
                  "p2",
                  "--handover",
                  "--metrics-listen",
                  "127.0.0.1:9",
                  "--healthz-path",
                  "/h2",
                  "--readyz-path",
                  "/r2"};
  CHECK_INT(load(&b, (int)(sizeof argv / sizeof argv[0]), argv, &err), 0);
  unsetenv("APIENGINE_KEY");
  unlink(file);
  CHECK_INT(load(&a, 0, NULL, &err), 0);
  CHECK_INT(eng_config_diff(&a, &a, NULL, names, sizeof names), 0);
  CHECK_STR(names, "");
  CHECK_INT(eng_config_diff(&a, &b, NULL, names, sizeof names), 28);
  CHECK_STR(names, "listen, workers, scripts, schema, db, config, key, synchronous, log_level, log_format, "
                   "access_log, max_header_bytes, max_url_bytes, max_body_bytes, header_timeout, body_timeout, "
                   "idle_timeout, send_timeout, max_connections, drain_timeout, budget_ms, load_budget_ms, "
                   "memory_limit_mb, pid_file, handover, metrics_listen, healthz_path, readyz_path");
  const char *const skip[] = {"load_budget_ms", "listen", NULL};
  CHECK_INT(eng_config_diff(&a, &b, skip, names, sizeof names), 26);
  CHECK_STR(
      names,
      "workers, scripts, schema, db, config, key, synchronous, log_level, log_format, access_log, max_header_bytes, "
      "max_url_bytes, max_body_bytes, header_timeout, body_timeout, idle_timeout, send_timeout, max_connections, "
      "drain_timeout, budget_ms, memory_limit_mb, pid_file, handover, metrics_listen, healthz_path, readyz_path");
  CHECK(strstr(names, "0123") == NULL);
  char small[16];
  CHECK_INT(eng_config_diff(&a, &b, NULL, small, sizeof small), 28); /* truncated, terminated */
  CHECK_INT(strlen(small), sizeof small - 1);
  eng_config_free(&a);
  eng_config_free(&b);
}

/* --real-ip-from: off by default, parsed at load (flag, environment, file), refused by entry,
 * and turned off again by an empty flag over the file's list. */
static void test_real_ip_from(void) {
  eng_config c;
  char *err = NULL;
  eng_netaddr a, b;
  CHECK_INT(eng_netaddr_parse("10.1.2.3", 8, &a), 0);
  CHECK_INT(eng_netaddr_parse("2001:db8::5", 11, &b), 0);
  CHECK_INT(load(&c, 0, NULL, &err), 0);
  CHECK(c.real_ip_from == NULL);
  CHECK_INT(c.real_ip.n, 0);
  eng_config_free(&c);

  char *flag[] = {"--real-ip-from", "10.0.0.0/8, 2001:db8::/32"};
  CHECK_INT(load(&c, 2, flag, &err), 0);
  CHECK_STR(c.real_ip_from, "10.0.0.0/8, 2001:db8::/32");
  CHECK_INT(c.real_ip.n, 2);
  CHECK_INT(eng_netaddr_list_has(&c.real_ip, &a), 1);
  CHECK_INT(eng_netaddr_list_has(&c.real_ip, &b), 1);
  eng_config_free(&c);

  setenv("APIENGINE_REAL_IP_FROM", "10.0.0.0/8", 1);
  CHECK_INT(load(&c, 0, NULL, &err), 0);
  CHECK_INT(eng_netaddr_list_has(&c.real_ip, &a), 1);
  CHECK_INT(eng_netaddr_list_has(&c.real_ip, &b), 0);
  eng_config_free(&c);
  char *off[] = {"--real-ip-from="};
  CHECK_INT(load(&c, 1, off, &err), 0);
  CHECK(c.real_ip_from == NULL);
  CHECK_INT(c.real_ip.n, 0);
  eng_config_free(&c);
  setenv("APIENGINE_REAL_IP_FROM", "10.0.0.0/8,lb.internal", 1);
  CHECK_INT(load(&c, 0, NULL, &err), ENG_ECONFIG);
  CHECK_STR(err, "APIENGINE_REAL_IP_FROM: real_ip_from: 'lb.internal' is not an address or CIDR block");
  free(err);
  err = NULL;
  eng_config_free(&c);
  unsetenv("APIENGINE_REAL_IP_FROM");

  char *bad[] = {"--real-ip-from", "192.168.1.1/24"};
  CHECK_INT(load(&c, 2, bad, &err), ENG_ECONFIG);
  CHECK_STR(err, "--real-ip-from: '192.168.1.1/24' has address bits set past its prefix");
  free(err);
  err = NULL;
  eng_config_free(&c);
  CHECK_INT(load_source(&c, "return { real_ip_from = '::1' }\n", &err), 0);
  CHECK_STR(c.real_ip_from, "::1");
  CHECK_INT(c.real_ip.n, 1);
  eng_config_free(&c);
}

int main(void) {
  eng_config c;
  char *err = NULL;
  test_diff_names_every_changed_option();

  CHECK_INT(load(&c, 0, NULL, &err), 0);
  CHECK_STR(c.listen_host, "127.0.0.1");
  CHECK_INT(c.port, 8080);
  CHECK_INT(c.limits.max_header_bytes, 16384);
  CHECK_INT(c.limits.max_url_bytes, 8192);
  CHECK_INT(c.limits.max_body_bytes, 1048576);
  CHECK_INT(c.header_timeout_ms, 10000);
  CHECK_INT(c.idle_timeout_ms, 60000);
  CHECK_INT(c.budget_ms, 1000);
  CHECK_INT(c.memory_limit, 256u << 20);
  CHECK_STR(c.synchronous, "FULL");
  CHECK(c.workers >= 1);
  eng_config_free(&c);

  char file[] = "/tmp/apiengine-config-XXXXXX";
  int fd = mkstemp(file);
  FILE *f = fdopen(fd, "w");
  fputs("return { listen = '0.0.0.0:9000', workers = 3, budget_ms = 50, access_log = false,\n"
        "  settings = { admin_key = 'x' } }\n",
        f);
  fclose(f);
  setenv("APIENGINE_WORKERS", "5", 1);
  char *argv1[] = {"--config", file, "--budget-ms", "70", "--log-format=json"};
  CHECK_INT(load(&c, 5, argv1, &err), 0);
  CHECK_STR(c.listen_host, "0.0.0.0"); /* file */
  CHECK_INT(c.port, 9000);
  CHECK_INT(c.workers, 5);    /* env beats file */
  CHECK_INT(c.budget_ms, 70); /* flag beats file */
  CHECK_INT(c.access_log, 0);
  CHECK_INT(c.log_json, 1);
  eng_config_free(&c);
  unsetenv("APIENGINE_WORKERS");

  char *bad1[] = {"--workers", "0"};
  CHECK_INT(load(&c, 2, bad1, &err), ENG_ECONFIG);
  CHECK(err && strstr(err, "from 1 to 256") != NULL);
  free(err);
  err = NULL;
  eng_config_free(&c);
  char *bad2[] = {"--nope"};
  CHECK_INT(load(&c, 1, bad2, &err), ENG_ECONFIG);
  CHECK(err && strstr(err, "unknown option '--nope'") != NULL);
  free(err);
  err = NULL;
  eng_config_free(&c);
  char *bad3[] = {"--listen", "nohostport"};
  CHECK_INT(load(&c, 2, bad3, &err), ENG_ECONFIG);
  free(err);
  err = NULL;
  eng_config_free(&c);
  char *bad4[] = {"--listen"};
  CHECK_INT(load(&c, 1, bad4, &err), ENG_ECONFIG);
  CHECK(err && strstr(err, "needs a value") != NULL);
  free(err);
  err = NULL;
  eng_config_free(&c);
  char *v6[] = {"--listen", "[::1]:8081"};
  CHECK_INT(load(&c, 2, v6, &err), 0);
  CHECK_STR(c.listen_host, "::1");
  CHECK_INT(c.port, 8081);
  eng_config_free(&c);

  /* A key in the environment is never echoed in errors. */
  f = fopen(file, "w");
  fputs("return { unknown_thing = 1 }\n", f);
  fclose(f);
  char *argv2[] = {"--config", file};
  CHECK_INT(load(&c, 2, argv2, &err), ENG_ECONFIG);
  CHECK(err && strstr(err, "unknown setting 'unknown_thing'") != NULL);
  free(err);
  err = NULL;
  eng_config_free(&c);
  f = fopen(file, "w");
  fputs("return { workers = \n", f);
  fclose(f);
  CHECK_INT(load(&c, 2, argv2, &err), ENG_ECONFIG);
  CHECK(err && strstr(err, "config file") != NULL);
  free(err);
  eng_config_free(&c);
  unlink(file);
  test_settings_are_rebuilt_exactly();
  test_settings_that_are_not_data_are_refused_at_start_up();
  test_settings_missing_or_not_a_table_are_empty();
  test_environment_wins_over_settings_as_a_string();
  test_real_ip_from();
  return check_summary("test_config");
}
