-- support/proc.lua - the real binary as a process, for the specs that start servers and run
-- commands: small file helpers, polling, a command run to its end, a server started until it
-- listens, a throwaway PostgreSQL with a fresh database per server. Everything started here is
-- stopped, and every directory made here removed, by proc.cleanup() (call it in after_each) and
-- proc.pg_stop() (in teardown). Bounded: every wait has a limit.
local testing = require "engine.testing"
local socket = require "socket"

local M = {}
local started, dirs = {}, {}

function M.read(path)
  local f = io.open(path)
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

function M.write(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end

-- Polls fn every 20 ms until it returns a true value or ms (10 s) pass; returns that value or nil.
function M.wait_for(fn, ms)
  for _ = 1, (ms or 10000) // 20 do
    local v = fn()
    if v then return v end
    testing.sleep(20)
  end
  return fn()
end

-- A temporary directory that cleanup() removes.
function M.tmpdir()
  local d = testing.mkdtemp()
  dirs[#dirs + 1] = d
  return d
end

-- Runs argv (argv[1] is the program) to its end, bounded by ms (15 s): its exit code (nil when
-- it had to be killed), its output (stdout and stderr) and the milliseconds it took.
function M.run(argv, env, ms)
  local d = testing.mkdtemp()
  local t0 = socket.gettime()
  local pid = testing.spawn(argv, d .. "/out", env)
  local code = testing.wait(pid, ms or 15000)
  local took = (socket.gettime() - t0) * 1000
  if code == nil then
    testing.kill(pid, 9)
    testing.wait(pid, 5000)
  end
  local out = M.read(d .. "/out")
  testing.rmtree(d)
  return code, out, took
end

-- Starts argv, a command line that runs a server, with its output in log (default: a file in a
-- directory of its own). Returns s once the log says "listening on", or with s.code set when the
-- process exited first (bounded by ms, 15 s). s.read_log() is the log so far; s.stop([signal])
-- stops it (SIGTERM, then SIGKILL after 15 s) and returns its exit code.
function M.start(argv, env, log, ms)
  local s = M.launch(argv, env, log)
  s.wait_listening(ms)
  return s
end

-- M.start without the wait: returns s at once (several servers starting together);
-- s.wait_listening([ms]) is the wait.
function M.launch(argv, env, log)
  local s = { log = log or M.tmpdir() .. "/server.log" }
  s.pid = testing.spawn(argv, s.log, env)
  started[#started + 1] = s
  function s.read_log() return M.read(s.log) or "" end
  function s.stop(sig)
    if not s.pid then return s.code end
    testing.kill(s.pid, sig or 15)
    s.code = testing.wait(s.pid, 15000)
    if s.code == nil then
      testing.kill(s.pid, 9)
      testing.wait(s.pid, 5000)
    end
    s.pid = nil
    return s.code
  end
  function s.wait_listening(ms)
    return M.wait_for(function()
      if not s.pid then return true end
      local code = testing.wait(s.pid, 0)
      if code then
        s.code, s.pid = code, nil
        return true
      end
      return s.read_log():find("listening on", 1, true)
    end, ms or 15000)
  end
  return s
end

-- The resident memory of process pid, in MiB (VmRSS of /proc/PID/status).
function M.rss_mib(pid)
  local s = assert(M.read("/proc/" .. pid .. "/status"))
  return tonumber(s:match("VmRSS:%s*(%d+) kB")) / 1024
end

-- `apiengine serve --listen 127.0.0.1:PORT args...` on a free port (or port): as M.start, with
-- s.port set.
function M.serve(args, env, port)
  port = port or testing.free_port()
  local s = M.start({ testing.exe(), "serve", "--listen", "127.0.0.1:" .. port, table.unpack(args) }, env)
  s.port = port
  return s
end

-- ---- a throwaway PostgreSQL (tests/support/pg.sh), one per spec file ----
-- M.pg_database() starts the server on first use (owned by this process: pg.sh's watchdog
-- removes it should the spec die) and creates a fresh database, returning its conninfo and
-- name. M.pg_stop() (call it in teardown) stops the server and removes its directory.
local PG_SH = "tests/support/pg.sh"
local PG_BIN = os.getenv("APIENGINE_PG_BIN") or "/usr/lib/postgresql/15/bin"
local pg

local function self_pid() return assert(M.read("/proc/self/stat")):match("^(%d+)") end

local function pg_sh(...)
  local code, out = M.run({ "/bin/bash", PG_SH, ... }, nil, 60000)
  assert(code == 0, "pg.sh " .. table.concat({ ... }, " ") .. " failed: " .. tostring(out))
  return out
end

function M.pg_start()
  if not pg then
    local out = pg_sh("start", self_pid())
    pg = { dir = assert(out:match("(/tmp/apiengine%-pg%.[%w]+)%s*$"), out), n = 0 }
  end
  return pg.dir
end

-- Runs sql with psql on database db (default: postgres): exit code and output (unaligned, tuples
-- only: one value per line).
function M.psql(sql, db)
  local dir = M.pg_start()
  return M.run({ PG_BIN .. "/psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", dir, "-U", "postgres",
    "-d", db or "postgres", "-c", sql })
end

-- The first line psql prints for sql on db (an assertion failure when psql fails).
function M.psql_value(sql, db)
  local code, out = M.psql(sql, db)
  assert(code == 0, "psql: " .. tostring(out))
  return (out:match("^([^\n]*)"))
end

function M.pg_database()
  local dir = M.pg_start()
  pg.n = pg.n + 1
  local name = "spec_" .. pg.n
  local code, out = M.psql("CREATE DATABASE " .. name)
  assert(code == 0, "CREATE DATABASE: " .. tostring(out))
  return "host=" .. dir .. " user=postgres dbname=" .. name, name
end

function M.pg_pause() pg_sh("pause", M.pg_start()) end
function M.pg_resume() pg_sh("resume", M.pg_start()) end

function M.pg_stop()
  if pg then
    pg_sh("stop", pg.dir)
    pg = nil
  end
end

-- Stops every server started since the last call (newest first) and removes the directories.
function M.cleanup()
  for i = #started, 1, -1 do
    started[i].stop()
    started[i] = nil
  end
  for i = #dirs, 1, -1 do
    testing.rmtree(dirs[i])
    dirs[i] = nil
  end
end

return M
