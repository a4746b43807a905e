-- The time budget holds against long C work and against script code Lua runs with its count
-- hook off: each request below answers 503 budget_exceeded (or its own error) within the
-- budget plus a margin, and the worker serves the next request. The routes are in
-- tests/fixtures/engine/scripts/budget.lua. Before the budget covered them, each took far
-- longer: the durations are noted per case (in-process sizes: 1 s budget, measured on the
-- project's machine); the server cases did not answer at all within the client's 10 s.
local spec = require "engine.spec"
local socket = require "socket"

local SCRIPTS = "tests/fixtures/engine/scripts"
local SCHEMA = "tests/fixtures/engine/schema"
local TIME_503 = { code = "budget_exceeded", message = "script time budget exceeded" }

local function timed(f)
  local t0 = socket.gettime()
  local res = f()
  return res, socket.gettime() - t0
end

describe("the time budget, in-process (budget 1 s)", function()
  local app = spec.app { scripts = SCRIPTS, schema = SCHEMA }
  local LIMIT = 1 + 2 -- budget + margin, seconds

  local function answers_in_time(path, status)
    local res, took = timed(function() return app.request("GET", path) end)
    assert.equal(status or 503, res.status, path)
    if (status or 503) == 503 then assert.same(TIME_503, res.json.error, path) end
    assert.is_true(took < LIMIT, string.format("%s took %.2f s", path, took))
    assert.equal(200, app.request("GET", "/hello").status)
    return res
  end

  it("stops backtracking pattern matching in string.find, match, gsub, gmatch and %b", function()
    answers_in_time("/budget/find?n=160")      -- ("a"):rep(n):find(".-.-.-.-b"): 12.5 s before
    answers_in_time("/budget/match?n=60000")   -- a trim of "a   ...   a": 17.6 s before
    answers_in_time("/budget/gsub?n=60000")    -- gsub(".-b", ""): 19.6 s before
    answers_in_time("/budget/gmatch?n=60000")  -- gmatch("a-b"): 19.1 s before
    answers_in_time("/budget/balance?n=200000") -- ("("):rep(n):find("%b()"): 15.5 s before
  end)

  it("keeps raising for a script that catches the budget error of a pattern", function()
    -- while true do pcall(string.find, ...) end: the hook ran once per ~160 finds, 15 s before
    answers_in_time("/budget/find-pcall?n=60")
  end)

  it("answers string.rep of an empty result at once and stops big reps at the deadline", function()
    -- string.rep("", 1e10) looped 1e10 times in C: 21 s before
    assert.same({ len = 0 }, answers_in_time("/budget/rep-empty?n=10000000000", 200).json)
    answers_in_time("/budget/rep-loop?n=20000000") -- a loop of 20 MB reps: 12.5 s before
  end)

  it("stops table.sort without a comparator and table.move over a huge range", function()
    answers_in_time("/budget/sort?loop=1&n=300000") -- repeated sorts of 300,000 numbers: 10 s before
    answers_in_time("/budget/move?n=1000000000")    -- table.move({}, 1, 1e9, 2): 15 s before
  end)

  -- On SQLite the progress handler interrupts the statement; on PostgreSQL the query is cancelled.
  it("interrupts long SQL, rolls its transaction back and leaves none open", function()
    answers_in_time("/budget/sql?n=100000000") -- a recursive count to 1e8 in db.tx: 16 s before
    assert.same({}, app.request("GET", "/budget/items").json.rows)
    app.db.exec("BEGIN") -- raises if a transaction were still open on the connection
    app.db.exec("ROLLBACK")
    -- a script that catches the interrupted statement's error gets the budget error again
    answers_in_time("/budget/sql?n=100000000&catch=1")
    assert.equal(201, app.request("POST", "/budget/items").status)
    assert.same({ { name = "after" } }, app.request("GET", "/budget/items").json.rows)
  end)

  it("does not run an xpcall message handler once the budget is blown", function()
    answers_in_time("/budget/xpcall?secs=20") -- the handler ran with hooks off: 16 s before (forever without secs)
  end)

  it("refuses metatables with __gc, whose finalizers would run with hooks off", function()
    local res = answers_in_time("/budget/gc?secs=20", 200) -- the finalizer ran in collectgarbage(): 15 s before
    assert.is_false(res.json.ok)
    assert.matches("budget.lua:%d+: bad argument #2 to 'setmetatable' %(__gc metamethods are not allowed in " ..
                   "scripts: finalizers run outside the time budget%)$", res.json.err)
  end)

  it("bounds to-be-closed variables of a stopped or failed handler and of coroutine.wrap", function()
    answers_in_time("/budget/close?secs=20")            -- closed with hooks off after the budget error: 16 s before
    answers_in_time("/budget/close-error?secs=20", 500) -- closed without the hook after a plain error: 15 s before
    answers_in_time("/budget/wrap-close?secs=20")       -- coroutine.wrap closed it with hooks off: 16 s before
  end)

  it("bounds an error object's __tostring and a coroutine made while the scripts loaded", function()
    answers_in_time("/budget/tostring?secs=20", 500)        -- the engine called it unhooked: 15 s before
    answers_in_time("/budget/load-time-coroutine?secs=20")  -- it had no hook at all: 15 s before
  end)
end)

describe("the time budget, real server (budget 200 ms)", function()
  local srv = spec.server { scripts = SCRIPTS, schema = SCHEMA, args = { "--budget-ms", "200" } }
  local LIMIT = 0.2 + 1.8

  local function answers_in_time(path)
    local res, took = timed(function() return srv.request("GET", path, { timeout = 10 }) end)
    assert.equal(503, res.status, path)
    assert.same(TIME_503, res.json.error, path)
    assert.is_true(took < LIMIT, string.format("%s took %.2f s", path, took))
    assert.equal(200, srv.request("GET", "/hello").status)
  end

  it("stops ReDoS-shaped patterns and logs where", function()
    answers_in_time("/budget/find")  -- ("a"):rep(50000):find(".-.-.-.-b")
    answers_in_time("/budget/match") -- ("a" .. (" "):rep(1e5) .. "a"):match("^%s*(.-)%s*$")
    answers_in_time("/budget/gsub")
    local log = srv.read_log()
    assert.truthy(log:find("script budget exceeded (200 ms)", 1, true))
    assert.truthy(log:find("in function 'string.find'", 1, true))
  end)

  it("interrupts long SQL and leaves no transaction open", function()
    answers_in_time("/budget/sql") -- a recursive count to 1e9 in db.tx
    assert.equal(201, srv.request("POST", "/budget/items").status)
    assert.same({ { name = "after" } }, srv.request("GET", "/budget/items").json.rows)
  end)

  it("stops xpcall(function() while true do end end, function() while true do end end)", function()
    answers_in_time("/budget/xpcall")
  end)

end)
